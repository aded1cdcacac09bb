// merge_states: combine attention computed over disjoint key sets — a cached prefix and new
// tokens, two shards of one cache (context parallelism), block-sparse parts — into the attention
// over their union. Exact: o = w_a o_a + w_b o_b with w_x = exp(lse_x - lse), lse = logaddexp.
#ifndef ATTEND_DENSE_MERGE_HPP_
#define ATTEND_DENSE_MERGE_HPP_

#include <algorithm>
#include <cmath>

#include "../core/parallel.hpp"
#include "../core/validate.hpp"
#include "../engine/online_softmax.hpp"

namespace attend {

/// (o, lse) = merge((o_a, lse_a), (o_b, lse_b)).
/// \param o_a, o_b [batch, seq, heads, dv] outputs of attention over disjoint key sets
/// \param lse_a, lse_b [batch, heads, seq] their natural-log LSEs (-inf for an empty set)
/// \param o [batch, seq, heads, dv] result; may be exactly o_a or o_b (in place), otherwise must
///        not overlap them
/// \param lse [batch, heads, seq] result; may be exactly lse_a or lse_b
/// An empty state (lse = -inf, o = 0 as every operator writes it) contributes nothing: merged
/// with another state it gives that state exactly, and rows empty in both give o = 0 and
/// lse = -inf (a non-finite o under lse = -inf propagates: 0 * NaN). A NaN or +inf lse makes
/// the row NaN, as a NaN or +inf score does in attention. Threads (OpenMP) over rows for large
/// inputs. Throws attend::invalid_argument on mismatched extents or overlapping outputs.
inline void merge_states(const view4<const float>& o_a, const view3<const float>& lse_a,
                         const view4<const float>& o_b, const view3<const float>& lse_b,
                         const view4<float>& o, const view3<float>& lse) {
  constexpr const char* op = "attend::merge_states";
  detail::check_tensor(op, "o_a", o_a);
  detail::check_tensor(op, "o_b", o_b);
  detail::check_tensor(op, "lse_a", lse_a);
  detail::check_tensor(op, "lse_b", lse_b);
  detail::check_output(op, "o", o);
  detail::check_output(op, "lse", lse);
  const index_t batch = o_a.extent(0), seq = o_a.extent(1), heads = o_a.extent(2),
                dv = o_a.extent(3);
  detail::check_extents(op, "o_b", o_b, o_a.extents());
  detail::check_extents(op, "o", o, o_a.extents());
  detail::check_extents(op, "lse_a", lse_a, {batch, heads, seq});
  detail::check_extents(op, "lse_b", lse_b, {batch, heads, seq});
  detail::check_extents(op, "lse", lse, {batch, heads, seq});
  auto same = [](const auto& x, const auto& y) {
    return static_cast<const void*>(x.data()) == static_cast<const void*>(y.data()) &&
           x.strides() == y.strides();
  };
  if (!same(o, o_a)) detail::check_disjoint(op, "o", o, "o_a", o_a);
  if (!same(o, o_b)) detail::check_disjoint(op, "o", o, "o_b", o_b);
  if (!same(lse, lse_a)) detail::check_disjoint(op, "lse", lse, "lse_a", lse_a);
  if (!same(lse, lse_b)) detail::check_disjoint(op, "lse", lse, "lse_b", lse_b);
  detail::check_disjoint(op, "lse", lse, "o", o);

  // Element-wise o = w_a o_a + w_b o_b reads each element before writing it, so o may be o_a
  // or o_b itself.
  const index_t rows = batch * seq * heads;
  const int threads = rows * dv >= (index_t{1} << 16) ? detail::max_threads() : 1;
  detail::parallel_for(rows, threads, [&](index_t row, int) {
    const index_t b = row / (seq * heads), i = (row / heads) % seq, h = row % heads;
    const engine::merge_weights mw = engine::weights_of(lse_a(b, h, i), lse_b(b, h, i));
    const float* pa = &o_a(b, i, h, 0);
    const float* pb = &o_b(b, i, h, 0);
    float* po = &o(b, i, h, 0);
    for (index_t c = 0; c < dv; ++c) po[c] = mw.wa * pa[c] + mw.wb * pb[c];
    lse(b, h, i) = mw.lse;
  });
}

}  // namespace attend

#endif  // ATTEND_DENSE_MERGE_HPP_
