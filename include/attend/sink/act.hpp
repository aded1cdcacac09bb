// ACT, the Attention Calibration Technique (Yu et al., ICML 2024; card 7 of LINEAR_SINK.md).
//
// Detection: a_j = (sum_i P_ij) / count_j, the mean attention key j receives from the queries
// that can see it (count_j = N - j for square causal prefill, as the reference divides); the
// sink set is S = {j : a_j > tau} in index order, and the first detected index is dropped (in
// practice the BOS sink stays, the "hidden" sinks later in the text are calibrated).
//
// Calibration of row i: sink columns keep beta of their mass, the freed (1 - beta) P_S,i is
// redistributed over the other columns in proportion to their attention. Computed by the
// closed-form epilogue o'_i = beta a_i + kappa_i (o_i - a_i), a_i = sum_{j in S} P_ij v_j,
// kappa_i = (1 - beta P_S,i) / (1 - P_S,i), which needs only P_ij for j in S: O(|S| d) per row
// from (o_i, LSE_i). A row with 1 - P_S,i <= eps (all its mass on sinks, e.g. row 0) is left
// unchanged, as the reference forces P'_00 = 1. beta = 1 is the identity.
//
// The epilogue is the engine's output hook (act_epilogue): with known sink sets (decode, which
// reuses the sets found at prefill) it runs inside the forward, after the split-K merge. Prefill
// with detection runs the forward (o, LSE), pass 2 of card 13 for the column means of the
// calibrated heads, detection, and then the same hook over the stored rows: about 1.6 forward
// passes instead of the three a detect-then-recompute scheme needs.
#ifndef ATTEND_SINK_ACT_HPP_
#define ATTEND_SINK_ACT_HPP_

#include <algorithm>
#include <cmath>
#include <vector>

#include "stats.hpp"

namespace attend::sink {

/// Parameters of ACT. Defaults are the reference's classification / multiple-choice settings
/// (scripts/*.sh: BETA=0.4, THRES=0.1).
struct act_params {
  /// Fraction of their mass the sink columns keep; 1 = no calibration.
  float beta = 0.4f;
  /// Threshold on the mean attention a key receives (a_j > tau marks a sink).
  float tau = 0.1f;
  /// Drop the first detected index of each set (the reference's indices[1:]).
  bool drop_first = true;
  /// Rows whose non-sink mass 1 - P_S is at most eps are left unchanged.
  float eps = 1e-6f;
  /// Query heads to calibrate (chosen offline in the reference); empty = every head.
  view1<const index_t> heads{};
};

/// Sink sets per (batch, query head), ascending key positions, stored compressed:
/// the keys of (b, h) are keys[offsets[b * heads + h] .. offsets[b * heads + h + 1]).
struct sink_sets {
  index_t batch = 0, heads = 0;
  std::vector<index_t> offsets;  // [batch * heads + 1]
  std::vector<index_t> keys;

