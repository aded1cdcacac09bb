// Attention statistics (two-pass LSE method) against the full probability matrix: column sums,
// counts and means, per-row entropy, sink-token and sink-logit mass; the identity
// sum_j col_sum = rows - sum p_sink; bitwise agreement of o / lse with attend::attention;
// thread-count independence; head subsets; H2O accumulation.
#include <omp.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "attend/dense/instantiate.hpp"
#include "attend/sink/stats.hpp"
#include "sink/sink_oracle.hpp"

ATTEND_EXTERN_DENSE_TEMPLATES

namespace attend::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct stats_case {
  const char* name;
  index_t batch, seq_q, seq_k, hq, hkv, d;
  bool causal;
  index_t window_left;
  float softcap;
  bool sinks;
  bool ragged;
};

const stats_case kCases[] = {
    {"prefill_gqa", 1, 150, 150, 4, 2, 64, true, -1, 0.0f, false, false},
    {"prefill_sinks_softcap_ragged", 2, 70, 90, 4, 1, 40, true, -1, 5.0f, true, true},
    {"cross_window", 1, 20, 333, 2, 2, 64, false, 50, 0.0f, false, false},
    {"decode_splitk_sinks", 2, 1, 3000, 8, 2, 64, false, -1, 0.0f, true, false},
    {"chunk_splitk_causal", 1, 4, 2100, 8, 2, 128, true, -1, 0.0f, true, false},
};

template <class KV>
struct stats_run {
  const stats_case& c;
  tensor<float, 4> q;
  tensor<KV, 4> k, v;
  tensor<float, 4> o;
  tensor<float, 3> lse, entropy, token_mass, logit_mass, col_sum, col_count, col_mean;
  std::vector<float> sinks;
  std::vector<index_t> lens;
  attention_params p;

  explicit stats_run(const stats_case& sc, unsigned seed = 3)
      : c(sc),
        q(tensor<float, 4>::make({sc.batch, sc.seq_q, sc.hq, sc.d})),
        k(tensor<KV, 4>::make({sc.batch, sc.seq_k, sc.hkv, sc.d})),
        v(tensor<KV, 4>::make({sc.batch, sc.seq_k, sc.hkv, sc.d})),
        o(tensor<float, 4>::make({sc.batch, sc.seq_q, sc.hq, sc.d})),
        lse(tensor<float, 3>::make({sc.batch, sc.hq, sc.seq_q})),
        entropy(lse),
        token_mass(lse),
        logit_mass(lse),
        col_sum(tensor<float, 3>::make({sc.batch, sc.hq, sc.seq_k})),
        col_count(col_sum),
        col_mean(col_sum) {
    for (auto* t : {&entropy, &token_mass, &logit_mass})
      t->view = tensor_view<float, 3>::contiguous(t->storage.data(), lse.view.extents());
    for (auto* t : {&col_count, &col_mean})
      t->view = tensor_view<float, 3>::contiguous(t->storage.data(), col_sum.view.extents());
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng, -1.5f, 1.5f);
    fill_uniform(k.view, rng, -1.5f, 1.5f);
    fill_uniform(v.view, rng);
    p.causal = sc.causal;
    p.window_left = sc.window_left;
    p.softcap = sc.softcap;
    if (sc.sinks) {
      for (index_t h = 0; h < sc.hq; ++h) sinks.push_back(h % 3 == 2 ? -kInf : 0.5f * float(h));
      p.sinks = make_view<const float>(sinks.data(), sc.hq);
    }
    if (sc.ragged) {
      for (index_t b = 0; b < sc.batch; ++b) lens.push_back(sc.seq_k - 17 * b);
      p.kv_lens = make_view<const index_t>(lens.data(), sc.batch);
    }
    p.lse = lse.view;
  }

  sink::stats_outputs outputs() const {
    sink::stats_outputs s;
    s.entropy = entropy.view;
    s.sink_token_mass = token_mass.view;
    s.sink_logit_mass = logit_mass.view;
    s.col_sum = col_sum.view;
    s.col_count = col_count.view;
    s.col_mean = col_mean.view;
    return s;
  }

  void run() { sink::attention_stats(q.view, k.view, v.view, o.view, p, outputs()); }
};

