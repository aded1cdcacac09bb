// Dense attention options against the oracle: causal alignment, windows, softcap, ALiBi, bias,
// boolean masks, sinks, per-sequence KV lengths, fully masked rows and huge logits.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "dense_case.hpp"

namespace attend::testing {
namespace {

template <class KV>
class DenseOptions : public ::testing::Test {};
using storage_types = ::testing::Types<float, bf16, fp16>;
TYPED_TEST_SUITE(DenseOptions, storage_types);

const dense_shape kPrefill{2, 75, 75, 4, 2, 64, 64};
const dense_shape kChunk{2, 40, 150, 4, 2, 64, 64};  // Lq < Lk: bottom-right alignment

TYPED_TEST(DenseOptions, CausalSelfAndChunked) {
  for (const auto& s : {kPrefill, kChunk}) {
    dense_case<TypeParam> c(s, layout::bshd, 10);
    attention_params p;
    p.causal = true;
    c.run(p);
    EXPECT_TRUE(c.matches_reference());
  }
}

TYPED_TEST(DenseOptions, SlidingWindows) {
  const index_t windows[][2] = {{0, -1}, {5, -1}, {70, -1}, {-1, 0}, {-1, 9}, {3, 4}, {20, 20}};
  for (const auto& w : windows)
    for (bool causal : {false, true}) {
      dense_case<TypeParam> c(kChunk, layout::bshd, 11);
      attention_params p;
      p.window_left = w[0];
      p.window_right = w[1];
      p.causal = causal;
      c.run(p);
      EXPECT_TRUE(c.matches_reference()) << w[0] << "," << w[1] << " causal " << causal;
    }
}

TYPED_TEST(DenseOptions, SoftcapAndAlibi) {
  std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  dense_case<TypeParam> c(kChunk, layout::bshd, 12, 3.0f);
  attention_params p;
  p.causal = true;
  p.softcap = 4.0f;
  p.alibi_slopes = make_view<const float>(slopes.data(), 4);
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
  p.causal = false;
  p.softcap = 0.0f;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
}

TYPED_TEST(DenseOptions, AdditiveBiasFullAndBroadcast) {
  const auto s = kChunk;
  std::mt19937 rng(13);
  auto full = tensor<float, 4>::make({s.batch, s.heads_q, s.seq_q, s.seq_k});
  fill_uniform(full.view, rng, -2.0f, 2.0f);
  dense_case<TypeParam> c(s, layout::bshd, 14);
  attention_params p;
  p.bias = full.view;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
  // one [seq_q, seq_k] bias broadcast over batch and heads
  p.bias = tensor_view<const float, 4>(full.storage.data(), {1, 1, s.seq_q, s.seq_k},
                                       {0, 0, s.seq_k, 1});
  p.causal = true;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
}

TYPED_TEST(DenseOptions, BooleanMaskWithFullyMaskedRows) {
  const auto s = kChunk;
  std::mt19937 rng(15);
  std::bernoulli_distribution coin(0.7);
  std::vector<char> keep(static_cast<std::size_t>(s.heads_q * s.seq_q * s.seq_k));
  for (auto& x : keep) x = coin(rng);
  for (index_t j = 0; j < s.seq_k; ++j) keep[3 * s.seq_k + j] = 0;  // head 0, query 3: nothing
  const tensor_view<const bool, 4> mask(reinterpret_cast<const bool*>(keep.data()),
                                        {1, s.heads_q, s.seq_q, s.seq_k},
                                        {0, s.seq_q * s.seq_k, s.seq_k, 1});
  dense_case<TypeParam> c(s, layout::bshd, 16);
  attention_params p;
  p.mask = mask;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
  for (index_t b = 0; b < s.batch; ++b) {
    EXPECT_EQ(c.lse.view(b, 0, 3), -std::numeric_limits<float>::infinity());
    for (index_t d = 0; d < s.dv; ++d) EXPECT_EQ(c.o.view(b, 3, 0, d), 0.0f);
  }
}

TYPED_TEST(DenseOptions, SinkLogitsJoinTheDenominatorOnce) {
  std::vector<float> sinks = {0.5f, -2.0f, 3.0f, 1.0f};
  for (const auto& s : {kPrefill, dense_shape{2, 1, 3000, 4, 2, 64, 64}}) {  // prefill, split-K
    dense_case<TypeParam> c(s, layout::bshd, 17);
    attention_params p;
    p.causal = true;
    p.sinks = make_view<const float>(sinks.data(), 4);
    c.run(p);
    EXPECT_TRUE(c.matches_reference()) << to_string(s);
  }
}

TYPED_TEST(DenseOptions, SinkOfMinusInfinityIsNoSink) {
  std::vector<float> sinks(4, -std::numeric_limits<float>::infinity());
  dense_case<TypeParam> a(kChunk, layout::bshd, 18), b(kChunk, layout::bshd, 18);
  attention_params p;
  p.causal = true;
  a.run(p);
  p.sinks = make_view<const float>(sinks.data(), 4);
  b.run(p);
  EXPECT_TRUE(bitwise_equal(a.o.cview(), b.o.cview()));
}

TYPED_TEST(DenseOptions, PaddedCachesWithKvLens) {
  for (const auto& s : {kChunk, dense_shape{3, 2, 4000, 4, 2, 64, 64}}) {
    std::vector<index_t> lens = {s.seq_k - 17, s.seq_q, s.seq_k};
    if (s.batch == 2) lens.pop_back();
    dense_case<TypeParam> c(s, layout::bshd, 19);
    attention_params p;
    p.causal = true;
    p.kv_lens = make_view<const index_t>(lens.data(), s.batch);
    c.run(p);
    EXPECT_TRUE(c.matches_reference()) << to_string(s);
  }
}

TYPED_TEST(DenseOptions, EmptySequencesAndWindowsGiveZeroNotNan) {
  const auto s = kChunk;
  std::vector<index_t> lens = {0, 150};
  dense_case<TypeParam> c(s, layout::bshd, 20);
  attention_params p;
  p.kv_lens = make_view<const index_t>(lens.data(), 2);
  p.causal = true;  // batch 1: Lq < kv_len, every row sees keys; batch 0 sees none
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
  for (index_t h = 0; h < s.heads_q; ++h)
    for (index_t i = 0; i < s.seq_q; ++i) {
      EXPECT_EQ(c.lse.view(0, h, i), -std::numeric_limits<float>::infinity());
      for (index_t d = 0; d < s.dv; ++d) ASSERT_EQ(c.o.view(0, i, h, d), 0.0f);
    }
}

TYPED_TEST(DenseOptions, HugeLogitsDoNotOverflow) {
  // |s| up to ~1e4: exp must only ever see s - max <= 0.
  dense_case<TypeParam> c({1, 70, 90, 2, 1, 64, 64}, layout::bshd, 21, 30.0f);
  attention_params p;
  p.scale = 0.5f;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
  for (float x : c.o.storage) ASSERT_TRUE(std::isfinite(x));
}

TYPED_TEST(DenseOptions, EverythingAtOnce) {
  const auto s = kChunk;
  std::vector<float> slopes = {0.1f, 0.2f, 0.3f, 0.4f}, sinks = {0.0f, 1.0f, -1.0f, 2.0f};
  std::vector<index_t> lens = {120, 150};
  std::mt19937 rng(22);
  auto bias = tensor<float, 4>::make({s.batch, 1, s.seq_q, s.seq_k});
  fill_uniform(bias.view, rng);
  dense_case<TypeParam> c(s, layout::padded, 23, 2.0f);
  attention_params p;
  p.causal = true;
  p.window_left = 50;
  p.softcap = 10.0f;
  p.alibi_slopes = make_view<const float>(slopes.data(), 4);
  p.bias = bias.view;
  p.sinks = make_view<const float>(sinks.data(), 4);
  p.kv_lens = make_view<const index_t>(lens.data(), 2);
  p.scale = 0.3f;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
}

}  // namespace
}  // namespace attend::testing