  index_t size(index_t b, index_t h) const {
    return offsets[b * heads + h + 1] - offsets[b * heads + h];
  }
  const index_t* begin(index_t b, index_t h) const { return keys.data() + offsets[b * heads + h]; }
  std::vector<index_t> of(index_t b, index_t h) const {
    return std::vector<index_t>(begin(b, h), begin(b, h) + size(b, h));
  }
  /// Empty sets for [batch, heads].
  static sink_sets empty(index_t batch, index_t heads) {
    sink_sets s;
    s.batch = batch;
    s.heads = heads;
    s.offsets.assign(static_cast<std::size_t>(batch * heads + 1), 0);
    return s;
  }
};

/// What an ACT call did: the sink sets and the probability mass moved off them.
struct act_result {
  sink_sets sinks;
  /// Sum over calibrated rows of (1 - beta) P_S,i: the mass moved from sinks to other keys.
  double moved_mass = 0.0;
  /// Rows that had a non-empty sink set and were changed.
  index_t rows_calibrated = 0;
};

/// ACT detection from column means: S(b, h) = {j < seq_k : col_mean(b, h, j) > tau}, minus its
/// first element when drop_first, for the listed heads (all when empty); other heads get empty
/// sets. \param col_mean [batch, heads_q, seq_k], e.g. stats_outputs::col_mean.
inline sink_sets detect_sinks(const view3<const float>& col_mean, const view1<const index_t>& heads,
                              float tau = 0.1f, bool drop_first = true) {
  constexpr const char* op = "attend::sink::detect_sinks";
  attend::detail::check_tensor(op, "col_mean", col_mean);
  const index_t batch = col_mean.extent(0), heads_q = col_mean.extent(1);
  if (heads.has_value()) {
    attend::detail::check_tensor(op, "heads", heads);
    for (index_t i = 0; i < heads.extent(0); ++i)
      ATTEND_CHECK(heads(i) >= 0 && heads(i) < heads_q, op, ": heads[", i, "] = ", heads(i),
                   " is outside [0, heads_q = ", heads_q, ")");
  }
  ATTEND_CHECK(std::isfinite(tau), op, ": tau (", tau, ") must be finite");
  const std::vector<char> on = detail::head_selection(heads, heads_q);
  sink_sets s = sink_sets::empty(batch, heads_q);
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < heads_q; ++h) {
      const index_t set = b * heads_q + h;
      s.offsets[set + 1] = s.offsets[set];
      if (!on[h]) continue;
      bool first = drop_first;
      for (index_t j = 0; j < col_mean.extent(2); ++j) {
        if (!(col_mean(b, h, j) > tau)) continue;
        if (first) {
          first = false;
          continue;
        }
        s.keys.push_back(j);
        ++s.offsets[set + 1];
      }
    }
  return s;
}

namespace detail {

/// ACT's closed-form epilogue as an output hook: for each row with a non-empty sink set,
/// P_ij = exp(s_ij - lse) for j in S (scores formed as the engine forms them), then
/// o' = kappa o + (beta - kappa) a. `moved` (optional, [batch, heads_q, seq_q]) receives
/// (1 - beta) P_S per row (0 where nothing changed).
template <class Arch, class KV, class Score, class Mask>
struct act_epilogue {
  static constexpr bool is_identity = false;
  view4<const float> q{};
  view4<const KV> k{}, v{};
  float scale = 1.0f;
  Score score{};
  Mask mask{};
  const index_t* kv_lens = nullptr;
  const index_t* offsets = nullptr;  // sink_sets
  const index_t* keys = nullptr;
  float beta = 0.4f, eps = 1e-6f;
  view3<float> moved{};

