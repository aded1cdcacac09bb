// Learnable sink logits: the dense operator's row hook (attention_params::sinks) against the
// double oracle, the identities of card 9 (sigma = -inf is no sink; split-K and shard merges
// count the sink once) and the family's add_sink_logits / sink_logit_mass.
#include <cmath>
#include <limits>
#include <random>

#include "attend/dense/instantiate.hpp"
#include "attend/dense/merge.hpp"
#include "attend/sink/sink_logits.hpp"
#include "sink/sink_oracle.hpp"

ATTEND_EXTERN_DENSE_TEMPLATES

namespace attend::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct problem {
  tensor<float, 4> q;
  tensor<float, 4> k, v, o;
  tensor<float, 3> lse;
  problem(index_t batch, index_t seq_q, index_t seq_k, index_t hq, index_t hkv, index_t d,
          unsigned seed)
      : q(tensor<float, 4>::make({batch, seq_q, hq, d})),
        k(tensor<float, 4>::make({batch, seq_k, hkv, d})),
        v(tensor<float, 4>::make({batch, seq_k, hkv, d})),
        o(tensor<float, 4>::make({batch, seq_q, hq, d})),
        lse(tensor<float, 3>::make({batch, hq, seq_q})) {
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng);
    fill_uniform(k.view, rng);
    fill_uniform(v.view, rng);
  }
  void run(attention_params p) {
    p.lse = lse.view;
    attention(q.view, k.view, v.view, o.view, p);
  }
  ::testing::AssertionResult matches_oracle(const attention_params& p) const {
    auto ro = tensor<double, 4>::make(o.view.extents());
    auto rl = tensor<double, 3>::make(lse.view.extents());
    reference::attention(q.cview(), k.cview(), v.cview(), p, ro.view, rl.view);
    auto r = all_close(o.cview(), ro.cview(), 2e-5, 2e-4);
    if (!r) return r << " (o)";
    r = all_close(lse.cview(), rl.cview(), 2e-5, 2e-4);
    if (!r) return r << " (lse)";
    return r;
  }
};

struct shape_case {
  index_t batch, seq_q, seq_k, hq, hkv, d;
  bool causal;
};

// Prefill (no split) and decode with long caches (split-K: seq_k >= 1024 and seq_q <= 16).
const shape_case kShapes[] = {
    {2, 70, 70, 4, 2, 64, true},    // prefill, GQA
    {1, 33, 90, 3, 1, 40, false},   // cross attention, generic head dim, MQA
    {2, 1, 3000, 8, 2, 64, false},  // decode, split-K
    {1, 4, 2500, 4, 4, 128, true},  // 4-token decode chunk, split-K
};

TEST(SinkLogits, MinusInfinityEqualsNoSink) {
  for (const shape_case& s : kShapes) {
    problem a(s.batch, s.seq_q, s.seq_k, s.hq, s.hkv, s.d, 11);
    problem b(s.batch, s.seq_q, s.seq_k, s.hq, s.hkv, s.d, 11);  // the same data
    attention_params p;
    p.causal = s.causal;
    a.run(p);
    std::vector<float> none(static_cast<std::size_t>(s.hq), -kInf);
    p.sinks = make_view<const float>(none.data(), s.hq);
    b.run(p);
    EXPECT_TRUE(bitwise_equal(a.o.cview(), b.o.cview())) << "seq_k " << s.seq_k;
    EXPECT_TRUE(bitwise_equal(a.lse.cview(), b.lse.cview())) << "seq_k " << s.seq_k;
  }
}

TEST(SinkLogits, MatchReferencePrefillAndSplitKDecode) {
  for (const shape_case& s : kShapes) {
    problem a(s.batch, s.seq_q, s.seq_k, s.hq, s.hkv, s.d, 12);
    // One sink far above every score (12: the max update matters), softmax-off-by-one (0),
    // moderate ones, and a head without a sink.
    std::vector<float> sinks = {12.0f, 0.0f, -1.0f, 2.5f, -kInf, 1.0f, 3.0f, 0.5f};
    sinks.resize(static_cast<std::size_t>(s.hq));
    attention_params p;
    p.causal = s.causal;
    p.sinks = make_view<const float>(sinks.data(), s.hq);
    a.run(p);
    EXPECT_TRUE(a.matches_oracle(p)) << "seq_q " << s.seq_q << " seq_k " << s.seq_k;
  }
}

// lse with the sink = logaddexp(lse without it, sigma): the sink joined exactly once, also
// when the keys were split across threads and merged.
TEST(SinkLogits, SplitKJoinsTheSinkOnce) {
  problem a(1, 1, 6000, 8, 2, 64, 13);
  problem b(1, 1, 6000, 8, 2, 64, 13);
  attention_params p;
  a.run(p);
  std::vector<float> sinks = {9.0f, 9.5f, 10.0f, 8.0f, 0.0f, 7.0f, 11.0f, 9.2f};
  p.sinks = make_view<const float>(sinks.data(), 8);
  b.run(p);
  for (index_t h = 0; h < 8; ++h) {
    const double with = b.lse.view(0, h, 0), without = a.lse.view(0, h, 0);
    const double expect = std::max(without, double(sinks[h])) +
                          std::log1p(std::exp(-std::abs(without - double(sinks[h]))));
    EXPECT_NEAR(with, expect, 2e-5 * std::abs(expect) + 1e-5) << "head " << h;
    // o scales by the share of the keys: o_with = o_without * exp(without - with).
    const double share = std::exp(without - with);
    for (index_t c = 0; c < 64; ++c)
      EXPECT_NEAR(b.o.view(0, 0, h, c), a.o.view(0, 0, h, c) * share, 2e-6) << "head " << h;
  }
  EXPECT_TRUE(b.matches_oracle(p));
}

