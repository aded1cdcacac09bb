// DuoAttention (Xiao et al., ICLR 2025; card 11 of LINEAR_SINK.md): KV heads are either
// retrieval heads (full attention over the whole cache) or streaming heads (attention sinks plus
// a recent window, mask j <= i and (j < sink or i - j < recent), deploy defaults 64 / 256).
// Positions are the original ones (RoPE applied before caching, never re-indexed).
//
// One call runs both kinds in one parallel region. Dispatch is per row block, never per element:
// the KV heads are cut into runs of one kind, each run gets the dense driver's row blocks (and
// decode key splits) with that kind's mask (full causal, or sink + window whose gap tiles are
// classified empty and never loaded), so a streaming head reads sink + recent keys whatever the
// cache length and no inner loop branches on the kind.
// The head classification helpers turn trained gate values alpha into kinds as the reference's
// sparsify_attention_heads does (threshold, or a target sparsity quantile).
#ifndef ATTEND_SINK_DUO_HPP_
#define ATTEND_SINK_DUO_HPP_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "forward.hpp"
#include "masks.hpp"

namespace attend::sink {

/// Options of duo_attention.
struct duo_params {
  /// [heads_kv]: nonzero = streaming head (sink + recent), 0 = retrieval head (full).
  view1<const std::uint8_t> streaming{};
  /// Sink tokens of streaming heads (deploy default 64).
  index_t sink = 64;
  /// Recent window of streaming heads (deploy default 256).
  index_t recent = 256;
};

/// What DuoAttention saves against full attention at this call's shape.
struct duo_report {
  index_t streaming_heads = 0, retrieval_heads = 0;
  /// K + V bytes a cache needs with every head full, and with streaming heads compacted to
  /// their sink + recent tokens (DuoAttention's separate streaming cache).
  double kv_bytes_full = 0.0, kv_bytes_duo = 0.0;
  /// 1 - kv_bytes_duo / kv_bytes_full.
  double memory_saved = 0.0;
  /// (query row, key) pairs attended with every head full and with DuoAttention (causal /
  /// window bounds of the call counted; a boolean mask is not).
  double pairs_full = 0.0, pairs_duo = 0.0;
  /// 1 - pairs_duo / pairs_full: the fraction of attention work (and, for decode, of K/V
  /// reads) the streaming heads skip.
  double work_saved = 0.0;
};

/// Head kinds from gate values by threshold: alpha >= threshold is a retrieval head (0), below
/// a streaming head (1). alpha may hold every layer's KV heads, flattened (default 0.5 as the
/// reference).
inline std::vector<std::uint8_t> classify_heads_threshold(const view1<const float>& alpha,
                                                          float threshold = 0.5f) {
  attend::detail::check_tensor("attend::sink::classify_heads_threshold", "alpha", alpha);
  std::vector<std::uint8_t> kind(static_cast<std::size_t>(alpha.extent(0)));
  for (index_t i = 0; i < alpha.extent(0); ++i) kind[i] = alpha(i) >= threshold ? 0 : 1;
  return kind;
}

/// Head kinds from gate values by a target sparsity (the fraction of streaming heads, over
/// all entries of alpha, e.g. every layer's KV heads flattened): the threshold is the
/// `sparsity` quantile of alpha (linear interpolation, as numpy.quantile) and heads below it
/// stream. The reference adds noise in [0, 1e-6) to break ties; here ties break by index (the
/// earlier head counts as smaller), so the count of streaming heads is
/// ceil(sparsity * (n - 1)) for 0 < sparsity < 1, none for sparsity <= 0, all for >= 1.
inline std::vector<std::uint8_t> classify_heads_sparsity(const view1<const float>& alpha,
                                                         double sparsity) {
  attend::detail::check_tensor("attend::sink::classify_heads_sparsity", "alpha", alpha);
  ATTEND_CHECK(std::isfinite(sparsity), "attend::sink::classify_heads_sparsity: sparsity (",
               sparsity, ") must be finite");
  const index_t n = alpha.extent(0);
  std::vector<std::uint8_t> kind(static_cast<std::size_t>(n), 0);
  index_t streaming = 0;
  if (sparsity >= 1.0)
    streaming = n;
  else if (sparsity > 0.0)
    streaming = static_cast<index_t>(std::ceil(sparsity * double(n - 1) - 1e-12));
  std::vector<index_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), index_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](index_t a, index_t b) { return alpha(a) < alpha(b); });
  for (index_t i = 0; i < streaming; ++i) kind[order[i]] = 1;
  return kind;
}

