// block_sparse_attention against the double oracle restricted to the mask's elements: every
// owner mode (per query head, per KV head, shared), both schedules (row-major, key-major for
// per-query lists), partial blocks with an element predicate, extra columns, decode pages,
// kv_lens, the dense options (causal, window, softcap, ALiBi, sinks), bf16 K/V, empty rows,
// thread-count independence and argument errors.
#include <omp.h>

#include <cmath>
#include <limits>

#include "block_case.hpp"

namespace attend::testing {
namespace {

using sparse::block_mask;
using sparse::mask_geometry;

struct mod_every_third {  // an element predicate that is neither all-true nor block-aligned
  bool operator()(index_t, index_t, index_t i, index_t j) const { return (i + 2 * j) % 3 != 0; }
};

struct geom_case {
  index_t batch, seq_q, seq_k, heads_q, heads_kv, dim, block_q, block_k;
  int owner;  // 0: per query head, 1: per KV head, 2: shared
};

mask_geometry geometry_of(const geom_case& c) {
  const index_t heads = c.owner == 0 ? c.heads_q : c.owner == 1 ? c.heads_kv : 1;
  return {c.batch, heads, c.seq_q, c.seq_k, c.block_q, c.block_k};
}

const geom_case kCases[] = {
    {1, 64, 64, 2, 2, 32, 16, 16, 0},     {2, 67, 67, 4, 2, 40, 16, 32, 1},
    {1, 130, 130, 6, 3, 64, 64, 64, 0},   {1, 33, 97, 4, 1, 16, 8, 24, 2},
    {2, 100, 100, 4, 2, 128, 32, 16, 1},  {1, 129, 129, 8, 2, 64, 128, 64, 1},
    {1, 50, 70, 3, 3, 24, 7, 5, 0},
};

TEST(BlockSparse, AllBlocksEqualsDense) {
  for (const geom_case& c : kCases)
    for (bool causal : {false, true}) {
      sparse_case<float> t(c.batch, c.seq_q, c.seq_k, c.heads_q, c.heads_kv, c.dim, 7);
      attention_params p;
      p.causal = causal;
      t.run(block_mask::all_blocks(geometry_of(c)), p);
      EXPECT_TRUE(t.matches()) << "case Lq" << c.seq_q << " Lk" << c.seq_k << " causal " << causal;
      // And the library's dense operator gives the same numbers.
      auto od = tensor<float, 4>::make({c.batch, c.seq_q, c.heads_q, c.dim});
      attention(t.q.view, t.k.view, t.v.view, od.view, p);
      EXPECT_TRUE(all_close(t.o.cview(), od.cview(), 1e-5, 1e-4));
    }
}

TEST(BlockSparse, RandomMasksMatchOracle) {
  std::mt19937 rng(11);
  for (const geom_case& c : kCases)
    for (bool causal : {false, true}) {
      sparse_case<float> t(c.batch, c.seq_q, c.seq_k, c.heads_q, c.heads_kv, c.dim, 3);
      attention_params p;
      p.causal = causal;
      t.run(random_mask(geometry_of(c), rng, 0.4), p);
      EXPECT_TRUE(t.matches()) << "case Lq" << c.seq_q << " Lk" << c.seq_k << " causal " << causal;
    }
}

TEST(BlockSparse, PartialBlocksAndColumnsWithPredicate) {
  std::mt19937 rng(5);
  for (const geom_case& c : kCases) {
    sparse_case<float> t(c.batch, c.seq_q, c.seq_k, c.heads_q, c.heads_kv, c.dim, 4);
    attention_params p;
    p.causal = true;
    t.run(random_mask(geometry_of(c), rng, 0.35, 0.5, 3), p, mod_every_third{});
    EXPECT_TRUE(t.matches()) << "case Lq" << c.seq_q << " Lk" << c.seq_k;
  }
}

TEST(BlockSparse, ColumnsWithoutPredicate) {
  std::mt19937 rng(6);
  const geom_case c{1, 96, 96, 4, 2, 32, 32, 16, 1};
  sparse_case<float> t(c.batch, c.seq_q, c.seq_k, c.heads_q, c.heads_kv, c.dim, 9);
  attention_params p;
  p.causal = true;
  t.run(random_mask(geometry_of(c), rng, 0.2, 0.0, 7), p);
  EXPECT_TRUE(t.matches());
}

// block_q == 1 prefill runs the key-major schedule (gathered queries, LSE merges).
TEST(BlockSparse, PerQueryListsKeyMajor) {
  std::mt19937 rng(12);
  const geom_case cases[] = {{1, 80, 80, 4, 2, 32, 1, 16, 0},
                             {2, 70, 90, 4, 2, 48, 1, 32, 1},
                             {1, 65, 65, 3, 1, 64, 1, 8, 2}};
  for (const geom_case& c : cases) {
    for (int variant = 0; variant < 4; ++variant) {
      sparse_case<float> t(c.batch, c.seq_q, c.seq_k, c.heads_q, c.heads_kv, c.dim, 20 + variant);
      attention_params p;
      p.causal = variant != 0;
      if (variant == 2) p.window_left = 21;
      if (variant == 3) p.softcap = 3.0f;
      const block_mask m = random_mask(geometry_of(c), rng, 0.3, variant == 3 ? 0.5 : 0.0);
      if (variant == 3)
        t.run(m, p, mod_every_third{});
      else
        t.run(m, p);
      EXPECT_TRUE(t.matches()) << "case Lq" << c.seq_q << " variant " << variant;
    }
  }
}

// Pages of 16 keys for one decode query (Quest's shape), with ragged kv_lens.
TEST(BlockSparse, DecodePagesWithKvLens) {
  std::mt19937 rng(13);
  for (int owner : {0, 1}) {
    const geom_case c{3, 1, 300, 8, 2, 64, 1, 16, owner};
    sparse_case<float> t(c.batch, c.seq_q, c.seq_k, c.heads_q, c.heads_kv, c.dim, 31);
    std::vector<index_t> lens = {300, 123, 17};
    attention_params p;
    p.kv_lens = make_view<const index_t>(lens.data(), 3);
    p.causal = true;
    t.run(random_mask(geometry_of(c), rng, 0.3), p);
    EXPECT_TRUE(t.matches()) << "owner " << owner;
  }
}

TEST(BlockSparse, DenseOptions) {
  std::mt19937 rng(14);
  const geom_case c{1, 90, 90, 4, 2, 32, 16, 16, 1};
  std::vector<float> sinks = {0.5f, -1.0f, 2.0f, 0.0f};
  std::vector<float> slopes = {0.1f, 0.05f, 0.2f, 0.01f};
  for (int variant = 0; variant < 4; ++variant) {
    sparse_case<float> t(c.batch, c.seq_q, c.seq_k, c.heads_q, c.heads_kv, c.dim, 40 + variant);
    attention_params p;
    p.causal = true;
    p.softcap = variant == 0 ? 2.0f : 0.0f;
    if (variant == 1) p.sinks = make_view<const float>(sinks.data(), 4);
    if (variant == 2) {
      p.window_left = 17;
      p.alibi_slopes = make_view<const float>(slopes.data(), 4);
    }
    if (variant == 3) p.scale = 0.3f;
    t.run(random_mask(geometry_of(c), rng, 0.5, 0.3), p, mod_every_third{});
    EXPECT_TRUE(t.matches()) << "variant " << variant;
  }
  // ALiBi with per-query lists falls back to the row-major schedule.
  sparse_case<float> t(1, 40, 40, 4, 2, 32, 45);
  attention_params p;
  p.causal = true;
  p.alibi_slopes = make_view<const float>(slopes.data(), 4);
  t.run(random_mask({1, 4, 40, 40, 1, 8}, rng, 0.5), p);
  EXPECT_TRUE(t.matches());
}

TEST(BlockSparse, Bf16KeysAndValues) {
  std::mt19937 rng(15);
  for (index_t bq : {32, 1}) {
    sparse_case<bf16> t(1, 100, 100, 4, 2, 64, 50);
    attention_params p;
    p.causal = true;
    t.run(random_mask({1, 2, 100, 100, bq, 16}, rng, 0.4), p);
    EXPECT_TRUE(t.matches()) << "block_q " << bq;
  }
}

TEST(BlockSparse, EmptyRowsGiveZeroAndMinusInf) {
  for (index_t bq : {16, 1}) {
    sparse_case<float> t(1, 48, 48, 2, 1, 32, 60);
    const block_mask empty(mask_geometry{1, 2, 48, 48, bq, 16});
    attention_params p;
    p.lse = t.lse.view;
    sparse::block_sparse_attention(t.q.view, t.k.view, t.v.view, t.o.view, empty, p);
    for (float x : t.o.storage) EXPECT_EQ(x, 0.0f);
    for (float x : t.lse.storage) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
    std::vector<float> sinks = {0.25f, -2.0f};
    p.sinks = make_view<const float>(sinks.data(), 2);
    sparse::block_sparse_attention(t.q.view, t.k.view, t.v.view, t.o.view, empty, p);
    for (float x : t.o.storage) EXPECT_EQ(x, 0.0f);
    EXPECT_EQ(t.lse.view(0, 0, 5), 0.25f);
    EXPECT_EQ(t.lse.view(0, 1, 7), -2.0f);
  }
}

TEST(BlockSparse, ThreadCountDoesNotChangeResults) {
  std::mt19937 rng(16);
  for (index_t bq : {32, 1}) {
    const block_mask m = random_mask({1, 2, 128, 128, bq, 16}, rng, 0.4);
    sparse_case<float> t(1, 128, 128, 4, 2, 64, 70);
    attention_params p;
    p.causal = true;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    sparse::block_sparse_attention(t.q.view, t.k.view, t.v.view, t.o.view, m, p);
    const std::vector<float> one = t.o.storage;
    omp_set_num_threads(2);
    sparse::block_sparse_attention(t.q.view, t.k.view, t.v.view, t.o.view, m, p);
    omp_set_num_threads(saved);
    EXPECT_EQ(one, t.o.storage) << "block_q " << bq;
  }
}

TEST(BlockSparse, MismatchedMaskThrows) {
  sparse_case<float> t(1, 32, 40, 4, 2, 16, 80);
  auto call = [&](const mask_geometry& g) {
    sparse::block_sparse_attention(t.q.view, t.k.view, t.v.view, t.o.view, block_mask(g));
  };
  EXPECT_NO_THROW(call({1, 4, 32, 40, 16, 16}));
  EXPECT_NO_THROW(call({1, 2, 32, 40, 16, 16}));
  EXPECT_NO_THROW(call({1, 1, 32, 40, 16, 16}));
  EXPECT_THROW(call({2, 4, 32, 40, 16, 16}), invalid_argument);  // batch
  EXPECT_THROW(call({1, 3, 32, 40, 16, 16}), invalid_argument);  // heads
  EXPECT_THROW(call({1, 4, 31, 40, 16, 16}), invalid_argument);  // seq_q
  EXPECT_THROW(call({1, 4, 32, 41, 16, 16}), invalid_argument);  // seq_k
  try {
    call({1, 3, 32, 40, 16, 16});
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("mask heads (3)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attend::testing
