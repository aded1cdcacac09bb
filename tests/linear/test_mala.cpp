// MALA: the weights β a_ij - γ of every row sum to 1 (no RoPE, eps = 0), in the non-causal
// reference formula and the causal prefix form; mala_attention equals the explicit weights; the
// decode state continues the prefix form.
#include "linear/linear_case.hpp"

namespace attend::testing {
namespace {

/// With v = 1 everywhere the output is the sum of the row's weights.
TEST(mala, weights_sum_to_one) {
  const index_t B = 2, T = 130, H = 3, D = 16, Dv = 8;
  for (bool causal : {true, false}) {
    linear_io<> io(B, T, T, H, D, Dv, layout::bshd, 3, 2.0f);
    std::fill(io.v.storage.begin(), io.v.storage.end(), 1.0f);
    linear_params p;
    p.causal = causal;
    p.eps = 0.0f;
    p.chunk = 16;
    mala_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
    for (float x : io.o.storage) ASSERT_NEAR(x, 1.0f, 2e-5) << (causal ? "causal" : "non-causal");
    mala_attention(io.q.view, io.k.view, io.v.view, io.o.view, p, squareplus{});
    for (float x : io.o.storage) ASSERT_NEAR(x, 1.0f, 2e-5) << "squareplus";
  }
}

/// A value that is constant over the keys passes through unchanged, even though individual
/// weights may be negative.
TEST(mala, constant_values_pass_through_and_weights_can_be_negative) {
  const index_t T = 64, H = 1, D = 16, Dv = 4;
  linear_io<> io(1, T, T, H, D, Dv, layout::bshd, 5, 3.0f);
  for (index_t t = 0; t < T; ++t)
    for (index_t e = 0; e < Dv; ++e) io.v.view(0, t, 0, e) = 0.5f + float(e);
  linear_params p;
  p.causal = false;
  p.eps = 0.0f;
  mala_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
  for (index_t t = 0; t < T; ++t)
    for (index_t e = 0; e < Dv; ++e) EXPECT_NEAR(io.o.view(0, t, 0, e), 0.5f + float(e), 5e-5);
  // The explicit weights of the reference formula: some are negative for large queries.
  ref_config r;
  r.norm = linear_norm::mala;
  r.causal = false;
  r.eps = 0.0;
  r.scale = 0.25;
  int negative = 0;
  for (index_t j = 0; j < T; ++j) {
    tensor<float, 4> onehot = tensor<float, 4>::make({1, T, H, 1});
    onehot.view(0, j, 0, 0) = 1.0f;
    tensor<double, 4> w = tensor<double, 4>::make({1, T, H, 1});
    reference_all(io.q.cview(), io.k.cview(), onehot.cview(), {}, {}, r, w.view);
    for (index_t i = 0; i < T; ++i) negative += w.view(0, i, 0, 0) < 0.0;
  }
  EXPECT_GT(negative, 0);
}

TEST(mala, entry_point_matches_explicit_weights_and_ignores_norm) {
  for (bool causal : {true, false}) {
    linear_io<> io(2, 75, 75, 3, 16, 16, layout::bhsd, 11);
    linear_params p;
    p.causal = causal;
    p.norm = linear_norm::none;  // overridden by mala_attention
    p.chunk = 8;
    ref_config r;
    r.norm = linear_norm::mala;
    r.causal = causal;
    r.scale = 0.25;  // 1/sqrt(16)
    reference_all(io.q.cview(), io.k.cview(), io.v.cview(), {}, {}, r, io.ref.view);
    mala_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
    EXPECT_TRUE(close_scaled(io.o.cview(), io.ref.cview(), 3e-5)) << causal;
  }
}

TEST(mala, decode_state_continues_the_prefix_form) {
  const index_t T = 90, H = 2, D = 16, Dv = 16;
  linear_io<> io(1, T, T, H, D, Dv, layout::bshd, 13);
  mala_attention(io.q.view, io.k.view, io.v.view, io.o.view);
  linear_state<> st(1, H, D, Dv, mala_config());
  tensor<float, 4> out = tensor<float, 4>::make({1, T, H, Dv});
  st.prefill(io.q.view.narrow(1, 0, 70), io.k.view.narrow(1, 0, 70), io.v.view.narrow(1, 0, 70),
             out.view.narrow(1, 0, 70));
  for (index_t t = 70; t < T; ++t)
    st.step(io.q.view.narrow(1, t, 1), io.k.view.narrow(1, t, 1), io.v.view.narrow(1, t, 1),
            out.view.narrow(1, t, 1));
  EXPECT_TRUE(close_scaled(out.cview(), io.o.cview(), 3e-5));
  // Σv of the state is the plain sum of the values.
  for (index_t e = 0; e < Dv; ++e) {
    double s = 0.0;
    for (index_t t = 0; t < T; ++t) s += io.v.view(0, t, 1, e);
    EXPECT_NEAR(st.sv()(0, 1, e), s, 1e-4);
  }
}

}  // namespace
}  // namespace attend::testing