namespace detail {

/// attention_params restricted to query heads [h0, h0 + n) (per-head options narrowed).
inline attention_params params_for_heads(const attention_params& p, index_t h0, index_t n) {
  attention_params r = p;
  if (p.alibi_slopes.has_value()) r.alibi_slopes = p.alibi_slopes.narrow(0, h0, n);
  if (p.sinks.has_value()) r.sinks = p.sinks.narrow(0, h0, n);
  if (p.bias.has_value() && p.bias.extent(1) != 1) r.bias = p.bias.narrow(1, h0, n);
  if (p.mask.has_value() && p.mask.extent(1) != 1) r.mask = p.mask.narrow(1, h0, n);
  if (p.lse.has_value()) r.lse = p.lse.narrow(1, h0, n);
  return r;
}

/// Number of keys in [0, len) a query at position pos sees under the band of p (causal /
/// window), and under the band intersected with a streaming head's sinks + recent window.
inline void visible_keys(const attention_params& p, index_t pos, index_t len, index_t sink,
                         index_t recent, double& full, double& duo) {
  const engine::standard_mask m = attend::detail::make_mask(p);
  index_t lo = 0, hi = len;  // [lo, hi)
  if (m.left >= 0) lo = std::max(lo, pos - m.left);
  if (m.right >= 0) hi = std::min(hi, pos + m.right + 1);
  const index_t band = std::max<index_t>(0, hi - lo);
  full = double(band);
  auto overlap = [&](index_t a, index_t b) {  // |[a, b) ∩ [lo, hi)|
    return std::max<index_t>(0, std::min(b, hi) - std::max(a, lo));
  };
  const index_t top = std::min(pos + 1, len);  // streaming heads are causal
  const index_t s_end = std::min(sink, top);
  const index_t w_begin = std::max(s_end, pos - recent + 1);
  duo = double(overlap(0, s_end) + overlap(w_begin, top));
}

template <class KV>
duo_report duo_account(const view4<const float>& q, const view4<const KV>& k,
                       const view4<const KV>& v, const attention_params& p, const duo_params& d) {
  duo_report r;
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t heads_kv = k.extent(2), group = heads_q / heads_kv;
  const double row_bytes = double(k.extent(3) + v.extent(3)) * double(sizeof(KV));
  for (index_t h = 0; h < heads_kv; ++h) (d.streaming(h) ? r.streaming_heads : r.retrieval_heads)++;
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = p.kv_lens.has_value() ? p.kv_lens(b) : k.extent(1);
    const double kept = double(std::min(len, d.sink + d.recent));
    r.kv_bytes_full += double(heads_kv) * double(len) * row_bytes;
    r.kv_bytes_duo +=
        (double(r.retrieval_heads) * double(len) + double(r.streaming_heads) * kept) * row_bytes;
    for (index_t i = 0; i < seq_q; ++i) {
      double full = 0, duo = 0;
      visible_keys(p, len - seq_q + i, len, d.sink, d.recent, full, duo);
      r.pairs_full += double(heads_kv * group) * full;
      r.pairs_duo +=
          double(group) * (double(r.retrieval_heads) * full + double(r.streaming_heads) * duo);
    }
  }
  r.memory_saved = r.kv_bytes_full > 0 ? 1.0 - r.kv_bytes_duo / r.kv_bytes_full : 0.0;
  r.work_saved = r.pairs_full > 0 ? 1.0 - r.pairs_duo / r.pairs_full : 0.0;
  return r;
}

/// The score modifier of (narrowed) options as the type Score chosen for the whole call.
template <class Score>
Score score_of(const attention_params& p) {
  if constexpr (std::is_same_v<Score, engine::standard_score_mod>)
    return attend::detail::make_score_mod(p);
  else
    return Score{};
}

