// bf16 / fp16 conversions: exhaustive over all 65536 patterns of each, against oracles written
// here from the IEEE definitions (decode by ldexp; encode by nearest-of-two-neighbours search).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "attend/core/dtype.hpp"

namespace attend {
namespace {

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

/// binary16 decoded from its definition.
double half_value(std::uint16_t h) {
  const int sign = (h & 0x8000) ? -1 : 1;
  const int e = (h >> 10) & 0x1F;
  const int m = h & 0x3FF;
  if (e == 0x1F) return m ? std::numeric_limits<double>::quiet_NaN()
                          : sign * std::numeric_limits<double>::infinity();
  if (e == 0) return sign * std::ldexp(double(m), -24);
  return sign * std::ldexp(1.0 + m / 1024.0, e - 15);
}

bool is_half_nan(std::uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0; }
bool is_bf16_nan(std::uint16_t h) { return (h & 0x7F80) == 0x7F80 && (h & 0x7F) != 0; }

/// Nearest non-negative half to |x| by binary search over the ordered finite magnitudes,
/// ties to the even pattern, overflow to Inf as IEEE round-to-nearest does (a value at or past
/// the midpoint between 65504 and 65536 rounds to Inf).
std::uint16_t half_oracle(float x) {
  if (std::isnan(x)) return 0x7E00;
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::abs(double(x));
  if (a >= 65520.0) return sign | 0x7C00;
  std::uint16_t lo = 0, hi = 0x7BFF;  // largest pattern with value <= a
  while (lo < hi) {
    const std::uint16_t mid = static_cast<std::uint16_t>((lo + hi + 1) / 2);
    if (half_value(mid) <= a) lo = mid; else hi = static_cast<std::uint16_t>(mid - 1);
  }
  const std::uint16_t below = lo;
  if (half_value(below) == a || below == 0x7BFF) return sign | below;
  const std::uint16_t above = static_cast<std::uint16_t>(below + 1);
  const double dl = a - half_value(below), du = half_value(above) - a;
  if (dl < du) return sign | below;
  if (du < dl) return sign | above;
  return sign | ((below & 1) ? above : below);
}

/// bf16 by comparing |x| with its two bf16 neighbours, ties to even.
std::uint16_t bf16_oracle(float x) {
  const std::uint32_t u = float_to_bits(x);
  if (std::isnan(x)) return 0x7FC0;
  const std::uint16_t below = static_cast<std::uint16_t>(u >> 16);
  if ((u & 0xFFFF) == 0) return below;
  const std::uint16_t above = static_cast<std::uint16_t>(below + 1);
  const double v = std::abs(double(x));
  const double vb = std::abs(double(bits_to_float(std::uint32_t(below) << 16)));
  // Past the largest finite bf16 the next step is 2^128 (where round-to-nearest goes to Inf).
  const double va = (above & 0x7FFF) == 0x7F80
                        ? std::ldexp(1.0, 128)
                        : std::abs(double(bits_to_float(std::uint32_t(above) << 16)));
  const double dl = v - vb, du = va - v;
  if (dl < du) return below;
  if (du < dl) return above;
  return (below & 1) ? above : below;
}

TEST(Bf16, DecodeIsTheTopHalfOfAFloat) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = to_float(bf16{static_cast<std::uint16_t>(h)});
    ASSERT_EQ(float_to_bits(f), h << 16) << h;
  }
}

TEST(Bf16, RoundTripEveryPattern) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    const bf16 r = to_bf16(to_float(bf16{b}));
    if (is_bf16_nan(b)) ASSERT_TRUE(is_bf16_nan(r.bits)) << h;
    else ASSERT_EQ(r.bits, b) << h;
  }
}

TEST(Bf16, TiesAndNeighboursOfEveryMidpointRoundToNearestEven) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    if (((h >> 7) & 0xFF) == 0xFF) continue;  // Inf/NaN exponents have no midpoint above
    const std::uint32_t mid = (h << 16) | 0x8000u;
    for (std::uint32_t u : {mid - 1, mid, mid + 1}) {
      const float x = bits_to_float(u);
      ASSERT_EQ(to_bf16(x).bits, bf16_oracle(x)) << std::hex << u;
    }
  }
}

TEST(Bf16, SpecialsKeepTheirKind) {
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::infinity()).bits, 0x7F80);
  EXPECT_EQ(to_bf16(-std::numeric_limits<float>::infinity()).bits, 0xFF80);
  EXPECT_TRUE(is_bf16_nan(to_bf16(std::numeric_limits<float>::quiet_NaN()).bits));
  EXPECT_TRUE(is_bf16_nan(to_bf16(bits_to_float(0x7F800001u)).bits));  // payload in low bits
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::max()).bits, 0x7F80);   // rounds up to Inf
  EXPECT_EQ(to_bf16(-0.0f).bits, 0x8000);
}

TEST(Fp16, DecodeEveryPattern) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    const float f = to_float(fp16{b});
    if (is_half_nan(b)) {
      ASSERT_TRUE(std::isnan(f)) << h;
    } else {
      ASSERT_EQ(double(f), half_value(b)) << h;
      ASSERT_EQ(std::signbit(f), bool(h & 0x8000)) << h;
    }
  }
}

