// linear_attention (chunked causal and non-causal) and the recurrent form (linear_state::step
// token by token) against the explicit masked weight matrix in double, for every feature map,
// normalisation, per-head decay and per-token gate, several chunk sizes, lengths that are not
// multiples of the chunk, strided layouts and the parallel segment passes.
#include <omp.h>

#include "linear/linear_case.hpp"

namespace attend::testing {
namespace {

enum class decay_kind { none, lambda };
enum class gate_kind { none, mild, strong };

struct causal_case {
  const char* name;
  fmap map;
  linear_norm norm;
  decay_kind decay;
  gate_kind gates;
  index_t chunk, batch, seq, heads, dk, dv;
  layout lay;
};

std::ostream& operator<<(std::ostream& os, const causal_case& c) { return os << c.name; }

/// Calls body(map) with the library or test functor of f.
template <class F>
void with_map(fmap f, F&& body) {
  switch (f) {
    case fmap::identity: return body(linear::identity{});
    case fmap::elu1: return body(linear::elu_plus_one{});
    case fmap::relu: return body(linear::relu{});
    case fmap::silu: return body(linear::silu{});
    case fmap::squareplus: return body(squareplus{});
    case fmap::square: return body(square_scalar{});
  }
}

std::vector<float> head_decays(index_t heads) {
  const float table[] = {0.95f, 0.5f, 1.0f, 0.999f, 0.3f, 0.8f};
  std::vector<float> d(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h) d[h] = table[h % 6];
  return d;
}

struct prepared {
  linear_params params;
  ref_config ref;
  std::vector<float> decay, gates;
};

prepared prepare(const causal_case& c) {
  prepared p;
  p.params.norm = c.norm;
  p.params.chunk = c.chunk;
  p.ref.map = c.map;
  p.ref.norm = c.norm;
  p.ref.scale = c.norm == linear_norm::mala ? 1.0 / std::sqrt(double(c.dk)) : 1.0;
  if (c.norm != linear_norm::mala) {  // a non-default scale everywhere else
    p.params.scale = 0.5f;
    p.ref.scale = 0.5;
  }
  if (c.decay == decay_kind::lambda) {
    p.decay = head_decays(c.heads);
    p.params.decay = make_view<const float>(p.decay.data(), c.heads);
    for (float x : p.decay) p.ref.decay.push_back(x);
  }
  if (c.gates != gate_kind::none)
    p.gates = random_gates(c.batch, c.seq, c.heads, c.gates == gate_kind::mild ? -0.3f : -4.0f,
                           17);
  p.params.log_gates = gates_view(p.gates, c.batch, c.seq, c.heads);
  return p;
}

class causal : public ::testing::TestWithParam<causal_case> {};

TEST_P(causal, chunked_and_recurrent_match_explicit_weights) {
  const causal_case c = GetParam();
  linear_io<> io(c.batch, c.seq, c.seq, c.heads, c.dk, c.dv, c.lay, 3);
  prepared p = prepare(c);
  reference_all(io.q.cview(), io.k.cview(), io.v.cview(), p.gates, {}, p.ref, io.ref.view);
  with_map(c.map, [&](auto phi) {
    linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p.params, phi);
    EXPECT_TRUE(close_scaled(io.o.cview(), io.ref.cview(), 3e-5)) << "chunked";

    // Recurrent form: one token at a time through the decode state.
    linear_params cfg = p.params;
    cfg.log_gates = {};
    linear_state<decltype(phi)> st(c.batch, c.heads, c.dk, c.dv, cfg, phi);
    tensor<float, 4> rec = make4<float>({c.batch, c.seq, c.heads, c.dv}, c.lay);
    for (index_t t = 0; t < c.seq; ++t) {
      view3<const float> g{};
      if (!p.gates.empty())
        g = view3<const float>(p.gates.data() + t * c.heads, {c.batch, 1, c.heads},
                               {c.seq * c.heads, c.heads, 1});
      st.step(io.q.view.narrow(1, t, 1), io.k.view.narrow(1, t, 1), io.v.view.narrow(1, t, 1),
              rec.view.narrow(1, t, 1), g);
    }
    EXPECT_TRUE(close_scaled(rec.cview(), io.ref.cview(), 3e-5)) << "recurrent";
    EXPECT_TRUE(close_scaled(rec.cview(), io.o.cview(), 3e-5)) << "recurrent vs chunked";
    for (index_t b = 0; b < c.batch; ++b) EXPECT_EQ(st.tokens(b), c.seq);
  });
}

using F = fmap;
using N = linear_norm;
using D = decay_kind;
using G = gate_kind;
using L = layout;

INSTANTIATE_TEST_SUITE_P(
    variants, causal,
    ::testing::Values(
        // name, map, norm, decay, gates, chunk, batch, seq, heads, dk, dv, layout
        causal_case{"elu1_den_c16", F::elu1, N::denominator, D::none, G::none, 16, 2, 130, 3, 16, 16, L::bshd},
        causal_case{"elu1_den_c5_bhsd", F::elu1, N::denominator, D::none, G::none, 5, 1, 63, 2, 16, 12, L::bhsd},
        causal_case{"elu1_none_lambda", F::elu1, N::none, D::lambda, G::none, 16, 2, 77, 3, 16, 16, L::bshd},
        causal_case{"identity_none_lambda_c64_padded", F::identity, N::none, D::lambda, G::none, 64, 1, 200, 4, 24, 20, L::padded},
        causal_case{"identity_none_gates_c16", F::identity, N::none, D::none, G::mild, 16, 2, 100, 3, 16, 8, L::bshd},
        causal_case{"identity_none_gates_lambda_c7", F::identity, N::none, D::lambda, G::mild, 7, 1, 65, 5, 16, 16, L::bhsd},
        causal_case{"identity_none_strong_gates_c32", F::identity, N::none, D::none, G::strong, 32, 1, 97, 2, 16, 16, L::bshd},
        causal_case{"relu_den_c32", F::relu, N::denominator, D::none, G::none, 32, 2, 97, 3, 16, 16, L::bshd},
        causal_case{"relu_den_lambda_gates_c16", F::relu, N::denominator, D::lambda, G::mild, 16, 2, 90, 3, 8, 24, L::padded},
        causal_case{"elu1_den_lambda_gates_c64", F::elu1, N::denominator, D::lambda, G::strong, 64, 1, 150, 3, 32, 32, L::bshd},
        causal_case{"silu_none_lambda_c16", F::silu, N::none, D::lambda, G::none, 16, 1, 70, 2, 16, 16, L::bshd},
        causal_case{"user_squareplus_den_c16", F::squareplus, N::denominator, D::none, G::none, 16, 1, 80, 2, 16, 16, L::bshd},
        causal_case{"user_scalar_square_none_gates", F::square, N::none, D::none, G::mild, 16, 1, 50, 2, 16, 16, L::bshd},
        causal_case{"elu1_mala_c16", F::elu1, N::mala, D::none, G::none, 16, 2, 150, 3, 16, 16, L::bshd},
        causal_case{"elu1_mala_c1", F::elu1, N::mala, D::none, G::none, 1, 1, 20, 2, 16, 16, L::bhsd},
        causal_case{"squareplus_mala_c5", F::squareplus, N::mala, D::none, G::none, 5, 1, 41, 2, 16, 20, L::padded},
        causal_case{"identity_none_chunk1", F::identity, N::none, D::lambda, G::mild, 1, 1, 30, 2, 16, 16, L::bshd},
        causal_case{"elu1_den_chunk_longer_than_seq", F::elu1, N::denominator, D::lambda, G::none, 100, 2, 40, 3, 16, 16, L::bshd},
        causal_case{"single_token", F::elu1, N::denominator, D::lambda, G::mild, 64, 1, 1, 2, 16, 16, L::bshd},
        causal_case{"d128_gates_lambda_c64", F::identity, N::none, D::lambda, G::mild, 64, 1, 150, 2, 128, 128, L::bshd},
        // few (batch, head) pairs and many chunks: the parallel segment passes
        causal_case{"segments_identity_lambda_gates", F::identity, N::none, D::lambda, G::mild, 8, 1, 300, 2, 16, 16, L::bshd},
        causal_case{"segments_elu1_den", F::elu1, N::denominator, D::none, G::none, 8, 2, 260, 1, 16, 24, L::bhsd},
        causal_case{"segments_elu1_mala", F::elu1, N::mala, D::none, G::none, 4, 1, 200, 1, 16, 16, L::bshd},
        causal_case{"segments_relu_den_strong_gates", F::relu, N::denominator, D::lambda, G::strong, 16, 1, 700, 1, 16, 16, L::bshd}),
    [](const ::testing::TestParamInfo<causal_case>& i) { return std::string(i.param.name); });

// ---- non-causal ----

struct noncausal_case {
  const char* name;
  fmap map;
  linear_norm norm;
  index_t chunk, batch, seq_q, seq_k, heads, dk, dv;
  bool ragged;  // per-sequence key lengths
};

std::ostream& operator<<(std::ostream& os, const noncausal_case& c) { return os << c.name; }

class noncausal : public ::testing::TestWithParam<noncausal_case> {};

TEST_P(noncausal, matches_explicit_weights) {
  const noncausal_case c = GetParam();
  linear_io<> io(c.batch, c.seq_q, c.seq_k, c.heads, c.dk, c.dv, layout::bshd, 5);
  linear_params p;
  p.causal = false;
  p.norm = c.norm;
  p.chunk = c.chunk;
  ref_config r;
  r.causal = false;
  r.map = c.map;
  r.norm = c.norm;
  r.scale = c.norm == linear_norm::mala ? 1.0 / std::sqrt(double(c.dk)) : 1.0;
  std::vector<index_t> lens;
  if (c.ragged) {
    for (index_t b = 0; b < c.batch; ++b) lens.push_back(b == 1 ? 0 : c.seq_k - 3 * b);
    p.lengths = make_view<const index_t>(lens.data(), c.batch);
  }
  reference_all(io.q.cview(), io.k.cview(), io.v.cview(), {}, lens, r, io.ref.view);
  with_map(c.map, [&](auto phi) {
    linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p, phi);
    EXPECT_TRUE(close_scaled(io.o.cview(), io.ref.cview(), 3e-5));
  });
}

