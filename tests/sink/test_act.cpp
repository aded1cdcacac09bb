// ACT against the reference's explicit redistribution on the full matrix: column means over the
// queries that see each key, S = {j : a_j > tau} minus its first element, P'_S = beta P_S and the
// freed mass spread over the other keys in proportion to their attention, O = P' V. Plus the
// identities (beta = 1 is the identity; the output-hook path equals the post-pass epilogue),
// head subsets, learnable sinks, and decode with sets reused from prefill.
#include <cmath>
#include <limits>
#include <random>

#include "attend/dense/instantiate.hpp"
#include "attend/sink/act.hpp"
#include "sink/sink_oracle.hpp"

ATTEND_EXTERN_DENSE_TEMPLATES

namespace attend::testing {
namespace {

struct act_oracle {
  std::vector<std::vector<index_t>> sets;  // [b * heads + h]
  tensor<double, 4> o;
  double moved = 0.0;
  double margin = std::numeric_limits<double>::infinity();  // min |a_j - tau| (robustness)
};

/// The reference algorithm on the full matrix: detection from column means of f (rows of
/// `detect_rows` only), then calibration of every row of g (the rows to output).
template <class KV>
act_oracle act_reference(const full_attention& f, const full_attention& g, const view4<const KV>& v,
                         float beta, float tau, const std::vector<char>& on) {
  act_oracle r;
  r.sets.resize(static_cast<std::size_t>(f.batch * f.heads));
  for (index_t b = 0; b < f.batch; ++b)
    for (index_t h = 0; h < f.heads; ++h) {
      if (!on[h]) continue;
      bool first = true;
      for (index_t j = 0; j < f.seq_k; ++j) {
        double sum = 0.0, count = 0.0;
        for (index_t i = 0; i < f.seq_q; ++i) {
          sum += f.P(b, h, i, j);
          count += f.visible(b, h, i, j);
        }
        const double a = count > 0 ? sum / count : 0.0;
        r.margin = std::min(r.margin, std::abs(a - tau));
        if (a > tau) {
          if (first) {
            first = false;
            continue;
          }
          r.sets[b * f.heads + h].push_back(j);
        }
      }
    }
  std::vector<double> w = g.p;
  for (index_t b = 0; b < g.batch; ++b)
    for (index_t h = 0; h < g.heads; ++h) {
      const auto& s = r.sets[b * g.heads + h];
      if (s.empty()) continue;
      for (index_t i = 0; i < g.seq_q; ++i) {
        double ps = 0.0;
        for (index_t j : s)
          if (j < g.seq_k) ps += g.P(b, h, i, j);
        if (!(1.0 - ps > 1e-6)) continue;
        r.moved += (1.0 - beta) * ps;
        for (index_t j = 0; j < g.seq_k; ++j) {
          const double pij = g.P(b, h, i, j);
          const bool in_s = std::find(s.begin(), s.end(), j) != s.end();
          w[g.at(b, h, i, j)] = in_s ? beta * pij : pij + (1.0 - beta) * ps * pij / (1.0 - ps);
        }
      }
    }
  r.o = weighted_values(g, w, v);
  return r;
}

struct act_problem {
  sink_data<float> data;
  tensor<float, 4> o;
  attention_params p;
  act_problem(index_t batch, index_t n, index_t hq, index_t hkv, index_t d, unsigned seed,
              std::vector<index_t> sinks = {0, 37, 90})
      : data(batch, n, n, hq, hkv, d, d, sinks, seed, 8.0f),
        o(tensor<float, 4>::make({batch, n, hq, d})) {
    p.causal = true;
  }
};

std::vector<char> all_heads(index_t h) { return std::vector<char>(static_cast<std::size_t>(h), 1); }

TEST(SinkAct, MatchesTheReferenceRedistribution) {
  act_problem t(2, 200, 4, 2, 64, 31);
  sink::act_params a;  // beta 0.4, tau 0.1
  const sink::act_result res =
      sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, a, t.p);
  const full_attention f = full_probs(t.data.q.cview(), t.data.k.cview(), t.p);
  const act_oracle ref = act_reference(f, f, t.data.v.cview(), a.beta, a.tau, all_heads(4));
  ASSERT_GT(ref.margin, 1e-3) << "test data too close to the threshold";
  index_t nonempty = 0;
  for (index_t b = 0; b < 2; ++b)
    for (index_t h = 0; h < 4; ++h) {
      EXPECT_EQ(res.sinks.of(b, h), ref.sets[b * 4 + h]) << "b " << b << " h " << h;
      nonempty += !ref.sets[b * 4 + h].empty();
    }
  EXPECT_GT(nonempty, 0) << "no hidden sinks detected: the test would check nothing";
  EXPECT_TRUE(all_close(t.o.cview(), ref.o.cview(), 2e-5, 2e-4));
  EXPECT_NEAR(res.moved_mass, ref.moved, 1e-4 * ref.moved);
  EXPECT_GT(res.rows_calibrated, 0);
}

TEST(SinkAct, BetaOneIsTheIdentity) {
  act_problem t(1, 150, 4, 2, 64, 32);
  sink::act_params a;
  a.beta = 1.0f;
  const sink::act_result res =
      sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, a, t.p);
  EXPECT_GT(res.sinks.keys.size(), 0u);
  EXPECT_EQ(res.moved_mass, 0.0);
  auto plain = tensor<float, 4>::make(t.o.view.extents());
  attention(t.data.q.view, t.data.k.view, t.data.v.view, plain.view, t.p);
  EXPECT_TRUE(bitwise_equal(t.o.cview(), plain.cview()));
}

