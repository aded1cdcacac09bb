// Dense softmax attention: prefill (query tiles x all keys) and decode (split-K over the keys,
// merged by LSE), both run by the one engine of engine/flash.hpp.
#ifndef ATTEND_DENSE_ATTENTION_HPP_
#define ATTEND_DENSE_ATTENTION_HPP_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>

#include "../core/parallel.hpp"
#include "../core/params.hpp"
#include "../core/validate.hpp"
#include "../engine/driver.hpp"
#include "../engine/flash.hpp"
#include "../engine/key_sources.hpp"
#include "../engine/masks.hpp"
#include "../engine/row_mods.hpp"
#include "../engine/score_mods.hpp"

namespace attend {
namespace detail {

/// Split-K decode: when a call has at most 16 queries, the keys are cut into splits of this many
/// keys (0 = no split). It depends on the lengths only, never on the thread count, so results
/// do not change with the number of threads.
inline index_t decode_split_length(index_t seq_q, index_t seq_k) noexcept {
  if (seq_q > 16 || seq_k < 1024) return 0;
  const index_t tile = 64;
  const index_t by_count = ((seq_k + 255) / 256 + tile - 1) / tile * tile;  // at most 256 splits
  return std::max<index_t>(512, by_count);
}

// {0, ATTEND_FAST_HEAD_DIMS}: the leading 0 keeps the list valid when the macro is empty.
inline constexpr index_t fast_head_dims[] = {0, ATTEND_FAST_HEAD_DIMS};

template <class F, std::size_t... I>
void dispatch_head_dims(index_t dk, index_t dv, F&& f, std::index_sequence<I...>) {
  using std::integral_constant;
  const bool fast = dk == dv && ((dk == fast_head_dims[I + 1]
                                      ? (f(integral_constant<index_t, fast_head_dims[I + 1]>{},
                                           integral_constant<index_t, fast_head_dims[I + 1]>{}),
                                         true)
                                      : false) ||
                                 ...);
  if (!fast) f(integral_constant<index_t, 0>{}, integral_constant<index_t, 0>{});
}

/// Calls f(integral_constant<DK>, integral_constant<DV>) with compile-time head dims for the
/// fast paths (ATTEND_FAST_HEAD_DIMS, by default 64, 80, 96, 128, 256, with dk == dv) and 0
/// (run-time dims) otherwise.
template <class F>
void dispatch_head_dims(index_t dk, index_t dv, F&& f) {
  constexpr std::size_t n = sizeof(fast_head_dims) / sizeof(fast_head_dims[0]) - 1;
  dispatch_head_dims(dk, dv, std::forward<F>(f), std::make_index_sequence<n>{});
}

/// How the dense driver cuts a call into row blocks and, for decode, key splits. Drivers that
/// walk the same blocks with other passes (the sink family's statistics) use it too.
///
/// Decode-shaped calls (a KV head's rows fit half a register) put several KV heads in one block,
/// so a [batch, seq, heads, dim] cache is read token by token; otherwise a block is one KV
/// head's query heads (up to max_rows of them) times a query tile.
struct dense_blocks {
  index_t batch = 0, seq_q = 0, seq_k = 0, heads_q = 0, heads_kv = 0, group = 1;
  index_t max_rows = 0, kv_per_block = 1, heads_per_block = 1, queries_per_block = 1;
  index_t kv_chunks = 1, head_chunks = 1, query_tiles = 1, groups = 1;
  index_t split = 0, splits = 1;  // decode: keys per split (0 = none) and their number
  const index_t* kv_lens = nullptr;

