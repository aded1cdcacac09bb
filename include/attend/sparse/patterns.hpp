// Static sparse patterns: closed-form generators of block masks plus the exact element
// predicate each pattern stands for (pass it as block_sparse_attention's `mod`, so the partial
// blocks at the pattern's edges are cut exactly).
//   a_shape   sinks + local window ("A-shape", StreamingLLM prefill; card 15)
//   power     PowerAttention: power-of-two block distances + sink blocks + local blocks (card 5)
//   strided   Sparse-Transformer strided pattern at block granularity: local blocks + every
//             stride-th block back
//   dilated   dilated sliding window (Longformer) at block granularity: `window` blocks taken
//             every `dilation` blocks back
// Every predicate includes causality (key position <= query position, bottom-right aligned:
// query i sits at position seq_k - seq_q + i) and ignores batch and head, so a pattern mask is
// usually built with heads = 1 (one list shared by all heads). Block-level patterns measure
// distances in blocks of geometry.block_k positions; a query at position p is in block p /
// block_k. Each mask lists exactly the blocks holding a visible element of the predicate, full
// when the predicate holds on every element (block_mask::from_predicate(g, pattern) gives the
// same mask, at O(seq_q * seq_k) cost instead of O(listed blocks * block_q * block_k)).
#ifndef ATTEND_SPARSE_PATTERNS_HPP_
#define ATTEND_SPARSE_PATTERNS_HPP_

#include <algorithm>
#include <vector>

#include "block_mask.hpp"

namespace attend::sparse {

namespace detail {

/// Builds the mask of a position-only predicate from candidate key blocks: candidates(qb, out)
/// appends a superset of the key blocks holding a true element for query block qb; each is
/// tested element-wise. Rows of other (batch, head) owners repeat the first owner's row.
template <class Pattern, class Candidates>
block_mask mask_from_candidates(const mask_geometry& g, const Pattern& pat,
                                const Candidates& candidates) {
  std::vector<std::vector<std::pair<index_t, bool>>> rows(static_cast<std::size_t>(g.q_blocks()));
  std::vector<index_t> cand;
  for (index_t qb = 0; qb < g.q_blocks(); ++qb) {
    cand.clear();
    candidates(qb, cand);
    std::sort(cand.begin(), cand.end());
    cand.erase(std::unique(cand.begin(), cand.end()), cand.end());
    const auto [i0, i1] = g.q_range(qb);
    for (index_t kb : cand) {
      if (kb < 0 || kb >= g.k_blocks()) continue;
      const auto [j0, j1] = g.k_range(kb);
      index_t on = 0;
      for (index_t i = i0; i < i1; ++i)
        for (index_t j = j0; j < j1; ++j) on += pat(0, 0, i, j) ? 1 : 0;
      if (on > 0) rows[qb].emplace_back(kb, on == (i1 - i0) * (j1 - j0));
    }
  }
  block_mask_builder bld(g);
  for (index_t b = 0; b < g.batch; ++b)
    for (index_t h = 0; h < g.heads; ++h)
      for (index_t qb = 0; qb < g.q_blocks(); ++qb)
        for (const auto& [kb, full] : rows[qb]) bld.add(g.row(b, h, qb), kb, full);
  return bld.build();
}

inline void check_pattern_geometry(const char* op, const mask_geometry& g) {
  detail::check_geometry(op, g);
  ATTEND_CHECK(g.seq_k >= g.seq_q, op, ": seq_k (", g.seq_k, ") must be >= seq_q (", g.seq_q,
               ") for a causal pattern");
}

}  // namespace detail

/// A-shape / StreamingLLM: the query at position p attends keys j <= p with j < sink_tokens or
/// j > p - window (the last `window` keys including itself). Defaults: 4 sink tokens
/// (StreamingLLM's start_size) and a window of 512 (its recent_size).
class a_shape_pattern {
 public:
  explicit a_shape_pattern(const mask_geometry& g, index_t sink_tokens = 4, index_t window = 512)
      : g_(g), sink_(sink_tokens), window_(window) {
    detail::check_pattern_geometry("attend::sparse::a_shape_pattern", g);
    ATTEND_CHECK(sink_tokens >= 0 && window >= 1, "attend::sparse::a_shape_pattern: sink_tokens (",
                 sink_tokens, ") must be >= 0 and window (", window, ") >= 1");
  }

  bool operator()(index_t, index_t, index_t i, index_t j) const noexcept {
    const index_t p = g_.seq_k - g_.seq_q + i;
    return j <= p && (j < sink_ || j > p - window_);
  }

  block_mask mask() const {
    return detail::mask_from_candidates(g_, *this, [&](index_t qb, std::vector<index_t>& out) {
      const auto [i0, i1] = g_.q_range(qb);
      const index_t p0 = g_.seq_k - g_.seq_q + i0, p1 = g_.seq_k - g_.seq_q + i1 - 1;
      for (index_t kb = 0; kb * g_.block_k < std::min(sink_, p1 + 1); ++kb) out.push_back(kb);
      for (index_t kb = std::max<index_t>(0, p0 - window_ + 1) / g_.block_k; kb <= p1 / g_.block_k;
           ++kb)
        out.push_back(kb);
    });
  }

  const mask_geometry& geometry() const noexcept { return g_; }

 private:
  mask_geometry g_;
  index_t sink_, window_;
};

/// PowerAttention (card 5): with blocks of b = block_k positions, the query block P = p / b
/// attends key block J <= P when d = P - J is 0 or a power of two, J < sink_blocks, or
/// d < local_blocks; element-level causal inside the diagonal block. Defaults from the card's
/// secondary sources: 1 sink block, 5 local blocks (the paper's block size is 256).
class power_pattern {
 public:
  explicit power_pattern(const mask_geometry& g, index_t sink_blocks = 1, index_t local_blocks = 5)
      : g_(g), sink_(sink_blocks), local_(local_blocks) {
    detail::check_pattern_geometry("attend::sparse::power_pattern", g);
    ATTEND_CHECK(sink_blocks >= 0 && local_blocks >= 0, "attend::sparse::power_pattern: ",
                 "sink_blocks (", sink_blocks, ") and local_blocks (", local_blocks,
                 ") must be >= 0");
  }

