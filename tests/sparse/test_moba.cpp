// MoBA selection against a re-implementation of the card (gates q . mean(K_block) over earlier
// blocks, own block forced, top-k), planted needles, and attention through its per-query mask.
#include "attend/sparse/select/moba.hpp"
#include "selector_ref.hpp"

namespace attend::testing {
namespace {

std::vector<index_t> ref_moba_row(const sparse_case<float>& t, index_t b, index_t h, index_t i,
                                  index_t C, index_t top_k) {
  const index_t own = (t.seq_k - t.seq_q + i) / C, hk = h / (t.heads_q / t.heads_kv);
  std::vector<double> gate(static_cast<std::size_t>(own));
  for (index_t blk = 0; blk < own; ++blk) {
    const auto m = ref::key_mean(t, b, hk, blk * C, std::min(t.seq_k, (blk + 1) * C));
    double g = 0;
    for (index_t c = 0; c < t.dim; ++c) g += double(t.q.view(b, i, h, c)) * m[c];
    gate[blk] = g;
  }
  auto picks = ref::top(gate, top_k - 1);
  picks.push_back(own);
  return picks;
}

TEST(Moba, SelectionMatchesReimplementation) {
  for (auto [lq, lk, C, k] : {std::tuple<index_t, index_t, index_t, index_t>{200, 200, 32, 3},
                             {150, 230, 24, 4}, {96, 96, 16, 1}, {64, 64, 8, 20}}) {
    sparse_case<float> t(2, lq, lk, 4, 2, 24, 7);
    const auto m = sparse::moba_select(t.q.cview(), t.k.cview(), sparse::moba_params{C, k});
    ASSERT_EQ(m.geometry(), (sparse::mask_geometry{2, 4, lq, lk, 1, C}));
    for (index_t b = 0; b < 2; ++b)
      for (index_t h = 0; h < 4; ++h)
        for (index_t i = 0; i < lq; ++i)
          ASSERT_EQ(ref::blocks(m, m.geometry().row(b, h, i)), ref_moba_row(t, b, h, i, C, k))
              << "C " << C << " k " << k << " b " << b << " h " << h << " i " << i;
  }
}

TEST(Moba, FindsPlantedNeedleAndAttendsExactly) {
  sparse_case<float> t(1, 256, 256, 4, 2, 32, 8, 0.3f);
  ref::plant_needle(t, 70);  // in block 2 of 32 keys
  const auto m = sparse::moba_select(t.q.cview(), t.k.cview(), sparse::moba_params{32, 2});
  for (index_t h = 0; h < 4; ++h)
    for (index_t i = 96; i < 256; ++i) {
      const auto bl = ref::blocks(m, m.geometry().row(0, h, i));
      EXPECT_EQ(bl, (std::vector<index_t>{2, i / 32})) << "h " << h << " i " << i;
    }
  attention_params p;
  p.causal = true;
  t.run(m, p);  // key-major schedule (1-query blocks)
  EXPECT_TRUE(t.matches());
}

TEST(Moba, Errors) {
  sparse_case<float> t(1, 32, 32, 4, 2, 16, 9);
  EXPECT_THROW(sparse::moba_select(t.q.cview(), t.k.cview(), sparse::moba_params{0, 3}),
               invalid_argument);
  EXPECT_THROW(sparse::moba_select(t.q.cview(), t.k.cview(), sparse::moba_params{16, 0}),
               invalid_argument);
  sparse_case<float> bad(1, 40, 32, 4, 2, 16, 9);  // more queries than keys
  EXPECT_THROW(sparse::moba_select(bad.q.cview(), bad.k.cview()), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
