// Found-in-the-middle calibration against the full matrix: document keys re-weighted by f_k
// inside each row's document mass (which is preserved), other keys unchanged, O = P' V.
// Plus identities (log bias 0 is plain attention, the LSE is unchanged), the class mask's tile
// classification, and the calibration helpers (document attention, log factors).
#include <cmath>
#include <limits>
#include <random>

#include "attend/dense/instantiate.hpp"
#include "attend/sink/fitm.hpp"
#include "attend/sink/stats.hpp"
#include "sink/sink_oracle.hpp"

ATTEND_EXTERN_DENSE_TEMPLATES

namespace attend::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

/// The intervention on the materialised P: P'_doc = (D_i / sum_doc f P) f_k P, rest unchanged.
tensor<double, 4> fitm_reference(const full_attention& f, const view4<const float>& v,
                                 const std::vector<std::vector<std::array<index_t, 2>>>& spans,
                                 const std::function<double(index_t, index_t, index_t)>& factor) {
  std::vector<double> w = f.p;
  for (index_t b = 0; b < f.batch; ++b)
    for (index_t h = 0; h < f.heads; ++h)
      for (index_t i = 0; i < f.seq_q; ++i) {
        double mass = 0.0, biased = 0.0;
        for (index_t d = 0; d < index_t(spans[b].size()); ++d)
          for (index_t j = spans[b][d][0]; j < spans[b][d][1]; ++j) {
            mass += f.P(b, h, i, j);
            biased += factor(b, h, d) * f.P(b, h, i, j);
          }
        if (!(biased > 0.0)) continue;
        for (index_t d = 0; d < index_t(spans[b].size()); ++d)
          for (index_t j = spans[b][d][0]; j < spans[b][d][1]; ++j)
            w[f.at(b, h, i, j)] = mass / biased * factor(b, h, d) * f.P(b, h, i, j);
      }
  return weighted_values(f, w, v);
}

struct fitm_case {
  const char* name;
  index_t batch, seq_q, seq_k, hq, hkv, d;
  std::vector<std::vector<std::array<index_t, 2>>> spans;  // per batch element
  bool per_head, sinks, ragged;
};

void run_case(const fitm_case& c, bool zero_bias = false) {
  SCOPED_TRACE(c.name);
  std::mt19937 rng(71);
  auto q = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, c.d});
  auto k = tensor<float, 4>::make({c.batch, c.seq_k, c.hkv, c.d});
  auto v = tensor<float, 4>::make({c.batch, c.seq_k, c.hkv, c.d});
  auto o = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, c.d});
  auto lse = tensor<float, 3>::make({c.batch, c.hq, c.seq_q});
  fill_uniform(q.view, rng, -1.5f, 1.5f);
  fill_uniform(k.view, rng, -1.5f, 1.5f);
  fill_uniform(v.view, rng);
  const index_t docs = index_t(c.spans[0].size());
  std::vector<index_t> span_buf;
  for (index_t b = 0; b < c.batch; ++b)
    for (const auto& s : c.spans[b]) span_buf.insert(span_buf.end(), {s[0], s[1]});
  const index_t fh = c.per_head ? c.hq : 1;
  std::vector<float> bias(static_cast<std::size_t>(c.batch * fh * docs));
  std::uniform_real_distribution<float> u(-1.5f, 1.5f);
  for (auto& x : bias) x = zero_bias ? 0.0f : u(rng);
  if (!zero_bias && docs > 2) bias[1] = -kInf;  // one document gets no mass at all
  sink::fitm_params fp;
  fp.spans = view3<const index_t>::contiguous(span_buf.data(), {c.batch, docs, 2});
  fp.log_bias = view3<const float>::contiguous(bias.data(), {c.batch, fh, docs});
  std::vector<float> sinks;
  std::vector<index_t> lens;
  attention_params p;
  p.causal = true;
  if (c.sinks) {
    for (index_t h = 0; h < c.hq; ++h) sinks.push_back(0.5f * float(h) - 0.5f);
    p.sinks = make_view<const float>(sinks.data(), c.hq);
  }
  if (c.ragged) {
    for (index_t b = 0; b < c.batch; ++b) lens.push_back(c.seq_k - 13 * b);
    p.kv_lens = make_view<const index_t>(lens.data(), c.batch);
  }
  p.lse = lse.view;
  sink::fitm_attention(q.view, k.view, v.view, o.view, fp, p);

  attention_params pr = p;
  pr.lse = {};
  const full_attention f = full_probs(q.cview(), k.cview(), pr);
  const auto ref = fitm_reference(f, v.cview(), c.spans, [&](index_t b, index_t h, index_t d) {
    return std::exp(double(bias[(b * fh + (c.per_head ? h : 0)) * docs + d]));
  });
  EXPECT_TRUE(all_close(o.cview(), ref.cview(), 2e-5, 2e-4));
  EXPECT_TRUE(all_close(lse.cview(), rows_of(f, f.lse).cview(), 2e-5, 2e-4)) << "lse unchanged";
  if (zero_bias) {
    auto dense = tensor<float, 4>::make(o.view.extents());
    attention_params pd = pr;
    attention(q.view, k.view, v.view, dense.view, pd);
    EXPECT_TRUE(all_close(o.cview(), dense.cview(), 1e-6, 1e-5)) << "zero bias = attention";
  }
}