// Shards merged with merge_states, then the sink added once, equal one-shot attention with
// sinks; adding the sink in every shard counts it twice and is visibly wrong.
TEST(SinkLogits, MergedShardsTakeTheSinkOnce) {
  const index_t n = 900, split = 350, hq = 4, d = 64, seq_q = 5;
  problem whole(1, seq_q, n, hq, 2, d, 14);
  std::vector<float> sinks = {3.0f, 2.0f, 4.0f, 2.5f};
  attention_params with;
  with.sinks = make_view<const float>(sinks.data(), hq);
  whole.run(with);

  auto o_a = tensor<float, 4>::make({1, seq_q, hq, d}),
       o_b = tensor<float, 4>::make({1, seq_q, hq, d});
  auto l_a = tensor<float, 3>::make({1, hq, seq_q}), l_b = tensor<float, 3>::make({1, hq, seq_q});
  auto shard = [&](attention_params p, index_t lo, index_t cnt, tensor<float, 4>& o,
                   tensor<float, 3>& l) {
    p.lse = l.view;
    attention(whole.q.view, whole.k.view.narrow(1, lo, cnt), whole.v.view.narrow(1, lo, cnt),
              o.view, p);
  };
  attention_params without;
  shard(without, 0, split, o_a, l_a);
  shard(without, split, n - split, o_b, l_b);
  merge_states(o_a.cview(), l_a.cview(), o_b.cview(), l_b.cview(), o_a.view, l_a.view);
  sink::add_sink_logits(o_a.view, l_a.view, make_view<const float>(sinks.data(), hq));
  EXPECT_TRUE(all_close(o_a.cview(), whole.o.cview(), 1e-6, 1e-5));
  EXPECT_TRUE(all_close(l_a.cview(), whole.lse.cview(), 1e-6, 1e-5));

  shard(with, 0, split, o_a, l_a);
  shard(with, split, n - split, o_b, l_b);
  merge_states(o_a.cview(), l_a.cview(), o_b.cview(), l_b.cview(), o_a.view, l_a.view);
  double worst = 0.0;
  for (index_t h = 0; h < hq; ++h)
    worst = std::max(worst, std::abs(double(l_a.view(0, h, 0)) - whole.lse.view(0, h, 0)));
  EXPECT_GT(worst, 1e-3) << "double-counted sinks should change the LSE";
}

TEST(SinkLogits, SinkMassIsExpSigmaMinusLse) {
  problem a(2, 20, 60, 4, 2, 64, 15);
  std::vector<float> sinks = {1.0f, -kInf, 3.0f, 0.0f};
  attention_params p;
  p.causal = true;
  p.sinks = make_view<const float>(sinks.data(), 4);
  a.run(p);
  auto mass = tensor<float, 3>::make({2, 4, 20});
  sink::sink_logit_mass(a.lse.cview(), make_view<const float>(sinks.data(), 4), mass.view);
  const full_attention f = full_probs(a.q.cview(), a.k.cview(), p);
  const auto expect = rows_of(f, f.sink);
  EXPECT_TRUE(all_close(mass.cview(), expect.cview(), 1e-6, 1e-5));
}

// A sequence with no valid key: all mass on the sink, o = 0, lse = sigma, never NaN.
TEST(SinkLogits, RowWithoutKeysGivesEverythingToTheSink) {
  problem a(2, 1, 40, 2, 1, 64, 16);
  std::vector<float> sinks = {0.5f, -2.0f};
  std::vector<index_t> lens = {0, 40};
  attention_params p;
  p.sinks = make_view<const float>(sinks.data(), 2);
  p.kv_lens = make_view<const index_t>(lens.data(), 2);
  a.run(p);
  for (index_t h = 0; h < 2; ++h) {
    EXPECT_EQ(a.lse.view(0, h, 0), sinks[h]);
    for (index_t c = 0; c < 64; ++c) EXPECT_EQ(a.o.view(0, 0, h, c), 0.0f);
  }
  EXPECT_TRUE(a.matches_oracle(p));
  auto mass = tensor<float, 3>::make({2, 2, 1});
  sink::sink_logit_mass(a.lse.cview(), make_view<const float>(sinks.data(), 2), mass.view);
  EXPECT_EQ(mass.view(0, 0, 0), 1.0f);
  EXPECT_EQ(mass.view(0, 1, 0), 1.0f);
  EXPECT_LT(mass.view(1, 0, 0), 1.0f);
}

TEST(SinkLogits, RejectsBadShapes) {
  auto o = tensor<float, 4>::make({1, 3, 4, 8});
  auto l = tensor<float, 3>::make({1, 4, 3});
  std::vector<float> sinks(3, 0.0f);
  EXPECT_THROW(sink::add_sink_logits(o.view, l.view, make_view<const float>(sinks.data(), 3)),
               invalid_argument);
  auto bad_l = tensor<float, 3>::make({1, 3, 4});
  std::vector<float> s4(4, 0.0f);
  EXPECT_THROW(sink::add_sink_logits(o.view, bad_l.view, make_view<const float>(s4.data(), 4)),
               invalid_argument);
}

}  // namespace
}  // namespace attend::testing
