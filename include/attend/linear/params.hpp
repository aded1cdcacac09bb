// Parameters of the linear-attention operators (linear_attention, mala_attention, linear_state).
// Linear attention replaces softmax(q kᵀ) by a kernel φ(q)·φ(k) that factorises, so the keys
// fold into a [head_dim, value_dim] state S = Σ φ(k) vᵀ (plus z = Σ φ(k) for the normaliser)
// and each token costs O(head_dim * value_dim) whatever the sequence length.
#ifndef ATTEND_LINEAR_PARAMS_HPP_
#define ATTEND_LINEAR_PARAMS_HPP_

#include <optional>

#include "../core/tensor_view.hpp"
#include "../core/workspace.hpp"

namespace attend {

/// How the output of one query row is formed from its numerator u = Σ_j w_ij v_j and
/// denominator d = Σ_j w_ij, where w_ij = decay(i, j) φ(q_i)·φ(k_j) over the visible keys j:
///   none         o = s u                      Lightning / TransNormer / RetNet / fla's simple
///                                             GLA (the model normalises afterwards)
///   denominator  o = s u / (s d + eps)        Katharopoulos et al. ("Transformers are RNNs")
///   mala         o = (1 + 1/(z + eps)) (s/n) u - z Σ_j v_j / n,   z = s d / n
///                                             magnitude-aware linear attention (Fan et al.,
///                                             2025); n = number of visible keys; no decay
/// s is the scale of linear_params.
enum class linear_norm { none, denominator, mala };

/// Parameters of linear attention. The defaults are Katharopoulos et al.'s: causal,
/// normalised with eps = 1e-6, no scale, no decay (pair them with the elu+1 feature map).
/// Lightning Attention-2 is {norm = none, decay = λ_h} with the identity map; simple GLA /
/// RetNet add per-token log gates and scale = 1/sqrt(head_dim).
struct linear_params {
  /// Causal (prefix) attention, computed in chunks; false = every query sees every valid key.
  bool causal = true;
  /// Output normalisation, see linear_norm.
  linear_norm norm = linear_norm::denominator;
  /// s above: multiplies φ(q). Default 1, except 1/sqrt(head_dim) for linear_norm::mala.
  std::optional<float> scale{};
  /// Added to the denominator (denominator: s d + eps; mala: z + eps). Finite, >= 0.
  float eps = 1e-6f;
  /// [heads]: per-head decay λ_h in (0, 1] (Lightning-2, RetNet): key j reaches query i >= j
  /// with weight λ_h^(i-j). Causal only, not with mala. Empty = no decay.
  view1<const float> decay{};
  /// [batch, seq, heads]: per-token log forget gates g_t <= 0 (simple GLA, Mamba-2 style):
  /// the state decays by exp(g_t) before token t is added, so key j reaches query i with
  /// weight exp(g_{j+1} + ... + g_i). Combines with decay. Causal only, not with mala.
  view3<const float> log_gates{};
  /// [batch]: valid tokens per sequence (<= seq). Causal: rows past the length get o = 0 and
  /// leave the state alone; non-causal: keys past the length are ignored (all queries are
  /// computed). Empty = every sequence is full.
  view1<const index_t> lengths{};
  /// Tokens per chunk of the causal algorithm (1..1024); 64 keeps a chunk's tiles in L1/L2.
  index_t chunk = 64;
  /// Optional reusable scratch; without it each call allocates its own.
  workspace* scratch = nullptr;
};

}  // namespace attend

#endif  // ATTEND_LINEAR_PARAMS_HPP_
