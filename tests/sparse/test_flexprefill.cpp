// FlexPrefill selection against a re-implementation of the card in double precision (probe,
// budgets, JS pattern test, vertical-slash and query-aware blocks), planted needles, the dense
// fallback, and attention through its mask.
#include "attend/sparse/select/flexprefill.hpp"
#include "selector_ref.hpp"

namespace attend::testing {
namespace {

using sparse::flex_pattern;
using sparse::flexprefill_params;

struct ref_result {
  std::vector<std::vector<index_t>> rows;  // per (b, h, qb)
  std::vector<flex_pattern> patterns;
};

ref_result ref_flexprefill(const sparse_case<float>& t, const flexprefill_params& fp) {
  const index_t bs = fp.block_size, lq = t.seq_q, lk = t.seq_k, off = lk - lq, d = t.dim;
  const index_t nq = (lq + bs - 1) / bs, nk = (lk + bs - 1) / bs, group = t.heads_q / t.heads_kv;
  const double scale = 1.0 / std::sqrt(double(d));
  ref_result out;
  out.rows.assign(std::size_t(t.batch * t.heads_q * nq), {});
  auto last_pos = [&](index_t qb) { return off + std::min(lq, (qb + 1) * bs) - 1; };
  if (lq <= std::max(2 * bs, fp.min_budget)) {
    out.patterns.assign(std::size_t(t.batch * t.heads_q), flex_pattern::dense);
    for (std::size_t r = 0; r < out.rows.size(); ++r)
      for (index_t kb = 0; kb <= last_pos(index_t(r) % nq) / bs; ++kb) out.rows[r].push_back(kb);
    return out;
  }
  const index_t last = std::min(bs, lq);
  const index_t min_blocks = std::min(fp.min_budget / bs, nk);
  const index_t max_blocks = std::max(fp.max_budget > 0 ? std::min(fp.max_budget / bs, nk) : nk,
                                      min_blocks);
  for (index_t b = 0; b < t.batch; ++b)
    for (index_t h = 0; h < t.heads_q; ++h) {
      const index_t hk = h / group;
      std::vector<double> vert(lk, 0.0), slash(lk, 0.0);
      for (index_t i = lq - last; i < lq; ++i) {
        const auto a = ref::attention_row(t, b, h, i);
        const index_t p = off + i;
        for (index_t j = 0; j <= p; ++j) {
          vert[j] += a[j] / double(last);
          slash[p - j] += a[j] / double(last);
        }
      }
      auto blocks_of = [&](const std::vector<double>& mass) {
        return std::clamp<index_t>(ref::budget(mass, fp.gamma) / bs + 1, min_blocks, max_blocks);
      };
      index_t nv = blocks_of(vert), ns = blocks_of(slash);
      std::vector<double> vpool(nk, 0.0), spool(nk, 0.0);
      for (index_t j = 0; j < lk; ++j) {
        vpool[j / bs] += vert[j];
        spool[j / bs] += slash[j];
      }
      // JS test.
      std::vector<double> qmean(d, 0.0), est(nk);
      for (index_t i = lq - last; i < lq; ++i)
        for (index_t c = 0; c < d; ++c) qmean[c] += t.q.view(b, i, h, c) * scale / double(last);
      for (index_t kb = 0; kb < nk; ++kb) {
        const auto km = ref::key_mean(t, b, hk, kb * bs, std::min(lk, (kb + 1) * bs));
        double s = 0;
        for (index_t c = 0; c < d; ++c) s += qmean[c] * km[c];
        est[kb] = s;
      }
      ref::softmax(est);
      double js = 0, tv = 0;
      for (double x : vpool) tv += x;
      for (index_t kb = 0; kb < nk; ++kb) {
        const double pa = est[kb], pb = vpool[kb] / tv, m = (pa + pb) / 2;
        if (pa > 0) js += 0.5 * pa * std::log(pa / m);
        if (pb > 0) js += 0.5 * pb * std::log(pb / m);
      }
      const bool qa = std::sqrt(std::max(0.0, js)) < fp.tau;
      out.patterns.push_back(qa ? flex_pattern::query_aware : flex_pattern::vertical_slash);
      if (qa) nv = ns = min_blocks;
      auto forced_top = [&](std::vector<double> v, index_t n) {
        v[0] = 1e300;
        return ref::top(v, std::max<index_t>(n, 1));
      };
      const auto vsel = forced_top(vpool, nv), ssel = forced_top(spool, ns);
      for (index_t qb = 0; qb < nq; ++qb) {
        auto& row = out.rows[std::size_t((b * t.heads_q + h) * nq + qb)];
        const index_t p0 = off + qb * bs, p1 = last_pos(qb);
        for (index_t kb : vsel)
          if (kb * bs <= p1) row.push_back(kb);
        for (index_t o : ssel)
          for (index_t dd = p0 / bs; dd <= p1 / bs; ++dd)
            if (dd - o >= 0) row.push_back(dd - o);
      }
      if (qa) {
        std::vector<double> flat;
        for (index_t qb = 0; qb < nq; ++qb) {
          std::vector<double> qp(d, 0.0);
          const index_t i0 = qb * bs, i1 = std::min(lq, i0 + bs);
          for (index_t i = i0; i < i1; ++i)
            for (index_t c = 0; c < d; ++c) qp[c] += t.q.view(b, i, h, c) / double(i1 - i0);
          std::vector<double> row(nk, -1e300);
          for (index_t kb = 0; kb <= last_pos(qb) / bs; ++kb) {
            const auto km = ref::key_mean(t, b, hk, kb * bs, std::min(lk, (kb + 1) * bs));
            double s = 0;
            for (index_t c = 0; c < d; ++c) s += qp[c] * km[c];
            row[kb] = s * scale;
          }
          ref::softmax(row);
          flat.insert(flat.end(), row.begin(), row.end());
        }
        for (index_t e : ref::top(flat, ref::budget(flat, fp.gamma)))
          out.rows[std::size_t((b * t.heads_q + h) * nq + e / nk)].push_back(e % nk);
      }
    }
  for (auto& r : out.rows) {
    std::sort(r.begin(), r.end());
    r.erase(std::unique(r.begin(), r.end()), r.end());
  }
  return out;
}

void expect_same(const sparse::block_mask& m, const ref_result& want,
                 const std::vector<flex_pattern>& got_patterns, const std::string& what) {
  EXPECT_EQ(got_patterns, want.patterns) << what;
  for (index_t r = 0; r < m.geometry().rows(); ++r)
    EXPECT_EQ(ref::blocks(m, r), want.rows[std::size_t(r)]) << what << " row " << r;
}

TEST(FlexPrefill, SelectionMatchesReimplementation) {
  sparse_case<float> t(1, 512, 512, 4, 2, 32, 11);
  sparse_case<float> t2(2, 300, 380, 4, 2, 16, 12);
  for (double tau : {0.0, 1.0, 0.1})
    for (double gamma : {0.9, 0.5}) {
      flexprefill_params fp;
      fp.block_size = 64;
      fp.min_budget = 128;
      fp.gamma = gamma;
      fp.tau = tau;
      std::vector<flex_pattern> pats;
      sparse::block_mask m = sparse::flexprefill_select(t.q.cview(), t.k.cview(), t.v.cview(), fp, &pats);
      const std::string what = "tau " + std::to_string(tau) + " gamma " + std::to_string(gamma);
      expect_same(m, ref_flexprefill(t, fp), pats, "512 " + what);
      fp.block_size = 32;
      fp.min_budget = 32;
      fp.max_budget = 96;
      m = sparse::flexprefill_select(t2.q.cview(), t2.k.cview(), t2.v.cview(), fp, &pats);
      expect_same(m, ref_flexprefill(t2, fp), pats, "300x380 " + what);
    }
}

TEST(FlexPrefill, ShortInputsAreDense) {
  sparse_case<float> t(1, 256, 256, 2, 2, 16, 13);
  std::vector<flex_pattern> pats;
  const auto m = sparse::flexprefill_select(t.q.cview(), t.k.cview(), t.v.cview(), {}, &pats);
  EXPECT_NEAR(m.density(true), 1.0, 1e-12);
  EXPECT_EQ(pats, std::vector<flex_pattern>(2, flex_pattern::dense));
}

TEST(FlexPrefill, FindsPlantedNeedleAndAttendsExactly) {
  sparse_case<float> t(1, 512, 512, 4, 2, 32, 14, 0.3f);
  ref::plant_needle(t, 200);  // key block 3 of 64
  for (double tau : {0.0, 1.0}) {
    flexprefill_params fp;
    fp.block_size = 64;
    fp.min_budget = 128;
    fp.tau = tau;
    const auto m = sparse::flexprefill_select(t.q.cview(), t.k.cview(), t.v.cview(), fp);
    for (index_t h = 0; h < 4; ++h)
      for (index_t qb = 4; qb < 8; ++qb) {
        const auto bl = ref::blocks(m, m.geometry().row(0, h, qb));
        EXPECT_TRUE(std::binary_search(bl.begin(), bl.end(), 3)) << "tau " << tau << " qb " << qb;
      }
    attention_params p;
    p.causal = true;
    t.run(m, p);
    EXPECT_TRUE(t.matches());
  }
}

TEST(FlexPrefill, Errors) {
  sparse_case<float> t(1, 64, 64, 4, 2, 16, 15);
  flexprefill_params fp;
  fp.gamma = 1.5;
  EXPECT_THROW(sparse::flexprefill_select(t.q.cview(), t.k.cview(), t.v.cview(), fp),
               invalid_argument);
  fp = {};
  fp.block_size = 0;
  EXPECT_THROW(sparse::flexprefill_select(t.q.cview(), t.k.cview(), t.v.cview(), fp),
               invalid_argument);
}

}  // namespace
}  // namespace attend::testing