  template <class Arch>
  static dense_blocks plan(index_t batch, index_t seq_q, index_t heads_q, index_t dk, index_t seq_k,
                           index_t heads_kv, index_t dv, const index_t* kv_lens) {
    dense_blocks p;
    p.batch = batch;
    p.seq_q = seq_q;
    p.seq_k = seq_k;
    p.heads_q = heads_q;
    p.heads_kv = heads_kv;
    p.group = heads_q / heads_kv;
    p.kv_lens = kv_lens;
    p.max_rows = engine::max_rows_for(dk, dv);
    const bool decode_shaped = engine::uses_dot_kernel<Arch>(p.group * seq_q);
    p.kv_per_block = decode_shaped
                         ? std::min(heads_kv, p.max_rows / engine::dot_rows_padded(p.group * seq_q))
                         : 1;
    p.heads_per_block = std::min(p.group, p.max_rows);
    p.queries_per_block = std::max<index_t>(1, p.max_rows / p.heads_per_block);
    p.kv_chunks = (heads_kv + p.kv_per_block - 1) / p.kv_per_block;
    p.head_chunks = (p.group + p.heads_per_block - 1) / p.heads_per_block;
    p.query_tiles = (seq_q + p.queries_per_block - 1) / p.queries_per_block;
    p.groups = batch * p.kv_chunks * p.head_chunks;
    p.split = decode_split_length(seq_q, seq_k);
    p.splits = p.split ? (seq_k + p.split - 1) / p.split : 1;
    return p;
  }

  index_t length(index_t b) const noexcept { return kv_lens ? kv_lens[b] : seq_k; }

  /// Row blocks of the call: `blocks()` of them, block i from `block(i)`, heaviest (last query
  /// tiles, for causal) first.
  index_t blocks() const noexcept { return groups * query_tiles; }
  engine::row_block block(index_t i) const noexcept {
    const index_t g = i % groups, tile = query_tiles - 1 - i / groups;
    engine::row_block rb;
    rb.batch = g / (kv_chunks * head_chunks);
    rb.kv_head = ((g / head_chunks) % kv_chunks) * kv_per_block;
    rb.kv_heads = std::min(kv_per_block, heads_kv - rb.kv_head);
    const index_t chunk = g % head_chunks;
    rb.group = group;
    rb.head0 = rb.kv_head * group + chunk * heads_per_block;
    rb.heads = std::min(heads_per_block, group - chunk * heads_per_block);
    rb.query0 = tile * queries_per_block;
    rb.queries = std::min(queries_per_block, seq_q - rb.query0);
    rb.pos0 = length(rb.batch) - seq_q + rb.query0;
    return rb;
  }
};

/// The dense call as engine::drive's Blocks: dense_blocks' row blocks over the contiguous
/// cache, each decode block cut into key splits of plan.split keys.
template <class KV>
struct dense_schedule {
  using keys_type = engine::dense_keys<KV>;
  dense_blocks plan;
  keys_type keys;

