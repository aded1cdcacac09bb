// ProxyAttn against a re-implementation of the card (group-mean proxy queries on the sampled
// rows, max-pooled proxy softmax per block, per-head budgets from each head's last-query row,
// forced first and diagonal blocks), planted needles and attention.
#include "attend/sparse/select/proxy.hpp"
#include "selector_ref.hpp"

namespace attend::testing {
namespace {

using sparse::proxy_params;

void check_against_ref(const sparse_case<float>& t, const proxy_params& pp) {
  const auto m = sparse::proxy_select(t.q.cview(), t.k.cview(), t.v.cview(), pp);
  const index_t lq = t.seq_q, lk = t.seq_k, off = lk - lq, bs = pp.block_size, d = t.dim;
  const index_t nq = (lq + bs - 1) / bs, nk = (lk + bs - 1) / bs;
  const index_t group = t.heads_q / t.heads_kv;
  const double scale = 1.0 / std::sqrt(double(d));
  for (index_t b = 0; b < t.batch; ++b)
    for (index_t hk = 0; hk < t.heads_kv; ++hk) {
      // Proxy importance.
      std::vector<std::vector<double>> imp(nq, std::vector<double>(nk, 0.0));
      for (index_t qb = 0; qb < nq; ++qb) {
        const index_t i1 = std::min(lq, (qb + 1) * bs);
        for (index_t i = std::max(qb * bs, i1 - pp.sample_queries); i < i1; ++i) {
          const index_t p = off + i;
          std::vector<double> s(p + 1);
          for (index_t j = 0; j <= p; ++j) {
            double dot = 0;
            for (index_t c = 0; c < d; ++c) {
              double qm = 0;
              for (index_t h = hk * group; h < (hk + 1) * group; ++h)
                qm += double(float(t.q.view(b, i, h, c) * (1.0f / float(group))));
              dot += qm * t.k.view(b, j, hk, c);
            }
            s[j] = dot * scale;
          }
          ref::softmax(s);
          for (index_t j = 0; j <= p; ++j) imp[qb][j / bs] = std::max(imp[qb][j / bs], s[j]);
        }
      }
      for (index_t h = hk * group; h < (hk + 1) * group; ++h)
        for (index_t qb = 0; qb < nq; ++qb) {
          const index_t i0 = qb * bs, i1 = std::min(lq, i0 + bs);
          const index_t first_diag = (off + i0) / bs, lim = (off + i1 - 1) / bs;
          // Budget: the head's own attention row of the block's last query, per key block.
          const auto a = ref::attention_row(t, b, h, i1 - 1);
          std::vector<double> est(lim + 1, 0.0);
          for (index_t j = 0; j < index_t(a.size()); ++j) est[j / bs] += a[j];
          const index_t forced = 1 + (lim - first_diag + 1) - (first_diag == 0 ? 1 : 0);
          const index_t n = std::max({ref::budget(est, pp.gamma), pp.min_blocks, forced});
          std::vector<double> s(imp[qb].begin(), imp[qb].begin() + lim + 1);
          s[0] = 1e300;
          for (index_t kb = first_diag; kb <= lim; ++kb) s[kb] = 1e300;
          ASSERT_EQ(ref::blocks(m, m.geometry().row(b, h, qb)), ref::top(s, n))
              << "b " << b << " h " << h << " qb " << qb;
        }
    }
}

TEST(Proxy, SelectionMatchesReimplementation) {
  sparse_case<float> t(1, 512, 512, 4, 2, 32, 31);
  sparse_case<float> t2(2, 250, 300, 6, 2, 16, 32);
  proxy_params pp;
  pp.block_size = 64;
  check_against_ref(t, pp);
  pp.gamma = 0.5;
  pp.sample_queries = 5;
  check_against_ref(t, pp);
  pp.block_size = 32;
  pp.min_blocks = 4;
  check_against_ref(t2, pp);
}

TEST(Proxy, FindsPlantedNeedleAndAttendsExactly) {
  sparse_case<float> t(1, 512, 512, 4, 2, 32, 33, 0.3f);
  ref::plant_needle(t, 150);  // key block 2 of 64
  proxy_params pp;
  pp.block_size = 64;
  pp.gamma = 0.3;
  pp.min_blocks = 3;
  const auto m = sparse::proxy_select(t.q.cview(), t.k.cview(), t.v.cview(), pp);
  for (index_t h = 0; h < 4; ++h)
    for (index_t qb = 4; qb < 8; ++qb) {
      const auto bl = ref::blocks(m, m.geometry().row(0, h, qb));
      EXPECT_TRUE(std::binary_search(bl.begin(), bl.end(), 2)) << "h " << h << " qb " << qb;
    }
  attention_params p;
  p.causal = true;
  t.run(m, p);
  EXPECT_TRUE(t.matches());
}

}  // namespace
}  // namespace attend::testing
