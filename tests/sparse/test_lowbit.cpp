// Low-bit (SALE-style) selection against a re-implementation of the card: int8 / int4 quantised
// smoothed keys and queries, the exact sink + window LSE from the double oracle, and the
// relative-score test per element. Blocks whose deciding element lies within 1e-3 of the
// threshold are not compared (float vs double rounding may flip them). Planted needles, attention.
#include "attend/sparse/select/lowbit.hpp"
#include "selector_ref.hpp"

namespace attend::testing {
namespace {

using sparse::lowbit_format;
using sparse::lowbit_params;

float quant(const std::vector<float>& x, float qmax, std::vector<float>& out) {
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::abs(v));
  const float s = amax > 0 ? amax / qmax : 1.0f;
  out.resize(x.size());
  for (std::size_t c = 0; c < x.size(); ++c)
    out[c] = std::clamp(std::nearbyint(x[c] / s), -qmax, qmax);
  return s;
}

void check_against_ref(const sparse_case<float>& t, const lowbit_params& lp) {
  const auto m = sparse::lowbit_select(t.q.cview(), t.k.cview(), t.v.cview(), lp);
  const index_t lq = t.seq_q, lk = t.seq_k, off = lk - lq, d = t.dim;
  const index_t bq = lp.block_q, bk = lp.block_k, nq = (lq + bq - 1) / bq;
  const index_t group = t.heads_q / t.heads_kv;
  const float qmax = lp.format == lowbit_format::int8 ? 127.0f : 7.0f;
  const double scale = 1.0 / std::sqrt(double(d));
  const index_t sink = std::min(lk, lp.sink_blocks * bk);
  index_t compared = 0;
  for (index_t b = 0; b < t.batch; ++b)
    for (index_t hk = 0; hk < t.heads_kv; ++hk) {
      std::vector<float> mean(d);
      for (index_t c = 0; c < d; ++c) {
        double acc = 0;
        for (index_t j = 0; j < lk; ++j) acc += t.k.view(b, j, hk, c);
        mean[c] = float(acc / double(lk));
      }
      std::vector<std::vector<float>> kq(lk);
      std::vector<float> ks(lk), row(d);
      for (index_t j = 0; j < lk; ++j) {
        for (index_t c = 0; c < d; ++c) row[c] = t.k.view(b, j, hk, c) - mean[c];
        ks[j] = quant(row, qmax, kq[j]);
      }
      for (index_t h = hk * group; h < (hk + 1) * group; ++h) {
        const float tau = lp.tau_per_head.empty() ? lp.tau : lp.tau_per_head[h];
        for (index_t qb = 0; qb < nq; ++qb) {
          const index_t i0 = qb * bq, i1 = std::min(lq, i0 + bq), lim = (off + i1 - 1) / bk;
          std::vector<double> margin(lim + 1, -1e300);  // max (estimate - threshold) per block
          for (index_t i = i0; i < i1; ++i) {
            const index_t p = off + i;
            // Exact LSE over sink keys and the window, from double scores.
            std::vector<double> s;
            std::vector<double> dots(p + 1);
            for (index_t j = 0; j <= p; ++j) {
              double dot = 0;
              for (index_t c = 0; c < d; ++c) dot += double(t.q.view(b, i, h, c)) * t.k.view(b, j, hk, c);
              dots[j] = dot * scale;
              if (j < sink || j > p - lp.local_window) s.push_back(dots[j]);
            }
            double mx = -1e300, sum = 0;
            for (double x : s) mx = std::max(mx, x);
            for (double x : s) sum += std::exp(x - mx);
            const double thr = mx + std::log(sum) + std::log(double(tau));
            std::vector<float> qrow(d), qi;
            double c0 = 0;
            for (index_t c = 0; c < d; ++c) {
              qrow[c] = t.q.view(b, i, h, c);
              c0 += double(qrow[c]) * mean[c];
            }
            const float sq = quant(qrow, qmax, qi);
            for (index_t j = 0; j <= p; ++j) {
              double acc = 0;
              for (index_t c = 0; c < d; ++c) acc += double(qi[c]) * kq[j][c];
              const double est = scale * (double(sq) * ks[j] * acc + c0);
              margin[j / bk] = std::max(margin[j / bk], est - thr);
            }
          }
          const auto got = ref::blocks(m, m.geometry().row(b, h, qb));
          const index_t p0 = off + i0;
          for (index_t kb = 0; kb <= lim; ++kb) {
            const bool forced = kb < lp.sink_blocks ||
                                kb >= std::max<index_t>(0, p0 - lp.local_window + 1) / bk;
            const bool sel = std::binary_search(got.begin(), got.end(), kb);
            if (forced) {
              EXPECT_TRUE(sel) << "forced block " << kb << " qb " << qb;
              continue;
            }
            if (std::abs(margin[kb]) < 1e-3) continue;
            ++compared;
            EXPECT_EQ(sel, margin[kb] > 0) << "h " << h << " qb " << qb << " kb " << kb
                                           << " margin " << margin[kb];
          }
          for (index_t kb : got) EXPECT_LE(kb, lim);
        }
      }
    }
  EXPECT_GT(compared, 0);
}

TEST(LowBit, SelectionMatchesReimplementation) {
  sparse_case<float> t(1, 384, 384, 4, 2, 32, 41, 1.5f);
  sparse_case<float> t2(1, 200, 260, 2, 1, 16, 42, 2.0f);
  lowbit_params lp;
  lp.local_window = 64;
  lp.tau = 0.02f;
  check_against_ref(t, lp);
  lp.format = lowbit_format::int8;
  check_against_ref(t, lp);
  lp.block_q = 32;
  lp.block_k = 16;
  lp.sink_blocks = 2;
  lp.tau_per_head = {0.01f, 0.05f};
  check_against_ref(t2, lp);
}

TEST(LowBit, FindsPlantedNeedleAndAttendsExactly) {
  sparse_case<float> t(1, 512, 512, 4, 2, 32, 43, 0.3f);
  ref::plant_needle(t, 130);  // key block 4 of 32, outside the sink and the windows below
  for (auto f : {lowbit_format::int4, lowbit_format::int8}) {
    lowbit_params lp;
    lp.format = f;
    const auto m = sparse::lowbit_select(t.q.cview(), t.k.cview(), t.v.cview(), lp);
    for (index_t h = 0; h < 4; ++h)
      for (index_t qb = 5; qb < 8; ++qb) {
        const auto bl = ref::blocks(m, m.geometry().row(0, h, qb));
        EXPECT_TRUE(std::binary_search(bl.begin(), bl.end(), 4)) << "h " << h << " qb " << qb;
      }
    attention_params p;
    p.causal = true;
    t.run(m, p);
    EXPECT_TRUE(t.matches());
  }
}

TEST(LowBit, Errors) {
  sparse_case<float> t(1, 64, 64, 4, 2, 16, 44);
  lowbit_params lp;
  lp.tau = 0.0f;
  EXPECT_THROW(sparse::lowbit_select(t.q.cview(), t.k.cview(), t.v.cview(), lp), invalid_argument);
  lp = {};
  lp.tau_per_head = {0.1f};
  EXPECT_THROW(sparse::lowbit_select(t.q.cview(), t.k.cview(), t.v.cview(), lp), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