// Known sets through the engine's output hook (inside the forward) equal the post-pass epilogue.
TEST(SinkAct, OutputHookPathEqualsEpiloguePath) {
  act_problem t(1, 180, 4, 1, 64, 33);
  sink::act_params a;
  const sink::act_result res =
      sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, a, t.p);
  auto o2 = tensor<float, 4>::make(t.o.view.extents());
  const sink::act_result again =
      sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, o2.view, res.sinks, a, t.p);
  EXPECT_TRUE(all_close(o2.cview(), t.o.cview(), 1e-7, 1e-6));
  EXPECT_NEAR(again.moved_mass, res.moved_mass, 1e-6 * res.moved_mass);
}

TEST(SinkAct, OnlyTheListedHeadsChange) {
  act_problem t(1, 160, 4, 2, 64, 34);
  std::vector<index_t> heads = {1, 2};
  sink::act_params a;
  a.heads = make_view<const index_t>(heads.data(), 2);
  const sink::act_result res =
      sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, a, t.p);
  auto plain = tensor<float, 4>::make(t.o.view.extents());
  attention(t.data.q.view, t.data.k.view, t.data.v.view, plain.view, t.p);
  const full_attention f = full_probs(t.data.q.cview(), t.data.k.cview(), t.p);
  const act_oracle ref = act_reference(f, f, t.data.v.cview(), a.beta, a.tau, {0, 1, 1, 0});
  for (index_t h = 0; h < 4; ++h) {
    const auto got = t.o.cview().narrow(2, h, 1);
    if (h == 0 || h == 3) {
      EXPECT_TRUE(bitwise_equal(got, plain.cview().narrow(2, h, 1))) << "head " << h;
      EXPECT_EQ(res.sinks.size(0, h), 0);
    } else {
      EXPECT_EQ(res.sinks.of(0, h), ref.sets[h]);
      EXPECT_TRUE(all_close(got, ref.o.cview().narrow(2, h, 1), 2e-5, 2e-4)) << "head " << h;
    }
  }
}

TEST(SinkAct, WithLearnableSinkLogits) {
  act_problem t(1, 170, 4, 2, 64, 35);
  std::vector<float> sinks = {1.0f, 2.0f, -std::numeric_limits<float>::infinity(), 0.0f};
  t.p.sinks = make_view<const float>(sinks.data(), 4);
  sink::act_params a;
  a.beta = 0.25f;
  const sink::act_result res =
      sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, a, t.p);
  const full_attention f = full_probs(t.data.q.cview(), t.data.k.cview(), t.p);
  const act_oracle ref = act_reference(f, f, t.data.v.cview(), a.beta, a.tau, all_heads(4));
  ASSERT_GT(ref.margin, 1e-3);
  for (index_t h = 0; h < 4; ++h) EXPECT_EQ(res.sinks.of(0, h), ref.sets[h]);
  EXPECT_TRUE(all_close(t.o.cview(), ref.o.cview(), 2e-5, 2e-4));
}