  /// The block rule: key block J visible to query block P.
  bool block_visible(index_t P, index_t J) const noexcept {
    const index_t d = P - J;
    if (d < 0) return false;
    return d == 0 || (d & (d - 1)) == 0 || J < sink_ || d < local_;
  }

  bool operator()(index_t, index_t, index_t i, index_t j) const noexcept {
    const index_t p = g_.seq_k - g_.seq_q + i;
    return j <= p && block_visible(p / g_.block_k, j / g_.block_k);
  }

  block_mask mask() const {
    return detail::mask_from_candidates(g_, *this, [&](index_t qb, std::vector<index_t>& out) {
      const auto [i0, i1] = g_.q_range(qb);
      const index_t b = g_.block_k;
      for (index_t P = (g_.seq_k - g_.seq_q + i0) / b; P <= (g_.seq_k - g_.seq_q + i1 - 1) / b;
           ++P) {
        for (index_t J = 0; J < std::min(sink_, P + 1); ++J) out.push_back(J);
        for (index_t d = 0; d < std::min(local_, P + 1); ++d) out.push_back(P - d);
        out.push_back(P);
        for (index_t d = 1; d <= P; d *= 2) out.push_back(P - d);
      }
    });
  }

  const mask_geometry& geometry() const noexcept { return g_; }

 private:
  mask_geometry g_;
  index_t sink_, local_;
};

/// Strided pattern at block granularity (Sparse Transformer's "strided" attention with blocks
/// as the unit): query block P attends key block J <= P when d = P - J < local_blocks or
/// d is a multiple of stride_blocks. Defaults: 2 local blocks, stride 8.
class strided_pattern {
 public:
  explicit strided_pattern(const mask_geometry& g, index_t local_blocks = 2,
                           index_t stride_blocks = 8)
      : g_(g), local_(local_blocks), stride_(stride_blocks) {
    detail::check_pattern_geometry("attend::sparse::strided_pattern", g);
    ATTEND_CHECK(local_blocks >= 1 && stride_blocks >= 1, "attend::sparse::strided_pattern: ",
                 "local_blocks (", local_blocks, ") and stride_blocks (", stride_blocks,
                 ") must be >= 1");
  }

  bool block_visible(index_t P, index_t J) const noexcept {
    const index_t d = P - J;
    return d >= 0 && (d < local_ || d % stride_ == 0);
  }

  bool operator()(index_t, index_t, index_t i, index_t j) const noexcept {
    const index_t p = g_.seq_k - g_.seq_q + i;
    return j <= p && block_visible(p / g_.block_k, j / g_.block_k);
  }

  block_mask mask() const {
    return detail::mask_from_candidates(g_, *this, [&](index_t qb, std::vector<index_t>& out) {
      const auto [i0, i1] = g_.q_range(qb);
      const index_t b = g_.block_k;
      for (index_t P = (g_.seq_k - g_.seq_q + i0) / b; P <= (g_.seq_k - g_.seq_q + i1 - 1) / b;
           ++P) {
        for (index_t d = 0; d < std::min(local_, P + 1); ++d) out.push_back(P - d);
        for (index_t d = 0; d <= P; d += stride_) out.push_back(P - d);
      }
    });
  }

  const mask_geometry& geometry() const noexcept { return g_; }

 private:
  mask_geometry g_;
  index_t local_, stride_;
};

/// Dilated sliding window at block granularity (Longformer's dilated window with blocks as the
/// unit): query block P attends key block J <= P when d = P - J is a multiple of
/// dilation_blocks and d / dilation_blocks < window_blocks. Defaults: 8 blocks, dilation 2.
class dilated_pattern {
 public:
  explicit dilated_pattern(const mask_geometry& g, index_t window_blocks = 8,
                           index_t dilation_blocks = 2)
      : g_(g), window_(window_blocks), dilation_(dilation_blocks) {
    detail::check_pattern_geometry("attend::sparse::dilated_pattern", g);
    ATTEND_CHECK(window_blocks >= 1 && dilation_blocks >= 1, "attend::sparse::dilated_pattern: ",
                 "window_blocks (", window_blocks, ") and dilation_blocks (", dilation_blocks,
                 ") must be >= 1");
  }

  bool block_visible(index_t P, index_t J) const noexcept {
    const index_t d = P - J;
    return d >= 0 && d % dilation_ == 0 && d / dilation_ < window_;
  }

  bool operator()(index_t, index_t, index_t i, index_t j) const noexcept {
    const index_t p = g_.seq_k - g_.seq_q + i;
    return j <= p && block_visible(p / g_.block_k, j / g_.block_k);
  }

  block_mask mask() const {
    return detail::mask_from_candidates(g_, *this, [&](index_t qb, std::vector<index_t>& out) {
      const auto [i0, i1] = g_.q_range(qb);
      const index_t b = g_.block_k;
      for (index_t P = (g_.seq_k - g_.seq_q + i0) / b; P <= (g_.seq_k - g_.seq_q + i1 - 1) / b;
           ++P)
        for (index_t w = 0; w < window_ && w * dilation_ <= P; ++w) out.push_back(P - w * dilation_);
    });
  }

  const mask_geometry& geometry() const noexcept { return g_; }

 private:
  mask_geometry g_;
  index_t window_, dilation_;
};

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_PATTERNS_HPP_
