// Gated attention (Qiu et al. 2025, qiuzh20/gated_attention; card 10 of LINEAR_SINK.md):
// Y' = Y * sigmoid(g) on the attention output of each head, before the output projection, with
// g computed by the caller from the pre-norm hidden state (X W_theta):
//   headwise     one gate per (token, head): g [batch, seq_q, heads_q, 1]
//   elementwise  one gate per (token, head, channel): g [batch, seq_q, heads_q, dv]
// Applied through the engine's output hook, fused with the store of each finished row (after the
// split-K merge in decode), so it costs O(dv) per row and no extra pass over o.
//
// In the reference layout the gate is fused into q_proj, interleaved per KV group
// ([T, H_kv, G d + G (1 | d)]); the gate view here is any strided [batch, seq, heads, 1 | dv]
// view, so a de-interleaved or separately projected gate is passed as is.
#ifndef ATTEND_SINK_GATE_HPP_
#define ATTEND_SINK_GATE_HPP_

#include "forward.hpp"

namespace attend::sink {

namespace detail {

/// Output hook: o *= sigmoid(gate) per row (headwise: one scalar; elementwise: per channel).
template <class Arch>
struct sigmoid_gate {
  static constexpr bool is_identity = false;
  view4<const float> gate{};
  bool elementwise = false;

  void apply(const engine::row_ctx& c, float* o, float, index_t dv) const noexcept {
    using V = simd::vfloat<Arch>;
    constexpr index_t w = simd::lanes<Arch>;
    const float* g = gate.data() + gate.offset(c.batch, c.query, c.head, 0);
    if (!elementwise) {
      engine::scale_row<Arch>(o, dv, 1.0f / (1.0f + std::exp(-g[0])));
      return;
    }
    const V one(1.0f);
    index_t i = 0;
    for (; i + w <= dv; i += w) {
      const V s = one / (one + simd::exp<Arch>(-V::load_unaligned(g + i)));
      (V::load_unaligned(o + i) * s).store_unaligned(o + i);
    }
    for (; i < dv; ++i) o[i] *= 1.0f / (1.0f + std::exp(-g[i]));
  }
};

}  // namespace detail

/// Attention with a sigmoid output gate: o = attention(q, k, v; p) * sigmoid(gate).
///
/// \param q [batch, seq_q, heads_q, dk] float; k, v [batch, seq_k, heads_kv, dk / dv] float,
///        bf16 or fp16; o [batch, seq_q, heads_q, dv] float output
/// \param gate gate logits (before the sigmoid), float: [batch, seq_q, heads_q, 1] headwise or
///        [batch, seq_q, heads_q, dv] elementwise; any strides with a contiguous last axis
/// \param p every option of attention_params; p.lse is the ungated attention's LSE
/// Throws attend::invalid_argument on bad shapes, before any work.
template <class TQ, class TK, class TV>
void gated_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                     const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                     const view4<const float>& gate, const attention_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  using Arch = xsimd::default_arch;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::gated_attention";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attend::detail::validate_attention(op, qc, kc, vc, o, p);
  attend::detail::check_tensor(op, "gate", gate);
  const index_t dv = v.extent(3);
  ATTEND_CHECK(gate.extent(0) == q.extent(0) && gate.extent(1) == q.extent(1) &&
                   gate.extent(2) == q.extent(2) && (gate.extent(3) == 1 || gate.extent(3) == dv),
               op, ": gate has extents ", attend::detail::shape_string(gate), ", expected [",
               q.extent(0), ", ", q.extent(1), ", ", q.extent(2), ", 1 or ", dv, "]");
  attend::detail::check_disjoint(op, "o", o, "gate", gate);
  const detail::sigmoid_gate<Arch> hook{gate, gate.extent(3) == dv && dv != 1};
  const engine::standard_mask mask = attend::detail::make_mask(p);
  const engine::sink_logits sink{p.sinks.has_value() ? p.sinks.data() : nullptr};
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = attend::detail::resolve_scale(p, q.extent(3));
  attend::detail::dispatch_head_dims(q.extent(3), dv, [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    detail::with_score_mod(p, [&](auto score) {
      attend::detail::dense_forward<Arch, DK, DV>(qc, kc, vc, o, p.lse, lens, scale,
                                                  engine::make_variant(score, mask, sink, hook),
                                                  p.scratch);
    });
  });
}

}  // namespace attend::sink

#endif  // ATTEND_SINK_GATE_HPP_
