// Attention statistics without materialising the N x N matrix (card 13 of LINEAR_SINK.md):
//
//   pass 1  the forward pass with the engine's row-statistics hook: LSE, per-row entropy
//           (a third accumulator t = sum e^(s - m) s rescaled like l, H = LSE - t / l), per-row
//           mass on the first `sink_tokens` keys and on the learnable sink logit
//   pass 2  engine::score_tiles (Q K^T, score mods and mask per tile, no P V) with
//           P = exp(S - LSE) reduced over rows: per-key mass received (column sums), the number
//           of queries that see each key, and their ratio (the column mean ACT thresholds)
//
// All statistics use the forward's scores exactly (softcap, ALiBi, bias, masks) and the LSE
// includes the sink, so per row sum_j P_ij + p_sink = 1 and sum_j col_sum_j = rows - sum p_sink.
// Pass 2 sums fixed query chunks in a fixed order, so results do not depend on the thread
// count. For decode, accumulating pass 2 over the steps gives H2O's heavy-hitter scores.
#ifndef ATTEND_SINK_STATS_HPP_
#define ATTEND_SINK_STATS_HPP_

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "forward.hpp"

namespace attend::sink {

/// Optional outputs of attention_stats / column_stats: every non-empty view is written.
/// Row statistics are [batch, heads_q, seq_q]; column statistics [batch, heads_q, seq_k].
struct stats_outputs {
  /// Entropy of each row's attention distribution, -sum_j p_ij log p_ij in nats, the learnable
  /// sink (if any) counted as one more outcome; 0 for a row that sees nothing.
  view3<float> entropy{};
  /// Mass each row puts on the keys at positions < sink_tokens (StreamingLLM's sink score).
  view3<float> sink_token_mass{};
  /// Mass each row gives the learnable sink logit, exp(sigma_h - lse) (0 without sinks).
  view3<float> sink_logit_mass{};
  /// Column sums: the attention mass key j receives, sum_i P_ij.
  view3<float> col_sum{};
  /// The number of queries that see key j (masked or -inf scores do not count).
  view3<float> col_count{};
  /// col_sum / col_count, the mean attention key j receives from the queries that see it
  /// (0 where no query sees it). ACT's detection statistic.
  view3<float> col_mean{};
  /// Query heads whose column statistics are computed (others are left untouched); empty = all.
  view1<const index_t> col_heads{};
  /// Keys counted by sink_token_mass: positions [0, sink_tokens). Default: StreamingLLM's 4.
  index_t sink_tokens = 4;
  /// Add to col_sum / col_count instead of overwriting them (running sums over decode steps,
  /// H2O). col_mean then needs both col_sum and col_count.
  bool accumulate = false;

  bool wants_rows() const noexcept {
    return entropy.has_value() || sink_token_mass.has_value() || sink_logit_mass.has_value();
  }
  bool wants_columns() const noexcept {
    return col_sum.has_value() || col_count.has_value() || col_mean.has_value();
  }
};

namespace detail {

/// Row statistics policy (engine protocol + the store of row_stats_forward): accumulator 0 is
/// t = sum p s (entropy), accumulator 1 the mass on positions < sink_tokens.
struct entropy_stats {
  static constexpr bool is_identity = false;
  static constexpr int accumulators = 2;
  index_t sink_tokens = 4;
  view3<float> entropy{}, token_mass{}, logit_mass{};

  template <class Arch>
  ATTEND_INLINE void visit(float* acc, index_t ld, const index_t* kpos, index_t j, index_t r,
                           simd::vfloat<Arch> s, simd::vfloat<Arch> p) const noexcept {
    using V = simd::vfloat<Arch>;
    const V zero(0.0f);
    // p s with p = 0 where s = -inf (masked): 0 * -inf would be NaN.
    (V::load_aligned(acc + r) + xsimd::select(p > zero, p * s, zero)).store_aligned(acc + r);
    if (kpos[j] < sink_tokens) (V::load_aligned(acc + ld + r) + p).store_aligned(acc + ld + r);
  }