const fitm_case kCases[] = {
    {"prefill_broadcast",
     1,
     240,
     240,
     4,
     2,
     64,
     {{{10, 60}, {70, 130}, {140, 200}}},
     false,
     false,
     false},
    {"prefill_per_head_sinks",
     1,
     200,
     200,
     4,
     2,
     40,
     {{{0, 50}, {50, 90}, {120, 170}}},
     true,
     true,
     false},
    {"batch_ragged",
     2,
     60,
     150,
     2,
     1,
     64,
     {{{5, 40}, {40, 41}, {90, 140}}, {{0, 10}, {20, 80}, {100, 137}}},
     false,
     false,
     true},
    {"decode_splitk",
     1,
     1,
     3000,
     8,
     2,
     64,
     {{{100, 1100}, {1200, 2200}, {2300, 2900}}},
     false,
     true,
     false},
    {"chunk_splitk_per_head", 1, 3, 2100, 4, 1, 64, {{{64, 700}, {700, 1500}}}, true, false, false},
};

TEST(SinkFitm, MatchesFullMatrixReallocation) {
  for (const fitm_case& c : kCases) run_case(c);
}

TEST(SinkFitm, ZeroBiasIsPlainAttention) {
  run_case(kCases[0], true);
  run_case(kCases[3], true);
}

// The class mask: empty tiles hold no key of the class, full tiles only such keys.
TEST(SinkFitm, ClassMaskTilesAgreeWithThePredicate) {
  const index_t n = 300;
  std::vector<std::int32_t> cls(n, -1), pre(n + 1, 0);
  for (index_t j = 30; j < 90; ++j) cls[j] = 0;
  for (index_t j = 150; j < 151; ++j) cls[j] = 1;
  for (index_t j = 200; j < 290; ++j) cls[j] = 2;
  for (index_t j = 0; j < n; ++j) pre[j + 1] = pre[j] + (cls[j] >= 0);
  std::mt19937 rng(72);
  for (bool want : {true, false}) {
    const sink::key_class_mask m{cls.data(), pre.data(), n, n + 1, want};
    for (int t = 0; t < 2000; ++t) {
      const index_t lo = std::uniform_int_distribution<index_t>(0, n - 1)(rng);
      const index_t hi =
          std::min<index_t>(n - 1, lo + std::uniform_int_distribution<index_t>(0, 63)(rng));
      bool any = false, all = true;
      for (index_t j = lo; j <= hi; ++j) {
        const bool keep = m.keep(engine::row_block{}, 0, 0, 0, j);
        any = any || keep;
        all = all && keep;
      }
      const engine::tile_kind kind = m.classify(engine::row_block{}, lo, hi);
      ASSERT_EQ(kind == engine::tile_kind::empty, !any) << lo << " " << hi;
      ASSERT_EQ(kind == engine::tile_kind::full, all) << lo << " " << hi;
    }
  }
}