TEST(Fp16, RoundTripEveryPattern) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    const fp16 r = to_fp16(to_float(fp16{b}));
    if (is_half_nan(b)) ASSERT_TRUE(is_half_nan(r.bits)) << h;
    else ASSERT_EQ(r.bits, b) << h;
  }
}

TEST(Fp16, MidpointsBetweenEveryPairRoundToNearestEven) {
  for (std::uint32_t h = 0; h < 0x7C00; ++h) {  // every finite non-negative half
    const double lo = half_value(static_cast<std::uint16_t>(h));
    const double hi = h + 1 < 0x7C00 ? half_value(static_cast<std::uint16_t>(h + 1)) : 65536.0;
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: halves have 11 bits
    ASSERT_EQ(double(mid), (lo + hi) / 2);
    for (float x : {std::nextafter(mid, 0.0f), mid, std::nextafter(mid, 1e30f)}) {
      ASSERT_EQ(to_fp16(x).bits, half_oracle(x)) << x;
      ASSERT_EQ(to_fp16(-x).bits, half_oracle(-x)) << -x;
    }
  }
}

TEST(Fp16, RandomFloatsAcrossTheWholeRange) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const float x = bits_to_float(bits(rng));
    if (std::isnan(x)) {
      EXPECT_TRUE(is_half_nan(to_fp16(x).bits));
      continue;
    }
    ASSERT_EQ(to_fp16(x).bits, half_oracle(x)) << x;
  }
}

TEST(Fp16, SpecialsAndLimits) {
  EXPECT_EQ(to_fp16(65504.0f).bits, 0x7BFF);
  EXPECT_EQ(to_fp16(65519.99f).bits, 0x7BFF);
  EXPECT_EQ(to_fp16(65520.0f).bits, 0x7C00);
  EXPECT_EQ(to_fp16(std::numeric_limits<float>::infinity()).bits, 0x7C00);
  EXPECT_EQ(to_fp16(-std::numeric_limits<float>::infinity()).bits, 0xFC00);
  EXPECT_EQ(to_fp16(std::ldexp(1.0f, -24)).bits, 0x0001);  // smallest subnormal
  EXPECT_EQ(to_fp16(std::ldexp(1.0f, -25)).bits, 0x0000);  // tie with 0: even
  EXPECT_EQ(to_fp16(std::ldexp(1.5f, -25)).bits, 0x0001);
  EXPECT_TRUE(is_half_nan(to_fp16(std::numeric_limits<float>::quiet_NaN()).bits));
}

/// The vectorised paths (attend::convert and simd::load/store) agree with the scalar ones.
template <class T>
void expect_bulk_decode_matches_scalar() {
  std::vector<T> src(65536 + 5);
  for (std::uint32_t h = 0; h < src.size(); ++h) src[h] = T{static_cast<std::uint16_t>(h & 0xFFFF)};
  std::vector<float> dst(src.size());
  convert(src.data(), dst.data(), static_cast<index_t>(src.size()));
  for (std::size_t i = 0; i < src.size(); ++i) {
    const float s = to_float(src[i]);
    if (std::isnan(s)) ASSERT_TRUE(std::isnan(dst[i])) << i;
    else ASSERT_EQ(float_to_bits(dst[i]), float_to_bits(s)) << i;
  }
}

template <class T>
void expect_bulk_encode_matches_scalar() {
  std::mt19937 rng(11);
  std::uniform_int_distribution<std::uint32_t> bits;
  std::vector<float> src(300007);
  for (auto& x : src) x = bits_to_float(bits(rng));
  // and the midpoints of every 16-bit pattern, where rounding is decided
  for (std::uint32_t h = 0; h < 65536; ++h) src.push_back(bits_to_float((h << 16) | 0x8000u));
  for (std::uint32_t h = 0; h < 0x7C00; ++h)
    src.push_back(static_cast<float>(
        (double(to_float(fp16{std::uint16_t(h)})) + double(to_float(fp16{std::uint16_t(h + 1)}))) / 2));
  std::vector<T> dst(src.size());
  convert(src.data(), dst.data(), static_cast<index_t>(src.size()));
  for (std::size_t i = 0; i < src.size(); ++i) {
    const T s = from_float<T>(src[i]);
    if (std::isnan(src[i])) ASSERT_TRUE(std::isnan(to_float(dst[i]))) << i;
    else ASSERT_EQ(dst[i].bits, s.bits) << i << " x=" << src[i];
  }
}

TEST(BulkConvert, Bf16ToFloat) { expect_bulk_decode_matches_scalar<bf16>(); }
TEST(BulkConvert, Fp16ToFloat) { expect_bulk_decode_matches_scalar<fp16>(); }
TEST(BulkConvert, FloatToBf16) { expect_bulk_encode_matches_scalar<bf16>(); }
TEST(BulkConvert, FloatToFp16) { expect_bulk_encode_matches_scalar<fp16>(); }

}  // namespace
}  // namespace attend