  void apply(const engine::row_ctx& ctx, float* o, float lse, index_t dv) const noexcept {
    using V = simd::vfloat<Arch>;
    constexpr index_t w = simd::lanes<Arch>;
    constexpr index_t chunk = 16;
    const index_t heads_q = q.extent(2), group = heads_q / k.extent(2);
    if (moved.has_value()) moved(ctx.batch, ctx.head, ctx.query) = 0.0f;
    const index_t set = ctx.batch * heads_q + ctx.head;
    const index_t* s_keys = keys + offsets[set];
    index_t n = offsets[set + 1] - offsets[set];
    const index_t len = kv_lens ? kv_lens[ctx.batch] : k.extent(1);
    while (n > 0 && s_keys[n - 1] >= len) --n;  // sets are ascending; keys past the cache drop
    if (n == 0 || lse == engine::neg_inf) return;
    float s[chunk];
    auto probs = [&](index_t c0, index_t cn) {
      score_listed_keys<Arch>(score, mask, q, k, scale, group, ctx, s_keys + c0, cn, s);
      for (index_t j = 0; j < cn; ++j) s[j] = s[j] == engine::neg_inf ? 0.0f : std::exp(s[j] - lse);
    };
    float mass = 0.0f;  // P_S
    for (index_t c0 = 0; c0 < n; c0 += chunk) {
      const index_t cn = std::min(chunk, n - c0);
      probs(c0, cn);
      for (index_t j = 0; j < cn; ++j) mass += s[j];
    }
    if (!(1.0f - mass > eps)) return;
    const float kappa = (1.0f - beta * mass) / (1.0f - mass);
    engine::scale_row<Arch>(o, dv, kappa);
    const float coef = beta - kappa;  // o' = kappa o + (beta - kappa) a
    const KV* vbase = v.data() + ctx.batch * v.stride(0) + (ctx.head / group) * v.stride(2);
    for (index_t c0 = 0; c0 < n; c0 += chunk) {
      const index_t cn = std::min(chunk, n - c0);
      probs(c0, cn);
      for (index_t j = 0; j < cn; ++j) {
        const KV* vr = vbase + s_keys[c0 + j] * v.stride(1);
        const float f = coef * s[j];
        const V vf(f);
        index_t c = 0;
        for (; c + w <= dv; c += w)
          simd::fmadd<Arch>(vf, simd::load<Arch>(vr + c), V::load_unaligned(o + c))
              .store_unaligned(o + c);
        for (; c < dv; ++c) o[c] += f * simd::load_scalar(vr + c);
      }
    }
    if (moved.has_value()) moved(ctx.batch, ctx.head, ctx.query) = (1.0f - beta) * mass;
  }
};

template <class Arch, class KV, class Score, class Mask>
act_epilogue<Arch, KV, Score, Mask> make_act_epilogue(
    const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v, float scale,
    const Score& score, const Mask& mask, const index_t* lens, const sink_sets& sets,
    const act_params& a, const view3<float>& moved) {
  act_epilogue<Arch, KV, Score, Mask> e;
  e.q = q;
  e.k = k;
  e.v = v;
  e.scale = scale;
  e.score = score;
  e.mask = mask;
  e.kv_lens = lens;
  e.offsets = sets.offsets.data();
  e.keys = sets.keys.data();
  e.beta = a.beta;
  e.eps = a.eps;
  e.moved = moved;
  return e;
}

inline void validate_act(const char* op, const act_params& a, index_t heads_q) {
  ATTEND_CHECK(std::isfinite(a.beta) && a.beta >= 0.0f, op, ": beta (", a.beta,
               ") must be finite and >= 0");
  ATTEND_CHECK(std::isfinite(a.tau), op, ": tau (", a.tau, ") must be finite");
  ATTEND_CHECK(std::isfinite(a.eps) && a.eps >= 0.0f, op, ": eps (", a.eps,
               ") must be finite and >= 0");
  if (a.heads.has_value()) {
    attend::detail::check_tensor(op, "heads", a.heads);
    for (index_t i = 0; i < a.heads.extent(0); ++i)
      ATTEND_CHECK(a.heads(i) >= 0 && a.heads(i) < heads_q, op, ": heads[", i, "] = ", a.heads(i),
                   " is outside [0, heads_q = ", heads_q, ")");
  }
}

inline void validate_sets(const char* op, const sink_sets& s, index_t batch, index_t heads_q) {
  ATTEND_CHECK(s.batch == batch && s.heads == heads_q &&
                   static_cast<index_t>(s.offsets.size()) == batch * heads_q + 1,
               op, ": sink sets are for [", s.batch, ", ", s.heads, "], expected [", batch, ", ",
               heads_q, "]");
  ATTEND_CHECK(s.offsets.front() == 0 && s.offsets.back() == static_cast<index_t>(s.keys.size()),
               op, ": sink set offsets do not cover the key list");
  for (index_t set = 0; set < batch * heads_q; ++set) {
    ATTEND_CHECK(s.offsets[set] <= s.offsets[set + 1], op, ": sink set offsets must not decrease");
    for (index_t i = s.offsets[set]; i < s.offsets[set + 1]; ++i)
      ATTEND_CHECK(s.keys[i] >= 0 && (i == s.offsets[set] || s.keys[i] > s.keys[i - 1]), op,
                   ": sink set ", set, " must hold ascending non-negative key positions");
  }
}

/// The parts of an ACT call shared by act_attention and act_calibrator. col_sum / col_count are
/// [batch, heads_q, seq_k] (the running sums with accumulate), lse [batch, heads_q, seq_q].
/// detect: prefill (forward, columns, detection, epilogue over the stored rows); otherwise the
/// forward runs with the epilogue as its output hook, using `sets`.
template <class Arch, class KV>
void act_dispatch(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                  const view4<float>& o, const attention_params& p, const act_params& a,
                  const std::vector<char>& on, bool detect, sink_sets& sets,
                  const view3<float>& lse, const view3<float>& col_sum,
                  const view3<float>& col_count, bool accumulate, const view3<float>& moved) {
  const engine::standard_mask mask = attend::detail::make_mask(p);
  const engine::sink_logits sink{p.sinks.has_value() ? p.sinks.data() : nullptr};
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = attend::detail::resolve_scale(p, q.extent(3));
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t seq_k = k.extent(1), dv = v.extent(3);
  attend::detail::dispatch_head_dims(q.extent(3), dv, [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    with_score_mod(p, [&](auto score) {
      const auto cols = engine::make_variant(score, mask);
      if (detect) {
        attend::detail::dense_forward<Arch, DK, DV>(
            q, k, v, o, lse, lens, scale, engine::make_variant(score, mask, sink), p.scratch);
        column_forward<Arch, DK>(q, k, lse, lens, scale, cols, on, col_sum, col_count, false,
                                 p.scratch);
        std::vector<float> mean(static_cast<std::size_t>(batch * heads_q * seq_k), 0.0f);
        const auto mv = view3<float>::contiguous(mean.data(), {batch, heads_q, seq_k});
        for (index_t b = 0; b < batch; ++b)
          for (index_t h = 0; h < heads_q; ++h)
            if (on[h])
              for (index_t j = 0; j < seq_k; ++j) {
                const float n = col_count(b, h, j);
                mv(b, h, j) = n > 0.0f ? col_sum(b, h, j) / n : 0.0f;
              }
        std::vector<index_t> list;
        for (index_t h = 0; h < heads_q; ++h)
          if (on[h]) list.push_back(h);
        sets = detect_sinks(mv, make_view<const index_t>(list.data(), index_t(list.size())), a.tau,
                            a.drop_first);
        const auto epi = make_act_epilogue<Arch>(q, k, v, scale, score, mask, lens, sets, a, moved);
        attend::detail::parallel_for(
            batch * heads_q * seq_q, attend::detail::max_threads(), [&](index_t row, int) {
              const index_t b = row / (heads_q * seq_q), h = (row / seq_q) % heads_q;
              const index_t i = row % seq_q;
              if (sets.size(b, h) == 0) {
                if (moved.has_value()) moved(b, h, i) = 0.0f;
                return;
              }
              const index_t len = lens ? lens[b] : seq_k;
              epi.apply(engine::row_ctx{b, h, i, len - seq_q + i}, &o(b, i, h, 0), lse(b, h, i),
                        dv);
            });
        return;
      }
      const auto epi = make_act_epilogue<Arch>(q, k, v, scale, score, mask, lens, sets, a, moved);
      attend::detail::dense_forward<Arch, DK, DV>(
          q, k, v, o, lse, lens, scale, engine::make_variant(score, mask, sink, epi), p.scratch);
      if (col_sum.has_value() || col_count.has_value())
        column_forward<Arch, DK>(q, k, lse, lens, scale, cols, on, col_sum, col_count, accumulate,
                                 p.scratch);
    });
  });
}

inline act_result summarise(sink_sets&& sets, const std::vector<float>& moved) {
  act_result r;
  r.sinks = std::move(sets);
  for (float m : moved) {  // fixed order: deterministic
    r.moved_mass += m;
    r.rows_calibrated += m > 0.0f;
  }
  return r;
}

}  // namespace detail