  void store(const engine::row_ctx& c, const float* mean, float lse_keys, float sigma,
             float lse) const noexcept {
    const bool has_sink = sigma != engine::neg_inf;
    const float w = lse_keys == engine::neg_inf ? 0.0f : std::exp(lse_keys - lse);  // key mass
    const float p_sink = has_sink ? std::exp(sigma - lse) : 0.0f;
    if (entropy.has_value()) {
      const float expected = w * mean[0] + (has_sink ? p_sink * sigma : 0.0f);
      entropy(c.batch, c.head, c.query) =
          lse == engine::neg_inf ? 0.0f : std::max(0.0f, lse - expected);
    }
    if (token_mass.has_value()) token_mass(c.batch, c.head, c.query) = w * mean[1];
    if (logit_mass.has_value()) logit_mass(c.batch, c.head, c.query) = p_sink;
  }
};

/// Records every score the forward computes, s_ij, into a [batch, heads_q, seq_q, seq_k] buffer
/// (pre-filled with -inf: keys in skipped tiles stay -inf). Decode only (seq_q <= 16): a row of
/// seq_k floats per query, never the N x N matrix of a prefill. Bound per row block to a table of
/// each block row's offset in the buffer (-1 for padding rows).
struct score_recorder {
  static constexpr bool is_identity = false;
  static constexpr int accumulators = 0;
  float* scores = nullptr;
  index_t heads_q = 0, seq_q = 0, seq_k = 0;
  const index_t* row_off = nullptr;

  score_recorder bound(const engine::row_block& rb, index_t* table, index_t len) const noexcept {
    score_recorder r = *this;
    for (index_t i = 0; i < len; ++i)
      table[i] = i < rb.rows()
                     ? ((rb.batch * heads_q + rb.head_of(i)) * seq_q + rb.query_of(i)) * seq_k
                     : -1;
    r.row_off = table;
    return r;
  }

  template <class Arch>
  ATTEND_INLINE void visit(float*, index_t, const index_t* kpos, index_t j, index_t r,
                           simd::vfloat<Arch> s, simd::vfloat<Arch>) const noexcept {
    constexpr index_t w = simd::lanes<Arch>;
    alignas(64) float sv[w];
    s.store_aligned(sv);
    const index_t key = kpos[j];
    for (index_t i = 0; i < w; ++i)
      if (row_off[r + i] >= 0) scores[row_off[r + i] + key] = sv[i];
  }