// Every statistic against its definition on the materialised P.
template <class KV>
void check_against_oracle(const stats_case& c) {
  SCOPED_TRACE(c.name);
  stats_run<KV> r(c);
  r.run();
  attention_params pr = r.p;
  pr.lse = {};
  const full_attention f = full_probs(r.q.cview(), r.k.cview(), pr);
  auto ro = tensor<double, 4>::make(r.o.view.extents());
  auto rl = tensor<double, 3>::make(r.lse.view.extents());
  reference::attention(r.q.cview(), r.k.cview(), r.v.cview(), pr, ro.view, rl.view);
  EXPECT_TRUE(all_close(r.o.cview(), ro.cview(), 2e-5, 2e-4));
  EXPECT_TRUE(all_close(r.lse.cview(), rl.cview(), 2e-5, 2e-4));

  auto ent = tensor<double, 3>::make(r.lse.view.extents());
  auto tok = ent, lgt = ent;
  tok.view = tensor_view<double, 3>::contiguous(tok.storage.data(), ent.view.extents());
  lgt.view = tensor_view<double, 3>::contiguous(lgt.storage.data(), ent.view.extents());
  auto csum = tensor<double, 3>::make(r.col_sum.view.extents());
  auto ccnt = csum, cmean = csum;
  ccnt.view = tensor_view<double, 3>::contiguous(ccnt.storage.data(), csum.view.extents());
  cmean.view = tensor_view<double, 3>::contiguous(cmean.storage.data(), csum.view.extents());
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t h = 0; h < c.hq; ++h) {
      for (index_t i = 0; i < c.seq_q; ++i) {
        double e = 0.0, t = 0.0;
        for (index_t j = 0; j < c.seq_k; ++j) {
          const double pij = f.P(b, h, i, j);
          if (pij > 0.0) e -= pij * std::log(pij);
          if (j < 4) t += pij;
          csum.view(b, h, j) += pij;
          ccnt.view(b, h, j) += f.visible(b, h, i, j) ? 1.0 : 0.0;
        }
        const double ps = f.sink[f.row(b, h, i)];
        if (ps > 0.0) e -= ps * std::log(ps);
        ent.view(b, h, i) = e;
        tok.view(b, h, i) = t;
        lgt.view(b, h, i) = ps;
      }
      for (index_t j = 0; j < c.seq_k; ++j)
        cmean.view(b, h, j) = ccnt.view(b, h, j) > 0 ? csum.view(b, h, j) / ccnt.view(b, h, j) : 0;
    }
  EXPECT_TRUE(all_close(r.entropy.cview(), ent.cview(), 2e-4, 2e-4)) << "entropy";
  EXPECT_TRUE(all_close(r.token_mass.cview(), tok.cview(), 2e-6, 2e-5)) << "sink tokens";
  EXPECT_TRUE(all_close(r.logit_mass.cview(), lgt.cview(), 2e-6, 2e-5)) << "sink logit";
  EXPECT_TRUE(all_close(r.col_sum.cview(), csum.cview(), 2e-5, 2e-4)) << "col_sum";
  EXPECT_TRUE(all_close(r.col_count.cview(), ccnt.cview(), 0.0, 0.0)) << "col_count";
  EXPECT_TRUE(all_close(r.col_mean.cview(), cmean.cview(), 2e-6, 2e-4)) << "col_mean";

  // Identity (kernel outputs only): the columns of P add up to the rows minus the sink mass.
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t h = 0; h < c.hq; ++h) {
      double cols = 0.0, expect = 0.0;
      for (index_t j = 0; j < c.seq_k; ++j) cols += r.col_sum.view(b, h, j);
      for (index_t i = 0; i < c.seq_q; ++i)
        if (r.lse.view(b, h, i) != -kInf) expect += 1.0 - r.logit_mass.view(b, h, i);
      EXPECT_NEAR(cols, expect, 1e-4 * std::max(1.0, expect)) << "b " << b << " h " << h;
    }
}

