// simd::scores_to_rows: the key-major to row-major copy used by token selection, against a
// direct transposition, over shapes that cover the register blocks and both edges.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "attend/simd/tile.hpp"

namespace attend {
namespace {

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

}  // namespace
}  // namespace attend
