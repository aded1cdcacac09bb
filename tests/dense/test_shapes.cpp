// Dense attention against the oracle over head dims, lengths around the tile sizes, GQA
// ratios and K/V storage types.
#include <gtest/gtest.h>

#include <vector>

#include "dense_case.hpp"

namespace attend::testing {
namespace {

std::vector<dense_shape> head_dim_sweep() {
  std::vector<dense_shape> out;
  const index_t lengths[][2] = {{1, 1}, {2, 7}, {7, 2}, {63, 65}, {64, 64}, {65, 63}, {129, 130}};
  for (index_t d : {1, 3, 16, 64, 80, 96, 128, 256})
    for (const auto& l : lengths) out.push_back({1, l[0], l[1], 2, 1, d, d});
  for (index_t d : {16, 64, 128}) out.push_back({1, 1000, 1000, 2, 2, d, d});
  out.push_back({2, 37, 91, 4, 2, 40, 24});   // Dv < Dk, generic path
  out.push_back({1, 20, 33, 2, 1, 8, 136});   // Dv > Dk, Dv with a tail past the registers
  return out;
}

std::vector<dense_shape> gqa_sweep() {
  std::vector<dense_shape> out;
  for (index_t hkv : {8, 4, 2, 1})  // ratios 1, 2, 4, 8 (MQA at hkv = 1)
    for (index_t lq : {1, 17, 130}) out.push_back({2, lq, 150, 8, hkv, 64, 64});
  out.push_back({1, 3, 70, 256, 1, 16, 16});  // 256-way MQA: more heads than a row block
  return out;
}

class DenseShapes : public ::testing::TestWithParam<dense_shape> {};

TEST_P(DenseShapes, MatchesReference) {
  dense_case<float> c(GetParam(), layout::bshd, 1);
  c.run({});
  EXPECT_TRUE(c.matches_reference());
}

TEST_P(DenseShapes, CausalMatchesReference) {
  dense_case<float> c(GetParam(), layout::bshd, 2);
  attention_params p;
  p.causal = true;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
}

std::string shape_name(const ::testing::TestParamInfo<dense_shape>& info) {
  return to_string(info.param);
}

INSTANTIATE_TEST_SUITE_P(HeadDims, DenseShapes, ::testing::ValuesIn(head_dim_sweep()), shape_name);
INSTANTIATE_TEST_SUITE_P(Gqa, DenseShapes, ::testing::ValuesIn(gqa_sweep()), shape_name);

template <class KV>
class DenseStorage : public ::testing::Test {};
using storage_types = ::testing::Types<float, bf16, fp16>;
TYPED_TEST_SUITE(DenseStorage, storage_types);

TYPED_TEST(DenseStorage, EveryFastHeadDimAndGenericMatchReference) {
  for (index_t d : {3, 64, 80, 96, 128, 256}) {
    dense_case<TypeParam> c({1, 70, 140, 4, 2, d, d}, layout::bshd, 3);
    attention_params p;
    p.causal = true;
    c.run(p);
    EXPECT_TRUE(c.matches_reference()) << "d = " << d;
  }
}

TYPED_TEST(DenseStorage, DecodeMatchesReference) {
  dense_case<TypeParam> c({2, 1, 2100, 8, 2, 128, 128}, layout::bshd, 4);
  c.run({});
  EXPECT_TRUE(c.matches_reference());
}

TYPED_TEST(DenseStorage, StridedLayoutsMatchReference) {
  for (layout l : {layout::bhsd, layout::padded}) {
    dense_case<TypeParam> c({2, 33, 77, 4, 2, 64, 64}, l, 5);
    attention_params p;
    p.causal = true;
    c.run(p);
    EXPECT_TRUE(c.matches_reference()) << static_cast<int>(l);
  }
}

}  // namespace
}  // namespace attend::testing