// Prefill detects; decode steps reuse the sets (one of them over a cache long enough for the
// split-K path), keep running column sums, and redetect() uses them.
TEST(SinkAct, CalibratorReusesPrefillSetsAtDecode) {
  const index_t n = 1100, hq = 4, hkv = 2, d = 64, steps = 2;
  sink_data<float> data(1, n + steps, n + steps, hq, hkv, d, d, {0, 300, 700}, 36, 8.0f);
  sink::act_params a;
  sink::act_calibrator cal(a, 1, hq, n + steps);
  attention_params p;
  p.causal = true;
  auto o = tensor<float, 4>::make({1, n, hq, d});
  const auto q = data.q.view, k = data.k.view, v = data.v.view;
  const sink::act_result pre =
      cal.prefill(q.narrow(1, 0, n), k.narrow(1, 0, n), v.narrow(1, 0, n), o.view, p);
  const full_attention f =
      full_probs(view4<const float>(q.narrow(1, 0, n)), view4<const float>(k.narrow(1, 0, n)), p);
  const act_oracle ref =
      act_reference(f, f, view4<const float>(v.narrow(1, 0, n)), a.beta, a.tau, all_heads(hq));
  ASSERT_GT(ref.margin, 1e-3);
  for (index_t h = 0; h < hq; ++h) ASSERT_EQ(pre.sinks.of(0, h), ref.sets[h]);
  EXPECT_TRUE(all_close(o.cview(), ref.o.cview(), 2e-5, 2e-4));

  std::vector<double> sums(static_cast<std::size_t>(hq * (n + steps)), 0.0);
  for (index_t h = 0; h < hq; ++h)
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j < n; ++j) sums[h * (n + steps) + j] += f.P(0, h, i, j);
  for (index_t s = 0; s < steps; ++s) {
    const index_t len = n + s + 1;
    auto od = tensor<float, 4>::make({1, 1, hq, d});
    const auto qs = q.narrow(1, len - 1, 1), ks = k.narrow(1, 0, len), vs = v.narrow(1, 0, len);
    cal.decode(qs, ks, vs, od.view, p);
    const full_attention g = full_probs(view4<const float>(qs), view4<const float>(ks), p);
    // Sets detected on the prefill rows (f), applied to the decode row (g).
    const act_oracle calibrated =
        act_reference(f, g, view4<const float>(vs), a.beta, a.tau, all_heads(hq));
    EXPECT_TRUE(all_close(od.cview(), calibrated.o.cview(), 2e-5, 2e-4)) << "step " << s;
    for (index_t h = 0; h < hq; ++h)
      for (index_t j = 0; j < len; ++j) sums[h * (n + steps) + j] += g.P(0, h, 0, j);
  }
  for (index_t h = 0; h < hq; ++h)
    for (index_t j = 0; j < n + steps; ++j) {
      const double e = sums[h * (n + steps) + j];
      ASSERT_NEAR(cal.sums()(0, h, j), e, 2e-5 + 2e-4 * e) << "h " << h << " j " << j;
      const index_t seen_by = (j < n ? n - j : 0) + steps - std::max<index_t>(0, j - n);
      ASSERT_EQ(cal.counts()(0, h, j), float(seen_by)) << "h " << h << " j " << j;
    }
  cal.redetect(n + steps);
  for (index_t h = 0; h < hq; ++h) EXPECT_EQ(cal.sinks().of(0, h), ref.sets[h]) << "head " << h;
}

TEST(SinkAct, DetectSinksDropsTheFirstIndex) {
  auto mean = tensor<float, 3>::make({1, 2, 6});
  const float m[] = {0.5f, 0.01f, 0.2f, 0.05f, 0.11f, 0.1f, 0.01f, 0.3f, 0.0f, 0.0f, 0.0f, 0.2f};
  std::copy(m, m + 12, mean.storage.begin());
  const sink::sink_sets s = sink::detect_sinks(mean.cview(), {}, 0.1f, true);
  EXPECT_EQ(s.of(0, 0), (std::vector<index_t>{2, 4}));  // 0 dropped, 0.1 is not > 0.1
  EXPECT_EQ(s.of(0, 1), (std::vector<index_t>{5}));     // the reference's quirk: 1 dropped
  const sink::sink_sets keep = sink::detect_sinks(mean.cview(), {}, 0.1f, false);
  EXPECT_EQ(keep.of(0, 0), (std::vector<index_t>{0, 2, 4}));
}

TEST(SinkAct, RejectsBadArguments) {
  act_problem t(1, 40, 2, 1, 64, 37);
  sink::act_params a;
  a.beta = -0.5f;
  EXPECT_THROW(sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, a, t.p),
               invalid_argument);
  std::vector<index_t> heads = {2};
  sink::act_params b;
  b.heads = make_view<const index_t>(heads.data(), 1);
  EXPECT_THROW(sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, b, t.p),
               invalid_argument);
  const sink::sink_sets wrong = sink::sink_sets::empty(1, 3);
  EXPECT_THROW(sink::act_attention(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, wrong,
                                   sink::act_params{}, t.p),
               invalid_argument);
  sink::act_calibrator cal(sink::act_params{}, 1, 2, 30);
  EXPECT_THROW(cal.prefill(t.data.q.view, t.data.k.view, t.data.v.view, t.o.view, t.p),
               invalid_argument);  // 40 keys > capacity 30
}

}  // namespace
}  // namespace attend::testing