// Document attention from the column sums of the last rows, and the log factors.
TEST(SinkFitm, CalibrationHelpers) {
  const index_t n = 120, hq = 2, d = 64, rows = 4;
  std::mt19937 rng(73);
  auto q = tensor<float, 4>::make({1, n, hq, d});
  auto k = tensor<float, 4>::make({1, n, 1, d});
  auto v = tensor<float, 4>::make({1, n, 1, d});
  auto o = tensor<float, 4>::make({1, n, hq, d});
  auto lse = tensor<float, 3>::make({1, hq, n});
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  fill_uniform(v.view, rng);
  attention_params p;
  p.causal = true;
  p.lse = lse.view;
  attention(q.view, k.view, v.view, o.view, p);
  auto cols = tensor<float, 3>::make({1, hq, n});
  sink::stats_outputs s;
  s.col_sum = cols.view;
  attention_params pc;
  pc.causal = true;
  sink::column_stats(q.view.narrow(1, n - rows, rows), k.view,
                     lse.cview().narrow(2, n - rows, rows), pc, s);
  const std::vector<index_t> spans = {10, 40, 40, 70, 80, 110};
  auto attn = tensor<float, 3>::make({1, hq, 3});
  sink::document_attention(cols.cview(), rows,
                           view3<const index_t>::contiguous(spans.data(), {1, 3, 2}), attn.view);
  pc.lse = {};
  const full_attention f = full_probs(q.cview(), k.cview(), pc);
  for (index_t h = 0; h < hq; ++h)
    for (index_t dd = 0; dd < 3; ++dd) {
      double e = 0.0;
      for (index_t i = n - rows; i < n; ++i)
        for (index_t j = spans[2 * dd]; j < spans[2 * dd + 1]; ++j) e += f.P(0, h, i, j);
      e /= double(rows) * double(spans[2 * dd + 1] - spans[2 * dd]);
      EXPECT_NEAR(attn.view(0, h, dd), e, 1e-7 + 1e-5 * e);
    }

  const std::vector<float> a = {2e-4f, 1e-4f, 1.5e-4f}, dum = {1.5e-4f, 0.5e-4f, 1.5e-4f};
  std::vector<float> lf(3);
  sink::fitm_log_bias(view3<const float>::contiguous(a.data(), {1, 1, 3}),
                      view3<const float>::contiguous(dum.data(), {1, 1, 3}),
                      view3<float>::contiguous(lf.data(), {1, 1, 3}), 5e-5);
  double z[3], mx = -1e300, sum = 0.0;
  for (int i = 0; i < 3; ++i) mx = std::max(mx, z[i] = (double(a[i]) - dum[i]) / 5e-5);
  for (double zi : z) sum += std::exp(zi - mx);
  for (int i = 0; i < 3; ++i)
    EXPECT_NEAR(lf[i], std::log(std::exp(z[i] - mx) / sum / double(a[i])), 1e-4);
}

TEST(SinkFitm, RejectsBadSpans) {
  auto q = tensor<float, 4>::make({1, 4, 2, 64});
  auto k = tensor<float, 4>::make({1, 50, 1, 64});
  auto o = tensor<float, 4>::make({1, 4, 2, 64});
  const std::vector<float> bias = {0.0f, 0.0f};
  sink::fitm_params f;
  f.log_bias = view3<const float>::contiguous(bias.data(), {1, 1, 2});
  const std::vector<index_t> overlap = {0, 20, 10, 30}, outside = {0, 20, 30, 60};
  f.spans = view3<const index_t>::contiguous(overlap.data(), {1, 2, 2});
  EXPECT_THROW(sink::fitm_attention(q.view, k.view, k.view, o.view, f), invalid_argument);
  f.spans = view3<const index_t>::contiguous(outside.data(), {1, 2, 2});
  EXPECT_THROW(sink::fitm_attention(q.view, k.view, k.view, o.view, f), invalid_argument);
  const std::vector<float> nan_bias = {0.0f, std::nanf("")};
  const std::vector<index_t> good = {0, 20, 30, 40};
  f.spans = view3<const index_t>::contiguous(good.data(), {1, 2, 2});
  f.log_bias = view3<const float>::contiguous(nan_bias.data(), {1, 1, 2});
  EXPECT_THROW(sink::fitm_attention(q.view, k.view, k.view, o.view, f), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
