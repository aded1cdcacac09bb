// block_mask: builders (predicate, dense matrix, all blocks, builder, CSR), the dense forms,
// density, union and validation errors, each against a direct computation in the test.
#include <random>

#include "block_case.hpp"

namespace attend::testing {
namespace {

using sparse::block_mask;
using sparse::mask_geometry;

// The reference block-level view of an element predicate, computed directly.
template <class Pred>
std::vector<std::uint8_t> blocks_of(const mask_geometry& g, const Pred& pred) {
  std::vector<std::uint8_t> d(static_cast<std::size_t>(g.rows() * g.k_blocks()), 0);
  for (index_t b = 0; b < g.batch; ++b)
    for (index_t h = 0; h < g.heads; ++h)
      for (index_t qb = 0; qb < g.q_blocks(); ++qb)
        for (index_t kb = 0; kb < g.k_blocks(); ++kb) {
          bool any = false, all = true;
          for (index_t i = qb * g.block_q; i < std::min(g.seq_q, (qb + 1) * g.block_q); ++i)
            for (index_t j = kb * g.block_k; j < std::min(g.seq_k, (kb + 1) * g.block_k); ++j) {
              const bool x = pred(b, h, i, j);
              any = any || x;
              all = all && x;
            }
          d[g.row(b, h, qb) * g.k_blocks() + kb] = any ? (all ? 2 : 1) : 0;
        }
  return d;
}

TEST(BlockMask, FromPredicateMatchesDirectBlockView) {
  const mask_geometry geoms[] = {{1, 1, 64, 64, 16, 16}, {2, 3, 50, 70, 7, 9}, {1, 2, 33, 97, 32, 8}};
  auto pred = [](index_t b, index_t h, index_t i, index_t j) {
    return (i * 7 + j * 3 + b + h) % 11 < 2 || j <= i / 2;
  };
  for (const auto& g : geoms) {
    const block_mask m = block_mask::from_predicate(g, pred);
    EXPECT_EQ(m.to_dense(), blocks_of(g, pred));
    EXPECT_NO_THROW(m.validate());
    // Element form: full blocks whole, partial blocks through the predicate.
    const auto el = m.to_dense_elements(pred);
    for (index_t b = 0; b < g.batch; ++b)
      for (index_t h = 0; h < g.heads; ++h)
        for (index_t i = 0; i < g.seq_q; ++i)
          for (index_t j = 0; j < g.seq_k; ++j)
            ASSERT_EQ(el[((b * g.heads + h) * g.seq_q + i) * g.seq_k + j] != 0, pred(b, h, i, j));
  }
}

TEST(BlockMask, FromDenseMatchesFromPredicate) {
  const mask_geometry g{2, 2, 40, 52, 8, 16};
  std::mt19937 rng(3);
  auto t = bool_tensor::make({2, 2, 40, 52});
  std::bernoulli_distribution bit(0.1);
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 2; ++h)
      for (index_t i = 0; i < 40; ++i)
        for (index_t j = 0; j < 52; ++j) t.view(b, h, i, j) = bit(rng) || (j >= 16 && j < 32);
  const block_mask a = block_mask::from_dense(t.cview(), 8, 16);
  const block_mask b = block_mask::from_predicate(
      g, [&](index_t bb, index_t h, index_t i, index_t j) { return t.view(bb, h, i, j); });
  EXPECT_EQ(a.offsets(), b.offsets());
  EXPECT_EQ(a.indices(), b.indices());
  EXPECT_EQ(a.full(), b.full());
  EXPECT_EQ(a.geometry(), g);
  // Key block 1 (keys 16..31) is all true: listed full in every row.
  for (index_t r = 0; r < g.rows(); ++r) {
    const auto mr = a.row(r);
    const auto it = std::find(mr.blocks, mr.blocks + mr.count, 1);
    ASSERT_NE(it, mr.blocks + mr.count);
    EXPECT_EQ(mr.full[it - mr.blocks], 1);
  }
}

TEST(BlockMask, AllBlocksAndEmpty) {
  const mask_geometry g{1, 2, 30, 45, 8, 10};
  const block_mask all = block_mask::all_blocks(g);
  EXPECT_EQ(all.nnz(), g.rows() * g.k_blocks());
  EXPECT_DOUBLE_EQ(all.density(), 1.0);
  EXPECT_DOUBLE_EQ(all.density(true), 1.0);
  for (auto x : all.to_dense()) EXPECT_EQ(x, 2);
  const block_mask none(g);
  EXPECT_EQ(none.nnz(), 0);
  EXPECT_DOUBLE_EQ(none.density(), 0.0);
}

TEST(BlockMask, DensityCountsElements) {
  // 10 queries, 12 keys (offset 2), blocks 4 x 5, one owner. Listed: row 0 -> {0}, row 1 ->
  // {1, 2}, row 2 -> {2}, column 3 on row 2.
  const mask_geometry g{1, 1, 10, 12, 4, 5};
  const block_mask m = block_mask::from_csr(g, {0, 1, 3, 4}, {0, 1, 2, 2}, {1, 0, 1, 1}, {0, 0, 0, 1},
                                            {3});
  double cov = 0, cov_causal = 0, tot_causal = 0;
  for (index_t i = 0; i < 10; ++i) {
    const index_t p = 2 + i;
    tot_causal += double(std::min<index_t>(12, p + 1));
    const index_t qb = i / 4;
    for (index_t j = 0; j < 12; ++j) {
      const index_t kb = j / 5;
      const bool in = (qb == 0 && kb == 0) || (qb == 1 && (kb == 1 || kb == 2)) ||
                      (qb == 2 && (kb == 2 || j == 3));
      cov += in;
      cov_causal += in && j <= p;
    }
  }
  EXPECT_NEAR(m.density(), cov / 120.0, 1e-12);
  EXPECT_NEAR(m.density(true), cov_causal / tot_causal, 1e-12);
}

TEST(BlockMask, BuilderSortsMergesAndDropsCoveredColumns) {
  const mask_geometry g{1, 1, 8, 40, 4, 8};
  sparse::block_mask_builder bld(g);
  bld.add(0, 3, false);
  bld.add(0, 1, true);
  bld.add(0, 3, true);   // full wins
  bld.add(0, 1, false);
  bld.add_column(0, 9);   // inside block 1: dropped
  bld.add_column(0, 39);
  bld.add_column(0, 17);
  bld.add_column(0, 17);  // duplicate
  bld.add(1, 4, false);
  const block_mask m = bld.build();
  const auto r0 = m.row(0);
  ASSERT_EQ(r0.count, 2);
  EXPECT_EQ(r0.blocks[0], 1);
  EXPECT_EQ(r0.blocks[1], 3);
  EXPECT_EQ(r0.full[0], 1);
  EXPECT_EQ(r0.full[1], 1);
  ASSERT_EQ(r0.column_count, 2);
  EXPECT_EQ(r0.columns[0], 17);
  EXPECT_EQ(r0.columns[1], 39);
  const auto r1 = m.row(1);
  ASSERT_EQ(r1.count, 1);
  EXPECT_EQ(r1.full[0], 0);
  EXPECT_EQ(r1.column_count, 0);
}

TEST(BlockMask, UniteIsTheUnionOfElementSets) {
  const mask_geometry g{1, 2, 24, 36, 8, 6};
  std::mt19937 rng(4);
  const block_mask a = random_mask(g, rng, 0.3, 0.5, 2);
  const block_mask b = random_mask(g, rng, 0.3, 0.5, 3);
  const block_mask u = sparse::unite(a, b);
  auto pred = [](index_t, index_t, index_t i, index_t j) { return (i + j) % 2 == 0; };
  const auto ea = a.to_dense_elements(pred), eb = b.to_dense_elements(pred),
             eu = u.to_dense_elements(pred);
  for (std::size_t x = 0; x < eu.size(); ++x) ASSERT_EQ(eu[x] != 0, ea[x] || eb[x]) << x;
  const auto da = a.to_dense(), db = b.to_dense(), du = u.to_dense();
  for (std::size_t x = 0; x < du.size(); ++x) ASSERT_EQ(du[x], std::max(da[x], db[x])) << x;
  EXPECT_THROW(sparse::unite(a, block_mask(mask_geometry{1, 2, 24, 36, 8, 12})), invalid_argument);
}

TEST(BlockMask, MalformedMasksThrow) {
  const mask_geometry g{1, 1, 8, 16, 4, 4};  // 2 rows, 4 key blocks
  auto expect_error = [&](auto make, const char* needle) {
    try {
      make();
      ADD_FAILURE() << "no error for " << needle;
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { block_mask::from_csr(g, {0, 1}, {0}); }, "offsets has 2 entries");
  expect_error([&] { block_mask::from_csr(g, {0, 1, 2}, {0, 4}); }, "outside [0, k_blocks = 4)");
  expect_error([&] { block_mask::from_csr(g, {0, 1, 2}, {0, -1}); }, "lists key block -1");
  expect_error([&] { block_mask::from_csr(g, {0, 2, 2}, {2, 1}); }, "not sorted or repeats");
  expect_error([&] { block_mask::from_csr(g, {0, 2, 2}, {1, 1}); }, "not sorted or repeats");
  expect_error([&] { block_mask::from_csr(g, {0, 2, 1}, {0, 1}); }, "offsets must run from 0");
  expect_error([&] { block_mask::from_csr(g, {0, 1, 1}, {0}, {2}); }, "full flag");
  expect_error([&] { block_mask::from_csr(g, {0, 1, 1}, {0}, {1, 1}); }, "full has 2");
  expect_error([&] { block_mask::from_csr(g, {0, 1, 1}, {0}, {}, {0, 1, 1}, {16}); },
               "outside [0, seq_k = 16)");
  expect_error([&] { block_mask::from_csr(g, {0, 1, 1}, {0}, {}, {0, 1, 1}, {2}); },
               "inside its listed key block 0");
  expect_error([&] { block_mask::from_csr(g, {0, 0, 0}, {}, {}, {0, 0, 2}, {9, 5}); },
               "not sorted");
  expect_error([&] { block_mask::from_csr(g, {0, 0, 0}, {}, {}, {}, {5}); },
               "columns given without column_offsets");
  expect_error([&] { block_mask(mask_geometry{1, 0, 8, 16, 4, 4}); }, "must be positive");
  expect_error([&] { block_mask(mask_geometry{1, 1, 8, 16, 0, 4}); }, "must be positive");
  sparse::block_mask_builder bld(g);
  bld.add(1, 7);
  expect_error([&] { bld.build(); }, "lists key block 7");
  EXPECT_NO_THROW(block_mask::from_csr(g, {0, 2, 3}, {0, 3, 1}, {1, 0, 1}, {0, 1, 1}, {9}));
}

}  // namespace
}  // namespace attend::testing
