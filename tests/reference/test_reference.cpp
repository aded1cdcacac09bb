// The oracle against cases worked out by hand and against identities that hold for any input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "attend/reference/naive.hpp"
#include "common/tensors.hpp"

namespace attend {
namespace {

using testing::fill_uniform;
using testing::tensor;

struct small_case {
  tensor<float, 4> q, k, v;
  tensor<double, 4> o;
  tensor<double, 3> lse;
};

small_case make(index_t b, index_t lq, index_t lk, index_t hq, index_t hkv, index_t dk, index_t dv,
                unsigned seed = 1) {
  small_case c{tensor<float, 4>::make({b, lq, hq, dk}), tensor<float, 4>::make({b, lk, hkv, dk}),
               tensor<float, 4>::make({b, lk, hkv, dv}), tensor<double, 4>::make({b, lq, hq, dv}),
               tensor<double, 3>::make({b, hq, lq})};
  std::mt19937 rng(seed);
  fill_uniform(c.q.view, rng);
  fill_uniform(c.k.view, rng);
  fill_uniform(c.v.view, rng);
  return c;
}

void run(small_case& c, const attention_params& p) {
  reference::attention(c.q.cview(), c.k.cview(), c.v.cview(), p, c.o.view, c.lse.view);
}

TEST(Reference, HandWorkedTwoKeys) {
  // s = [0, ln 3] -> p = [1/4, 3/4]; o = 4/4 + 8*3/4 = 7; lse = ln 4.
  auto c = make(1, 1, 2, 1, 1, 1, 1);
  c.q.view(0, 0, 0, 0) = 1.0f;
  c.k.view(0, 0, 0, 0) = 0.0f;
  c.k.view(0, 1, 0, 0) = static_cast<float>(std::log(3.0));
  c.v.view(0, 0, 0, 0) = 4.0f;
  c.v.view(0, 1, 0, 0) = 8.0f;
  attention_params p;
  p.scale = 1.0f;
  run(c, p);
  EXPECT_NEAR(c.o.view(0, 0, 0, 0), 7.0, 1e-6);
  EXPECT_NEAR(c.lse.view(0, 0, 0), std::log(4.0), 1e-6);
}

TEST(Reference, CausalIsBottomRightAligned) {
  // Lq = 2, Lk = 3, equal scores: query 0 sits at position 1 and averages keys 0..1, query 1
  // averages all three.
  auto c = make(1, 2, 3, 1, 1, 1, 1);
  for (index_t j = 0; j < 3; ++j) {
    c.k.view(0, j, 0, 0) = 0.0f;
    c.v.view(0, j, 0, 0) = float(j + 1);
  }
  attention_params p;
  p.causal = true;
  run(c, p);
  EXPECT_NEAR(c.o.view(0, 0, 0, 0), 1.5, 1e-12);
  EXPECT_NEAR(c.o.view(0, 1, 0, 0), 2.0, 1e-12);
  EXPECT_NEAR(c.lse.view(0, 0, 0), std::log(2.0), 1e-12);
  EXPECT_NEAR(c.lse.view(0, 0, 1), std::log(3.0), 1e-12);
}

TEST(Reference, SlidingWindowBounds) {
  auto c = make(1, 1, 5, 1, 1, 1, 1);
  for (index_t j = 0; j < 5; ++j) {
    c.k.view(0, j, 0, 0) = 0.0f;
    c.v.view(0, j, 0, 0) = float(j);
  }
  attention_params p;  // the single query sits at position 4
  p.window_left = 1;   // keys 3, 4
  run(c, p);
  EXPECT_NEAR(c.o.view(0, 0, 0, 0), 3.5, 1e-12);
  p.window_left = 3;
  p.window_right = -1;
  run(c, p);
  EXPECT_NEAR(c.o.view(0, 0, 0, 0), 2.5, 1e-12);  // keys 1..4
}

TEST(Reference, SoftcapAndAlibiClosedForms) {
  auto c = make(1, 1, 2, 1, 1, 1, 1);
  c.q.view(0, 0, 0, 0) = 2.0f;
  c.k.view(0, 0, 0, 0) = 3.0f;  // s0 = 6
  c.k.view(0, 1, 0, 0) = -1.0f; // s1 = -2
  c.v.view(0, 0, 0, 0) = 1.0f;
  c.v.view(0, 1, 0, 0) = 0.0f;
  attention_params p;
  p.scale = 1.0f;
  p.softcap = 5.0f;
  run(c, p);
  const double s0 = 5 * std::tanh(6.0 / 5), s1 = 5 * std::tanh(-2.0 / 5);
  EXPECT_NEAR(c.o.view(0, 0, 0, 0), std::exp(s0) / (std::exp(s0) + std::exp(s1)), 1e-12);

  const float slope = 0.5f;
  p = {};
  p.scale = 1.0f;
  p.alibi_slopes = make_view(&slope, 1);
  run(c, p);  // query at position 1: key 0 is one step away, key 1 none
  const double t0 = 6.0 - 0.5, t1 = -2.0;
  EXPECT_NEAR(c.o.view(0, 0, 0, 0), std::exp(t0) / (std::exp(t0) + std::exp(t1)), 1e-12);
}

TEST(Reference, ProbabilitiesSumToOne) {
  // With v = 1 everywhere o = sum_j p_ij = 1 for every row that sees a key.
  auto c = make(2, 9, 13, 4, 2, 8, 3);
  for (auto& x : c.v.storage) x = 1.0f;
  attention_params p;
  p.causal = true;
  p.window_left = 4;
  run(c, p);
  for (double x : c.o.storage) EXPECT_NEAR(x, 1.0, 1e-12);
}

TEST(Reference, SinkTakesExactlyItsShare) {
  // o = 1 - exp(sigma - lse) with v = 1; lse includes the sink.
  auto c = make(1, 4, 6, 2, 1, 8, 2);
  for (auto& x : c.v.storage) x = 1.0f;
  const float sinks[2] = {0.3f, -1.0f};
  attention_params p;
  p.sinks = make_view(sinks, 2);
  run(c, p);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 4; ++i)
      EXPECT_NEAR(c.o.view(0, i, h, 0), 1.0 - std::exp(sinks[h] - c.lse.view(0, h, i)), 1e-12);
}

TEST(Reference, LseIsTheLogOfTheScoreSum) {
  auto c = make(1, 3, 7, 1, 1, 5, 2);
  attention_params p;
  run(c, p);
  for (index_t i = 0; i < 3; ++i) {
    double sum = 0;
    for (index_t j = 0; j < 7; ++j) {
      double dot = 0;
      for (index_t d = 0; d < 5; ++d) dot += double(c.q.view(0, i, 0, d)) * c.k.view(0, j, 0, d);
      sum += std::exp(dot / std::sqrt(5.0));
    }
    EXPECT_NEAR(c.lse.view(0, 0, i), std::log(sum), 1e-12);
  }
}

TEST(Reference, ConstantBiasShiftsLseOnly) {
  auto c = make(1, 3, 5, 2, 2, 4, 4);
  run(c, {});
  const auto o0 = c.o.storage;
  const auto l0 = c.lse.storage;
  std::vector<float> bias(3 * 5, 2.5f);
  attention_params p;
  p.bias = tensor_view<const float, 4>(bias.data(), {1, 1, 3, 5}, {0, 0, 5, 1});
  run(c, p);
  for (std::size_t i = 0; i < o0.size(); ++i) EXPECT_NEAR(c.o.storage[i], o0[i], 1e-12);
  for (std::size_t i = 0; i < l0.size(); ++i) EXPECT_NEAR(c.lse.storage[i], l0[i] + 2.5, 1e-12);
}

TEST(Reference, FullyMaskedRowsGiveZeroAndMinusInfinity) {
  auto c = make(1, 2, 4, 1, 1, 4, 3);
  std::vector<char> keep(2 * 4, 1);
  for (int j = 0; j < 4; ++j) keep[j] = 0;  // query 0 sees nothing
  attention_params p;
  p.mask = tensor_view<const bool, 4>(reinterpret_cast<const bool*>(keep.data()), {1, 1, 2, 4},
                                      {0, 0, 4, 1});
  run(c, p);
  for (index_t d = 0; d < 3; ++d) EXPECT_EQ(c.o.view(0, 0, 0, d), 0.0);
  EXPECT_EQ(c.lse.view(0, 0, 0), -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isfinite(c.lse.view(0, 0, 1)));
}

TEST(Reference, GqaHeadsReadTheirGroupsKv) {
  // Each KV head's values are a constant: head h of q must return the constant of head h / G.
  auto c = make(1, 2, 3, 6, 3, 4, 2);
  for (index_t j = 0; j < 3; ++j)
    for (index_t hk = 0; hk < 3; ++hk)
      for (index_t d = 0; d < 2; ++d) c.v.view(0, j, hk, d) = float(10 * hk + d);
  run(c, {});
  for (index_t i = 0; i < 2; ++i)
    for (index_t h = 0; h < 6; ++h)
      for (index_t d = 0; d < 2; ++d) EXPECT_NEAR(c.o.view(0, i, h, d), 10.0 * (h / 2) + d, 1e-12);
}

TEST(Reference, KvLensEqualATruncatedCache) {
  auto c = make(2, 3, 9, 2, 1, 4, 4);
  const index_t lens[2] = {5, 9};
  attention_params p;
  p.causal = true;
  p.kv_lens = make_view(lens, 2);
  run(c, p);
  // batch 0 against the first 5 keys only
  auto t = make(1, 3, 5, 2, 1, 4, 4);
  for (index_t j = 0; j < 5; ++j)
    for (index_t d = 0; d < 4; ++d) {
      t.k.view(0, j, 0, d) = c.k.view(0, j, 0, d);
      t.v.view(0, j, 0, d) = c.v.view(0, j, 0, d);
    }
  for (index_t i = 0; i < 3; ++i)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 4; ++d) t.q.view(0, i, h, d) = c.q.view(0, i, h, d);
  attention_params pt;
  pt.causal = true;
  run(t, pt);
  for (index_t i = 0; i < 3; ++i)
    for (index_t h = 0; h < 2; ++h)
      for (index_t d = 0; d < 4; ++d) EXPECT_NEAR(c.o.view(0, i, h, d), t.o.view(0, i, h, d), 1e-12);
}

TEST(Reference, ValueDimMayDifferFromKeyDim) {
  auto c = make(1, 2, 3, 1, 1, 6, 1);
  for (index_t j = 0; j < 3; ++j) c.v.view(0, j, 0, 0) = 2.0f;
  run(c, {});
  EXPECT_NEAR(c.o.view(0, 0, 0, 0), 2.0, 1e-12);
  EXPECT_NEAR(c.o.view(0, 1, 0, 0), 2.0, 1e-12);
}

}  // namespace
}  // namespace attend