/// One parallel region for every kind: the KV heads are cut into runs of one kind; each run has
/// the dense driver's row blocks (and, for decode, its key splits) and its own variant, chosen
/// per row block. Retrieval runs' (heavy) items come first. Split-K partial states of all runs
/// are merged in one more region, in split order, as the dense driver does.
template <class Arch, index_t DK, index_t DV, class KV, class Score>
void duo_forward(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                 const view4<float>& o, const attention_params& p, const duo_params& d) {
  using scratch_t = engine::scratch<Arch, KV>;
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t dk = q.extent(3), seq_k = k.extent(1), heads_kv = k.extent(2), dv = v.extent(3);
  const index_t group = heads_q / heads_kv;
  const float scale = attend::detail::resolve_scale(p, dk);
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const index_t max_rows = engine::max_rows_for(dk, dv);
  const index_t split = attend::detail::decode_split_length(seq_q, seq_k);
  const index_t splits = split ? (seq_k + split - 1) / split : 1;

  struct run {
    index_t h0 = 0, n = 0;
    bool streaming = false;
    attention_params p;
    block_geometry geo;
    index_t first = 0, items = 0;
  };
  std::vector<run> runs;
  for (int kind = 0; kind < 2; ++kind)  // retrieval runs first
    for (index_t h0 = 0; h0 < heads_kv;) {
      const bool streaming = d.streaming(h0) != 0;
      index_t h1 = h0 + 1;
      while (h1 < heads_kv && (d.streaming(h1) != 0) == streaming) ++h1;
      if (streaming == (kind == 1)) {
        run r;
        r.h0 = h0;
        r.n = h1 - h0;
        r.streaming = streaming;
        r.p = params_for_heads(p, h0 * group, r.n * group);
        r.geo = block_geometry::make<Arch>(batch, seq_q, r.n * group, r.n, max_rows);
        r.first = runs.empty() ? 0 : runs.back().first + runs.back().items;
        r.items = r.geo.groups * r.geo.query_tiles * splits;
        runs.push_back(r);
      }
      h0 = h1;
    }
  using full_var =
      decltype(engine::make_variant(Score{}, engine::standard_mask{}, engine::sink_logits{}));
  using stream_var = decltype(engine::make_variant(
      Score{}, intersect(sink_window_mask{}, engine::standard_mask{}), engine::sink_logits{}));
  std::vector<full_var> full;
  std::vector<stream_var> stream;
  for (const run& r : runs) {
    const Score score = score_of<Score>(r.p);
    const engine::standard_mask mask = attend::detail::make_mask(r.p);
    const engine::sink_logits sink{r.p.sinks.has_value() ? r.p.sinks.data() : nullptr};
    full.push_back(engine::make_variant(score, mask, sink));
    stream.push_back(
        engine::make_variant(score, intersect(sink_window_mask{d.sink, d.recent}, mask), sink));
  }
  const index_t items = runs.back().first + runs.back().items;

  const int threads = attend::detail::max_threads();
  const index_t per_thread = scratch_t::floats(max_rows, dk, dv);
  const index_t partial_row = dv + 1;
  const index_t partial_floats = splits > 1 ? batch * heads_q * seq_q * splits * partial_row : 0;
  workspace local;
  workspace& ws = p.scratch ? *p.scratch : local;
  float* const base = ws.reserve(per_thread * threads + partial_floats);
  float* const partial = base + per_thread * threads;
  auto length_of = [&](index_t b) { return lens ? lens[b] : seq_k; };

  attend::detail::parallel_for(items, threads, [&](index_t item, int t) {
    std::size_t ri = 0;
    while (item >= runs[ri].first + runs[ri].items) ++ri;
    const run& r = runs[ri];
    const index_t local = item - r.first;
    const index_t s = local % splits, rest = local / splits;
    const index_t g = rest % r.geo.groups;
    const index_t tile = r.geo.query_tiles - 1 - rest / r.geo.groups;  // heaviest causal first
    const auto qn = q.narrow(2, r.h0 * group, r.n * group);
    const auto on = o.narrow(2, r.h0 * group, r.n * group);
    const engine::problem<KV> pb{qn, scale, dk, dv};
    engine::dense_keys<KV> keys{k.narrow(2, r.h0, r.n), v.narrow(2, r.h0, r.n), lens};
    if (splits > 1) {
      keys.begin = s * split;
      keys.end = keys.begin + split;
    }
    const engine::row_block rb =
        r.geo.block(g, tile, length_of(g / (r.geo.kv_chunks * r.geo.head_chunks)));
    attend::detail::bump carve(base + t * per_thread);
    const scratch_t sc = scratch_t::carve(carve, max_rows, dk, dv);
    auto go = [&](const auto& var) {
      engine::run_rows<Arch, DK, DV>(
          pb, rb, keys, var, sc, [&](index_t, const engine::row_ctx& ctx, float* row, float l) {
            if (splits == 1) {
              engine::finish_row<Arch>(var, ctx, row, l, dv, on, r.p.lse);
              return;
            }
            const index_t h = r.h0 * group + ctx.head;
            float* dst = partial + (((ctx.batch * heads_q + h) * seq_q + ctx.query) * splits + s) *
                                       partial_row;
            std::copy(row, row + dv, dst);
            dst[dv] = l;
          });
    };
    if (r.streaming)
      go(stream[ri]);
    else
      go(full[ri]);
  });
  if (splits == 1) return;
  const full_var whole =
      engine::make_variant(score_of<Score>(p), attend::detail::make_mask(p),
                           engine::sink_logits{p.sinks.has_value() ? p.sinks.data() : nullptr});
  attend::detail::parallel_for(batch * heads_q * seq_q, threads, [&](index_t row, int) {
    float* acc = partial + row * splits * partial_row;
    float acc_lse = acc[dv];
    for (index_t s = 1; s < splits; ++s) {
      const float* st = acc + s * partial_row;
      engine::merge_state<Arch>(acc, acc_lse, st, st[dv], dv);
    }
    const index_t b = row / (heads_q * seq_q), h = (row / seq_q) % heads_q, i = row % seq_q;
    engine::finish_row<Arch>(whole, engine::row_ctx{b, h, i, length_of(b) - seq_q + i}, acc,
                             acc_lse, dv, o, p.lse);
  });
}

