// DHSA: selection equals brute force (chunk scores upsampled to tokens, local keys forced),
// attention equals the oracle over its lists. HyperAttention: exact in its exact limits (one
// block, causal recursion with exact rectangles), error shrinks as the sample count grows,
// deterministic and thread-count independent.
#include <gtest/gtest.h>

#include <omp.h>

#include "attend/sparse/select/dhsa.hpp"
#include "attend/sparse/select/hyper.hpp"
#include "selection_oracle.hpp"
#include "token_oracle.hpp"

namespace attend::testing {
namespace {

// ---- DHSA ---------------------------------------------------------------------------------

void check_dhsa(index_t sq, index_t sk, index_t hq, index_t hkv, const std::vector<index_t>& bounds,
                index_t budget, index_t block_q, index_t chunk, index_t local, unsigned seed) {
  const index_t d = 32;
  std::mt19937 rng(seed);
  auto q = tensor<float, 4>::make({1, sq, hq, d});
  auto k = tensor<float, 4>::make({1, sk, hkv, d}), v = tensor<float, 4>::make({1, sk, hkv, d});
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  fill_uniform(v.view, rng);
  sparse::dhsa_params p;
  p.budget = budget;
  p.block_q = block_q;
  p.chunk = chunk;
  p.local = local;
  if (!bounds.empty()) p.boundaries = make_view<const index_t>(bounds.data(), index_t(bounds.size()));
  sparse::token_list_buffer lists;
  auto o = tensor<float, 4>::make({1, sq, hq, d});
  sparse::dhsa_attention(q.view, k.view, v.view, o.view, lists, p);
  // Brute force: chunk of every key, head-averaged sqrt(len)-scaled means, token scores.
  std::vector<index_t> st = bounds;
  if (st.empty())
    for (index_t t = 0; t < sk; t += chunk) st.push_back(t);
  st.push_back(sk);
  std::vector<index_t> chunk_of(sk);
  std::vector<std::vector<double>> rep(st.size() - 1, std::vector<double>(d, 0.0));
  for (std::size_t c = 0; c + 1 < st.size(); ++c) {
    const index_t n = st[c + 1] - st[c];
    for (index_t t = st[c]; t < st[c + 1]; ++t) {
      chunk_of[t] = index_t(c);
      for (index_t h = 0; h < hkv; ++h)
        for (index_t x = 0; x < d; ++x) rep[c][x] += k.view(0, t, h, x);
    }
    for (index_t x = 0; x < d; ++x) rep[c][x] *= std::sqrt(double(n)) / double(n * hkv);
  }
  for (index_t t = 0; t < lists.tiles(); ++t) {
    const index_t q0 = t * block_q, q1 = std::min(sq, q0 + block_q);
    const index_t t_end = sk - sq + q1;
    std::vector<double> qbar(d, 0.0);
    for (index_t i = q0; i < q1; ++i)
      for (index_t h = 0; h < hq; ++h)
        for (index_t x = 0; x < d; ++x) qbar[x] += q.view(0, i, h, x);
    for (index_t x = 0; x < d; ++x) qbar[x] *= std::sqrt(double(q1 - q0)) / double((q1 - q0) * hq);
    brute_list want;
    if (t_end <= budget) {
      for (index_t j = 0; j < t_end; ++j) want.keys.push_back(j);
      want.score.assign(sk, 0.0);
    } else {
      std::vector<double> score(sk, -std::numeric_limits<double>::infinity());
      for (index_t j = 0; j < t_end - local; ++j) {
        double s = 0;
        for (index_t x = 0; x < d; ++x) s += qbar[x] * rep[chunk_of[j]][x];
        score[j] = s;
      }
      want = brute_top(score, 0, t_end - local, budget - local);
      for (index_t j = t_end - local; j < t_end; ++j) want.keys.push_back(j);
    }
    EXPECT_TRUE(same_selection(lists.list(0, 0, t), lists.count(0, 0, t), want, 1e-5)) << "tile " << t;
  }
  auto mask = gather_visibility(lists.view(), 1, hq, hkv, sq, sk, {}, 0, 0, true);
  attention_params rp;
  rp.mask = mask.view;
  auto ro = tensor<double, 4>::make({1, sq, hq, d});
  reference::attention(q.cview(), k.cview(), v.cview(), rp, ro.view);
  EXPECT_TRUE(all_close(o.cview(), ro.cview(), 2e-5, 2e-4));
}

TEST(Dhsa, SelectionEqualsBruteForce) {
  check_dhsa(300, 300, 4, 2, {}, 96, 32, 8, 16, 1500);        // fixed chunks
  check_dhsa(5, 2000, 4, 1, {}, 256, 128, 16, 64, 1501);      // chunked prefill continuation
  check_dhsa(1, 1500, 2, 2, {}, 200, 1, 16, 64, 1502);        // decode
  std::vector<index_t> b{0, 3, 10, 11, 40, 90, 100, 170, 171, 300, 333};
  check_dhsa(120, 400, 6, 3, b, 64, 40, 16, 10, 1503);        // variable chunks
}

TEST(Dhsa, RejectsBadBoundaries) {
  auto q = tensor<float, 4>::make({1, 1, 2, 16});
  auto k = tensor<float, 4>::make({1, 100, 1, 16});
  sparse::token_list_buffer lists;
  sparse::dhsa_params p;
  const index_t bad1[] = {1, 5, 9};
  p.boundaries = make_view(bad1, 3);
  EXPECT_THROW(sparse::dhsa_select(q.view, k.view, lists, p), invalid_argument);
  const index_t bad2[] = {0, 5, 5, 9};
  p.boundaries = make_view(bad2, 4);
  EXPECT_THROW(sparse::dhsa_select(q.view, k.view, lists, p), invalid_argument);
  p.boundaries = {};
  p.local = p.budget + 1;
  EXPECT_THROW(sparse::dhsa_select(q.view, k.view, lists, p), invalid_argument);
}

// ---- HyperAttention -----------------------------------------------------------------------

struct hyper_data {
  tensor<float, 4> q, k, v;
  hyper_data(index_t sq, index_t sk, index_t hq, index_t hkv, index_t d, unsigned seed)
      : q(tensor<float, 4>::make({1, sq, hq, d})),
        k(tensor<float, 4>::make({1, sk, hkv, d})),
        v(tensor<float, 4>::make({1, sk, hkv, d})) {
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng, -1.5f, 1.5f);
    fill_uniform(k.view, rng, -1.5f, 1.5f);
    fill_uniform(v.view, rng);
  }
  ::testing::AssertionResult exact(const view4<float>& o, const view3<float>& lse, bool causal) {
    attention_params rp;
    rp.causal = causal;
    auto ro = tensor<double, 4>::make(o.extents());
    auto rl = tensor<double, 3>::make(lse.extents());
    reference::attention(q.cview(), k.cview(), v.cview(), rp, ro.view, rl.view);
    auto r = all_close(view4<const float>(o), ro.cview(), 2e-5, 2e-4);
    if (!r) return r;
    return all_close(view3<const float>(lse), rl.cview(), 2e-5, 2e-4);
  }
};

TEST(Hyper, OneBlockIsExact) {
  hyper_data t(300, 250, 4, 2, 32, 1600);
  auto o = tensor<float, 4>::make({1, 300, 4, 32});
  auto lse = tensor<float, 3>::make({1, 4, 300});
  sparse::hyper_params p;
  p.causal = false;
  p.min_seq_len = 16;
  p.block_size = 256;  // >= keys: one diagonal block holds every key, no residual
  p.lse = lse.view;
  sparse::hyper_attention(t.q.view, t.k.view, t.v.view, o.view, p);
  EXPECT_TRUE(t.exact(o.view, lse.view, false));
}

TEST(Hyper, CausalRecursionWithExactRectanglesIsExact) {
  for (index_t n : {index_t{200}, index_t{333}}) {
    hyper_data t(n, n, 4, 1, 32, 1700 + unsigned(n));
    auto o = tensor<float, 4>::make({1, n, 4, 32});
    auto lse = tensor<float, 3>::make({1, 4, n});
    sparse::hyper_params p;
    p.min_seq_len = 40;   // recursion down to 40 queries
    p.block_size = 4096;  // every rectangle is one exact block
    p.lse = lse.view;
    sparse::hyper_attention(t.q.view, t.k.view, t.v.view, o.view, p);
    EXPECT_TRUE(t.exact(o.view, lse.view, true)) << n;
  }
}

double hyper_error(index_t samples, unsigned seed) {
  const index_t n = 2048, hq = 2, d = 32;
  hyper_data t(n, n, hq, 1, d, seed);
  auto o = tensor<float, 4>::make({1, n, hq, d}), od = tensor<float, 4>::make({1, n, hq, d});
  sparse::hyper_params p;
  p.causal = false;
  p.min_seq_len = 64;
  p.block_size = 64;
  p.sample_size = samples;
  p.seed = seed;
  sparse::hyper_attention(t.q.view, t.k.view, t.v.view, o.view, p);
  attention(t.q.view, t.k.view, t.v.view, od.view);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < o.storage.size(); ++i) {
    num += (o.storage[i] - od.storage[i]) * (o.storage[i] - od.storage[i]);
    den += od.storage[i] * od.storage[i];
  }
  return std::sqrt(num / den);
}

