// select::top_k_long (the top-k of a score per cached token, in vectorised streaming passes)
// equals select::top_k, the nth_element oracle: with ties, NaN and -inf entries, signed zeros and
// extreme values, and a trial bound that must be rejected; the chosen scores it can return are
// the scores at the chosen indices. Built for every ISA the kernels target (native, AVX2,
// AVX-512), since its passes are SIMD code.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <vector>

#include "attend/sparse/select/common.hpp"

namespace attend {
namespace {

std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

TEST(TopkLong, EqualsTopK) {
  std::mt19937 rng(1000);
  std::uniform_int_distribution<int> level(0, 40);
  for (index_t n : {1, 2, 17, 333, 5000, 70000})
    for (index_t k : {index_t{1}, index_t{5}, index_t{100}, n / 2 + 1, n, n + 3}) {
      std::vector<float> s(static_cast<std::size_t>(n));
      for (auto& x : s) x = static_cast<float>(level(rng)) * 0.25f;  // many ties
      for (index_t i = 0; i < n; i += 7) s[i] = -std::numeric_limits<float>::infinity();
      for (index_t i = 3; i < n; i += 11) s[i] = std::numeric_limits<float>::quiet_NaN();
      const auto want = sparse::select::top_k(s.data(), n, k);
      std::vector<index_t> got(static_cast<std::size_t>(std::min(k, n)));
      std::vector<float> scratch(static_cast<std::size_t>(sparse::select::top_k_long_scratch(n)));
      const index_t c = sparse::select::top_k_long(s.data(), n, k, got.data(), scratch.data());
      got.resize(static_cast<std::size_t>(c));
      EXPECT_EQ(got, want) << "n " << n << " k " << k;
      // With room for the chosen scores: the same list, and each score beside its index.
      std::vector<index_t> again(got.size() + 1);
      std::vector<float> values(got.size() + 1, -1.0f);
      ASSERT_EQ(sparse::select::top_k_long(s.data(), n, k, again.data(), scratch.data(),
                                           values.data()),
                c);
      for (index_t e = 0; e < c; ++e) {
        EXPECT_EQ(again[e], got[e]);
        EXPECT_EQ(bits_of(values[e]), bits_of(s[got[e]])) << "n " << n << " k " << k;
      }
    }
}

TEST(TopkLong, SignedZerosInfinitiesAndExtremes) {
  // The threshold search bisects on integer keys that order floats: negative values, -0 == +0
  // (a tie, lower index first), denormals, +inf and the largest finite magnitudes must rank as
  // the float comparison ranks them.
  const float inf = std::numeric_limits<float>::infinity();
  const float pool[] = {-0.0f, 0.0f, -1.5f, 1.5f, 1e-42f, -1e-42f, inf, -inf,
                        std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                        std::numeric_limits<float>::quiet_NaN(), -2.0f, 2.0f};
  std::mt19937 rng(1002);
  std::uniform_int_distribution<int> pick(0, static_cast<int>(std::size(pool)) - 1);
  for (index_t n : {13, 600, 40000})
    for (index_t k : {index_t{1}, index_t{3}, n / 8, n / 2, n - 1}) {
      std::vector<float> s(static_cast<std::size_t>(n));
      for (auto& x : s) x = pool[pick(rng)];
      const auto want = sparse::select::top_k(s.data(), n, k);
      std::vector<index_t> got(static_cast<std::size_t>(std::min(k, n)));
      std::vector<float> scratch(static_cast<std::size_t>(sparse::select::top_k_long_scratch(n)));
      got.resize(static_cast<std::size_t>(
          sparse::select::top_k_long(s.data(), n, k, got.data(), scratch.data())));
      EXPECT_EQ(got, want) << "n " << n << " k " << k;
    }
}

TEST(TopkLong, BoundFromAnUnrepresentativeSample) {
  // top_k_long first tries a bound from every 4th strided group: here those groups hold all the
  // large scores (the trial bound is too high and must be rejected) or all the small ones (the
  // bound is valid but weak).
  std::mt19937 rng(1001);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const index_t n = 1 << 17, k = 2048, groups = n / 16;
  for (const bool sample_high : {true, false}) {
    std::vector<float> s(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i)
      s[i] = u(rng) + ((i % groups) % 4 == 0 ? (sample_high ? 1.0f : -1.0f) : 0.0f);
    const auto want = sparse::select::top_k(s.data(), n, k);
    std::vector<index_t> got(static_cast<std::size_t>(k));
    std::vector<float> scratch(static_cast<std::size_t>(sparse::select::top_k_long_scratch(n)));
    got.resize(static_cast<std::size_t>(
        sparse::select::top_k_long(s.data(), n, k, got.data(), scratch.data())));
    EXPECT_EQ(got, want) << "sample_high " << sample_high;
  }
}

}  // namespace
}  // namespace attend
