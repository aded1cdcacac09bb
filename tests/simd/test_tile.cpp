// simd::scores_to_rows: the key-major to row-major copy used by token selection, against a
// direct transposition, over shapes that cover the register blocks and both edges.
// simd::qk_bcast_max: each gathered key's maximum score over the query rows, against double
// dot products, for float, bf16 and int8 rows and key counts around the register block.
// simd::reduce_sum_rows (lane i = sum of row i; xsimd 8.1's AVX-512 haddp permutes lanes) and
// simd::qk_dot (decode scores for every row packing; float and int8 rows) against double sums.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "attend/core/dtype.hpp"
#include "attend/simd/tile.hpp"

namespace attend {
namespace {

using arch = xsimd::default_arch;

TEST(ReduceSumRows, LaneIHoldsTheSumOfRowI) {
  constexpr index_t w = simd::lanes<arch>;
  alignas(64) float v[w][w];
  simd::vfloat<arch> rows[w];
  for (index_t i = 0; i < w; ++i) {
    for (index_t j = 0; j < w; ++j) v[i][j] = float((i + 1) * 100 + j * j);  // exact in float
    rows[i] = simd::vfloat<arch>::load_aligned(v[i]);
  }
  alignas(64) float out[w];
  simd::reduce_sum_rows<arch>(rows).store_aligned(out);
  for (index_t i = 0; i < w; ++i) {
    float want = 0.0f;
    for (index_t j = 0; j < w; ++j) want += v[i][j];
    EXPECT_EQ(out[i], want) << "lane " << i;
  }
}

/// A random key element: uniform in [-1, 1] for float types, a whole code for int8 (the codes
/// of a quantised key copy, widened in registers).
template <class KV>
KV random_key(std::mt19937& rng) {
  if constexpr (std::is_same_v<KV, std::int8_t>) {
    return static_cast<std::int8_t>(std::uniform_int_distribution<int>(-128, 127)(rng));
  } else {
    return from_float<KV>(std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng));
  }
}

template <class KV>
double key_value(KV x) {
  if constexpr (std::is_same_v<KV, std::int8_t>) return double(x);
  else return double(to_float(x));
}

template <int RP, class KV = float>
void check_qk_dot() {
  std::mt19937 rng(11 + RP);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (index_t dk : {16, 64, 70, 128})
    for (index_t count : {1, 5, 16, 37}) {
      const index_t rows = std::max(1, RP - 1);
      std::vector<float> q(static_cast<std::size_t>(RP * dk), 0.0f);
      for (index_t r = 0; r < rows; ++r)
        for (index_t d = 0; d < dk; ++d) q[r * dk + d] = u(rng);
      std::vector<KV> keys(static_cast<std::size_t>(count * dk));
      for (auto& x : keys) x = random_key<KV>(rng);
      std::vector<const KV*> krows(static_cast<std::size_t>(count));
      for (index_t j = 0; j < count; ++j) krows[j] = keys.data() + j * dk;
      const index_t ld = RP;
      std::vector<float> st(static_cast<std::size_t>(count * ld), 0.0f);
      simd::qk_dot<arch, RP>(krows.data(), count, q.data(), rows, dk, st.data(), ld);
      for (index_t j = 0; j < count; ++j)
        for (index_t r = 0; r < rows; ++r) {
          double want = 0.0, size = 0.0;
          for (index_t d = 0; d < dk; ++d) {
            want += double(q[r * dk + d]) * key_value(keys[j * dk + d]);
            size += std::abs(double(q[r * dk + d]) * key_value(keys[j * dk + d]));
          }
          EXPECT_NEAR(st[j * ld + r], want, 1e-4 * std::max(1.0, size / double(dk)))
              << "RP " << RP << " dk " << dk << " key " << j;
        }
    }
}

TEST(QkDot, EqualsDoubleDotProductsForEveryRowPacking) {
  check_qk_dot<1>();
  check_qk_dot<2>();
  check_qk_dot<4>();
  check_qk_dot<8>();
  check_qk_dot<static_cast<int>(simd::lanes<arch>)>();  // one key per register
}

TEST(QkDot, WidensInt8Codes) {
  check_qk_dot<1, std::int8_t>();
  check_qk_dot<4, std::int8_t>();
  check_qk_dot<static_cast<int>(simd::lanes<arch>), std::int8_t>();
}

TEST(ScoresToRows, EqualsTransposeWithNanAsMinusInfinity) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float ninf = -std::numeric_limits<float>::infinity();
  for (index_t rows : {1, 5, 8, 13, 32})
    for (index_t count : {1, 7, 8, 19, 64}) {
      const index_t ld = (rows + 15) / 16 * 16;
      std::vector<float> src(static_cast<std::size_t>(count * ld));
      for (auto& x : src) x = u(rng);
      for (std::size_t i = 5; i < src.size(); i += 13) src[i] = nan;
      const index_t pitch = count + 3;
      std::vector<float> out(static_cast<std::size_t>(rows * pitch), 99.0f);
      std::vector<float*> dst(static_cast<std::size_t>(rows));
      for (index_t r = 0; r < rows; ++r) dst[r] = out.data() + r * pitch;
      simd::scores_to_rows<xsimd::default_arch>(src.data(), ld, rows, count, dst.data());
      for (index_t r = 0; r < rows; ++r) {
        for (index_t j = 0; j < count; ++j) {
          const float x = src[j * ld + r];
          EXPECT_EQ(out[r * pitch + j], std::isnan(x) ? ninf : x)
              << "rows " << rows << " count " << count << " r " << r << " j " << j;
        }
        for (index_t j = count; j < pitch; ++j) EXPECT_EQ(out[r * pitch + j], 99.0f);  // untouched
      }
    }
}