template <class Arch, class KV>
void duo_dispatch(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                  const view4<float>& o, const attention_params& p, const duo_params& d) {
  attend::detail::dispatch_head_dims(q.extent(3), v.extent(3), [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    if (attend::detail::has_score_mod(p))
      duo_forward<Arch, DK, DV, KV, engine::standard_score_mod>(q, k, v, o, p, d);
    else
      duo_forward<Arch, DK, DV, KV, engine::no_score_mod>(q, k, v, o, p, d);
  });
}

}  // namespace detail

/// DuoAttention in one call: retrieval KV heads attend to every key the options of p allow,
/// streaming KV heads to the keys j <= i with j < sink or i - j < recent (in positions,
/// bottom-right aligned as everywhere), intersected with p's window / mask.
///
/// \param q [batch, seq_q, heads_q, dk] float; k, v [batch, seq_k, heads_kv, dk / dv] float,
///        bf16 or fp16 (one cache for both kinds); o [batch, seq_q, heads_q, dv] float output
/// \param d streaming flags per KV head ([heads_kv]), sink and recent sizes
/// \param p every option of attention_params (causal is the method's setting; sinks, softcap,
///        lse, kv_lens, ...)
/// Returns the memory and work saved (duo_report). Throws attend::invalid_argument on bad
/// shapes or sizes, before any work.
template <class TQ, class TK, class TV>
duo_report duo_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                         const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                         const duo_params& d, const attention_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::duo_attention";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attend::detail::validate_attention(op, qc, kc, vc, o, p);
  attend::detail::check_tensor(op, "streaming", d.streaming);
  attend::detail::check_extents(op, "streaming", d.streaming, {k.extent(2)});
  ATTEND_CHECK(d.sink >= 0 && d.recent >= 1, op, ": sink (", d.sink, ") must be >= 0 and recent (",
               d.recent, ") >= 1");
  detail::duo_dispatch<xsimd::default_arch>(qc, kc, vc, o, p, d);
  return detail::duo_account(qc, kc, vc, p, d);
}

}  // namespace attend::sink

#endif  // ATTEND_SINK_DUO_HPP_
