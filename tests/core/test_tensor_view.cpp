// tensor_view: strides, element access, slicing, spans, uniqueness and the layout helpers.
#include <gtest/gtest.h>

#include <numeric>
#include <type_traits>
#include <vector>

#include "attend/core/tensor_view.hpp"

namespace attend {
namespace {

static_assert(std::is_trivially_copyable_v<tensor_view<float, 4>>);
static_assert(std::is_convertible_v<tensor_view<float, 4>, tensor_view<const float, 4>>);
static_assert(!std::is_convertible_v<tensor_view<const float, 4>, tensor_view<float, 4>>);
static_assert(!std::is_convertible_v<tensor_view<float, 3>, tensor_view<float, 4>>);

std::vector<float> iota_buffer(index_t n) {
  std::vector<float> b(static_cast<std::size_t>(n));
  std::iota(b.begin(), b.end(), 0.0f);
  return b;
}

TEST(TensorView, ContiguousStridesAndAccess) {
  auto buf = iota_buffer(2 * 3 * 4 * 5);
  const auto v = tensor_view<float, 4>::contiguous(buf.data(), {2, 3, 4, 5});
  EXPECT_EQ(v.stride(0), 60);
  EXPECT_EQ(v.stride(1), 20);
  EXPECT_EQ(v.stride(2), 5);
  EXPECT_EQ(v.stride(3), 1);
  EXPECT_EQ(v.size(), 120);
  EXPECT_EQ(v(1, 2, 3, 4), 119.0f);
  EXPECT_EQ(v(1, 0, 2, 1), 60.0f + 10.0f + 1.0f);
  EXPECT_EQ(v.required_span_size(), 120);
  EXPECT_TRUE(v.is_unique());
}

TEST(TensorView, ConstConversionKeepsEverything) {
  auto buf = iota_buffer(24);
  const auto v = tensor_view<float, 3>::contiguous(buf.data(), {2, 3, 4});
  const tensor_view<const float, 3> c = v;
  EXPECT_EQ(c.data(), v.data());
  EXPECT_EQ(c.extents(), v.extents());
  EXPECT_EQ(c.strides(), v.strides());
  EXPECT_EQ(c(1, 2, 3), 23.0f);
}

TEST(TensorView, EmptyViewIsAbsent) {
  const tensor_view<float, 2> e;
  EXPECT_FALSE(e.has_value());
  EXPECT_TRUE(e.empty());
  EXPECT_EQ(e.required_span_size(), 0);
}

TEST(TensorView, SpanOfStridedView) {
  std::vector<float> buf(100);
  const tensor_view<float, 2> v(buf.data(), {3, 4}, {10, 2});  // rows of 4 every 10, step 2
  EXPECT_EQ(v.required_span_size(), 2 * 10 + 3 * 2 + 1);
  EXPECT_TRUE(v.is_unique());
}

TEST(TensorView, UniquenessDetectsAliasing) {
  std::vector<float> buf(100);
  EXPECT_FALSE((tensor_view<float, 2>(buf.data(), {3, 4}, {0, 1}).is_unique()));  // broadcast
  EXPECT_FALSE((tensor_view<float, 2>(buf.data(), {3, 4}, {2, 1}).is_unique()));  // overlap
  EXPECT_TRUE((tensor_view<float, 2>(buf.data(), {1, 4}, {0, 1}).is_unique()));   // extent 1
  EXPECT_TRUE((tensor_view<float, 2>(buf.data(), {4, 3}, {1, 4}).is_unique()));   // col-major
}

TEST(TensorView, NarrowAndMatrix) {
  auto buf = iota_buffer(2 * 6 * 3 * 4);
  const auto v = bshd(buf.data(), 2, 6, 3, 4);
  const auto n = v.narrow(1, 2, 3);
  EXPECT_EQ(n.extent(1), 3);
  EXPECT_EQ(n(1, 0, 2, 3), v(1, 2, 2, 3));
  const auto m = v.matrix(1, 2);  // [seq, dim] of batch 1, head 2
  EXPECT_EQ(m.extent(0), 6);
  EXPECT_EQ(m.extent(1), 4);
  for (index_t s = 0; s < 6; ++s)
    for (index_t d = 0; d < 4; ++d) EXPECT_EQ(m(s, d), v(1, s, 2, d));
}

TEST(TensorView, BhsdHelperMapsLogicalToPhysical) {
  const index_t B = 2, H = 3, S = 5, D = 4;
  auto buf = iota_buffer(B * H * S * D);
  const auto v = bhsd(buf.data(), B, H, S, D);
  EXPECT_EQ(v.extent(1), S);
  EXPECT_EQ(v.extent(2), H);
  for (index_t b = 0; b < B; ++b)
    for (index_t s = 0; s < S; ++s)
      for (index_t h = 0; h < H; ++h)
        for (index_t d = 0; d < D; ++d)
          EXPECT_EQ(v(b, s, h, d), float(((b * H + h) * S + s) * D + d));
}

TEST(TensorView, FusedQkvHelperSplitsTheProjection) {
  const index_t B = 2, S = 3, Hq = 4, Hkv = 2, D = 8;
  const index_t row = (Hq + 2 * Hkv) * D;
  auto buf = iota_buffer(B * S * row);
  const auto qkv = fused_qkv(buf.data(), B, S, Hq, Hkv, D);
  for (index_t b = 0; b < B; ++b)
    for (index_t s = 0; s < S; ++s) {
      const float base = float((b * S + s) * row);
      for (index_t d = 0; d < D; ++d) {
        for (index_t h = 0; h < Hq; ++h) EXPECT_EQ(qkv.q(b, s, h, d), base + h * D + d);
        for (index_t h = 0; h < Hkv; ++h) {
          EXPECT_EQ(qkv.k(b, s, h, d), base + (Hq + h) * D + d);
          EXPECT_EQ(qkv.v(b, s, h, d), base + (Hq + Hkv + h) * D + d);
        }
      }
    }
}

TEST(TensorView, CacheHelperUsesCapacityStrides) {
  const index_t B = 2, cap = 10, H = 2, D = 4, len = 7;
  auto buf = iota_buffer(B * cap * H * D);
  const auto v = bshd_cache(buf.data(), B, cap, H, D, len);
  EXPECT_EQ(v.extent(1), len);
  EXPECT_EQ(v.stride(0), cap * H * D);
  EXPECT_EQ(v(1, 6, 1, 3), float(((1 * cap + 6) * H + 1) * D + 3));
}

TEST(TensorView, OffsetsUse64BitArithmetic) {
  // Extents whose product exceeds 2^31 elements: offsets must not wrap (no memory is touched).
  const tensor_view<const float, 4> v(nullptr, {1, 1 << 20, 32, 128}, {index_t{1} << 32, 4096, 128, 1});
  EXPECT_EQ(v.offset(0, (1 << 20) - 1, 31, 127), (index_t{(1 << 20) - 1} * 4096) + 31 * 128 + 127);
  EXPECT_GT(v.required_span_size(), index_t{1} << 31);
}

}  // namespace
}  // namespace attend