TEST(SinkStats, MatchFullMatrixFloat) {
  for (const stats_case& c : kCases) check_against_oracle<float>(c);
}

TEST(SinkStats, MatchFullMatrixBf16) { check_against_oracle<bf16>(kCases[1]); }

// Pass 1 is the forward with an extra hook: o and lse are bitwise those of attend::attention.
TEST(SinkStats, ForwardOutputIsBitwiseTheDenseOperator) {
  for (const stats_case& c : kCases) {
    SCOPED_TRACE(c.name);
    stats_run<float> r(c);
    r.run();
    auto o2 = tensor<float, 4>::make(r.o.view.extents());
    auto l2 = tensor<float, 3>::make(r.lse.view.extents());
    attention_params p = r.p;
    p.lse = l2.view;
    attention(r.q.view, r.k.view, r.v.view, o2.view, p);
    EXPECT_TRUE(bitwise_equal(r.o.cview(), o2.cview()));
    EXPECT_TRUE(bitwise_equal(r.lse.cview(), l2.cview()));
  }
}

// Fixed query chunks and reduction order: the same bits for 1, 2 and 3 threads.
TEST(SinkStats, IndependentOfThreadCount) {
  const int saved = omp_get_max_threads();
  for (const stats_case& c : {kCases[0], kCases[3]}) {
    SCOPED_TRACE(c.name);
    stats_run<float> base(c);
    omp_set_num_threads(1);
    base.run();
    for (int t : {2, 3}) {
      stats_run<float> r(c);
      omp_set_num_threads(t);
      r.run();
      EXPECT_TRUE(bitwise_equal(r.col_sum.cview(), base.col_sum.cview())) << t << " threads";
      EXPECT_TRUE(bitwise_equal(r.col_count.cview(), base.col_count.cview())) << t << " threads";
      EXPECT_TRUE(bitwise_equal(r.entropy.cview(), base.entropy.cview())) << t << " threads";
      EXPECT_TRUE(bitwise_equal(r.token_mass.cview(), base.token_mass.cview())) << t;
    }
  }
  omp_set_num_threads(saved);
}

// Pass 2 alone from the dense operator's LSE equals the two-pass call; heads outside
// col_heads are left untouched.
TEST(SinkStats, ColumnPassAloneAndHeadSubset) {
  const stats_case& c = kCases[0];
  stats_run<float> r(c);
  r.run();
  auto sums = tensor<float, 3>::make(r.col_sum.view.extents());
  std::fill(sums.storage.begin(), sums.storage.end(), 7.0f);
  std::vector<index_t> heads = {1, 3};
  sink::stats_outputs s;
  s.col_sum = sums.view;
  s.col_heads = make_view<const index_t>(heads.data(), 2);
  sink::column_stats(r.q.view, r.k.view, r.lse.cview(), r.p, s);
  for (index_t h = 0; h < c.hq; ++h)
    for (index_t j = 0; j < c.seq_k; ++j) {
      if (h == 1 || h == 3)  // other row blocks (one head each): same sums up to rounding
        ASSERT_NEAR(sums.view(0, h, j), r.col_sum.view(0, h, j),
                    1e-5f * std::max(1.0f, r.col_sum.view(0, h, j)))
            << "h " << h << " j " << j;
      else
        ASSERT_EQ(sums.view(0, h, j), 7.0f) << "h " << h << " j " << j;
    }
}

// A sequence with no valid key (kv_lens = 0, no sink): entropy 0, no mass, no NaN.
TEST(SinkStats, RowsWithoutKeys) {
  stats_case c{"empty", 2, 3, 50, 2, 1, 64, false, -1, 0.0f, false, false};
  stats_run<float> r(c);
  std::vector<index_t> lens = {0, 50};
  r.p.kv_lens = make_view<const index_t>(lens.data(), 2);
  r.run();
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 3; ++i) {
      EXPECT_EQ(r.lse.view(0, h, i), -kInf);
      EXPECT_EQ(r.entropy.view(0, h, i), 0.0f);
      EXPECT_EQ(r.token_mass.view(0, h, i), 0.0f);
      EXPECT_GT(r.entropy.view(1, h, i), 0.0f);
    }
  for (index_t h = 0; h < 2; ++h)
    for (index_t j = 0; j < 50; ++j) {
      EXPECT_EQ(r.col_sum.view(0, h, j), 0.0f);
      EXPECT_EQ(r.col_mean.view(0, h, j), 0.0f);
    }
}

