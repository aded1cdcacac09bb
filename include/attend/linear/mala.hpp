// MALA, magnitude-aware linear attention (Fan et al., ICCV 2025; qhfan/MALA). In normalised
// linear attention ‖φ(q)‖ cancels, so scaling q never sharpens the weights; MALA keeps the
// magnitude. With a_ij = (s/n) φ(q_i)·φ(k_j) over the n visible keys and z_i = Σ_j a_ij:
//   y_i = Σ_j (β_i a_ij - γ_i) v_j,  β_i = 1 + 1/(z_i + eps),  γ_i = z_i / n
// whose weights sum to 1 (exactly, up to eps: β z - n γ = 1). In linear form:
//   non-causal (the reference formula, n = N keys)
//     z_i = s φ(q_i)·mean_j φ(k_j),  y_i = (1 + 1/(z_i + eps)) φ(q_i)ᵀ KV - z_i mean_j v_j,
//     KV = (s/N) Σ_j φ(k_j) v_jᵀ
//   causal (prefix form, n_i = i + 1 tokens seen): the same with prefix sums S = Σ_{j<=i}
//     φ(k_j) v_jᵀ, Zk = Σ_{j<=i} φ(k_j), Σv = Σ_{j<=i} v_j, computed by the chunked kernel of
//     linear attention plus a running Σv; decode keeps (S, Zk, Σv, n) in a linear_state.
// Defaults as the reference: φ = elu + 1, s = 1/sqrt(head_dim), eps = 1e-6. RoPE (the
// reference rotates the numerator's φ(q), φ(k) only) is left to the caller, as are LePE and
// the output gate of the MALA block.
#ifndef ATTEND_LINEAR_MALA_HPP_
#define ATTEND_LINEAR_MALA_HPP_

#include "linear_attention.hpp"
#include "state.hpp"

namespace attend {

/// MALA attention: linear_attention with linear_norm::mala (params.norm is ignored; decay and
/// log_gates must be empty). Shapes, layouts, types and errors as linear_attention:
/// \param q [batch, seq_q, heads, head_dim], k [batch, seq_k, heads, head_dim],
///        v [batch, seq_k, heads, value_dim], o [batch, seq_q, heads, value_dim] float
/// \param params causal (default true) picks the prefix form, false the reference formula;
///        scale defaults to 1/sqrt(head_dim); lengths gives each sequence's valid keys.
template <class TQ, class TK, class TV, class FeatureMap = linear::elu_plus_one>
void mala_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                    const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                    const linear_params& params = {}, const FeatureMap& phi = {}) {
  linear_params p = params;
  p.norm = linear_norm::mala;
  using Q = std::remove_const_t<TQ>;
  using K = std::remove_const_t<TK>;
  using Vt = std::remove_const_t<TV>;
  const view4<const Q> qc = q;
  const view4<const K> kc = k;
  const view4<const Vt> vc = v;
  linear::detail::validate_linear("attend::mala_attention", qc, kc, vc, o, p);
  linear::detail::linear_dispatch<xsimd::default_arch>(qc, kc, vc, o, p, phi);
}

/// The configuration of a MALA decode state: linear_state<elu_plus_one>(batch, heads, head_dim,
/// value_dim, mala_config()) keeps (S, Zk, Σv, n) and its prefill/step give mala_attention's
/// causal outputs.
inline linear_params mala_config(std::optional<float> scale = {}, float eps = 1e-6f) {
  linear_params p;
  p.norm = linear_norm::mala;
  p.scale = scale;
  p.eps = eps;
  return p;
}

}  // namespace attend

#endif  // ATTEND_LINEAR_MALA_HPP_
