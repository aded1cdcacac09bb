// StreamingLLM: rotary tables against the formula, the sink + window mask's tile classes against
// its element predicate, attention with that mask against the masked oracle, the cache policy's
// bookkeeping, and a decode loop with eviction and RoPE applied on load at cache positions
// against an oracle that rotates the kept keys explicitly (in double) every step.
#include <cmath>
#include <random>
#include <set>

#include "attend/sink/streaming.hpp"
#include "sink/sink_oracle.hpp"

namespace attend::testing {
namespace {

/// Rotation of one row in double, straight from the definition.
std::vector<double> rope_ref(const std::vector<double>& x, index_t pos, index_t rot, bool neox,
                             double theta = 10000.0) {
  std::vector<double> y = x;
  const index_t half = rot / 2;
  for (index_t i = 0; i < half; ++i) {
    const double a = double(pos) * std::pow(theta, -2.0 * double(i) / double(rot));
    const index_t i1 = neox ? i : 2 * i, i2 = neox ? i + half : 2 * i + 1;
    y[i1] = x[i1] * std::cos(a) - x[i2] * std::sin(a);
    y[i2] = x[i2] * std::cos(a) + x[i1] * std::sin(a);
  }
  return y;
}

TEST(SinkStreaming, RopeTableRotatesLikeTheFormula) {
  std::mt19937 rng(41);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (bool neox : {true, false})
    for (index_t rot : {64, 32, 6}) {
      sink::rope_table t(rot, 1000, 10000.0, neox);
      for (index_t pos : {0, 1, 17, 999}) {
        std::vector<float> x(64);
        for (auto& e : x) e = u(rng);
        std::vector<double> xd(x.begin(), x.end());
        t.rotate(x.data(), pos);
        const std::vector<double> y = rope_ref(xd, pos, rot, neox);
        for (index_t c = 0; c < 64; ++c)
          ASSERT_NEAR(x[c], y[c], 2e-6) << "neox " << neox << " rot " << rot << " pos " << pos;
        if (pos == 0) {
          for (index_t c = 0; c < 64; ++c) ASSERT_EQ(x[c], float(xd[c]));
        }
      }
    }
}

// classify must be conservative: empty => nothing kept, full => everything kept; gap tiles
// (too old for every row and past the sinks) are empty, so they are never loaded.
TEST(SinkStreaming, SinkWindowTilesAgreeWithThePredicate) {
  std::mt19937 rng(42);
  const sink::sink_window_mask m{8, 40};
  index_t empties = 0, fulls = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    engine::row_block rb;
    rb.pos0 = std::uniform_int_distribution<index_t>(0, 400)(rng);
    rb.queries = std::uniform_int_distribution<index_t>(1, 70)(rng);
    const index_t kmin = std::uniform_int_distribution<index_t>(0, 480)(rng);
    const index_t kmax = kmin + std::uniform_int_distribution<index_t>(0, 63)(rng);
    const engine::tile_kind kind = m.classify(rb, kmin, kmax);
    bool any = false, all = true;
    for (index_t r = 0; r < rb.queries; ++r)
      for (index_t j = kmin; j <= kmax; ++j) {
        const bool keep = m.keep(rb, 0, r, rb.pos0 + r, j);
        any = any || keep;
        all = all && keep;
      }
    if (kind == engine::tile_kind::empty) {
      ++empties;
      ASSERT_FALSE(any) << "trial " << trial;
    }
    if (kind == engine::tile_kind::full) {
      ++fulls;
      ASSERT_TRUE(all) << "trial " << trial;
    }
    if (kmin >= 8 && kmax <= rb.pos0 - 40) {
      ASSERT_EQ(kind, engine::tile_kind::empty) << "gap tile would be loaded, trial " << trial;
    }
    const auto range = m.key_range(rb, 0, 1000);
    if (any) {
      ASSERT_LE(range.first, kmin);
    }
    ASSERT_EQ(range.second, rb.pos0 + rb.queries);
  }
  EXPECT_GT(empties, 100);
  EXPECT_GT(fulls, 10);
}

struct masked_case {
  index_t seq_q, seq_k, hq, hkv, d, sink, window;
};

TEST(SinkStreaming, OneShotSinkWindowMatchesTheMaskedOracle) {
  for (const masked_case& c :
       {masked_case{300, 300, 4, 2, 64, 8, 40}, masked_case{1, 3000, 8, 2, 64, 4, 100},
        masked_case{3, 2000, 2, 1, 48, 16, 33}}) {
    SCOPED_TRACE(c.seq_k);
    std::mt19937 rng(43);
    auto q = tensor<float, 4>::make({1, c.seq_q, c.hq, c.d});
    auto k = tensor<float, 4>::make({1, c.seq_k, c.hkv, c.d});
    auto v = tensor<float, 4>::make({1, c.seq_k, c.hkv, c.d});
    auto o = tensor<float, 4>::make({1, c.seq_q, c.hq, c.d});
    fill_uniform(q.view, rng);
    fill_uniform(k.view, rng);
    fill_uniform(v.view, rng);
    sink::streaming_params s;
    s.sink = c.sink;
    s.window = c.window;
    attention_params p;
    p.causal = true;
    sink::streaming_attention(q.view, k.view, v.view, o.view, s, p);
    const full_attention f =
        full_probs(q.cview(), k.cview(), p, [&](index_t, index_t, index_t, index_t qp, index_t j) {
          return j < c.sink || qp - j < c.window;
        });
    const auto ref = weighted_values(f, f.p, v.cview());
    EXPECT_TRUE(all_close(o.cview(), ref.cview(), 2e-5, 2e-4));
  }
}

TEST(SinkStreaming, CacheBookkeepingFollowsStartRecentPolicy) {
  sink::streaming_cache cache(4, 8);
  EXPECT_EQ(cache.capacity(), 12);
  for (index_t t = 0; t < 30; ++t) {
    const auto e = cache.evict_for_space(1);
    if (t < 12) {
      EXPECT_EQ(e.dropped, 0);
    } else {
      EXPECT_EQ(e.dropped, 1);
      EXPECT_EQ(e.dest, 4);
      EXPECT_EQ(e.to - e.from, 7);
    }
    const index_t slot = cache.append(1);
    EXPECT_EQ(slot, cache.length() - 1);
    std::vector<index_t> held, expect;
    for (index_t s = 0; s < cache.length(); ++s) held.push_back(cache.token_at(s));
    for (index_t j = 0; j <= t; ++j)
      if (j < 4 || t - j < 8) expect.push_back(j);
    EXPECT_EQ(held, expect) << "after token " << t;
    EXPECT_EQ(cache.seen(), t + 1);
    EXPECT_EQ(cache.evicted(), t + 1 - cache.length());
  }
  // Chunks: room for 3 incoming tokens keeps the newest recent - 3.
  const auto e = cache.evict_for_space(3);
  EXPECT_EQ(cache.length(), 4 + 5);
  EXPECT_EQ(e.dropped, 3);
  cache.append(3);
  EXPECT_EQ(cache.token_at(cache.length() - 1), 32);
  EXPECT_EQ(cache.token_at(4), 25);  // tokens 25..32 follow the sinks
  EXPECT_THROW(cache.evict_for_space(9), invalid_argument);
  EXPECT_THROW(cache.append(1), invalid_argument);
}

// The full StreamingLLM decode loop: evict, move rows, append un-rotated K/V, attend with RoPE
// on load at cache positions; the oracle rotates the kept keys in double every step.
template <class KV>
void decode_loop(unsigned seed) {
  const index_t hq = 4, hkv = 2, d = 64, tokens = 60, sink_n = 4, recent = 16;
  sink::streaming_cache cache(sink_n, recent);
  const index_t cap = cache.capacity();
  auto kc = tensor<KV, 4>::make({1, cap, hkv, d});
  auto vc = tensor<KV, 4>::make({1, cap, hkv, d});
  auto kraw = tensor<KV, 4>::make({1, tokens, hkv, d});
  auto vraw = tensor<KV, 4>::make({1, tokens, hkv, d});
  auto qraw = tensor<float, 4>::make({1, tokens, hq, d});
  std::mt19937 rng(seed);
  fill_uniform(kraw.view, rng, -2.0f, 2.0f);
  fill_uniform(vraw.view, rng);
  fill_uniform(qraw.view, rng, -2.0f, 2.0f);
  sink::rope_table table(d, cap);
  sink::streaming_params s;
  s.rope = &table;
  attention_params p;
  p.causal = true;
  for (index_t t = 0; t < tokens; ++t) {
    const auto e = cache.evict_for_space(1);
    sink::streaming_cache::move(e, kc.view);
    sink::streaming_cache::move(e, vc.view);
    const index_t slot = cache.append(1);
    sink::streaming_cache::write<KV>(kraw.cview().narrow(1, t, 1), kc.view, slot);
    sink::streaming_cache::write<KV>(vraw.cview().narrow(1, t, 1), vc.view, slot);
    const index_t len = cache.length();
    auto o = tensor<float, 4>::make({1, 1, hq, d});
    sink::streaming_attention(qraw.view.narrow(1, t, 1), kc.view.narrow(1, 0, len),
                              vc.view.narrow(1, 0, len), o.view, s, p);
    // Oracle: keys rotated at their slot, the query at slot len - 1, plain softmax.
    auto ref = tensor<double, 4>::make({1, 1, hq, d});
    for (index_t h = 0; h < hq; ++h) {
      std::vector<double> qd(static_cast<std::size_t>(d));
      for (index_t c = 0; c < d; ++c) qd[c] = qraw.view(0, t, h, c);
      qd = rope_ref(qd, len - 1, d, true);
      std::vector<double> sc(static_cast<std::size_t>(len));
      double mx = -INFINITY;
      for (index_t sl = 0; sl < len; ++sl) {
        const index_t tok = cache.token_at(sl);
        std::vector<double> kd(static_cast<std::size_t>(d));
        for (index_t c = 0; c < d; ++c) kd[c] = to_float(kraw.view(0, tok, h / 2, c));
        kd = rope_ref(kd, sl, d, true);
        double dot = 0.0;
        for (index_t c = 0; c < d; ++c) dot += qd[c] * kd[c];
        sc[sl] = dot / std::sqrt(double(d));
        mx = std::max(mx, sc[sl]);
      }
      double sum = 0.0;
      for (index_t sl = 0; sl < len; ++sl) sum += std::exp(sc[sl] - mx);
      for (index_t c = 0; c < d; ++c) {
        double acc = 0.0;
        for (index_t sl = 0; sl < len; ++sl)
          acc += std::exp(sc[sl] - mx) / sum * to_float(vraw.view(0, cache.token_at(sl), h / 2, c));
        ref.view(0, 0, h, c) = acc;
      }
    }
    ASSERT_TRUE(all_close(o.cview(), ref.cview(), 3e-5, 3e-4)) << "token " << t;
  }
  EXPECT_EQ(cache.evicted(), tokens - cap);
}

TEST(SinkStreaming, DecodeLoopWithRopeOnLoadFloat) { decode_loop<float>(44); }
TEST(SinkStreaming, DecodeLoopWithRopeOnLoadBf16) { decode_loop<bf16>(45); }

// A one-shot prefill with RoPE on load over a long cache equals attention on keys rotated
// beforehand (the key hook sees cache positions).
TEST(SinkStreaming, RopeOnLoadEqualsPreRotatedKeys) {
  const index_t n = 1500, hq = 4, hkv = 1, d = 64;
  std::mt19937 rng(46);
  auto q = tensor<float, 4>::make({1, 2, hq, d});
  auto k = tensor<float, 4>::make({1, n, hkv, d});
  auto v = tensor<float, 4>::make({1, n, hkv, d});
  fill_uniform(q.view, rng, -2.0f, 2.0f);
  fill_uniform(k.view, rng, -2.0f, 2.0f);
  fill_uniform(v.view, rng);
  sink::rope_table table(d, n);
  auto o = tensor<float, 4>::make({1, 2, hq, d});
  sink::streaming_params s;
  s.rope = &table;
  s.sink = 4;
  s.window = 300;
  attention_params p;
  p.causal = true;
  sink::streaming_attention(q.view, k.view, v.view, o.view, s, p);
  auto qr = q, kr = k;
  qr.view = tensor_view<float, 4>::contiguous(qr.storage.data(), q.view.extents());
  kr.view = tensor_view<float, 4>::contiguous(kr.storage.data(), k.view.extents());
  for (index_t j = 0; j < n; ++j) table.rotate(&kr.view(0, j, 0, 0), j);
  for (index_t i = 0; i < 2; ++i)
    for (index_t h = 0; h < hq; ++h) table.rotate(&qr.view(0, i, h, 0), n - 2 + i);
  const full_attention f = full_probs(
      qr.cview(), kr.cview(), p,
      [&](index_t, index_t, index_t, index_t qp, index_t j) { return j < 4 || qp - j < 300; });
  const auto ref = weighted_values(f, f.p, v.cview());
  EXPECT_TRUE(all_close(o.cview(), ref.cview(), 2e-5, 2e-4));
}

TEST(SinkStreaming, RejectsShortRopeTable) {
  auto q = tensor<float, 4>::make({1, 1, 2, 64});
  auto k = tensor<float, 4>::make({1, 100, 1, 64});
  auto o = tensor<float, 4>::make({1, 1, 2, 64});
  sink::rope_table table(64, 50);
  sink::streaming_params s;
  s.rope = &table;
  EXPECT_THROW(sink::streaming_attention(q.view, k.view, k.view, o.view, s), invalid_argument);
  sink::rope_table wide(128, 200);
  s.rope = &wide;
  EXPECT_THROW(sink::streaming_attention(q.view, k.view, k.view, o.view, s), invalid_argument);
  EXPECT_THROW(sink::rope_table(7, 10), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
