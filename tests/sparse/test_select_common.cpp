// Selection utilities (select/common.hpp, select/scores.hpp) against straightforward
// re-implementations: top-k, cumulative-mass budget, pooling, softmax, Jensen-Shannon divergence,
// the small GEMM, engine scores and the last-q probe.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "attend/sparse/select/common.hpp"
#include "attend/sparse/select/scores.hpp"
#include "block_case.hpp"

namespace attend::testing {
namespace {

namespace sel = sparse::select;
const float kInf = std::numeric_limits<float>::infinity();

// Reference top-k: stable sort by value descending (lower index first on ties), drop -inf/NaN.
std::vector<index_t> ref_top_k(const std::vector<float>& s, index_t k) {
  std::vector<index_t> idx;
  for (index_t i = 0; i < index_t(s.size()); ++i)
    if (s[i] > -kInf) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(), [&](index_t a, index_t b) { return s[a] > s[b]; });
  idx.resize(std::min<std::size_t>(idx.size(), std::size_t(k)));
  std::sort(idx.begin(), idx.end());
  return idx;
}

TEST(SelectCommon, TopKMatchesSortWithTiesAndMaskedEntries) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> val(0, 9);
  for (int trial = 0; trial < 200; ++trial) {
    const index_t n = 1 + trial % 37;
    std::vector<float> s(static_cast<std::size_t>(n));
    for (auto& x : s) {
      const int v = val(rng);
      x = v == 0 ? -kInf : v == 1 ? std::nanf("") : float(v % 5);  // many ties
    }
    for (index_t k : {index_t(0), index_t(1), n / 2, n, n + 3}) {
      EXPECT_EQ(sel::top_k(s.data(), n, k), ref_top_k(s, k)) << "n " << n << " k " << k;
      std::vector<index_t> out(static_cast<std::size_t>(n) + 1), scratch(out.size());
      const index_t c = sel::top_k(s.data(), n, k, out.data(), scratch.data());
      out.resize(static_cast<std::size_t>(c));
      EXPECT_EQ(out, ref_top_k(s, k));
    }
  }
  EXPECT_THROW(sel::top_k(nullptr, -1, 2), invalid_argument);
}

TEST(SelectCommon, ArgsortDescending) {
  const std::vector<float> v = {1.0f, 3.0f, -kInf, 3.0f, 2.0f};
  std::vector<index_t> order(5);
  sel::argsort_desc(v.data(), 5, order.data());
  EXPECT_EQ(order, (std::vector<index_t>{1, 3, 4, 0, 2}));
}

TEST(SelectCommon, MassBudgetIsTheSmallestPrefixReachingGamma) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  for (int trial = 0; trial < 100; ++trial) {
    const index_t n = 1 + trial % 23;
    std::vector<float> w(static_cast<std::size_t>(n));
    for (auto& x : w) x = u(rng) < 0.2f ? 0.0f : u(rng);
    for (double gamma : {0.0, 0.3, 0.9, 1.0}) {
      std::vector<double> sorted(w.begin(), w.end());
      std::sort(sorted.rbegin(), sorted.rend());
      const double total = std::accumulate(sorted.begin(), sorted.end(), 0.0);
      index_t want = 0;
      if (total > 0 && gamma > 0) {
        double acc = 0;
        want = n;
        for (index_t c = 0; c < n; ++c) {
          acc += sorted[c];
          if (acc >= gamma * total * (1 - 1e-6)) {
            want = c + 1;
            break;
          }
        }
      }
      EXPECT_EQ(sel::mass_budget(w.data(), n, gamma), want) << "n " << n << " gamma " << gamma;
      std::vector<index_t> out(static_cast<std::size_t>(n));
      const index_t c = sel::top_mass(w.data(), n, gamma, 2, 5, out.data());
      EXPECT_EQ(c, std::min(std::clamp<index_t>(want, 2, 5), n));
    }
  }
  const float w[3] = {1, 1, 1};
  EXPECT_THROW(sel::mass_budget(w, 3, 1.5), invalid_argument);
  index_t out[3];
  EXPECT_THROW(sel::top_mass(w, 3, 0.5, 3, 2, out), invalid_argument);
}

TEST(SelectCommon, PoolRowsAllModesAndTypes) {
  std::mt19937 rng(3);
  auto t = tensor<bf16, 4>::make({1, 23, 2, 5});
  fill_uniform(t.view, rng);
  const view2<const bf16> x = t.cview().matrix(0, 1);  // strided rows
  for (auto mode : {sel::pool_mode::mean, sel::pool_mode::sum, sel::pool_mode::max,
                    sel::pool_mode::min}) {
    std::vector<float> out(5 * 5);
    sel::pool_rows(x, 5, mode, out.data());
    for (index_t b = 0; b < 5; ++b)
      for (index_t d = 0; d < 5; ++d) {
        const index_t r0 = b * 5, r1 = std::min<index_t>(23, r0 + 5);
        double acc = mode == sel::pool_mode::max ? -1e30 : mode == sel::pool_mode::min ? 1e30 : 0;
        for (index_t r = r0; r < r1; ++r) {
          const double v = to_float(x(r, d));
          if (mode == sel::pool_mode::max) acc = std::max(acc, v);
          else if (mode == sel::pool_mode::min) acc = std::min(acc, v);
          else acc += v;
        }
        if (mode == sel::pool_mode::mean) acc /= double(r1 - r0);
        EXPECT_NEAR(out[b * 5 + d], acc, 1e-5) << int(mode);
      }
  }
  const std::vector<float> v = {1, 2, -kInf, 4, 5, 6, 7};
  std::vector<float> o(3);
  sel::pool_vector(v.data(), 7, 3, sel::pool_mode::sum, o.data());
  EXPECT_EQ(o, (std::vector<float>{3, 15, 7}));
  sel::pool_vector(v.data(), 7, 3, sel::pool_mode::mean, o.data());
  EXPECT_EQ(o, (std::vector<float>{1, 5, 7}));
  sel::pool_vector(v.data(), 7, 3, sel::pool_mode::max, o.data());
  EXPECT_EQ(o, (std::vector<float>{2, 6, 7}));
  sel::pool_vector(v.data(), 7, 3, sel::pool_mode::min, o.data());
  EXPECT_EQ(o, (std::vector<float>{1, 4, 7}));
}