template <class KV>
void check_row_maxima() {
  using Arch = xsimd::default_arch;
  constexpr index_t w = simd::lanes<Arch>;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const index_t dk = 40, cache_rows = 97;
  std::vector<KV> cache(static_cast<std::size_t>(cache_rows * dk));
  for (auto& x : cache) x = random_key<KV>(rng);
  for (index_t rows : {1, 3, 16, 21, 40})
    for (index_t count : {1, 5, 6, 7, 13, 50}) {
      const index_t ld = (rows + w - 1) / w * w;
      std::vector<float> q(static_cast<std::size_t>(rows * dk));
      for (auto& x : q) x = u(rng);
      std::vector<float> qt(static_cast<std::size_t>(dk * ld + 16));
      float* qa = qt.data() + (16 - reinterpret_cast<std::uintptr_t>(qt.data()) / 4 % 16) % 16;
      for (index_t r = 0; r < ld; ++r)  // padding rows repeat the last row
        for (index_t d = 0; d < dk; ++d) qa[d * ld + r] = q[std::min(r, rows - 1) * dk + d];
      std::vector<const KV*> krows;
      for (index_t j = 0; j < count; ++j)  // scattered rows, as a gather sees them
        krows.push_back(cache.data() + (j * 37 % cache_rows) * dk);
      std::vector<float> kf(static_cast<std::size_t>(simd::tile_config<Arch>::mr * dk));
      std::vector<float> best(static_cast<std::size_t>(count), 99.0f);
      simd::qk_bcast_max<Arch>(krows.data(), count, qa, ld, dk, kf.data(), best.data());
      for (index_t j = 0; j < count; ++j) {
        double expect = -1e30, size = 0;
        for (index_t r = 0; r < rows; ++r) {
          double dot = 0;
          for (index_t d = 0; d < dk; ++d) {
            dot += double(q[r * dk + d]) * key_value(krows[j][d]);
            size = std::max(size, std::abs(double(q[r * dk + d]) * key_value(krows[j][d])));
          }
          expect = std::max(expect, dot);
        }
        EXPECT_NEAR(best[j], expect, 1e-5 * std::max(1.0, size))
            << "rows " << rows << " count " << count << " j " << j;
      }
    }
}

TEST(QkBcastMax, EachKeysMaximumOverTheRows) { check_row_maxima<float>(); }
TEST(QkBcastMax, NarrowRowsAreWidened) { check_row_maxima<bf16>(); }
TEST(QkBcastMax, Int8CodesAreWidened) { check_row_maxima<std::int8_t>(); }

}  // namespace
}  // namespace attend
