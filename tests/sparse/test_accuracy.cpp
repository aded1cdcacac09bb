// Accuracy tools: mass recall from LSEs equals the directly summed softmax mass inside the mask,
// recall is 1 when the mass lies inside, and the relative error of a known perturbation.
#include "attend/sparse/accuracy.hpp"
#include "selector_ref.hpp"

namespace attend::testing {
namespace {

TEST(Accuracy, RecallEqualsSoftmaxMassInsideTheMask) {
  std::mt19937 rng(51);
  sparse_case<float> t(1, 96, 96, 4, 2, 32, 52, 2.0f);
  const sparse::mask_geometry g{1, 2, 96, 96, 16, 16};
  const auto m = random_mask(g, rng, 0.4, 0.0, 2);
  attention_params p;
  p.causal = true;
  const auto acc = sparse::evaluate_mask(t.q.view, t.k.view, t.v.view, m, p);
  const auto el = expand_mask(m, 4, 2);
  double sum = 0, mn = 1;
  index_t rows = 0;
  for (index_t h = 0; h < 4; ++h)
    for (index_t i = 0; i < 96; ++i) {
      const auto a = ref::attention_row(t, 0, h, i);
      double in = 0;
      for (index_t j = 0; j <= i; ++j) in += el.view(0, h, i, j) ? a[j] : 0.0;
      sum += in;
      mn = std::min(mn, in);
      ++rows;
    }
  EXPECT_EQ(acc.recall.rows, rows);
  EXPECT_NEAR(acc.recall.mean, sum / double(rows), 1e-5);
  EXPECT_NEAR(acc.recall.min, mn, 1e-5);
  EXPECT_GT(acc.rel_err, 0.0);
}

TEST(Accuracy, RecallIsOneWhenTheMassLiesInside) {
  sparse_case<float> t(1, 128, 128, 2, 1, 32, 53, 0.2f);
  // Keys of block 1 (16..31) align with every query: their scores dwarf all others.
  for (index_t i = 0; i < 128; ++i)
    for (index_t h = 0; h < 2; ++h) t.q.view(0, i, h, 0) = 3.0f;
  for (index_t j = 16; j < 32; ++j) t.k.view(0, j, 0, 0) = 40.0f;
  const sparse::mask_geometry g{1, 1, 128, 128, 32, 16};
  sparse::block_mask_builder bld(g);
  for (index_t qb = 0; qb < 4; ++qb) {
    bld.add(qb, 1);
    bld.add(qb, 2 * qb);  // the diagonal, for the rows that precede block 1
    bld.add(qb, 2 * qb + 1);
  }
  const auto m = bld.build();
  attention_params p;
  p.causal = true;
  const auto acc = sparse::evaluate_mask(t.q.view, t.k.view, t.v.view, m, p);
  EXPECT_GT(acc.recall.min, 1.0 - 1e-6);
  EXPECT_LT(acc.rel_err, 1e-4);
  // Every block: recall 1 and the dense output.
  const auto all = sparse::evaluate_mask(t.q.view, t.k.view, t.v.view,
                                         sparse::block_mask::all_blocks(g), p);
  EXPECT_NEAR(all.recall.mean, 1.0, 1e-6);
  EXPECT_LT(all.rel_err, 1e-5);
  // No block: recall 0.
  const auto none = sparse::evaluate_mask(t.q.view, t.k.view, t.v.view, sparse::block_mask(g), p);
  EXPECT_EQ(none.recall.mean, 0.0);
  EXPECT_NEAR(none.rel_err, 1.0, 1e-12);
}

TEST(Accuracy, RelativeErrorAndRecallFromViews) {
  std::vector<float> a = {1, 2, 3, 4}, b = {1, 2, 3, 5};
  const auto va = view4<const float>::contiguous(a.data(), {1, 1, 1, 4});
  const auto vb = view4<const float>::contiguous(b.data(), {1, 1, 1, 4});
  EXPECT_NEAR(sparse::relative_error(va, vb), 1.0 / std::sqrt(39.0), 1e-12);
  EXPECT_EQ(sparse::relative_error(va, va), 0.0);
  std::vector<float> ls = {0.0f, -1.0f, -std::numeric_limits<float>::infinity(), 5.0f};
  std::vector<float> ld = {0.0f, 0.0f, 0.0f, -std::numeric_limits<float>::infinity()};
  const auto r = sparse::mass_recall(view3<const float>::contiguous(ls.data(), {1, 1, 4}),
                                     view3<const float>::contiguous(ld.data(), {1, 1, 4}));
  EXPECT_EQ(r.rows, 3);
  EXPECT_NEAR(r.mean, (1.0 + std::exp(-1.0) + 0.0) / 3, 1e-7);
  EXPECT_EQ(r.min, 0.0);
  EXPECT_THROW(sparse::relative_error(va, view4<const float>::contiguous(b.data(), {1, 1, 2, 2})),
               invalid_argument);
}

}  // namespace
}  // namespace attend::testing