INSTANTIATE_TEST_SUITE_P(
    variants, noncausal,
    ::testing::Values(
        // name, map, norm, chunk, batch, seq_q, seq_k, heads, dk, dv, ragged
        noncausal_case{"elu1_den", F::elu1, N::denominator, 16, 2, 50, 50, 3, 16, 16, false},
        noncausal_case{"elu1_den_cross", F::elu1, N::denominator, 16, 2, 9, 70, 3, 16, 12, false},
        noncausal_case{"relu_den_ragged", F::relu, N::denominator, 8, 3, 40, 40, 2, 16, 16, true},
        noncausal_case{"identity_none", F::identity, N::none, 64, 1, 100, 100, 4, 24, 20, false},
        noncausal_case{"user_squareplus_den", F::squareplus, N::denominator, 16, 1, 33, 33, 2, 16, 16, false},
        noncausal_case{"elu1_mala", F::elu1, N::mala, 16, 2, 60, 60, 3, 16, 16, false},
        noncausal_case{"elu1_mala_ragged_cross", F::elu1, N::mala, 8, 3, 20, 45, 2, 16, 16, true},
        noncausal_case{"segments_elu1_den", F::elu1, N::denominator, 4, 1, 300, 300, 1, 16, 16, false},
        noncausal_case{"segments_mala_ragged", F::elu1, N::mala, 4, 2, 200, 210, 1, 16, 8, true}),
    [](const ::testing::TestParamInfo<noncausal_case>& i) { return std::string(i.param.name); });