  void store(const engine::row_ctx&, const float*, float, float, float) const noexcept {}
};

/// Validates the stats outputs against the problem's sizes.
template <class TQ, class TK>
void validate_stats_outputs(const char* op, const view4<TQ>& q, const view4<TK>& k,
                            const stats_outputs& s) {
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t seq_k = k.extent(1);
  auto row = [&](const char* name, const view3<float>& v) {
    if (!v.has_value()) return;
    attend::detail::check_output(op, name, v);
    attend::detail::check_extents(op, name, v, {batch, heads_q, seq_q});
    attend::detail::check_disjoint(op, name, v, "q", q);
    attend::detail::check_disjoint(op, name, v, "k", k);
  };
  auto col = [&](const char* name, const view3<float>& v) {
    if (!v.has_value()) return;
    attend::detail::check_output(op, name, v);
    attend::detail::check_extents(op, name, v, {batch, heads_q, seq_k});
    attend::detail::check_disjoint(op, name, v, "q", q);
    attend::detail::check_disjoint(op, name, v, "k", k);
  };
  row("entropy", s.entropy);
  row("sink_token_mass", s.sink_token_mass);
  row("sink_logit_mass", s.sink_logit_mass);
  col("col_sum", s.col_sum);
  col("col_count", s.col_count);
  col("col_mean", s.col_mean);
  attend::detail::check_disjoint(op, "col_sum", s.col_sum, "col_count", s.col_count);
  attend::detail::check_disjoint(op, "col_sum", s.col_sum, "col_mean", s.col_mean);
  attend::detail::check_disjoint(op, "col_count", s.col_count, "col_mean", s.col_mean);
  ATTEND_CHECK(s.sink_tokens >= 0, op, ": sink_tokens (", s.sink_tokens, ") must be >= 0");
  if (s.col_heads.has_value()) {
    attend::detail::check_tensor(op, "col_heads", s.col_heads);
    for (index_t i = 0; i < s.col_heads.extent(0); ++i)
      ATTEND_CHECK(s.col_heads(i) >= 0 && s.col_heads(i) < heads_q, op, ": col_heads[", i,
                   "] = ", s.col_heads(i), " is outside [0, heads_q = ", heads_q, ")");
  }
  if (s.accumulate && s.col_mean.has_value())
    ATTEND_CHECK(s.col_sum.has_value() && s.col_count.has_value(), op,
                 ": accumulate with col_mean needs col_sum and col_count (the running sums)");
}

/// Checks q, k, an input lse and the score/mask options of p for a pass-2-only call.
template <class KV>
void validate_columns(const char* op, const view4<const float>& q, const view4<const KV>& k,
                      const view3<const float>& lse, const attention_params& p) {
  attend::detail::check_tensor(op, "q", q);
  attend::detail::check_tensor(op, "k", k);
  attend::detail::check_tensor(op, "lse", lse);
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t seq_k = k.extent(1), heads_kv = k.extent(2);
  ATTEND_CHECK(k.extent(0) == batch, op, ": batch of q (", batch, ") and k (", k.extent(0),
               ") differ");
  ATTEND_CHECK(heads_q % heads_kv == 0, op, ": q heads (", heads_q,
               ") must be a multiple of kv heads (", heads_kv, ")");
  ATTEND_CHECK(k.extent(3) == q.extent(3), op, ": head dim of k (", k.extent(3),
               ") must equal that of q (", q.extent(3), ")");
  attend::detail::check_extents(op, "lse", lse, {batch, heads_q, seq_q});
  if (p.scale) ATTEND_CHECK(std::isfinite(*p.scale), op, ": scale must be finite (", *p.scale, ")");
  ATTEND_CHECK(p.window_left >= -1 && p.window_right >= -1, op, ": window (", p.window_left, ", ",
               p.window_right, ") must be >= 0, or -1 for unbounded");
  ATTEND_CHECK(std::isfinite(p.softcap) && p.softcap >= 0.0f, op, ": softcap (", p.softcap,
               ") must be finite and >= 0");
  if (p.alibi_slopes.has_value()) {
    attend::detail::check_tensor(op, "alibi_slopes", p.alibi_slopes);
    attend::detail::check_extents(op, "alibi_slopes", p.alibi_slopes, {heads_q});
  }
  if (p.bias.has_value())
    attend::detail::check_broadcast4(op, "bias", p.bias, batch, heads_q, seq_q, seq_k);
  if (p.mask.has_value())
    attend::detail::check_broadcast4(op, "mask", p.mask, batch, heads_q, seq_q, seq_k);
  if (p.kv_lens.has_value()) {
    attend::detail::check_tensor(op, "kv_lens", p.kv_lens);
    attend::detail::check_extents(op, "kv_lens", p.kv_lens, {batch});
    for (index_t b = 0; b < batch; ++b)
      ATTEND_CHECK(p.kv_lens(b) >= 0 && p.kv_lens(b) <= seq_k, op, ": kv_lens[", b,
                   "] = ", p.kv_lens(b), " is outside [0, seq_k = ", seq_k, "]");
  }
}

/// head_on[h] != 0 for the listed heads (all when the list is empty).
inline std::vector<char> head_selection(const view1<const index_t>& heads, index_t heads_q) {
  std::vector<char> on(static_cast<std::size_t>(heads_q), heads.has_value() ? 0 : 1);
  if (heads.has_value())
    for (index_t i = 0; i < heads.extent(0); ++i) on[heads(i)] = 1;
  return on;
}

/// Pass 2 with the outputs of s (col_mean from the sums and counts, using scratch buffers for
/// whichever of those the caller did not ask for). Inputs validated.
template <class Arch, index_t DK, class KV, class Variant>
void columns_and_mean(const view4<const float>& q, const view4<const KV>& k,
                      const view3<const float>& lse, const index_t* lens, float scale,
                      const Variant& var, const stats_outputs& s, workspace* scratch) {
  const index_t batch = q.extent(0), heads_q = q.extent(2), seq_k = k.extent(1);
  const std::vector<char> on = head_selection(s.col_heads, heads_q);
  view3<float> sum = s.col_sum, count = s.col_count;
  std::vector<float> sum_buf, count_buf;
  if (s.col_mean.has_value() && !sum.has_value()) {
    sum_buf.assign(static_cast<std::size_t>(batch * heads_q * seq_k), 0.0f);
    sum = view3<float>::contiguous(sum_buf.data(), {batch, heads_q, seq_k});
  }
  if (s.col_mean.has_value() && !count.has_value()) {
    count_buf.assign(static_cast<std::size_t>(batch * heads_q * seq_k), 0.0f);
    count = view3<float>::contiguous(count_buf.data(), {batch, heads_q, seq_k});
  }
  column_forward<Arch, DK>(q, k, lse, lens, scale, var, on, sum, count, s.accumulate, scratch);
  if (!s.col_mean.has_value()) return;
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < heads_q; ++h) {
      if (!on[h]) continue;
      for (index_t j = 0; j < seq_k; ++j) {
        const float n = count(b, h, j);
        s.col_mean(b, h, j) = n > 0.0f ? sum(b, h, j) / n : 0.0f;
      }
    }
}

template <class Arch, class KV>
void stats_dispatch(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                    const view4<float>& o, const attention_params& p, const stats_outputs& s) {
  const engine::standard_mask mask = attend::detail::make_mask(p);
  const engine::sink_logits sink{p.sinks.has_value() ? p.sinks.data() : nullptr};
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = attend::detail::resolve_scale(p, q.extent(3));
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  view3<float> lse = p.lse;
  std::vector<float> lse_buf;
  if (!lse.has_value() && s.wants_columns()) {
    lse_buf.assign(static_cast<std::size_t>(batch * heads_q * seq_q), 0.0f);
    lse = view3<float>::contiguous(lse_buf.data(), {batch, heads_q, seq_q});
  }
  attend::detail::dispatch_head_dims(q.extent(3), v.extent(3), [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    with_score_mod(p, [&](auto score) {
      if (s.wants_rows()) {
        entropy_stats st{s.sink_tokens, s.entropy, s.sink_token_mass, s.sink_logit_mass};
        row_stats_forward<Arch, DK, DV>(q, k, v, o, lse, lens, scale, score, mask, sink,
                                        engine::no_key_transform{}, st, p.scratch);
      } else {
        attend::detail::dense_forward<Arch, DK, DV>(
            q, k, v, o, lse, lens, scale, engine::make_variant(score, mask, sink), p.scratch);
      }
      if (s.wants_columns())
        columns_and_mean<Arch, DK>(q, k, lse, lens, scale, engine::make_variant(score, mask), s,
                                   p.scratch);
    });
  });
}

}  // namespace detail