  index_t blocks() const noexcept { return plan.blocks(); }
  index_t splits() const noexcept { return plan.splits; }
  index_t max_rows() const noexcept { return plan.max_rows; }
  index_t position(index_t batch, index_t query) const noexcept {
    return plan.length(batch) - plan.seq_q + query;
  }
  bool setup(index_t block, index_t split, engine::row_block& rb, keys_type& k) const noexcept {
    rb = plan.block(block);
    k = keys;
    if (plan.splits > 1) {
      k.begin = split * plan.split;
      k.end = k.begin + plan.split;
    }
    return true;
  }
};

/// The dense driver behind attention() and every operator that is dense attention with other
/// hooks (sinks, gates, calibration): q [batch, seq_q, heads_q, dk], k/v [batch, seq_k, heads_kv,
/// dk/dv], o [batch, seq_q, heads_q, dv], lse optional [batch, heads_q, seq_q]. Inputs must be
/// validated. Prefill runs the row blocks of dense_blocks heaviest first; decode (seq_q <= 16,
/// long caches) splits the keys and merges the partial states in split order.
template <class Arch, index_t DK, index_t DV, class KV, class Variant>
void dense_forward(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                   const view4<float>& o, const view3<float>& lse, const index_t* kv_lens,
                   float scale, const Variant& var, workspace* user_scratch) {
  const index_t dk = q.extent(3), dv = v.extent(3);
  const dense_schedule<KV> schedule{
      dense_blocks::plan<Arch>(q.extent(0), q.extent(1), q.extent(2), dk, k.extent(1), k.extent(2),
                               dv, kv_lens),
      engine::dense_keys<KV>{k, v, kv_lens}};
  engine::drive<Arch, DK, DV>(engine::problem<KV>{q, scale, dk, dv}, schedule, var, o, lse,
                              user_scratch);
}

/// The output `out` does not overlap any optional input of p (bias, mask, alibi_slopes, sinks,
/// kv_lens); absent ones are skipped.
template <class T, std::size_t R>
void check_disjoint_params(const char* op, const char* name, const tensor_view<T, R>& out,
                           const attention_params& p) {
  check_disjoint(op, name, out, "bias", p.bias);
  check_disjoint(op, name, out, "mask", p.mask);
  check_disjoint(op, name, out, "alibi_slopes", p.alibi_slopes);
  check_disjoint(op, name, out, "sinks", p.sinks);
  check_disjoint(op, name, out, "kv_lens", p.kv_lens);
}

/// Checks every argument of attention() before any work; throws attend::invalid_argument.
template <class KV>
void validate_attention(const char* op, const view4<const float>& q, const view4<const KV>& k,
                        const view4<const KV>& v, const view4<float>& o,
                        const attention_params& p) {
  check_tensor(op, "q", q);
  check_tensor(op, "k", k);
  check_tensor(op, "v", v);
  check_output(op, "o", o);
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t seq_k = k.extent(1), heads_kv = k.extent(2);
  ATTEND_CHECK(k.extent(0) == batch && v.extent(0) == batch, op, ": batch of q (", batch, "), k (",
               k.extent(0), ") and v (", v.extent(0), ") differ");
  ATTEND_CHECK(v.extent(1) == seq_k && v.extent(2) == heads_kv, op, ": v ", shape_string(v),
               " must match k ", shape_string(k), " in seq_k and heads_kv");
  ATTEND_CHECK(heads_q % heads_kv == 0, op, ": q heads (", heads_q,
               ") must be a multiple of kv heads (", heads_kv, ")");
  ATTEND_CHECK(k.extent(3) == q.extent(3), op, ": head dim of k (", k.extent(3),
               ") must equal that of q (", q.extent(3), ")");
  check_extents(op, "o", o, {batch, seq_q, heads_q, v.extent(3)});
  check_disjoint(op, "o", o, "q", q);
  check_disjoint(op, "o", o, "k", k);
  check_disjoint(op, "o", o, "v", v);
  if (p.scale) ATTEND_CHECK(std::isfinite(*p.scale), op, ": scale must be finite (", *p.scale, ")");
  ATTEND_CHECK(p.window_left >= -1 && p.window_right >= -1, op, ": window (", p.window_left, ", ",
               p.window_right, ") must be >= 0, or -1 for unbounded");
  ATTEND_CHECK(std::isfinite(p.softcap) && p.softcap >= 0.0f &&
                   (p.softcap == 0.0f || std::isfinite(1.0f / p.softcap)),
               op, ": softcap (", p.softcap, ") must be 0 (off) or finite, > 0 and >= 1 / FLT_MAX");
  if (p.alibi_slopes.has_value()) {
    check_tensor(op, "alibi_slopes", p.alibi_slopes);
    check_extents(op, "alibi_slopes", p.alibi_slopes, {heads_q});
  }
  if (p.sinks.has_value()) {
    check_tensor(op, "sinks", p.sinks);
    check_extents(op, "sinks", p.sinks, {heads_q});
  }
  if (p.bias.has_value()) check_broadcast4(op, "bias", p.bias, batch, heads_q, seq_q, seq_k);
  if (p.mask.has_value()) check_broadcast4(op, "mask", p.mask, batch, heads_q, seq_q, seq_k);
  if (p.kv_lens.has_value()) {
    check_tensor(op, "kv_lens", p.kv_lens);
    check_extents(op, "kv_lens", p.kv_lens, {batch});
    for (index_t b = 0; b < batch; ++b)
      ATTEND_CHECK(p.kv_lens(b) >= 0 && p.kv_lens(b) <= seq_k, op, ": kv_lens[", b,
                   "] = ", p.kv_lens(b), " is outside [0, seq_k = ", seq_k, "]");
  }
  if (p.lse.has_value()) {
    check_output(op, "lse", p.lse);
    check_extents(op, "lse", p.lse, {batch, heads_q, seq_q});
    check_disjoint(op, "lse", p.lse, "o", o);
    check_disjoint(op, "lse", p.lse, "q", q);
    check_disjoint(op, "lse", p.lse, "k", k);
    check_disjoint(op, "lse", p.lse, "v", v);
  }
  // Outputs written while other rows still read the optional inputs must not alias them.
  check_disjoint_params(op, "o", o, p);
  check_disjoint_params(op, "lse", p.lse, p);
}

/// The mask of attention_params: causal folds into the right window bound.
inline engine::standard_mask make_mask(const attention_params& p) {
  engine::standard_mask m;
  m.left = p.window_left;
  m.right =
      p.causal ? (p.window_right < 0 ? 0 : std::min<index_t>(p.window_right, 0)) : p.window_right;
  if (p.mask.has_value()) {
    m.mask = p.mask.data();
    m.mask_stride_b = broadcast_stride(p.mask, 0);
    m.mask_stride_h = broadcast_stride(p.mask, 1);
    m.mask_stride_q = p.mask.stride(2);
    m.mask_stride_k = p.mask.stride(3);
  }
  return m;
}

/// The score modifier of attention_params (softcap, ALiBi, bias), or none.
inline engine::standard_score_mod make_score_mod(const attention_params& p) {
  engine::standard_score_mod s;
  s.softcap = p.softcap;
  s.alibi_slopes = p.alibi_slopes.has_value() ? p.alibi_slopes.data() : nullptr;
  if (p.bias.has_value()) {
    s.bias = p.bias.data();
    s.bias_stride_b = broadcast_stride(p.bias, 0);
    s.bias_stride_h = broadcast_stride(p.bias, 1);
    s.bias_stride_q = p.bias.stride(2);
    s.bias_stride_k = p.bias.stride(3);
  }
  return s;
}

inline bool has_score_mod(const attention_params& p) {
  return p.softcap > 0.0f || p.alibi_slopes.has_value() || p.bias.has_value();
}

inline float resolve_scale(const attention_params& p, index_t dk) {
  return p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(dk));
}

template <class Arch, class KV>
void attention_dispatch(const view4<const float>& q, const view4<const KV>& k,
                        const view4<const KV>& v, const view4<float>& o,
                        const attention_params& p) {
  const engine::standard_mask mask = make_mask(p);
  const engine::sink_logits sink{p.sinks.has_value() ? p.sinks.data() : nullptr};
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = resolve_scale(p, q.extent(3));
  dispatch_head_dims(q.extent(3), v.extent(3), [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    if (has_score_mod(p)) {
      const auto var = engine::make_variant(make_score_mod(p), mask, sink);
      dense_forward<Arch, DK, DV>(q, k, v, o, p.lse, lens, scale, var, p.scratch);
    } else {
      const auto var = engine::make_variant(engine::no_score_mod{}, mask, sink);
      dense_forward<Arch, DK, DV>(q, k, v, o, p.lse, lens, scale, var, p.scratch);
    }
  });
}

}  // namespace detail

