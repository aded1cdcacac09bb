// DuoAttention: per-KV-head choice between full attention and sink + recent attention against
// the full matrix with per-head masks; the degenerate kinds against the other operators; the
// head classification helpers against numpy.quantile semantics; the memory / work report.
#include <cmath>
#include <limits>
#include <random>

#include "attend/dense/instantiate.hpp"
#include "attend/sink/duo.hpp"
#include "attend/sink/streaming.hpp"
#include "sink/sink_oracle.hpp"

ATTEND_EXTERN_DENSE_TEMPLATES

namespace attend::testing {
namespace {

struct duo_case {
  const char* name;
  index_t seq_q, seq_k, hq, hkv, d, sink, recent;
  std::vector<std::uint8_t> kinds;  // per KV head, 1 = streaming
  bool sinks;
};

struct duo_problem {
  tensor<float, 4> q, k, v, o;
  duo_problem(const duo_case& c, unsigned seed)
      : q(tensor<float, 4>::make({1, c.seq_q, c.hq, c.d})),
        k(tensor<float, 4>::make({1, c.seq_k, c.hkv, c.d})),
        v(tensor<float, 4>::make({1, c.seq_k, c.hkv, c.d})),
        o(tensor<float, 4>::make({1, c.seq_q, c.hq, c.d})) {
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng, -1.5f, 1.5f);
    fill_uniform(k.view, rng, -1.5f, 1.5f);
    fill_uniform(v.view, rng);
  }
};

TEST(SinkDuo, MatchesPerHeadMaskedOracle) {
  const duo_case cases[] = {
      {"prefill_alternating", 300, 300, 8, 4, 64, 8, 32, {0, 1, 0, 1}, false},
      {"prefill_grouped_sinks", 200, 200, 8, 4, 40, 4, 50, {1, 1, 0, 0}, true},
      {"decode_splitk", 1, 3000, 8, 4, 64, 16, 64, {1, 0, 1, 1}, true},
      {"chunk_splitk", 5, 2600, 4, 2, 128, 64, 256, {0, 1}, false},
  };
  for (const duo_case& c : cases) {
    SCOPED_TRACE(c.name);
    duo_problem t(c, 51);
    std::vector<float> sinks;
    attention_params p;
    p.causal = true;
    if (c.sinks) {
      for (index_t h = 0; h < c.hq; ++h) sinks.push_back(0.3f * float(h) - 1.0f);
      p.sinks = make_view<const float>(sinks.data(), c.hq);
    }
    sink::duo_params d;
    d.streaming = make_view<const std::uint8_t>(c.kinds.data(), c.hkv);
    d.sink = c.sink;
    d.recent = c.recent;
    const sink::duo_report rep = sink::duo_attention(t.q.view, t.k.view, t.v.view, t.o.view, d, p);
    const index_t group = c.hq / c.hkv;
    const full_attention f = full_probs(
        t.q.cview(), t.k.cview(), p, [&](index_t, index_t h, index_t, index_t qp, index_t j) {
          return !c.kinds[h / group] || j < c.sink || qp - j < c.recent;
        });
    const auto ref = weighted_values(f, f.p, t.v.cview());
    EXPECT_TRUE(all_close(t.o.cview(), ref.cview(), 2e-5, 2e-4));

    // The report, re-derived: causal rows at positions seq_k - seq_q + i.
    index_t streaming = 0;
    for (auto k : c.kinds) streaming += k;
    double full = 0, duo = 0;
    for (index_t i = 0; i < c.seq_q; ++i) {
      const index_t pos = c.seq_k - c.seq_q + i;
      full += double(c.hq) * double(pos + 1);
      duo += double(group) * (double(c.hkv - streaming) * double(pos + 1) +
                              double(streaming) * double(std::min(pos + 1, c.sink + c.recent)));
    }
    EXPECT_EQ(rep.streaming_heads, streaming);
    EXPECT_EQ(rep.retrieval_heads, c.hkv - streaming);
    EXPECT_DOUBLE_EQ(rep.pairs_full, full);
    EXPECT_DOUBLE_EQ(rep.pairs_duo, duo);
    const double kept = double(std::min(c.seq_k, c.sink + c.recent));
    EXPECT_NEAR(rep.memory_saved,
                1.0 - (double(c.hkv - streaming) * c.seq_k + streaming * kept) / (c.hkv * c.seq_k),
                1e-12);
    EXPECT_DOUBLE_EQ(rep.kv_bytes_full, double(c.hkv) * c.seq_k * 2 * c.d * sizeof(float));
  }
}

// No streaming head is dense attention; all streaming heads is the sink + window operator.
TEST(SinkDuo, DegenerateKindsEqualTheOtherOperators) {
  const duo_case c{"x", 1, 2200, 8, 2, 64, 64, 256, {0, 0}, false};
  duo_problem t(c, 52);
  attention_params p;
  p.causal = true;
  std::vector<std::uint8_t> none = {0, 0}, all = {1, 1};
  sink::duo_params d;
  d.streaming = make_view<const std::uint8_t>(none.data(), 2);
  sink::duo_attention(t.q.view, t.k.view, t.v.view, t.o.view, d, p);
  auto dense = tensor<float, 4>::make(t.o.view.extents());
  attention(t.q.view, t.k.view, t.v.view, dense.view, p);
  EXPECT_TRUE(bitwise_equal(t.o.cview(), dense.cview()));

  d.streaming = make_view<const std::uint8_t>(all.data(), 2);
  sink::duo_attention(t.q.view, t.k.view, t.v.view, t.o.view, d, p);
  sink::streaming_params s;
  s.sink = 64;
  s.window = 256;
  sink::streaming_attention(t.q.view, t.k.view, t.v.view, dense.view, s, p);
  EXPECT_TRUE(bitwise_equal(t.o.cview(), dense.cview()));
}

TEST(SinkDuo, ClassifyByThreshold) {
  const std::vector<float> alpha = {0.9f, 0.5f, 0.49f, 0.1f, 1.0f};
  EXPECT_EQ(sink::classify_heads_threshold(make_view<const float>(alpha.data(), 5)),
            (std::vector<std::uint8_t>{0, 0, 1, 1, 0}));
  EXPECT_EQ(sink::classify_heads_threshold(make_view<const float>(alpha.data(), 5), 0.95f),
            (std::vector<std::uint8_t>{1, 1, 1, 1, 0}));
}

// numpy: threshold = np.quantile(alpha, sparsity) (linear), streaming = alpha < threshold.
TEST(SinkDuo, ClassifyBySparsityQuantile) {
  const std::vector<float> alpha = {0.3f, 0.1f, 0.7f, 0.5f, 0.9f, 0.2f, 0.6f, 0.4f};
  const auto view = make_view<const float>(alpha.data(), 8);
  // quantile 0.5 = 0.45: {0.1, 0.2, 0.3, 0.4} stream.
  EXPECT_EQ(sink::classify_heads_sparsity(view, 0.5),
            (std::vector<std::uint8_t>{1, 1, 0, 0, 0, 1, 0, 1}));
  // quantile 0.25 = 0.275: {0.1, 0.2}.
  EXPECT_EQ(sink::classify_heads_sparsity(view, 0.25),
            (std::vector<std::uint8_t>{0, 1, 0, 0, 0, 1, 0, 0}));
  // quantile 2/7 is exactly 0.3, and 0.3 >= 0.3 stays a retrieval head.
  EXPECT_EQ(sink::classify_heads_sparsity(view, 2.0 / 7.0),
            (std::vector<std::uint8_t>{0, 1, 0, 0, 0, 1, 0, 0}));
  EXPECT_EQ(sink::classify_heads_sparsity(view, 0.0), std::vector<std::uint8_t>(8, 0));
  EXPECT_EQ(sink::classify_heads_sparsity(view, 1.0), std::vector<std::uint8_t>(8, 1));
  // Ties (the reference breaks them with noise): the earlier heads stream.
  const std::vector<float> same(6, 1.0f);
  EXPECT_EQ(sink::classify_heads_sparsity(make_view<const float>(same.data(), 6), 0.5),
            (std::vector<std::uint8_t>{1, 1, 1, 0, 0, 0}));
}

TEST(SinkDuo, RejectsBadArguments) {
  const duo_case c{"x", 4, 40, 4, 2, 64, 4, 8, {0, 1}, false};
  duo_problem t(c, 53);
  std::vector<std::uint8_t> kinds = {0, 1, 1};
  sink::duo_params d;
  d.streaming = make_view<const std::uint8_t>(kinds.data(), 3);
  EXPECT_THROW(sink::duo_attention(t.q.view, t.k.view, t.v.view, t.o.view, d), invalid_argument);
  d.streaming = make_view<const std::uint8_t>(kinds.data(), 2);
  d.recent = 0;
  EXPECT_THROW(sink::duo_attention(t.q.view, t.k.view, t.v.view, t.o.view, d), invalid_argument);
  sink::duo_params none;
  EXPECT_THROW(sink::duo_attention(t.q.view, t.k.view, t.v.view, t.o.view, none), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