/// ACT on a prompt: attention o (and p.lse if set) with sinks detected on the fly and the
/// listed heads calibrated. Detection uses the uncalibrated attention of this call.
///
/// \param q [batch, seq_q, heads_q, dk]; k, v [batch, seq_k, heads_kv, dk / dv] (float, bf16,
///        fp16); o [batch, seq_q, heads_q, dv] output
/// \param a beta, tau, heads (defaults 0.4, 0.1, all heads), drop_first, eps
/// \param p the attention options (causal for the reference's setting; masks, sinks, ...)
/// Returns the sink sets and the mass moved. Heads not listed get plain attention. Cost: one
/// forward, one score pass (no P V) over the calibrated heads, O(|S| d) per calibrated row.
template <class TQ, class TK, class TV>
act_result act_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                         const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                         const act_params& a = {}, const attention_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::act_attention";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attend::detail::validate_attention(op, qc, kc, vc, o, p);
  detail::validate_act(op, a, q.extent(2));
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t seq_k = k.extent(1);
  std::vector<float> lse_buf, sums(static_cast<std::size_t>(batch * heads_q * seq_k)),
      counts(sums.size()), moved(static_cast<std::size_t>(batch * heads_q * seq_q), 0.0f);
  view3<float> lse = p.lse;
  if (!lse.has_value()) {
    lse_buf.resize(static_cast<std::size_t>(batch * heads_q * seq_q));
    lse = view3<float>::contiguous(lse_buf.data(), {batch, heads_q, seq_q});
  }
  sink_sets sets;
  detail::act_dispatch<xsimd::default_arch>(
      qc, kc, vc, o, p, a, detail::head_selection(a.heads, heads_q), true, sets, lse,
      view3<float>::contiguous(sums.data(), {batch, heads_q, seq_k}),
      view3<float>::contiguous(counts.data(), {batch, heads_q, seq_k}), false,
      view3<float>::contiguous(moved.data(), {batch, heads_q, seq_q}));
  return detail::summarise(std::move(sets), moved);
}

