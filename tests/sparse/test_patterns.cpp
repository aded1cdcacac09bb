// Static patterns: each closed-form mask equals the mask built from a brute-force predicate
// written here from the pattern's definition, and attention through the pattern (with its
// predicate as the element mod) equals the double oracle restricted to that predicate.
#include "attend/sparse/patterns.hpp"
#include "block_case.hpp"

namespace attend::testing {
namespace {

using sparse::block_mask;
using sparse::mask_geometry;

bool is_power_of_two(index_t d) {
  index_t x = 1;
  while (x < d) x *= 2;
  return x == d;
}

const mask_geometry kGeoms[] = {
    {1, 1, 200, 200, 16, 16},
    {2, 1, 100, 170, 16, 16},
    {1, 1, 130, 130, 32, 16},
    {1, 1, 97, 97, 24, 24},
};

::testing::AssertionResult same_mask(const block_mask& a, const block_mask& b) {
  if (a.geometry() != b.geometry()) return ::testing::AssertionFailure() << "geometry";
  if (a.offsets() != b.offsets()) return ::testing::AssertionFailure() << "offsets";
  if (a.indices() != b.indices()) return ::testing::AssertionFailure() << "indices";
  if (a.full() != b.full()) return ::testing::AssertionFailure() << "full flags";
  return ::testing::AssertionSuccess();
}

// Checks mask == brute force, predicate == brute force, and attention vs the oracle.
template <class Pattern, class Brute>
void check_pattern(const mask_geometry& g, const Pattern& pat, const Brute& brute,
                   bool exact_without_mod) {
  const block_mask m = pat.mask();
  EXPECT_TRUE(same_mask(m, block_mask::from_predicate(g, brute)));
  for (index_t i = 0; i < g.seq_q; ++i)
    for (index_t j = 0; j < g.seq_k; ++j)
      ASSERT_EQ(pat(0, 0, i, j), brute(0, 0, i, j)) << i << " " << j;
  sparse_case<float> t(g.batch, g.seq_q, g.seq_k, 4, 2, 32, 17);
  attention_params p;
  p.causal = true;
  t.run_against(m, p, pat, brute);
  EXPECT_TRUE(t.matches()) << "with the predicate";
  // Block patterns on aligned blocks: only the causal diagonal is partial, so the mask with
  // params.causal alone is exact.
  if (exact_without_mod && g.block_q == g.block_k && (g.seq_k - g.seq_q) % g.block_k == 0) {
    t.run_against(m, p, sparse::no_mask_mod{}, brute);
    EXPECT_TRUE(t.matches()) << "without the predicate";
  }
}

TEST(Patterns, AShape) {
  for (const auto& g : kGeoms)
    for (const auto& pr : {std::pair<index_t, index_t>{4, 40}, {0, 16}, {20, 7}}) {
      const index_t sink = pr.first, window = pr.second;
      const index_t off = g.seq_k - g.seq_q;
      auto brute = [=](index_t, index_t, index_t i, index_t j) {
        const index_t p = off + i;
        return j <= p && (j < sink || p - j < window);
      };
      check_pattern(g, sparse::a_shape_pattern(g, sink, window), brute, false);
    }
  // Defaults: 4 sinks, window 512.
  const mask_geometry big{1, 1, 700, 700, 64, 64};
  const auto m = sparse::a_shape_pattern(big).mask();
  const auto last = m.row(0, 0, big.q_blocks() - 1);  // queries 640..699: keys 0..3 + 188..699
  EXPECT_EQ(last.blocks[0], 0);
  EXPECT_EQ(last.full[0], 0);
  EXPECT_EQ(last.blocks[1], 2);
}

TEST(Patterns, PowerAttention) {
  for (const auto& g : kGeoms)
    for (const auto& pr : {std::pair<index_t, index_t>{1, 5}, {0, 1}, {2, 0}}) {
      const index_t sink = pr.first, local = pr.second;
      const index_t off = g.seq_k - g.seq_q, b = g.block_k;
      auto brute = [=](index_t, index_t, index_t i, index_t j) {
        const index_t p = off + i, d = p / b - j / b;
        if (j > p) return false;
        return d == 0 || is_power_of_two(d) || j / b < sink || d < local;
      };
      check_pattern(g, sparse::power_pattern(g, sink, local), brute, true);
    }
  // Out-degree: the last of 64 blocks sees distances 0, 1, 2, 4, ..., 32 + sink + locals.
  const mask_geometry g{1, 1, 64 * 8, 64 * 8, 8, 8};
  const sparse::block_mask mask = sparse::power_pattern(g, 1, 1).mask();  // rows view into it
  const auto last = mask.row(0, 0, 63);
  std::vector<index_t> expect = {0, 31, 47, 55, 59, 61, 62, 63};
  EXPECT_EQ(std::vector<index_t>(last.blocks, last.blocks + last.count), expect);
}

TEST(Patterns, Strided) {
  for (const auto& g : kGeoms)
    for (const auto& pr : {std::pair<index_t, index_t>{2, 3}, {1, 1}, {3, 5}}) {
      const index_t local = pr.first, stride = pr.second;
      const index_t off = g.seq_k - g.seq_q, b = g.block_k;
      auto brute = [=](index_t, index_t, index_t i, index_t j) {
        const index_t p = off + i, d = p / b - j / b;
        return j <= p && (d < local || d % stride == 0);
      };
      check_pattern(g, sparse::strided_pattern(g, local, stride), brute, true);
    }
}

TEST(Patterns, Dilated) {
  for (const auto& g : kGeoms)
    for (const auto& pr : {std::pair<index_t, index_t>{3, 2}, {4, 1}, {2, 4}}) {
      const index_t window = pr.first, dilation = pr.second;
      const index_t off = g.seq_k - g.seq_q, b = g.block_k;
      auto brute = [=](index_t, index_t, index_t i, index_t j) {
        const index_t p = off + i, d = p / b - j / b;
        return j <= p && d % dilation == 0 && d / dilation < window;
      };
      check_pattern(g, sparse::dilated_pattern(g, window, dilation), brute, true);
    }
}

TEST(Patterns, InvalidArgumentsThrow) {
  const mask_geometry g{1, 1, 64, 64, 16, 16};
  EXPECT_THROW(sparse::a_shape_pattern(g, -1, 8), invalid_argument);
  EXPECT_THROW(sparse::a_shape_pattern(g, 4, 0), invalid_argument);
  EXPECT_THROW(sparse::power_pattern(g, -1, 2), invalid_argument);
  EXPECT_THROW(sparse::strided_pattern(g, 0, 2), invalid_argument);
  EXPECT_THROW(sparse::dilated_pattern(g, 2, 0), invalid_argument);
  EXPECT_THROW(sparse::a_shape_pattern(mask_geometry{1, 1, 80, 64, 16, 16}), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
