// MInference vertical-slash against a re-implementation of the card (last-64 probe, forced
// columns and diagonals, top verticals and slashes, element coverage of the slash ranges rounded
// to key blocks, uncovered verticals as columns), planted needles and attention.
#include "attend/sparse/select/minference.hpp"
#include "selector_ref.hpp"

namespace attend::testing {
namespace {

using sparse::minference_params;

void check_against_ref(const sparse_case<float>& t, const minference_params& mp) {
  const auto m = sparse::minference_select(t.q.cview(), t.k.cview(), t.v.cview(), mp);
  const index_t lq = t.seq_q, lk = t.seq_k, off = lk - lq;
  const index_t last = std::min(mp.last_q, lq), bq = mp.block_q, bk = mp.block_k;
  const index_t nq = (lq + bq - 1) / bq, nk = (lk + bk - 1) / bk;
  for (index_t b = 0; b < t.batch; ++b)
    for (index_t h = 0; h < t.heads_q; ++h) {
      std::vector<double> vert(lk, 0.0), slash(lk, 0.0);
      for (index_t i = lq - last; i < lq; ++i) {
        const auto a = ref::attention_row(t, b, h, i);
        for (index_t j = 0; j <= off + i; ++j) {
          vert[j] += a[j];
          slash[off + i - j] += a[j];
        }
      }
      for (index_t j = 0; j < std::min(mp.forced_columns, lk); ++j) vert[j] = 1e300;
      for (index_t o = 0; o < std::min(mp.forced_slashes, lk); ++o) slash[o] = 1e300;
      const auto cols = ref::top(vert, std::max(mp.vertical_size, mp.forced_columns));
      const auto offs = ref::top(slash, std::max(mp.slash_size, mp.forced_slashes));
      for (index_t qb = 0; qb < nq; ++qb) {
        const index_t p0 = off + qb * bq, p1 = off + std::min(lq, (qb + 1) * bq) - 1;
        std::vector<char> covered(nk, 0);
        for (index_t o : offs)
          for (index_t j = std::max<index_t>(0, p0 - o); j <= p1 - o; ++j) covered[j / bk] = 1;
        std::vector<index_t> want_blocks, want_cols;
        for (index_t kb = 0; kb < nk; ++kb)
          if (covered[kb]) want_blocks.push_back(kb);
        for (index_t j : cols)
          if (j <= p1 && !covered[j / bk]) want_cols.push_back(j);
        const index_t r = m.geometry().row(b, h, qb);
        ASSERT_EQ(ref::blocks(m, r), want_blocks) << "b " << b << " h " << h << " qb " << qb;
        ASSERT_EQ(ref::columns(m, r), want_cols) << "b " << b << " h " << h << " qb " << qb;
      }
    }
}

TEST(MInference, SelectionMatchesReimplementation) {
  sparse_case<float> t(1, 400, 400, 4, 2, 32, 21);
  sparse_case<float> t2(2, 200, 333, 2, 1, 16, 22);
  minference_params mp;
  mp.vertical_size = 40;
  mp.slash_size = 60;
  mp.forced_slashes = 10;
  check_against_ref(t, mp);
  check_against_ref(t2, mp);
  mp.block_q = 32;
  mp.block_k = 8;
  mp.last_q = 20;
  mp.forced_columns = 3;
  check_against_ref(t2, mp);
  check_against_ref(t, minference_params{});  // defaults: everything forced at this length
}

TEST(MInference, FindsPlantedNeedleAndAttendsExactly) {
  sparse_case<float> t(1, 512, 512, 4, 2, 32, 23, 0.3f);
  ref::plant_needle(t, 300);
  minference_params mp;
  mp.vertical_size = 31;
  mp.slash_size = 50;
  mp.forced_slashes = 20;
  const auto m = sparse::minference_select(t.q.cview(), t.k.cview(), t.v.cview(), mp);
  for (index_t h = 0; h < 4; ++h)
    for (index_t qb = 300 / 64 + 1; qb < 8; ++qb) {
      const index_t r = m.geometry().row(0, h, qb);
      const auto bl = ref::blocks(m, r);
      const auto cl = ref::columns(m, r);
      EXPECT_TRUE(std::binary_search(cl.begin(), cl.end(), 300) ||
                  std::binary_search(bl.begin(), bl.end(), 300 / mp.block_k))
          << "h " << h << " qb " << qb;
    }
  attention_params p;
  p.causal = true;
  t.run(m, p);  // blocks + columns
  EXPECT_TRUE(t.matches());
}

}  // namespace
}  // namespace attend::testing
