// Bad input throws attend::invalid_argument before anything is written: decay outside (0, 1],
// gates > 0 or not finite, decay/gates where they have no meaning, mismatched shapes (operator
// and state), bad lengths, chunk, eps, aliasing outputs.
#include <limits>

#include "linear/linear_case.hpp"

namespace attend::testing {
namespace {

constexpr float sentinel = 42.0f;

struct fixture {
  index_t B = 2, T = 20, H = 3, D = 8, Dv = 8;
  linear_io<> io{B, T, T, H, D, Dv, layout::bshd, 1};
  fixture() { std::fill(io.o.storage.begin(), io.o.storage.end(), sentinel); }
  bool untouched() const {
    return std::all_of(io.o.storage.begin(), io.o.storage.end(),
                       [](float x) { return x == sentinel; });
  }
};

#define EXPECT_REJECTS(call)                              \
  do {                                                    \
    EXPECT_THROW(call, attend::invalid_argument) << #call; \
  } while (0)

TEST(linear_errors, decay_outside_zero_one) {
  fixture f;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float bad : {0.0f, -0.1f, 1.0001f, 2.0f, nan}) {
    std::vector<float> decay = {0.5f, bad, 0.9f};
    linear_params p;
    p.decay = make_view<const float>(decay.data(), 3);
    EXPECT_REJECTS(linear_attention(f.io.q.view, f.io.k.view, f.io.v.view, f.io.o.view, p));
    EXPECT_REJECTS((linear_state<>(f.B, f.H, f.D, f.Dv, p)));
  }
  std::vector<float> two = {0.5f, 0.5f};  // wrong length
  linear_params p;
  p.decay = make_view<const float>(two.data(), 2);
  EXPECT_REJECTS(linear_attention(f.io.q.view, f.io.k.view, f.io.v.view, f.io.o.view, p));
  EXPECT_TRUE(f.untouched());
}

TEST(linear_errors, gates_must_be_finite_and_non_positive) {
  fixture f;
  for (float bad : {0.5f, std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<float> g(static_cast<std::size_t>(f.B * f.T * f.H), -0.1f);
    g[17] = bad;
    linear_params p;
    p.log_gates = gates_view(g, f.B, f.T, f.H);
    EXPECT_REJECTS(linear_attention(f.io.q.view, f.io.k.view, f.io.v.view, f.io.o.view, p));
  }
  std::vector<float> g(static_cast<std::size_t>(f.B * (f.T - 1) * f.H), -0.1f);
  linear_params p;
  p.log_gates = gates_view(g, f.B, f.T - 1, f.H);  // wrong seq
  EXPECT_REJECTS(linear_attention(f.io.q.view, f.io.k.view, f.io.v.view, f.io.o.view, p));
  EXPECT_TRUE(f.untouched());
}

TEST(linear_errors, decay_and_gates_need_causal_and_not_mala) {
  fixture f;
  std::vector<float> decay = {0.5f, 0.5f, 0.5f};
  std::vector<float> g(static_cast<std::size_t>(f.B * f.T * f.H), -0.1f);
  linear_params p;
  p.causal = false;
  p.decay = make_view<const float>(decay.data(), 3);
  EXPECT_REJECTS(linear_attention(f.io.q.view, f.io.k.view, f.io.v.view, f.io.o.view, p));
  p.decay = {};
  p.log_gates = gates_view(g, f.B, f.T, f.H);
  EXPECT_REJECTS(linear_attention(f.io.q.view, f.io.k.view, f.io.v.view, f.io.o.view, p));
  linear_params m;
  m.decay = make_view<const float>(decay.data(), 3);
  EXPECT_REJECTS(mala_attention(f.io.q.view, f.io.k.view, f.io.v.view, f.io.o.view, m));
  m.decay = {};
  m.log_gates = gates_view(g, f.B, f.T, f.H);
  EXPECT_REJECTS(mala_attention(f.io.q.view, f.io.k.view, f.io.v.view, f.io.o.view, m));
  EXPECT_TRUE(f.untouched());
}

TEST(linear_errors, shapes_and_parameters) {
  fixture f;
  auto& io = f.io;
  linear_params p;
  // heads differ
  tensor<float, 4> k2 = tensor<float, 4>::make({f.B, f.T, 2, f.D});
  EXPECT_REJECTS(linear_attention(io.q.view, k2.view, io.v.view, io.o.view, p));
  // head dims differ
  tensor<float, 4> k3 = tensor<float, 4>::make({f.B, f.T, f.H, f.D + 1});
  EXPECT_REJECTS(linear_attention(io.q.view, k3.view, io.v.view, io.o.view, p));
  // causal needs seq_q == seq_k
  EXPECT_REJECTS(linear_attention(io.q.view.narrow(1, 0, 5), io.k.view, io.v.view,
                                  io.o.view.narrow(1, 0, 5), p));
  // output shape
  EXPECT_REJECTS(linear_attention(io.q.view, io.k.view, io.v.view, io.o.view.narrow(3, 0, 4), p));
  // output aliases an input
  EXPECT_REJECTS(linear_attention(io.q.view, io.k.view, io.v.view,
                                  tensor_view<float, 4>(io.q.view.data(), io.o.view.extents(),
                                                        io.o.view.strides()),
                                  p));
  // output with a zero stride
  EXPECT_REJECTS(linear_attention(io.q.view, io.k.view, io.v.view,
                                  tensor_view<float, 4>(io.o.view.data(), io.o.view.extents(),
                                                        {0, f.H * f.Dv, f.Dv, 1}),
                                  p));
  for (index_t chunk : {0, -1, 1025}) {
    linear_params c;
    c.chunk = chunk;
    EXPECT_REJECTS(linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, c));
  }
  linear_params e;
  e.eps = -1e-3f;
  EXPECT_REJECTS(linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, e));
  e.eps = 1e-6f;
  e.scale = std::numeric_limits<float>::infinity();
  EXPECT_REJECTS(linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, e));
  for (index_t bad : {-1, 21}) {
    std::vector<index_t> lens = {5, bad};
    linear_params l;
    l.lengths = make_view<const index_t>(lens.data(), 2);
    EXPECT_REJECTS(linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, l));
  }
  std::vector<index_t> three = {1, 2, 3};
  linear_params l;
  l.lengths = make_view<const index_t>(three.data(), 3);
  EXPECT_REJECTS(linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, l));
  EXPECT_TRUE(f.untouched());
}

