// The int8 scan's block kernel (sparse::detail::int8_block_scores) against exact integer dot
// products of the quantised query and the stored int8 keys: bit-equal scores for 1 to 4 heads,
// at several head dims, including keys and queries at full scale where the dot product comes
// within 1 % of 2^31. Built for every ISA the kernels target: native (here AVX-512 with VNNI:
// vpdpbusd), AVX-512 without VNNI and AVX2 (both vpmaddwd), so each path meets the same oracle.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "attend/sparse/select/topk_int8.hpp"

namespace attend {
namespace {

/// Scores of block `blk` of a one-sequence, one-KV-head key copy for the queries q [heads][dim]
/// (heads in 1..4), by the kernel and by the oracle (int64 dot products of the int16 query and
/// the int8 keys, scaled in the kernel's order).
void check_block(const std::vector<float>& keys, const std::vector<std::vector<float>>& q,
                 index_t dim, index_t tokens) {
  sparse::int8_keys stored(1, tokens, 1, dim);
  stored.store(view4<const float>::contiguous(keys.data(), {1, tokens, 1, dim}));
  const sparse::int8_keys& copy = stored;
  const index_t heads = static_cast<index_t>(q.size());
  std::vector<float> qf;
  for (const auto& row : q) qf.insert(qf.end(), row.begin(), row.end());
  sparse::detail::score_buffers s;
  s.batch = 1;
  s.heads_q = heads;
  s.dk = dim;
  s.scale = 0.125f;
  s.qf = qf.data();
  sparse::detail::int8_queries qq;
  std::vector<float> scratch(static_cast<std::size_t>(qq.carve(nullptr, 1, heads, dim)));
  s.scorer = scratch.data();
  sparse::detail::quantise_queries(s, qq);
  sparse::detail::int8_query rows[4];
  for (index_t g = 0; g < heads; ++g) rows[g] = qq.row(g);
  for (index_t blk = 0; blk * 16 < tokens; ++blk) {
    alignas(64) float got[4][16];
    const std::uint8_t* data = copy.block_data(0, 0, blk);
    const float* ks = copy.scales(0, 0) + blk * 16;
    using arch = xsimd::default_arch;
    const index_t quads = dim / 4;
    switch (heads) {
      case 1: sparse::detail::int8_block_scores<arch, 1>(data, rows, ks, quads, data, got); break;
      case 2: sparse::detail::int8_block_scores<arch, 2>(data, rows, ks, quads, data, got); break;
      case 3: sparse::detail::int8_block_scores<arch, 3>(data, rows, ks, quads, data, got); break;
      default: sparse::detail::int8_block_scores<arch, 4>(data, rows, ks, quads, data, got); break;
    }
    for (index_t g = 0; g < heads; ++g)
      for (index_t t = 0; t < 16; ++t) {
        const index_t token = blk * 16 + t;
        std::int64_t dot = 0;  // the stored bytes, [dim / 4][16][4], are int8 + 128
        for (index_t d = 0; d < dim; ++d)
          dot += std::int64_t{rows[g].q16[d]} * (int(data[(d / 4) * 64 + t * 4 + d % 4]) - 128);
        ASSERT_LT(std::abs(dot), std::int64_t{1} << 31);
        const float want = float(static_cast<std::int32_t>(dot)) * ks[t] * rows[g].scale;
        EXPECT_EQ(got[g][t], want) << "dim " << dim << " heads " << heads << " token " << token
                                   << " head " << g;
      }
  }
}

TEST(Int8BlockScores, EqualExactIntegerDotProducts) {
  std::mt19937 rng(4100);
  std::normal_distribution<float> nrm(0.0f, 1.0f);
  for (index_t dim : {4, 64, 128, 512})
    for (index_t heads = 1; heads <= 4; ++heads) {
      const index_t tokens = 48;
      std::vector<float> keys(static_cast<std::size_t>(tokens * dim));
      for (auto& x : keys) x = nrm(rng);
      for (index_t d = 0; d < dim; ++d) keys[static_cast<std::size_t>(5 * dim + d)] = 0.0f;  // zero row
      std::vector<std::vector<float>> q(static_cast<std::size_t>(heads),
                                        std::vector<float>(static_cast<std::size_t>(dim)));
      for (auto& row : q)
        for (auto& x : row) x = nrm(rng);
      check_block(keys, q, dim, tokens);
    }
}

/// Keys and queries at full scale, all one sign: the exact sums reach 32639 * 127 * 512, 99 % of
/// 2^31, while the kernels' partial sums (keys stored + 128, the query split in bytes) wrap.
TEST(Int8BlockScores, ExactAtFullScale) {
  const index_t dim = 512, tokens = 32;
  std::vector<float> keys(static_cast<std::size_t>(tokens * dim));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t d = 0; d < dim; ++d)
      keys[static_cast<std::size_t>(t * dim + d)] = t % 2 == 0 ? 1.0f : -1.0f;
  std::vector<std::vector<float>> q(4, std::vector<float>(static_cast<std::size_t>(dim), 1.0f));
  for (auto& x : q[1]) x = -1.0f;
  for (index_t d = 0; d < dim; d += 2) q[2][static_cast<std::size_t>(d)] = -1.0f;
  check_block(keys, q, dim, tokens);
}

}  // namespace
}  // namespace attend