// H2O: running scores over decode steps are the sums of each step's attention columns.
TEST(SinkStats, HeavyHitterScoresAccumulateOverDecodeSteps) {
  const index_t hq = 4, hkv = 2, d = 64, cap = 1300;
  std::mt19937 rng(21);
  auto q = tensor<float, 4>::make({1, 2, hq, d});
  auto k = tensor<float, 4>::make({1, cap, hkv, d});
  auto v = tensor<float, 4>::make({1, cap, hkv, d});
  fill_uniform(q.view, rng, -2.0f, 2.0f);
  fill_uniform(k.view, rng, -2.0f, 2.0f);
  fill_uniform(v.view, rng);
  auto scores = tensor<float, 3>::make({1, hq, cap});
  auto counts = tensor<float, 3>::make({1, hq, cap});
  std::vector<double> expect(static_cast<std::size_t>(hq * cap), 0.0);
  for (index_t step = 0; step < 2; ++step) {
    const index_t len = cap - 1 + step;
    const auto qs = q.view.narrow(1, step, 1);
    const auto ks = k.view.narrow(1, 0, len), vs = v.view.narrow(1, 0, len);
    auto o = tensor<float, 4>::make({1, 1, hq, d});
    auto lse = tensor<float, 3>::make({1, hq, 1});
    attention_params p;
    p.lse = lse.view;
    attention(qs, ks, vs, o.view, p);
    sink::accumulate_attention(qs, ks, lse.cview(), attention_params{},
                               scores.view.narrow(2, 0, len), counts.view.narrow(2, 0, len));
    const full_attention f = full_probs(view4<const float>(qs), view4<const float>(ks), {});
    for (index_t h = 0; h < hq; ++h)
      for (index_t j = 0; j < len; ++j) expect[h * cap + j] += f.P(0, h, 0, j);
  }
  for (index_t h = 0; h < hq; ++h)
    for (index_t j = 0; j < cap; ++j) {
      ASSERT_NEAR(scores.view(0, h, j), expect[h * cap + j], 1e-6 + 1e-4 * expect[h * cap + j]);
      ASSERT_EQ(counts.view(0, h, j), j < cap - 1 ? 2.0f : 1.0f);
    }
}

// The single-pass by-product (scores recorded by the forward's statistics hook) equals the
// two-pass accumulation; o is bitwise the dense operator's.
TEST(SinkStats, HeavyHitterScoresAsForwardByProduct) {
  const index_t hq = 8, hkv = 2, d = 64, cap = 2600, steps = 3;
  std::mt19937 rng(22);
  auto q = tensor<float, 4>::make({2, steps, hq, d});
  auto k = tensor<float, 4>::make({2, cap, hkv, d});
  auto v = tensor<float, 4>::make({2, cap, hkv, d});
  fill_uniform(q.view, rng, -2.0f, 2.0f);
  fill_uniform(k.view, rng, -2.0f, 2.0f);
  fill_uniform(v.view, rng);
  std::vector<float> sinks(hq, 1.0f);
  auto one = tensor<float, 3>::make({2, hq, cap}), two = tensor<float, 3>::make({2, hq, cap});
  auto c1 = tensor<float, 3>::make({2, hq, cap}), c2 = tensor<float, 3>::make({2, hq, cap});
  for (index_t step = 0; step < steps; ++step) {
    std::vector<index_t> lens = {cap - steps + step + 1, cap - 2 * steps + step + 1};
    attention_params p;
    p.causal = true;
    p.sinks = make_view<const float>(sinks.data(), hq);
    p.kv_lens = make_view<const index_t>(lens.data(), 2);
    auto lse = tensor<float, 3>::make({2, hq, 1});
    auto o1 = tensor<float, 4>::make({2, 1, hq, d}), o2 = tensor<float, 4>::make({2, 1, hq, d});
    const auto qs = q.view.narrow(1, step, 1);
    sink::attention_h2o(qs, k.view, v.view, o1.view, p, one.view, c1.view);
    p.lse = lse.view;
    attention(qs, k.view, v.view, o2.view, p);
    EXPECT_TRUE(bitwise_equal(o1.cview(), o2.cview()));
    p.lse = {};
    sink::accumulate_attention(qs, k.view, lse.cview(), p, two.view, c2.view);
  }
  EXPECT_TRUE(all_close(one.cview(), two.cview(), 1e-6, 1e-4));
  EXPECT_TRUE(all_close(c1.cview(), c2.cview(), 0.0, 0.0));
  double total = 0.0;
  for (float x : one.storage) total += x;
  EXPECT_GT(total, 0.5 * 2 * hq * steps);  // the sinks take some, the keys most of the mass
  auto q17 = tensor<float, 4>::make({2, 17, hq, d});
  auto o17 = tensor<float, 4>::make({2, 17, hq, d});
  EXPECT_THROW(sink::attention_h2o(q17.view, k.view, v.view, o17.view, {}, one.view),
               invalid_argument);
}

