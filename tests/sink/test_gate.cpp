// Gated attention: headwise and elementwise sigmoid output gates (through the output hook, after
// the split-K merge in decode) against the oracle's output times sigmoid(g) in double.
#include <cmath>
#include <random>

#include "attend/dense/instantiate.hpp"
#include "attend/sink/gate.hpp"
#include "sink/sink_oracle.hpp"

ATTEND_EXTERN_DENSE_TEMPLATES

namespace attend::testing {
namespace {

struct gate_case {
  const char* name;
  index_t batch, seq_q, seq_k, hq, hkv, d;
  bool causal, sinks;
};

const gate_case kCases[] = {
    {"prefill", 2, 90, 90, 4, 2, 64, true, false},
    {"cross_generic_dim", 1, 17, 130, 3, 1, 40, false, true},
    {"decode_splitk", 2, 1, 2500, 8, 2, 128, false, true},
};

void check(const gate_case& c, bool elementwise) {
  SCOPED_TRACE(std::string(c.name) + (elementwise ? " elementwise" : " headwise"));
  std::mt19937 rng(61);
  auto q = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, c.d});
  auto k = tensor<float, 4>::make({c.batch, c.seq_k, c.hkv, c.d});
  auto v = tensor<float, 4>::make({c.batch, c.seq_k, c.hkv, c.d});
  auto o = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, c.d});
  auto lse = tensor<float, 3>::make({c.batch, c.hq, c.seq_q});
  // The gate lives inside a wider buffer (as a fused projection's columns would): strided.
  auto gbuf = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, 2 * c.d + 3});
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  fill_uniform(v.view, rng);
  fill_uniform(gbuf.view, rng, -4.0f, 4.0f);
  const view4<const float> gate = gbuf.cview().narrow(3, 5, elementwise ? c.d : 1);
  std::vector<float> sinks;
  attention_params p;
  p.causal = c.causal;
  if (c.sinks) {
    for (index_t h = 0; h < c.hq; ++h) sinks.push_back(float(h % 3) - 0.5f);
    p.sinks = make_view<const float>(sinks.data(), c.hq);
  }
  p.lse = lse.view;
  sink::gated_attention(q.view, k.view, v.view, o.view, gate, p);
  attention_params pr = p;
  pr.lse = {};
  auto ref = tensor<double, 4>::make(o.view.extents());
  auto rl = tensor<double, 3>::make(lse.view.extents());
  reference::attention(q.cview(), k.cview(), v.cview(), pr, ref.view, rl.view);
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t i = 0; i < c.seq_q; ++i)
      for (index_t h = 0; h < c.hq; ++h)
        for (index_t ch = 0; ch < c.d; ++ch)
          ref.view(b, i, h, ch) *=
              1.0 / (1.0 + std::exp(-double(gate(b, i, h, elementwise ? ch : 0))));
  EXPECT_TRUE(all_close(o.cview(), ref.cview(), 2e-5, 2e-4));
  EXPECT_TRUE(all_close(lse.cview(), rl.cview(), 2e-5, 2e-4)) << "lse is the ungated attention's";
}

TEST(SinkGate, HeadwiseMatchesOracle) {
  for (const gate_case& c : kCases) check(c, false);
}

TEST(SinkGate, ElementwiseMatchesOracle) {
  for (const gate_case& c : kCases) check(c, true);
}

// A zero gate halves the output exactly; o and lse otherwise bitwise the dense operator's.
TEST(SinkGate, ZeroGateHalvesTheDenseOutput) {
  for (const gate_case& c : kCases)
    for (bool elementwise : {false, true}) {
      std::mt19937 rng(62);
      auto q = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, c.d});
      auto k = tensor<float, 4>::make({c.batch, c.seq_k, c.hkv, c.d});
      auto v = tensor<float, 4>::make({c.batch, c.seq_k, c.hkv, c.d});
      auto o = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, c.d});
      auto dense = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, c.d});
      auto g = tensor<float, 4>::make({c.batch, c.seq_q, c.hq, elementwise ? c.d : 1});
      fill_uniform(q.view, rng);
      fill_uniform(k.view, rng);
      fill_uniform(v.view, rng);
      attention_params p;
      p.causal = c.causal;
      sink::gated_attention(q.view, k.view, v.view, o.view, g.cview(), p);
      attention(q.view, k.view, v.view, dense.view, p);
      for (auto& x : dense.storage) x *= 0.5f;
      EXPECT_TRUE(bitwise_equal(o.cview(), dense.cview())) << c.name << " " << elementwise;
    }
}

TEST(SinkGate, RejectsBadGateShapes) {
  auto q = tensor<float, 4>::make({1, 4, 2, 64});
  auto k = tensor<float, 4>::make({1, 8, 1, 64});
  auto o = tensor<float, 4>::make({1, 4, 2, 64});
  auto g = tensor<float, 4>::make({1, 4, 2, 32});
  EXPECT_THROW(sink::gated_attention(q.view, k.view, k.view, o.view, g.cview()), invalid_argument);
  auto g2 = tensor<float, 4>::make({1, 4, 1, 1});
  EXPECT_THROW(sink::gated_attention(q.view, k.view, k.view, o.view, g2.cview()), invalid_argument);
  EXPECT_THROW(sink::gated_attention(q.view, k.view, k.view, o.view, view4<const float>{}),
               invalid_argument);
}

}  // namespace
}  // namespace attend::testing
