// Parameters of the dense softmax attention operator (and of the reference oracle, which takes the
// same struct so that tests describe a case once). Defaults give plain softmax(q kᵀ / sqrt(d)) v.
#ifndef ATTEND_CORE_PARAMS_HPP_
#define ATTEND_CORE_PARAMS_HPP_

#include <optional>

#include "tensor_view.hpp"
#include "workspace.hpp"

namespace attend {

/// Score of query i (at position p_i) and key j (at position j):
///   s_ij = softcap(scale * q_i . k_j) - slope_h * |p_i - j| + bias[b, h, i, j]
/// over the keys allowed by causal, window, mask and kv_lens; then softmax over j, with an
/// optional per-head sink logit joining the denominator. Positions are bottom-right aligned:
/// p_i = kv_len_b - seq_q + i, where kv_len_b = kv_lens[b] if given, else seq_k.
struct attention_params {
  /// Multiplies q . k; default 1/sqrt(head_dim of q and k).
  std::optional<float> scale{};
  /// Keys after the query's position are excluded (bottom-right aligned).
  bool causal = false;
  /// Keys with j < p_i - window_left are excluded; -1 = unbounded.
  index_t window_left = -1;
  /// Keys with j > p_i + window_right are excluded; -1 = unbounded (causal implies 0).
  index_t window_right = -1;
  /// > 0: scores pass through softcap * tanh(s / softcap) (Gemma-2, Grok). 0 = off.
  float softcap = 0.0f;
  /// [heads_q]: ALiBi slopes, s -= slope_h * |p_i - j|. Empty = off.
  view1<const float> alibi_slopes{};
  /// [batch or 1, heads_q or 1, seq_q, seq_k]: added to the scores. Empty = off.
  view4<const float> bias{};
  /// [batch or 1, heads_q or 1, seq_q, seq_k]: true = the key may be attended. Empty = off.
  view4<const bool> mask{};
  /// [heads_q]: learnable sink logits (gpt-oss, softmax-off-by-one with 0): an extra logit per
  /// head that takes probability mass but carries no value. Empty = off.
  view1<const float> sinks{};
  /// [batch]: valid keys per sequence, each <= seq_k (padded KV caches). Empty = all seq_k.
  view1<const index_t> kv_lens{};
  /// Optional output [batch, heads_q, seq_q]: natural-log LSE of each row (sink included);
  /// -inf for a row that sees no key.
  view3<float> lse{};
  /// Optional reusable scratch; without it each call allocates its own.
  workspace* scratch = nullptr;
};

}  // namespace attend

#endif  // ATTEND_CORE_PARAMS_HPP_