TEST(SinkStats, HeavyHitterKeepSet) {
  const std::vector<float> s = {5, 1, 9, 9, 0, 3, 7, 2};
  EXPECT_EQ(sink::heavy_hitter_keep(s.data(), 8, 2, 3), (std::vector<index_t>{2, 3, 5, 6, 7}));
  EXPECT_EQ(sink::heavy_hitter_keep(s.data(), 8, 0, 2), (std::vector<index_t>{6, 7}));
  EXPECT_EQ(sink::heavy_hitter_keep(s.data(), 8, 10, 0).size(), 8u);
  EXPECT_EQ(sink::heavy_hitter_keep(s.data(), 3, 1, 5), (std::vector<index_t>{0, 1, 2}));
}

TEST(SinkStats, HeadMeans) {
  auto stat = tensor<float, 3>::make({1, 2, 3});
  auto lse = tensor<float, 3>::make({1, 2, 3});
  const float vals[] = {1, 2, 3, 4, 5, 6};
  const float lses[] = {0, 0, -kInf, 0, 0, 0};
  std::copy(vals, vals + 6, stat.storage.begin());
  std::copy(lses, lses + 6, lse.storage.begin());
  std::vector<float> means(2);
  sink::head_means(stat.cview(), lse.cview(), make_view(means.data(), 2));
  EXPECT_FLOAT_EQ(means[0], 1.5f);
  EXPECT_FLOAT_EQ(means[1], 5.0f);
}

TEST(SinkStats, RejectsBadOutputs) {
  stats_run<float> r(kCases[0]);
  sink::stats_outputs s;
  auto wrong = tensor<float, 3>::make({1, 4, 149});
  s.entropy = wrong.view;
  EXPECT_THROW(sink::attention_stats(r.q.view, r.k.view, r.v.view, r.o.view, r.p, s),
               invalid_argument);
  s = {};
  std::vector<index_t> heads = {4};
  s.col_sum = r.col_sum.view;
  s.col_heads = make_view<const index_t>(heads.data(), 1);
  EXPECT_THROW(sink::attention_stats(r.q.view, r.k.view, r.v.view, r.o.view, r.p, s),
               invalid_argument);
  s = {};
  s.col_mean = r.col_mean.view;
  s.accumulate = true;
  EXPECT_THROW(sink::attention_stats(r.q.view, r.k.view, r.v.view, r.o.view, r.p, s),
               invalid_argument);
  s = {};
  s.col_sum =
      view3<float>(reinterpret_cast<float*>(r.q.storage.data()), {1, 4, 150}, {600, 150, 1});
  EXPECT_THROW(sink::attention_stats(r.q.view, r.k.view, r.v.view, r.o.view, r.p, s),
               invalid_argument);
}

}  // namespace
}  // namespace attend::testing