TEST(SelectCommon, SoftmaxAndJensenShannon) {
  std::vector<float> x = {0.0f, std::log(3.0f), -kInf};
  const float lse = sel::softmax(x.data(), 3);
  EXPECT_NEAR(x[0], 0.25f, 1e-6);
  EXPECT_NEAR(x[1], 0.75f, 1e-6);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_NEAR(lse, std::log(4.0f), 1e-6);
  std::vector<float> none = {-kInf, -kInf};
  EXPECT_EQ(sel::softmax(none.data(), 2), -kInf);
  EXPECT_EQ(none[0], 0.0f);

  const float p[3] = {0.5f, 0.5f, 0.0f}, q[3] = {0.0f, 0.0f, 2.0f}, r[3] = {1.0f, 2.0f, 1.0f};
  EXPECT_NEAR(sel::js_divergence(p, q, 3), std::log(2.0), 1e-9);       // disjoint supports
  EXPECT_NEAR(sel::js_divergence(p, p, 3), 0.0, 1e-12);
  EXPECT_NEAR(sel::js_divergence(p, r, 3), sel::js_divergence(r, p, 3), 1e-12);
  // Direct formula: m = (p + r) / 2 with r normalised to (0.25, 0.5, 0.25).
  const double a[3] = {0.5, 0.5, 0.0}, b[3] = {0.25, 0.5, 0.25};
  double want = 0;
  for (int i = 0; i < 3; ++i) {
    const double m = (a[i] + b[i]) / 2;
    if (a[i] > 0) want += 0.5 * a[i] * std::log(a[i] / m);
    if (b[i] > 0) want += 0.5 * b[i] * std::log(b[i] / m);
  }
  EXPECT_NEAR(sel::js_divergence(p, r, 3), want, 1e-9);
  EXPECT_NEAR(sel::js_distance(p, r, 3), std::sqrt(want), 1e-9);
}

TEST(SelectScores, GemmRowsMatchesNaive) {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-1, 1);
  for (index_t rows : {1, 3, 4, 9}) {
    for (index_t cols : {1, 8, 13, 40}) {
      const index_t dim = 19, ld = sel::padded_cols(cols);
      std::vector<float> a(rows * dim), b(cols * dim), bt(dim * ld), out(rows * ld, -7.0f);
      for (auto& x : a) x = u(rng);
      for (auto& x : b) x = u(rng);
      sel::pack_transposed(b.data(), dim, cols, dim, bt.data(), ld);
      sel::gemm_rows(a.data(), dim, rows, bt.data(), ld, ld, dim, 0.5f, out.data(), ld);
      for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < ld; ++c) {
          double want = 0;
          if (c < cols)
            for (index_t d = 0; d < dim; ++d) want += double(a[r * dim + d]) * b[c * dim + d];
          EXPECT_NEAR(out[r * ld + c], 0.5 * want, 1e-5) << rows << "x" << cols;
        }
    }
  }
}

TEST(SelectScores, ProbeMatchesDoubleSoftmax) {
  using Arch = xsimd::default_arch;
  sparse_case<float> t(1, 70, 90, 4, 2, 32, 5);
  const index_t last = 37, h = 3, seq_k = 90, off = 20;
  const index_t max_rows = 16;  // several engine row blocks
  using scratch_t = engine::scratch<Arch, float>;
  std::vector<float> ws(static_cast<std::size_t>(scratch_t::floats(max_rows, 32, 32) + 16));
  float* base = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(ws.data()) + 63) / 64 * 64);
  attend::detail::bump bump(base);
  const auto sc = scratch_t::carve(bump, max_rows, 32, 32);
  std::vector<float> s(sel::probe_floats(seq_k, max_rows)), vert(seq_k, 0.0f), slash(seq_k, 0.0f);
  const float scale = 1.0f / std::sqrt(32.0f);
  sel::probe_last_queries<Arch, 0>(t.q.cview(), t.k.cview(), t.v.cview(), 0, h, last, scale, sc,
                                   max_rows, s.data(), vert.data(), slash.data());
  std::vector<double> rv(seq_k, 0.0), rs(seq_k, 0.0), sc_row(seq_k);
  for (index_t i = 70 - last; i < 70; ++i) {
    const index_t p = off + i;
    double m = -1e300, sum = 0;
    for (index_t j = 0; j <= p; ++j) {
      double d = 0;
      for (index_t c = 0; c < 32; ++c) d += double(t.q.view(0, i, h, c)) * t.k.view(0, j, h / 2, c);
      sc_row[j] = d * scale;
      m = std::max(m, sc_row[j]);
    }
    for (index_t j = 0; j <= p; ++j) sum += std::exp(sc_row[j] - m);
    for (index_t j = 0; j <= p; ++j) {
      const double a = std::exp(sc_row[j] - m) / sum;
      rv[j] += a;
      rs[p - j] += a;
    }
  }
  for (index_t j = 0; j < seq_k; ++j) {
    EXPECT_NEAR(vert[j], rv[j], 1e-5) << j;
    EXPECT_NEAR(slash[j], rs[j], 1e-5) << j;
  }
}

}  // namespace
}  // namespace attend::testing