TEST(linear_errors, state_shapes_and_configuration) {
  fixture f;
  auto& io = f.io;
  linear_params p;
  EXPECT_REJECTS((linear_state<>(0, 1, 8, 8, p)));
  linear_params nc;
  nc.causal = false;
  EXPECT_REJECTS((linear_state<>(f.B, f.H, f.D, f.Dv, nc)));
  std::vector<float> g(static_cast<std::size_t>(f.B * f.T * f.H), -0.1f);
  linear_params with_gates;
  with_gates.log_gates = gates_view(g, f.B, f.T, f.H);
  EXPECT_REJECTS((linear_state<>(f.B, f.H, f.D, f.Dv, with_gates)));

  // mismatched state shapes in prefill and step
  linear_state<> wrong_heads(f.B, f.H + 1, f.D, f.Dv, p);
  EXPECT_REJECTS(wrong_heads.prefill(io.q.view, io.k.view, io.v.view, io.o.view));
  linear_state<> wrong_batch(f.B + 1, f.H, f.D, f.Dv, p);
  EXPECT_REJECTS(wrong_batch.prefill(io.q.view, io.k.view, io.v.view, io.o.view));
  linear_state<> wrong_dv(f.B, f.H, f.D, f.Dv + 8, p);
  EXPECT_REJECTS(wrong_dv.step(io.q.view.narrow(1, 0, 1), io.k.view.narrow(1, 0, 1),
                               io.v.view.narrow(1, 0, 1), io.o.view.narrow(1, 0, 1)));
  linear_state<> st(f.B, f.H, f.D, f.Dv, p);
  EXPECT_REJECTS(st.step(io.q.view.narrow(1, 0, 2), io.k.view.narrow(1, 0, 2),
                         io.v.view.narrow(1, 0, 2), io.o.view.narrow(1, 0, 2)));
  std::vector<float> g1(static_cast<std::size_t>(f.B * f.H), 0.25f);  // a positive gate
  EXPECT_REJECTS(st.step(io.q.view.narrow(1, 0, 1), io.k.view.narrow(1, 0, 1),
                         io.v.view.narrow(1, 0, 1), io.o.view.narrow(1, 0, 1),
                         gates_view(g1, f.B, 1, f.H)));
  EXPECT_REJECTS(st.reset(f.B));

  // save/load with mismatched shapes
  tensor<float, 4> kv_bad = tensor<float, 4>::make({f.B, f.H, f.D, f.Dv + 1});
  tensor<float, 4> kv = tensor<float, 4>::make({f.B, f.H, f.D, f.Dv});
  tensor<float, 3> z_bad = tensor<float, 3>::make({f.B, f.H, f.D + 1});
  std::vector<index_t> toks = {1, -2};
  EXPECT_REJECTS(st.save(kv_bad.view));
  EXPECT_REJECTS(st.load(kv_bad.cview()));
  EXPECT_REJECTS(st.load(kv.cview(), z_bad.cview()));
  EXPECT_REJECTS(st.load(kv.cview(), {}, {}, make_view<const index_t>(toks.data(), 2)));
  EXPECT_REJECTS(st.load(kv.cview(), {}, {}, make_view<const index_t>(toks.data(), 1)));
  EXPECT_EQ(st.tokens(0), 0);
  EXPECT_TRUE(f.untouched());
}

}  // namespace
}  // namespace attend::testing