/// Attention plus statistics: o and (if p.lse is set) the LSE exactly as attend::attention
/// writes them, and every statistic requested in s (see stats_outputs), by the two-pass LSE
/// method: pass 1 is the forward with the row-statistics hook, pass 2 (only when column
/// statistics are requested) recomputes the scores tile by tile without P V.
///
/// \param q [batch, seq_q, heads_q, dk] float; k, v [batch, seq_k, heads_kv, dk / dv] float,
///        bf16 or fp16; o [batch, seq_q, heads_q, dv] float output
/// \param p every option of attention_params (causal, window, softcap, ALiBi, bias, mask, sinks,
///        kv_lens, lse output, scratch)
/// Cost: pass 1 is one forward (a few percent more with row statistics); pass 2 is about one
/// more Q K^T with no P V. Throws attend::invalid_argument before any work on bad shapes.
template <class TQ, class TK, class TV>
void attention_stats(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                     const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                     const attention_params& p, const stats_outputs& s) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::attention_stats";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attend::detail::validate_attention(op, qc, kc, vc, o, p);
  detail::validate_stats_outputs(op, qc, kc, s);
  for (const view3<float>* out : {&s.entropy, &s.sink_token_mass, &s.sink_logit_mass, &s.col_sum,
                                  &s.col_count, &s.col_mean}) {
    attend::detail::check_disjoint(op, "a statistics output", *out, "o", o);
    attend::detail::check_disjoint(op, "a statistics output", *out, "v", vc);
    attend::detail::check_disjoint(op, "a statistics output", *out, "lse", p.lse);
  }
  detail::stats_dispatch<xsimd::default_arch>(qc, kc, vc, o, p, s);
}

