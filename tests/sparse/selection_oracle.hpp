// Brute-force token selection for the selector tests: exact scores in double for each tile's
// mean query, the head combination of shared lists, and top-k with ties to the lower index;
// plus a comparison that accepts only swaps of near-tied keys (float vs double scores).
#ifndef ATTEND_TESTS_SPARSE_SELECTION_ORACLE_HPP_
#define ATTEND_TESTS_SPARSE_SELECTION_ORACLE_HPP_

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <vector>

#include "attend/sparse/token_lists.hpp"
#include "common/tensors.hpp"

namespace attend::testing {

/// One brute-force list with the combined score of every candidate (for tie checks).
struct brute_list {
  std::vector<index_t> keys;      // ascending
  std::vector<double> score;      // combined score per key position (-inf outside candidates)
  double threshold = 0;           // score of the k-th key
};

enum class brute_reduce { own, softmax_sum, max_score };

/// Top-k of combined scores (ties to the lower index), ascending.
inline brute_list brute_top(std::vector<double> score, index_t lo, index_t hi, index_t k) {
  brute_list r;
  std::vector<index_t> idx;
  for (index_t j = lo; j < hi; ++j) idx.push_back(j);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](index_t a, index_t b) { return score[a] > score[b]; });
  if (static_cast<index_t>(idx.size()) > k) idx.resize(k);
  r.threshold = idx.empty() ? 0 : score[idx.back()];
  std::sort(idx.begin(), idx.end());
  r.keys = idx;
  r.score = std::move(score);
  return r;
}

/// The brute-force lists of exact (or any dot-product) selection: `dot(b, h, kv_head, j)` gives
/// the double score of mean query (b, h) and key j; heads [h0, h1) share the list.
template <class Dot>
brute_list brute_select(index_t seq_k, index_t lo, index_t hi, index_t h0, index_t h1,
                        brute_reduce reduce, index_t k, Dot&& dot) {
  const double ninf = -std::numeric_limits<double>::infinity();
  std::vector<double> comb(static_cast<std::size_t>(seq_k), ninf);
  if (reduce == brute_reduce::own || reduce == brute_reduce::max_score) {
    for (index_t j = lo; j < hi; ++j)
      for (index_t h = h0; h < h1; ++h) comb[j] = std::max(comb[j], dot(h, j));
  } else {
    for (index_t j = lo; j < hi; ++j) comb[j] = 0;
    for (index_t h = h0; h < h1; ++h) {
      double m = ninf;
      for (index_t j = lo; j < hi; ++j) m = std::max(m, dot(h, j));
      double l = 0;
      for (index_t j = lo; j < hi; ++j) l += std::exp(dot(h, j) - m);
      for (index_t j = lo; j < hi; ++j) comb[j] += std::exp(dot(h, j) - m) / l;
    }
  }
  return brute_top(std::move(comb), lo, hi, k);
}

/// The selected list equals the brute-force one, except for swaps between keys whose combined
/// scores are within `tie` (relative) of the threshold.
inline ::testing::AssertionResult same_selection(const index_t* got, index_t count,
                                                 const brute_list& want, double tie) {
  if (count != static_cast<index_t>(want.keys.size()))
    return ::testing::AssertionFailure()
           << "count " << count << " != expected " << want.keys.size();
  for (index_t e = 1; e < count; ++e)
    if (got[e] <= got[e - 1]) return ::testing::AssertionFailure() << "not ascending at " << e;
  std::set<index_t> a(got, got + count), b(want.keys.begin(), want.keys.end());
  const double tol = tie * std::max(1.0, std::abs(want.threshold));
  for (index_t j : a)
    if (!b.count(j) && std::abs(want.score[j] - want.threshold) > tol)
      return ::testing::AssertionFailure()
             << "selected key " << j << " (score " << want.score[j]
             << ") is not in the brute-force set (threshold " << want.threshold << ")";
  for (index_t j : b)
    if (!a.count(j) && std::abs(want.score[j] - want.threshold) > tol)
      return ::testing::AssertionFailure()
             << "missed key " << j << " (score " << want.score[j] << ", threshold "
             << want.threshold << ")";
  return ::testing::AssertionSuccess();
}

}  // namespace attend::testing

#endif  // ATTEND_TESTS_SPARSE_SELECTION_ORACLE_HPP_
