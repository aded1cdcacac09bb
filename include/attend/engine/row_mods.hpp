// Row modifiers: act on a row's softmax state once, at finalisation (never per KV tile, so a
// split-K or sparse union counts them exactly once).
#ifndef ATTEND_ENGINE_ROW_MODS_HPP_
#define ATTEND_ENGINE_ROW_MODS_HPP_

#include "online_softmax.hpp"

namespace attend::engine {

/// Learnable per-head sink logits (gpt-oss; softmax-off-by-one is a logit of 0): the sink joins
/// the denominator, l' = l + exp(sigma_h - m), and contributes no value. Null = no sink.
struct sink_logits {
  static constexpr bool is_identity = false;
  const float* logits = nullptr;  // [heads_q]
  float logit(index_t head) const noexcept { return logits ? logits[head] : neg_inf; }
};

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_ROW_MODS_HPP_