/// Pass 2 alone: the column statistics of s (col_sum, col_count, col_mean; row statistics are
/// ignored) for attention whose LSE is already known, e.g. from attend::attention with p.lse.
/// \param q [batch, seq_q, heads_q, dk]; k [batch, seq_k, heads_kv, dk]
/// \param lse [batch, heads_q, seq_q] the forward's LSE (sink included), same options p
/// Pass only the last query rows (q narrowed on axis 1, lse likewise) to get the attention of
/// the final positions, e.g. for Found-in-the-middle's document attention.
template <class TQ, class TK>
void column_stats(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                  const view3<const float>& lse, const attention_params& p,
                  const stats_outputs& s) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(is_storage_type_v<KV>, "k must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::column_stats";
  const view4<const float> qc = q;
  const view4<const KV> kc = k;
  detail::validate_columns(op, qc, kc, lse, p);
  detail::validate_stats_outputs(op, qc, kc, s);
  for (const view3<float>* out : {&s.col_sum, &s.col_count, &s.col_mean})
    attend::detail::check_disjoint(op, "a statistics output", *out, "lse", lse);
  using Arch = xsimd::default_arch;
  const engine::standard_mask mask = attend::detail::make_mask(p);
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = attend::detail::resolve_scale(p, q.extent(3));
  attend::detail::dispatch_head_dims(q.extent(3), q.extent(3), [&](auto kdk, auto) {
    constexpr index_t DK = decltype(kdk)::value;
    detail::with_score_mod(p, [&](auto score) {
      detail::columns_and_mean<Arch, DK>(qc, kc, lse, lens, scale,
                                         engine::make_variant(score, mask), s, p.scratch);
    });
  });
}

/// H2O: adds this step's attention to running heavy-hitter scores,
/// scores(b, h, j) += sum_i P_ij over the step's queries (and counts(b, h, j) += the number of
/// those queries that see key j, if given). Call after each decode step with the step's LSE.
/// \param scores, counts [batch, heads_q, seq_k] running sums (zero them before the prompt)
template <class TQ, class TK>
void accumulate_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                          const view3<const float>& lse, const attention_params& p,
                          const view3<float>& scores, const view3<float>& counts = {}) {
  stats_outputs s;
  s.col_sum = scores;
  s.col_count = counts;
  s.accumulate = true;
  column_stats(q, k, lse, p, s);
}

/// Decode with H2O's heavy-hitter scores as a by-product, in ONE pass over the cache: o (and
/// p.lse) exactly as attend::attention writes them, and
/// scores(b, h, j) += sum_i P_ij over the call's queries (counts(b, h, j) += the number of them
/// that see key j, if given). The forward's statistics hook records each score as the engine
/// computes it (a row of seq_k floats per query), and P = exp(s - lse) is formed after the
/// split-K merge, so K is read once (accumulate_attention reads it a second time).
/// \param q [batch, seq_q <= 16, heads_q, dk]; k, v [batch, seq_k, heads_kv, dk / dv]; o output
/// \param scores, counts [batch, heads_q, seq_k] running sums (zero them before the prompt,
///        e.g. with column_stats over the prompt's rows)
template <class TQ, class TK, class TV>
void attention_h2o(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                   const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                   const attention_params& p, const view3<float>& scores,
                   const view3<float>& counts = {}) {
  using KV = std::remove_const_t<TK>;
  using Arch = xsimd::default_arch;
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::attention_h2o";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attend::detail::validate_attention(op, qc, kc, vc, o, p);
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t seq_k = k.extent(1);
  ATTEND_CHECK(seq_q <= 16, op, ": seq_q (", seq_q, ") must be <= 16 (decode); use ",
               "accumulate_attention / column_stats for longer query blocks");
  stats_outputs s;
  s.col_sum = scores;
  s.col_count = counts;
  ATTEND_CHECK(scores.has_value(), op, ": scores is required");
  detail::validate_stats_outputs(op, qc, kc, s);
  for (const view3<float>* out : {&scores, &counts}) {
    attend::detail::check_disjoint(op, "scores / counts", *out, "o", o);
    attend::detail::check_disjoint(op, "scores / counts", *out, "v", vc);
    attend::detail::check_disjoint(op, "scores / counts", *out, "lse", p.lse);
  }
  std::vector<float> rec(static_cast<std::size_t>(batch * heads_q * seq_q * seq_k),
                         engine::neg_inf),
      lse_buf;
  view3<float> lse = p.lse;
  if (!lse.has_value()) {
    lse_buf.resize(static_cast<std::size_t>(batch * heads_q * seq_q));
    lse = view3<float>::contiguous(lse_buf.data(), {batch, heads_q, seq_q});
  }
  const detail::score_recorder recorder{rec.data(), heads_q, seq_q, seq_k, nullptr};
  const engine::standard_mask mask = attend::detail::make_mask(p);
  const engine::sink_logits sink{p.sinks.has_value() ? p.sinks.data() : nullptr};
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = attend::detail::resolve_scale(p, q.extent(3));
  attend::detail::dispatch_head_dims(q.extent(3), v.extent(3), [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    detail::with_score_mod(p, [&](auto score) {
      detail::row_stats_forward<Arch, DK, DV>(qc, kc, vc, o, lse, lens, scale, score, mask, sink,
                                              engine::no_key_transform{}, recorder, p.scratch);
    });
  });
  // P = exp(s - lse), summed over the queries in order (deterministic).
  const int threads =
      batch * heads_q * seq_k >= (index_t{1} << 16) ? attend::detail::max_threads() : 1;
  attend::detail::parallel_for(batch * heads_q, threads, [&](index_t bh, int) {
    const index_t b = bh / heads_q, h = bh % heads_q;
    const index_t len = lens ? lens[b] : seq_k;
    float* dst = &scores(b, h, 0);
    float* cnt = counts.has_value() ? &counts(b, h, 0) : nullptr;
    for (index_t i = 0; i < seq_q; ++i) {
      const float l = lse(b, h, i);
      if (l == engine::neg_inf) continue;
      const float* src = rec.data() + ((b * heads_q + h) * seq_q + i) * seq_k;
      const V vl(l), one(1.0f), zero(0.0f), ninf(engine::neg_inf);
      index_t j = 0;
      for (; j + w <= len; j += w) {
        const V sv = V::load_unaligned(src + j);
        (V::load_unaligned(dst + j) + simd::exp<Arch>(sv - vl)).store_unaligned(dst + j);
        if (cnt)
          (V::load_unaligned(cnt + j) + xsimd::select(sv > ninf, one, zero))
              .store_unaligned(cnt + j);
      }
      for (; j < len; ++j) {
        dst[j] += src[j] == engine::neg_inf ? 0.0f : std::exp(src[j] - l);
        if (cnt) cnt[j] += src[j] > engine::neg_inf;
      }
    }
  });
}