TEST(Hyper, ErrorShrinksAsTheSampleCountGrows) {
  double e[3] = {0, 0, 0};
  const index_t m[3] = {16, 256, 2048};
  for (unsigned s = 0; s < 3; ++s)
    for (int i = 0; i < 3; ++i) e[i] += hyper_error(m[i], 1800 + s) / 3;
  EXPECT_LT(e[1], 0.6 * e[0]) << e[0] << " " << e[1];
  EXPECT_LT(e[2], 0.6 * e[1]) << e[1] << " " << e[2];
}

TEST(Hyper, DeterministicAndThreadCountIndependent) {
  const index_t n = 1000;
  hyper_data t(n, n, 4, 2, 32, 1900);
  auto o1 = tensor<float, 4>::make({1, n, 4, 32}), o2 = tensor<float, 4>::make({1, n, 4, 32});
  sparse::hyper_params p;
  p.min_seq_len = 128;
  p.block_size = 32;
  p.sample_size = 64;
  p.seed = 7;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  sparse::hyper_attention(t.q.view, t.k.view, t.v.view, o1.view, p);
  omp_set_num_threads(std::max(2, saved));
  sparse::hyper_attention(t.q.view, t.k.view, t.v.view, o2.view, p);
  omp_set_num_threads(saved);
  EXPECT_TRUE(bitwise_equal(o1.cview(), o2.cview()));
  for (float x : o1.storage) ASSERT_TRUE(std::isfinite(x));
}

TEST(Hyper, RejectsBadArguments) {
  hyper_data t(100, 120, 2, 1, 16, 2000);
  auto o = tensor<float, 4>::make({1, 100, 2, 16});
  sparse::hyper_params p;  // causal needs seq_q == seq_k
  EXPECT_THROW(sparse::hyper_attention(t.q.view, t.k.view, t.v.view, o.view, p), invalid_argument);
  p.causal = false;
  p.lsh_projections = 0;
  EXPECT_THROW(sparse::hyper_attention(t.q.view, t.k.view, t.v.view, o.view, p), invalid_argument);
  p.lsh_projections = 7;
  EXPECT_NO_THROW(sparse::hyper_attention(t.q.view, t.k.view, t.v.view, o.view, p));
}

}  // namespace
}  // namespace attend::testing
