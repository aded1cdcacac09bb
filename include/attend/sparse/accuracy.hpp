// Accuracy of a sparse approximation against dense attention, the two figures every sparse
// benchmark reports:
//   recall  - attention-mass recall: the fraction of each row's dense softmax mass that falls on
//             the keys the sparse call attends. With LSEs of the same scores over both key
//             sets, sum_{j in S} exp(s_j - lse_dense) = exp(lse_sparse - lse_dense), so recall
//             needs no score matrix, only the two LSE outputs (sinks excluded from both).
//   rel_err - ||o - o_dense||_F / ||o_dense||_F over the whole output.
#ifndef ATTEND_SPARSE_ACCURACY_HPP_
#define ATTEND_SPARSE_ACCURACY_HPP_

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../dense/attention.hpp"
#include "block_sparse.hpp"

namespace attend::sparse {

/// Recall statistics over the rows that see at least one key in the dense call.
struct recall_stats {
  double mean = 0.0;  // average over rows of exp(lse_sparse - lse_dense), clamped to [0, 1]
  double min = 1.0;   // worst row
  index_t rows = 0;   // rows counted
};

/// Attention-mass recall from the LSEs of a sparse call and a dense call over the same scores
/// (no sinks): lse_sparse, lse_dense [batch, heads, seq]. Rows whose dense LSE is -inf are
/// skipped; a row whose sparse LSE is -inf has recall 0.
inline recall_stats mass_recall(const view3<const float>& lse_sparse,
                                const view3<const float>& lse_dense) {
  constexpr const char* op = "attend::sparse::mass_recall";
  attend::detail::check_tensor(op, "lse_sparse", lse_sparse);
  attend::detail::check_tensor(op, "lse_dense", lse_dense);
  attend::detail::check_extents(op, "lse_sparse", lse_sparse, lse_dense.extents());
  recall_stats r;
  double sum = 0.0;
  for (index_t b = 0; b < lse_dense.extent(0); ++b)
    for (index_t h = 0; h < lse_dense.extent(1); ++h)
      for (index_t i = 0; i < lse_dense.extent(2); ++i) {
        const float d = lse_dense(b, h, i), s = lse_sparse(b, h, i);
        if (d == -std::numeric_limits<float>::infinity()) continue;
        const double x = std::clamp(std::exp(double(s) - double(d)), 0.0, 1.0);
        sum += x;
        r.min = std::min(r.min, x);
        ++r.rows;
      }
  r.mean = r.rows ? sum / double(r.rows) : 1.0;
  if (!r.rows) r.min = 1.0;
  return r;
}

/// ||o - o_ref||_F / ||o_ref||_F over two [batch, seq, heads, dim] outputs (0 when both are 0).
inline double relative_error(const view4<const float>& o, const view4<const float>& o_ref) {
  constexpr const char* op = "attend::sparse::relative_error";
  attend::detail::check_tensor(op, "o", o);
  attend::detail::check_tensor(op, "o_ref", o_ref);
  attend::detail::check_extents(op, "o", o, o_ref.extents());
  double num = 0.0, den = 0.0;
  for (index_t b = 0; b < o.extent(0); ++b)
    for (index_t s = 0; s < o.extent(1); ++s)
      for (index_t h = 0; h < o.extent(2); ++h)
        for (index_t d = 0; d < o.extent(3); ++d) {
          const double a = o(b, s, h, d), e = o_ref(b, s, h, d);
          num += (a - e) * (a - e);
          den += e * e;
        }
  if (den == 0.0) return num == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}

/// Recall and relative error of one approximation.
struct accuracy {
  recall_stats recall;
  double rel_err = 0.0;
};

/// Runs dense attention and block_sparse_attention(mask, mod) with the same params (sinks
/// removed: recall is about keys) and compares them. q/k/v as block_sparse_attention; allocates
/// its own outputs. Costs one dense call: meant for tests and benchmarks.
template <class TQ, class TK, class TV, class Mod = no_mask_mod>
accuracy evaluate_mask(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                       const tensor_view<TV, 4>& v, const block_mask& mask,
                       attention_params params = {}, const Mod& mod = {}) {
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads = q.extent(2), dv = v.extent(3);
  std::vector<float> od(static_cast<std::size_t>(batch * seq_q * heads * dv));
  std::vector<float> os(od.size());
  std::vector<float> ld(static_cast<std::size_t>(batch * heads * seq_q)), ls(ld.size());
  const auto o_dense = bshd(od.data(), batch, seq_q, heads, dv);
  const auto o_sparse = bshd(os.data(), batch, seq_q, heads, dv);
  const auto l_dense = view3<float>::contiguous(ld.data(), {batch, heads, seq_q});
  const auto l_sparse = view3<float>::contiguous(ls.data(), {batch, heads, seq_q});
  params.sinks = {};
  params.lse = l_dense;
  attention(q, k, v, o_dense, params);
  params.lse = l_sparse;
  block_sparse_attention(q, k, v, o_sparse, mask, params, mod);
  accuracy a;
  a.recall = mass_recall(view3<const float>(l_sparse), view3<const float>(l_dense));
  a.rel_err = relative_error(view4<const float>(o_sparse), view4<const float>(o_dense));
  return a;
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_ACCURACY_HPP_