/// H2O's keep set for one head: the `recent` most recent keys plus the `heavy` keys with the
/// largest accumulated scores among the older ones (ties: the earlier key). Returns ascending
/// positions in [0, length). scores has `length` entries.
inline std::vector<index_t> heavy_hitter_keep(const float* scores, index_t length, index_t heavy,
                                              index_t recent) {
  ATTEND_CHECK(length >= 0 && heavy >= 0 && recent >= 0,
               "attend::sink::heavy_hitter_keep: ", "length (", length, "), heavy (", heavy,
               ") and recent (", recent, ") must be >= 0");
  const index_t old = std::max<index_t>(0, length - recent);
  std::vector<index_t> idx(static_cast<std::size_t>(old));
  std::iota(idx.begin(), idx.end(), index_t{0});
  const index_t take = std::min(heavy, old);
  std::partial_sort(idx.begin(), idx.begin() + take, idx.end(), [&](index_t a, index_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  });
  idx.resize(static_cast<std::size_t>(take));
  for (index_t j = old; j < length; ++j) idx.push_back(j);
  std::sort(idx.begin(), idx.end());
  return idx;
}

/// Per-head means of a row statistic (entropy, sink mass) over every batch element and query
/// whose lse is finite (rows that see no key are skipped; a head without such rows gets 0).
/// \param stat, lse [batch, heads_q, seq_q]; means [heads_q] output
inline void head_means(const view3<const float>& stat, const view3<const float>& lse,
                       const view1<float>& means) {
  constexpr const char* op = "attend::sink::head_means";
  attend::detail::check_tensor(op, "stat", stat);
  attend::detail::check_extents(op, "lse", lse, stat.extents());
  attend::detail::check_output(op, "means", means);
  attend::detail::check_extents(op, "means", means, {stat.extent(1)});
  for (index_t h = 0; h < stat.extent(1); ++h) {
    double sum = 0.0;
    index_t n = 0;
    for (index_t b = 0; b < stat.extent(0); ++b)
      for (index_t i = 0; i < stat.extent(2); ++i)
        if (lse(b, h, i) != engine::neg_inf) {
          sum += stat(b, h, i);
          ++n;
        }
    means(h) = n ? static_cast<float>(sum / double(n)) : 0.0f;
  }
}

}  // namespace attend::sink

#endif  // ATTEND_SINK_STATS_HPP_