/// Softmax attention o = softmax(s) v with the scores of attention_params.
///
/// \param q [batch, seq_q, heads_q, head_dim] float
/// \param k [batch, seq_k, heads_kv, head_dim] float, bf16 or fp16
/// \param v [batch, seq_k, heads_kv, head_dim_v], same type as k (head_dim_v may differ)
/// \param o [batch, seq_q, heads_q, head_dim_v] float output; must not overlap q, k, v
/// \param params options (attention_params): masks, score modifiers, sinks, optional lse
///        output, and a reusable workspace (`scratch`) that avoids allocating per call.
/// Runs on OpenMP's current thread limit (one thread inside an active parallel region).
/// Any layout expressible by strides with a contiguous last axis (BSHD, BHSD, fused QKV, caches
/// with capacity > length). heads_q must be a multiple of heads_kv (GQA/MQA). seq_q may differ
/// from seq_k (cross attention, decode, chunked prefill; causal is bottom-right aligned). With
/// seq_q <= 16 and long caches the keys are split across threads and merged (flash-decoding).
/// A row that sees no key gets o = 0 and lse = -inf. Throws attend::invalid_argument on bad
/// shapes, strides or parameters, before writing anything.
template <class TQ, class TK, class TV>
void attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
               const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
               const attention_params& params = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  detail::validate_attention("attend::attention", qc, kc, vc, o, params);
  detail::attention_dispatch<xsimd::default_arch>(qc, kc, vc, o, params);
}

}  // namespace attend

#endif  // ATTEND_DENSE_ATTENTION_HPP_
