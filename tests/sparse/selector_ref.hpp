// Shared pieces of the selector tests: double-precision scores, softmax rows, a stable top-k
// and the cumulative budget, written directly (independent of select/common.hpp), and the
// planted-needle inputs.
#ifndef ATTEND_TESTS_SPARSE_SELECTOR_REF_HPP_
#define ATTEND_TESTS_SPARSE_SELECTOR_REF_HPP_

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "block_case.hpp"

namespace attend::testing::ref {

/// Indices (ascending) of the k largest values, ties to the lower index.
inline std::vector<index_t> top(const std::vector<double>& v, index_t k) {
  std::vector<index_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](index_t a, index_t b) { return v[a] > v[b]; });
  idx.resize(std::min<std::size_t>(idx.size(), std::size_t(std::max<index_t>(0, k))));
  std::sort(idx.begin(), idx.end());
  return idx;
}

/// Fewest largest entries holding gamma of the total (0 for a zero total).
inline index_t budget(std::vector<double> v, double gamma) {
  std::sort(v.rbegin(), v.rend());
  const double total = std::accumulate(v.begin(), v.end(), 0.0);
  if (total <= 0 || gamma <= 0) return 0;
  double acc = 0;
  for (std::size_t c = 0; c < v.size(); ++c) {
    acc += v[c];
    if (acc >= gamma * total * (1 - 1e-6)) return index_t(c + 1);
  }
  return index_t(v.size());
}

inline void softmax(std::vector<double>& x) {
  double m = -1e300;
  for (double v : x) m = std::max(m, v);
  double s = 0;
  for (double& v : x) s += (v = (v == -1e300 ? 0.0 : std::exp(v - m)));
  for (double& v : x) v /= s;
}

/// Softmax row of query i (query head h) over keys j <= pos, scale 1/sqrt(d): [pos + 1].
template <class KV>
std::vector<double> attention_row(const sparse_case<KV>& t, index_t b, index_t h, index_t i) {
  const index_t pos = t.seq_k - t.seq_q + i, hk = h / (t.heads_q / t.heads_kv);
  std::vector<double> s(static_cast<std::size_t>(pos + 1));
  for (index_t j = 0; j <= pos; ++j) {
    double d = 0;
    for (index_t c = 0; c < t.dim; ++c)
      d += double(t.q.view(b, i, h, c)) * double(to_float(t.k.view(b, j, hk, c)));
    s[j] = d / std::sqrt(double(t.dim));
  }
  softmax(s);
  return s;
}

/// Mean of keys [j0, j1) of KV head hk.
template <class KV>
std::vector<double> key_mean(const sparse_case<KV>& t, index_t b, index_t hk, index_t j0,
                             index_t j1) {
  std::vector<double> m(static_cast<std::size_t>(t.dim), 0.0);
  for (index_t j = j0; j < j1; ++j)
    for (index_t c = 0; c < t.dim; ++c) m[c] += to_float(t.k.view(b, j, hk, c));
  for (double& x : m) x /= double(j1 - j0);
  return m;
}

/// Plants a needle: dimension 0 of every query is 2, of key `at` (every KV head) 30, the rest
/// of q and k stays small noise; the needle then holds almost all the mass of every later row.
template <class KV>
void plant_needle(sparse_case<KV>& t, index_t at) {
  for (index_t b = 0; b < t.batch; ++b) {
    for (index_t i = 0; i < t.seq_q; ++i)
      for (index_t h = 0; h < t.heads_q; ++h) t.q.view(b, i, h, 0) = 2.0f;
    for (index_t h = 0; h < t.heads_kv; ++h) t.k.view(b, at, h, 0) = from_float<KV>(30.0f);
  }
}

/// Row r's blocks of a mask as a vector.
inline std::vector<index_t> blocks(const sparse::block_mask& m, index_t r) {
  const auto row = m.row(r);
  return std::vector<index_t>(row.blocks, row.blocks + row.count);
}
inline std::vector<index_t> columns(const sparse::block_mask& m, index_t r) {
  const auto row = m.row(r);
  return std::vector<index_t>(row.columns, row.columns + row.column_count);
}

}  // namespace attend::testing::ref

#endif  // ATTEND_TESTS_SPARSE_SELECTOR_REF_HPP_
