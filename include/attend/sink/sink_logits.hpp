// Learnable sink logits (gpt-oss; softmax-off-by-one is a logit of 0), card 9 of
// LINEAR_SINK.md: p_ij = exp(s_ij) / (exp(sigma_h) + sum_k exp(s_ik)), the sink taking mass but
// carrying no value. The dense operator applies them through the engine's row hook
// (attention_params::sinks): once per row at finalisation, after the split-K merge, so a sink is
// counted exactly once and the LSE it writes includes it.
//
// This header adds what the dense operator leaves to the caller:
//   add_sink_logits   joins the sinks to states computed WITHOUT them (shards of a cache merged
//                     with merge_states, cascade / prefix attention): the sink must be added once,
//                     after the merge, never per shard
//   sink_logit_mass   the mass each row gives the sink, exp(sigma_h - lse)
#ifndef ATTEND_SINK_SINK_LOGITS_HPP_
#define ATTEND_SINK_SINK_LOGITS_HPP_

#include <cmath>

#include "../core/parallel.hpp"
#include "../core/validate.hpp"
#include "../engine/online_softmax.hpp"

namespace attend::sink {

/// Joins per-head sink logits to finished attention states, in place:
/// lse' = logaddexp(lse, sigma_h), o' = o * exp(lse - lse').
/// \param o [batch, seq, heads, dv] outputs of attention computed without sinks
/// \param lse [batch, heads, seq] their natural-log LSEs (-inf for rows that saw no key)
/// \param sinks [heads] sink logits (not multiplied by the attention scale; -inf = no sink)
/// Use it once after merging shards (merge_states); the result equals attention over the union
/// of the shards with params.sinks set. Throws attend::invalid_argument on shape mismatches.
inline void add_sink_logits(const view4<float>& o, const view3<float>& lse,
                            const view1<const float>& sinks) {
  constexpr const char* op = "attend::sink::add_sink_logits";
  attend::detail::check_output(op, "o", o);
  attend::detail::check_output(op, "lse", lse);
  attend::detail::check_tensor(op, "sinks", sinks);
  const index_t batch = o.extent(0), seq = o.extent(1), heads = o.extent(2), dv = o.extent(3);
  attend::detail::check_extents(op, "lse", lse, {batch, heads, seq});
  attend::detail::check_extents(op, "sinks", sinks, {heads});
  attend::detail::check_disjoint(op, "lse", lse, "o", o);
  const index_t rows = batch * seq * heads;
  const int threads = rows * dv >= (index_t{1} << 16) ? attend::detail::max_threads() : 1;
  attend::detail::parallel_for(rows, threads, [&](index_t row, int) {
    const index_t b = row / (seq * heads), i = (row / heads) % seq, h = row % heads;
    const float sigma = sinks(h);
    if (sigma == engine::neg_inf) return;
    const engine::merge_weights mw = engine::weights_of(lse(b, h, i), sigma);
    float* po = &o(b, i, h, 0);
    for (index_t c = 0; c < dv; ++c) po[c] *= mw.wa;
    lse(b, h, i) = mw.lse;
  });
}

/// mass(b, h, i) = exp(sigma_h - lse(b, h, i)): the probability the sink takes in each row.
/// \param lse [batch, heads, seq] LSEs that include the sink (as attention writes them)
/// \param sinks [heads] sink logits
/// \param mass [batch, heads, seq] output; 0 where sigma_h = -inf, 1 where a row saw only the sink
inline void sink_logit_mass(const view3<const float>& lse, const view1<const float>& sinks,
                            const view3<float>& mass) {
  constexpr const char* op = "attend::sink::sink_logit_mass";
  attend::detail::check_tensor(op, "lse", lse);
  attend::detail::check_tensor(op, "sinks", sinks);
  attend::detail::check_output(op, "mass", mass);
  attend::detail::check_extents(op, "sinks", sinks, {lse.extent(1)});
  attend::detail::check_extents(op, "mass", mass, lse.extents());
  attend::detail::check_disjoint(op, "mass", mass, "lse", lse);
  for (index_t b = 0; b < lse.extent(0); ++b)
    for (index_t h = 0; h < lse.extent(1); ++h)
      for (index_t i = 0; i < lse.extent(2); ++i) {
        const float sigma = sinks(h), l = lse(b, h, i);
        mass(b, h, i) = sigma == engine::neg_inf ? 0.0f : l == sigma ? 1.0f : std::exp(sigma - l);
      }
}

}  // namespace attend::sink

#endif  // ATTEND_SINK_SINK_LOGITS_HPP_