// ---- other properties ----

TEST(linear, bf16_inputs_match_reference_on_rounded_values) {
  linear_io<bf16> io(2, 90, 90, 3, 16, 16, layout::bshd, 9);
  std::vector<float> decay = head_decays(3);
  linear_params p;
  p.norm = linear_norm::none;
  p.decay = make_view<const float>(decay.data(), 3);
  p.chunk = 16;
  ref_config r;
  r.map = fmap::identity;
  r.norm = linear_norm::none;
  for (float x : decay) r.decay.push_back(x);
  reference_all(io.q.cview(), io.k.cview(), io.v.cview(), {}, {}, r, io.ref.view);
  linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p, linear::identity{});
  EXPECT_TRUE(close_scaled(io.o.cview(), io.ref.cview(), 3e-5));
}

TEST(linear, ragged_causal_lengths_zero_rows_past_the_end) {
  linear_io<> io(3, 70, 70, 2, 16, 16, layout::bshd, 11);
  const std::vector<index_t> lens = {70, 33, 0};
  std::vector<float> gates = random_gates(3, 70, 2, -0.5f, 4);
  linear_params p;
  p.chunk = 16;
  p.lengths = make_view<const index_t>(lens.data(), 3);
  p.log_gates = gates_view(gates, 3, 70, 2);
  std::fill(io.o.storage.begin(), io.o.storage.end(), 7.0f);
  ref_config r;
  reference_all(io.q.cview(), io.k.cview(), io.v.cview(), gates, lens, r, io.ref.view);
  linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
  EXPECT_TRUE(close_scaled(io.o.cview(), io.ref.cview(), 3e-5));
  for (index_t t = 33; t < 70; ++t) EXPECT_EQ(io.o.view(1, t, 1, 5), 0.0f);
}