/// ACT with given sink sets (no detection): the forward runs with the closed-form epilogue as
/// its output hook, so it also serves decode (after the split-K merge). Sets of heads that are
/// not to be calibrated are simply empty; keys past a sequence's length are ignored.
/// \param sinks sets for [batch, heads_q] (from detect_sinks or act_attention)
template <class TQ, class TK, class TV>
act_result act_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                         const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                         const sink_sets& sinks, const act_params& a = {},
                         const attention_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::act_attention";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attend::detail::validate_attention(op, qc, kc, vc, o, p);
  detail::validate_act(op, a, q.extent(2));
  detail::validate_sets(op, sinks, q.extent(0), q.extent(2));
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  std::vector<float> moved(static_cast<std::size_t>(batch * heads_q * seq_q), 0.0f);
  sink_sets sets = sinks;
  detail::act_dispatch<xsimd::default_arch>(
      qc, kc, vc, o, p, a, std::vector<char>(static_cast<std::size_t>(heads_q), 1), false, sets,
      p.lse, {}, {}, false, view3<float>::contiguous(moved.data(), {batch, heads_q, seq_q}));
  return detail::summarise(std::move(sets), moved);
}

/// ACT across prefill and decode for one layer: the sink sets found at prefill are reused at
/// every decode step (the reference re-detects per forward pass and its [0,0] = 1 step is wrong
/// for decode; card 7's recommendation is implemented instead), and the running column sums
/// and counts of the calibrated heads are kept so that redetect() can refresh the sets.
class act_calibrator {
 public:
  /// \param capacity the largest seq_k of any call (the KV cache capacity)
  act_calibrator(const act_params& a, index_t batch, index_t heads_q, index_t capacity)
      : params_(a), batch_(batch), heads_q_(heads_q), capacity_(capacity) {
    constexpr const char* op = "attend::sink::act_calibrator";
    ATTEND_CHECK(batch > 0 && heads_q > 0 && capacity > 0, op, ": batch (", batch, "), heads_q (",
                 heads_q, ") and capacity (", capacity, ") must be > 0");
    detail::validate_act(op, a, heads_q);
    on_ = detail::head_selection(a.heads, heads_q);
    for (index_t h = 0; h < heads_q; ++h)
      if (on_[h]) heads_.push_back(h);
    params_.heads = {};  // kept as heads_ (the caller's view may not outlive the calibrator)
    sums_.assign(static_cast<std::size_t>(batch * heads_q * capacity), 0.0f);
    counts_.assign(sums_.size(), 0.0f);
    sets_ = sink_sets::empty(batch, heads_q);
  }

  /// Prefill: attention over the prompt with detection (as act_attention); the column sums and
  /// counts restart from this prompt. k, v hold the cache (seq_k <= capacity).
  template <class TQ, class TK, class TV>
  act_result prefill(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                     const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                     const attention_params& p = {}) {
    return run(q, k, v, o, p, true);
  }

