// simd::exp: the documented 2-ulp bound over the whole normal range, exact specials, and the
// flush-to-zero / overflow cut-offs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "attend/simd/exp.hpp"

namespace attend {
namespace {

using Arch = xsimd::default_arch;
using V = simd::vfloat<Arch>;
constexpr std::size_t W = V::size;

template <V (*Fn)(V)>
std::vector<float> apply(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  std::size_t i = 0;
  for (; i + W <= x.size(); i += W) Fn(V::load_unaligned(&x[i])).store_unaligned(&y[i]);
  for (; i < x.size(); ++i) {  // tail through a padded register
    alignas(64) float in[W] = {}, out[W];
    in[0] = x[i];
    Fn(V::load_aligned(in)).store_aligned(out);
    y[i] = out[0];
  }
  return y;
}

std::vector<float> exp_all(const std::vector<float>& x) { return apply<simd::call_exp<Arch>>(x); }
std::vector<float> exp_nonpositive_all(const std::vector<float>& x) {
  return apply<simd::call_exp_nonpositive<Arch>>(x);
}

/// Distance in units in the last place between a float and the exact value.
double ulp_error(float got, double exact) {
  const float rounded = static_cast<float>(exact);
  const double ulp = std::abs(double(std::nextafter(rounded, std::numeric_limits<float>::infinity())) - double(rounded));
  return std::abs(double(got) - exact) / ulp;
}

TEST(SimdExp, SpecialsAreExact) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {-inf, inf, std::numeric_limits<float>::quiet_NaN(), 0.0f, -0.0f,
                                -87.5f, -100.0f, -1e30f, 89.0f, 1e30f};
  const auto y = exp_all(x);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], inf);
  EXPECT_TRUE(std::isnan(y[2]));
  EXPECT_EQ(y[3], 1.0f);
  EXPECT_EQ(y[4], 1.0f);
  EXPECT_EQ(y[5], 0.0f);  // below ln(FLT_MIN): flushed, not subnormal
  EXPECT_EQ(y[6], 0.0f);
  EXPECT_EQ(y[7], 0.0f);
  EXPECT_EQ(y[8], inf);
  EXPECT_EQ(y[9], inf);
}

TEST(SimdExp, TwoUlpOverTheNormalRange) {
  // Every 97th float pattern between ln(FLT_MIN) and ln(FLT_MAX), both signs: ~19M points.
  std::vector<float> x;
  for (std::uint32_t u = 0; u < 0x42B17218u; u += 97) {  // 0 .. 88.7228
    float f;
    std::memcpy(&f, &u, 4);
    x.push_back(f);
    if (f <= 87.3365f) x.push_back(-f);
  }
  const auto y = exp_all(x);
  double worst = 0;
  float worst_x = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double e = ulp_error(y[i], std::exp(double(x[i])));
    if (e > worst) {
      worst = e;
      worst_x = x[i];
    }
  }
  EXPECT_LE(worst, 2.0) << "at x = " << worst_x;
}

TEST(SimdExp, ExtremesOfTheRange) {
  const float lo = std::log(std::numeric_limits<float>::min());
  const std::vector<float> x = {std::nextafter(lo, 0.0f), 88.0f, 88.5f, 88.72f};
  const auto y = exp_all(x);
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_TRUE(std::isfinite(y[i])) << x[i];
    EXPECT_LE(ulp_error(y[i], std::exp(double(x[i]))), 2.0) << x[i];
  }
}

}  // namespace
}  // namespace attend

namespace attend {
namespace {

TEST(SimdExpNonpositive, SpecialsAreExact) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> x = {-inf, std::numeric_limits<float>::quiet_NaN(), 0.0f, -0.0f,
                                -87.5f, -1e30f};
  const auto y = exp_nonpositive_all(x);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_TRUE(std::isnan(y[1]));
  EXPECT_EQ(y[2], 1.0f);
  EXPECT_EQ(y[3], 1.0f);
  EXPECT_EQ(y[4], 0.0f);
  EXPECT_EQ(y[5], 0.0f);
}

TEST(SimdExpNonpositive, SameBoundAsExpOnItsDomain) {
  std::vector<float> x;
  for (std::uint32_t u = 0; u < 0x42AEAC4Fu; u += 61) {  // 0 .. 87.3365 (ln FLT_MIN)
    float f;
    std::memcpy(&f, &u, 4);
    x.push_back(-f);
  }
  const auto y = exp_nonpositive_all(x);
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, ulp_error(y[i], std::exp(double(x[i]))));
  EXPECT_LE(worst, 2.0);
}

}  // namespace
}  // namespace attend