/// Decays and gates that change exactly at chunk boundaries: a gate of -30 on the first token of
/// a chunk must wipe the carried state, one on the last token must wipe the chunk's own keys.
TEST(linear, gates_at_chunk_boundaries) {
  const index_t C = 16, T = 80;
  linear_io<> io(1, T, T, 2, 16, 16, layout::bshd, 13);
  std::vector<float> gates(static_cast<std::size_t>(T * 2), -0.05f);
  for (index_t t : {16, 31, 32, 48, 63, 64}) gates[t * 2 + 0] = -30.0f;  // head 0
  for (index_t t : {15, 17, 47, 79}) gates[t * 2 + 1] = -5.0f;           // head 1
  std::vector<float> decay = {0.9f, 0.99f};
  linear_params p;
  p.norm = linear_norm::none;
  p.chunk = C;
  p.decay = make_view<const float>(decay.data(), 2);
  p.log_gates = gates_view(gates, 1, T, 2);
  ref_config r;
  r.map = fmap::identity;
  r.norm = linear_norm::none;
  r.decay = {0.9, 0.99};
  reference_all(io.q.cview(), io.k.cview(), io.v.cview(), gates, {}, r, io.ref.view);
  linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p, linear::identity{});
  EXPECT_TRUE(close_scaled(io.o.cview(), io.ref.cview(), 3e-5));
  // After the -30 gate at t = 32 (a chunk start), output 32 is (almost exactly) the own token's
  // term only: (q·k) v scaled, independent of everything before.
  double dot = 0.0;
  for (index_t d = 0; d < 16; ++d) dot += double(io.q.view(0, 32, 0, d)) * io.k.view(0, 32, 0, d);
  for (index_t e = 0; e < 16; ++e)
    EXPECT_NEAR(io.o.view(0, 32, 0, e), dot * io.v.view(0, 32, 0, e), 1e-5);
}

/// Long sequences with extreme decays: tiny λ, log gates of -1e4 and -80, and no decay at all
/// over 1024 tokens (16 chunks): no overflow, no NaN, still equal to the explicit weights.
TEST(linear, long_sequences_with_extreme_decays_stay_finite) {
  const index_t T = 1024, H = 3;
  linear_io<> io(1, T, T, H, 8, 8, layout::bshd, 21);
  std::vector<float> decay = {1e-30f, 1.0f, 0.5f};
  std::vector<float> gates = random_gates(1, T, H, -2.0f, 8);
  for (index_t t = 0; t < T; t += 37) gates[t * H + 1] = -1e4f;
  for (index_t t = 5; t < T; t += 101) gates[t * H + 2] = -80.0f;
  for (linear_norm norm : {linear_norm::none, linear_norm::denominator}) {
    linear_params p;
    p.norm = norm;
    p.decay = make_view<const float>(decay.data(), H);
    p.log_gates = gates_view(gates, 1, T, H);
    ref_config r;
    r.norm = norm;
    r.decay = {1e-30, 1.0, 0.5};
    reference_all(io.q.cview(), io.k.cview(), io.v.cview(), gates, {}, r, io.ref.view);
    linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
    EXPECT_TRUE(close_scaled(io.o.cview(), io.ref.cview(), 3e-5));
  }
  // No decay at all: S and z grow linearly over the sequence, fine in fp32.
  linear_params p;
  ref_config r;
  reference_all(io.q.cview(), io.k.cview(), io.v.cview(), {}, {}, r, io.ref.view);
  linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
  EXPECT_TRUE(close_scaled(io.o.cview(), io.ref.cview(), 3e-5));
}

/// Results do not depend on the thread count (the segment plan depends on shapes only).
TEST(linear, results_independent_of_threads) {
  for (index_t heads : {1, 2, 16}) {
    linear_io<> io(1, 600, 600, heads, 16, 16, layout::bshd, 31);
    std::vector<float> gates = random_gates(1, 600, heads, -0.2f, 3);
    linear_params p;
    p.chunk = 16;
    p.log_gates = gates_view(gates, 1, 600, heads);
    tensor<float, 4> one = tensor<float, 4>::make({1, 600, heads, 16});
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    linear_attention(io.q.view, io.k.view, io.v.view, one.view, p);
    omp_set_num_threads(2);
    linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
    omp_set_num_threads(saved);
    EXPECT_TRUE(bitwise_equal(io.o.cview(), one.cview())) << heads << " heads";
    p.causal = false;
    p.log_gates = {};
    omp_set_num_threads(1);
    linear_attention(io.q.view, io.k.view, io.v.view, one.view, p);
    omp_set_num_threads(2);
    linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
    omp_set_num_threads(saved);
    EXPECT_TRUE(bitwise_equal(io.o.cview(), one.cview())) << heads << " heads, non-causal";
  }
}

/// A reused workspace gives the same result as a fresh one.
TEST(linear, workspace_reuse) {
  linear_io<> io(1, 200, 200, 3, 16, 16, layout::bshd, 41);
  tensor<float, 4> again = tensor<float, 4>::make({1, 200, 3, 16});
  workspace ws;
  linear_params p;
  p.scratch = &ws;
  linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
  p.chunk = 32;  // a different scratch layout in the same buffer
  linear_attention(io.q.view, io.k.view, io.v.view, again.view, p);
  p.chunk = 64;
  linear_attention(io.q.view, io.k.view, io.v.view, again.view, p);
  p.chunk = 64;
  p.scratch = nullptr;
  linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
  EXPECT_TRUE(bitwise_equal(io.o.cview(), again.cview()));
}

}  // namespace
}  // namespace attend::testing