  /// Decode (or a later chunk): calibrated attention with the current sets through the output
  /// hook, then this step's uncalibrated attention is added to the running column sums.
  template <class TQ, class TK, class TV>
  act_result decode(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                    const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                    const attention_params& p = {}) {
    return run(q, k, v, o, p, false);
  }

  /// Re-detects the sets from the running column means (sum / count) of the first `length`
  /// keys of each sequence.
  void redetect(index_t length) {
    ATTEND_CHECK(length >= 0 && length <= capacity_,
                 "attend::sink::act_calibrator::redetect: ", "length (", length,
                 ") must be in [0, capacity = ", capacity_, "]");
    std::vector<float> mean(
        static_cast<std::size_t>(batch_ * heads_q_ * std::max<index_t>(length, 1)), 0.0f);
    const auto mv = view3<float>::contiguous(mean.data(), {batch_, heads_q_, length});
    for (index_t b = 0; b < batch_; ++b)
      for (index_t h = 0; h < heads_q_; ++h)
        for (index_t j = 0; j < length; ++j) {
          const float n = counts()(b, h, j);
          mv(b, h, j) = n > 0.0f ? sums()(b, h, j) / n : 0.0f;
        }
    const auto list = make_view<const index_t>(heads_.data(), index_t(heads_.size()));
    sets_ = length > 0 && !heads_.empty() ? detect_sinks(mv, list, params_.tau, params_.drop_first)
                                          : sink_sets::empty(batch_, heads_q_);
  }

  const sink_sets& sinks() const noexcept { return sets_; }
  /// Running column sums and counts [batch, heads_q, capacity] (calibrated heads only).
  view3<const float> sums() const noexcept {
    return view3<const float>::contiguous(sums_.data(), {batch_, heads_q_, capacity_});
  }
  view3<const float> counts() const noexcept {
    return view3<const float>::contiguous(counts_.data(), {batch_, heads_q_, capacity_});
  }
  /// beta, tau, drop_first, eps of the calibrator (heads: see heads()).
  const act_params& params() const noexcept { return params_; }
  /// The calibrated query heads, ascending.
  const std::vector<index_t>& heads() const noexcept { return heads_; }

 private:
  template <class TQ, class TK, class TV>
  act_result run(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                 const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                 const attention_params& p, bool detect) {
    using KV = std::remove_const_t<TK>;
    static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
    static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
    static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
    constexpr const char* op = "attend::sink::act_calibrator";
    const view4<const float> qc = q;
    const view4<const KV> kc = k, vc = v;
    attend::detail::validate_attention(op, qc, kc, vc, o, p);
    const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
    const index_t seq_k = k.extent(1);
    ATTEND_CHECK(batch == batch_ && heads_q == heads_q_ && seq_k <= capacity_, op,
                 ": call has batch ", batch, ", heads_q ", heads_q, ", seq_k ", seq_k,
                 "; the calibrator was made for batch ", batch_, ", heads_q ", heads_q_,
                 ", capacity ", capacity_);
    std::vector<float> lse_buf(static_cast<std::size_t>(batch * heads_q * seq_q)),
        moved(lse_buf.size(), 0.0f);
    view3<float> lse = p.lse;
    if (!lse.has_value()) lse = view3<float>::contiguous(lse_buf.data(), {batch, heads_q, seq_q});
    const auto full = [&](std::vector<float>& buf) {
      return view3<float>::contiguous(buf.data(), {batch_, heads_q_, capacity_})
          .narrow(2, 0, seq_k);
    };
    detail::act_dispatch<xsimd::default_arch>(
        qc, kc, vc, o, p, params_, on_, detect, sets_, lse, full(sums_), full(counts_), !detect,
        view3<float>::contiguous(moved.data(), {batch, heads_q, seq_q}));
    sink_sets copy = sets_;
    return detail::summarise(std::move(copy), moved);
  }

  act_params params_;
  index_t batch_, heads_q_, capacity_;
  std::vector<char> on_;
  std::vector<index_t> heads_;
  std::vector<float> sums_, counts_;
  sink_sets sets_;
};

}  // namespace attend::sink

#endif  // ATTEND_SINK_ACT_HPP_
