// linear_state: prefill then decode steps equal one long prefill; prefill in pieces; ragged
// batches continuing from their own positions; save/load hand-off; reset of one slot; the
// meaning of the saved S (Σ φ(k) vᵀ).
#include "linear/linear_case.hpp"

namespace attend::testing {
namespace {

struct config_case {
  const char* name;
  linear_norm norm;
  bool decay, gates;
};

std::ostream& operator<<(std::ostream& os, const config_case& c) { return os << c.name; }

class state : public ::testing::TestWithParam<config_case> {};

/// Runs the configuration's one-shot prefill over all T tokens, and a state fed prefill(first
/// split tokens) then one step per remaining token; compares every output.
TEST_P(state, prefill_then_steps_equals_one_prefill) {
  const config_case c = GetParam();
  const index_t B = 2, T = 100, H = 3, D = 16, Dv = 12;
  linear_io<> io(B, T, T, H, D, Dv, layout::bshd, 7);
  std::vector<float> decay = {0.9f, 0.99f, 0.5f};
  std::vector<float> gates = c.gates ? random_gates(B, T, H, -0.3f, 5) : std::vector<float>{};
  linear_params p;
  p.norm = c.norm;
  p.chunk = 16;
  if (c.decay) p.decay = make_view<const float>(decay.data(), H);
  p.log_gates = gates_view(gates, B, T, H);
  linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);
  linear_params cfg = p;
  cfg.log_gates = {};
  for (index_t split : {0, 1, 37, 64, 99, 100}) {
    linear_state<> st(B, H, D, Dv, cfg);
    tensor<float, 4> out = tensor<float, 4>::make({B, T, H, Dv});
    auto g_range = [&](index_t t0, index_t n) {
      if (gates.empty()) return view3<const float>{};
      return view3<const float>(gates.data() + t0 * H, {B, n, H}, {T * H, H, 1});
    };
    if (split > 0)
      st.prefill(io.q.view.narrow(1, 0, split), io.k.view.narrow(1, 0, split),
                 io.v.view.narrow(1, 0, split), out.view.narrow(1, 0, split), g_range(0, split));
    for (index_t t = split; t < T; ++t)
      st.step(io.q.view.narrow(1, t, 1), io.k.view.narrow(1, t, 1), io.v.view.narrow(1, t, 1),
              out.view.narrow(1, t, 1), g_range(t, 1));
    EXPECT_TRUE(close_scaled(out.cview(), io.o.cview(), 3e-5)) << "split " << split;
    EXPECT_EQ(st.tokens(0), T);
    EXPECT_EQ(st.tokens(1), T);
  }
  // Prefill in pieces whose boundaries are not chunk multiples.
  linear_state<> st(B, H, D, Dv, cfg);
  tensor<float, 4> out = tensor<float, 4>::make({B, T, H, Dv});
  for (auto [t0, n] : {std::pair<index_t, index_t>{0, 37}, {37, 53}, {90, 10}}) {
    view3<const float> g{};
    if (!gates.empty()) g = view3<const float>(gates.data() + t0 * H, {B, n, H}, {T * H, H, 1});
    st.prefill(io.q.view.narrow(1, t0, n), io.k.view.narrow(1, t0, n), io.v.view.narrow(1, t0, n),
               out.view.narrow(1, t0, n), g);
  }
  EXPECT_TRUE(close_scaled(out.cview(), io.o.cview(), 3e-5)) << "prefill in pieces";
}

INSTANTIATE_TEST_SUITE_P(configs, state,
                         ::testing::Values(config_case{"denominator", linear_norm::denominator, false, false},
                                           config_case{"none_decay_gates", linear_norm::none, true, true},
                                           config_case{"denominator_decay", linear_norm::denominator, true, false},
                                           config_case{"mala", linear_norm::mala, false, false}),
                         [](const ::testing::TestParamInfo<config_case>& i) {
                           return std::string(i.param.name);
                         });

/// Sequences of different lengths in one batch: prefill with lengths, then steps where each
/// sequence continues from its own position, equal to each sequence's one long prefill.
TEST(state_ragged, steps_continue_each_sequence_from_its_length) {
  const index_t B = 3, T = 90, H = 2, D = 16, Dv = 16, prompt = 60, steps = 25;
  linear_io<> io(B, T, T, H, D, Dv, layout::bshd, 19);
  for (linear_norm norm : {linear_norm::denominator, linear_norm::mala}) {
    linear_params p;
    p.norm = norm;
    p.chunk = 16;
    linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, p);  // every sequence in full
    const std::vector<index_t> lens = {60, 23, 0};
    linear_state<> st(B, H, D, Dv, p);
    tensor<float, 4> pre = tensor<float, 4>::make({B, prompt, H, Dv});
    st.prefill(io.q.view.narrow(1, 0, prompt), io.k.view.narrow(1, 0, prompt),
               io.v.view.narrow(1, 0, prompt), pre.view, {},
               make_view<const index_t>(lens.data(), B));
    for (index_t b = 0; b < B; ++b) {
      EXPECT_EQ(st.tokens(b), lens[b]);
      for (index_t t = 0; t < prompt; ++t)
        for (index_t e = 0; e < Dv; ++e) {
          const float want = t < lens[b] ? io.o.view(b, t, 1, e) : 0.0f;
          EXPECT_NEAR(pre.view(b, t, 1, e), want, 3e-5) << b << " " << t;
        }
    }
    tensor<float, 4> q1 = tensor<float, 4>::make({B, 1, H, D});
    tensor<float, 4> k1 = tensor<float, 4>::make({B, 1, H, D});
    tensor<float, 4> v1 = tensor<float, 4>::make({B, 1, H, Dv});
    tensor<float, 4> o1 = tensor<float, 4>::make({B, 1, H, Dv});
    for (index_t s = 0; s < steps; ++s) {
      for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < H; ++h) {
          const index_t t = lens[b] + s;
          for (index_t d = 0; d < D; ++d) {
            q1.view(b, 0, h, d) = io.q.view(b, t, h, d);
            k1.view(b, 0, h, d) = io.k.view(b, t, h, d);
          }
          for (index_t e = 0; e < Dv; ++e) v1.view(b, 0, h, e) = io.v.view(b, t, h, e);
        }
      st.step(q1.view, k1.view, v1.view, o1.view);
      for (index_t b = 0; b < B; ++b)
        for (index_t h = 0; h < H; ++h)
          for (index_t e = 0; e < Dv; ++e)
            EXPECT_NEAR(o1.view(b, 0, h, e), io.o.view(b, lens[b] + s, h, e), 3e-5)
                << "norm " << int(norm) << " seq " << b << " step " << s;
    }
  }
}

/// save() into fla-layout tensors, load() into a fresh state: both continue identically; and a
/// state loaded with a saved prefix continues exactly where the prefix stopped (hand-off).
TEST(state_handoff, save_load_round_trip_and_continuation) {
  const index_t B = 2, T = 80, H = 3, D = 16, Dv = 8;
  linear_io<> io(B, T, T, H, D, Dv, layout::bshd, 23);
  std::vector<float> decay = {0.9f, 0.7f, 1.0f};
  linear_params p;
  p.norm = linear_norm::mala;
  linear_params pd;
  pd.norm = linear_norm::denominator;
  pd.decay = make_view<const float>(decay.data(), H);
  for (const linear_params& cfg : {p, pd}) {
    linear_attention(io.q.view, io.k.view, io.v.view, io.o.view, cfg);
    linear_state<> a(B, H, D, Dv, cfg);
    tensor<float, 4> out = tensor<float, 4>::make({B, T, H, Dv});
    a.prefill(io.q.view.narrow(1, 0, 50), io.k.view.narrow(1, 0, 50), io.v.view.narrow(1, 0, 50),
              out.view.narrow(1, 0, 50));
    tensor<float, 4> kv = tensor<float, 4>::make({B, H, D, Dv});
    tensor<float, 3> z = tensor<float, 3>::make({B, H, D}), sv = tensor<float, 3>::make({B, H, Dv});
    std::vector<index_t> toks(B);
    a.save(kv.view, z.view, sv.view, make_view(toks.data(), B));
    EXPECT_EQ(toks[0], 50);
    linear_state<> b(B, H, D, Dv, cfg);
    b.load(kv.cview(), z.cview(), sv.cview(), make_view<const index_t>(toks.data(), B));
    const linear_state<> snapshot = a;  // copies are snapshots
    tensor<float, 4> out_b = out;
    out_b.view = tensor_view<float, 4>::contiguous(out_b.storage.data(), {B, T, H, Dv});
    a.prefill(io.q.view.narrow(1, 50, 30), io.k.view.narrow(1, 50, 30),
              io.v.view.narrow(1, 50, 30), out.view.narrow(1, 50, 30));
    b.prefill(io.q.view.narrow(1, 50, 30), io.k.view.narrow(1, 50, 30),
              io.v.view.narrow(1, 50, 30), out_b.view.narrow(1, 50, 30));
    EXPECT_TRUE(bitwise_equal(out.cview(), out_b.cview()));
    EXPECT_TRUE(close_scaled(out.cview(), io.o.cview(), 3e-5));
    EXPECT_EQ(snapshot.tokens(0), 50);
    EXPECT_EQ(a.tokens(0), 80);
  }
}

/// The saved S is Σ_j decay φ(k_j) v_jᵀ (identity map, λ): checked in double.
TEST(state_handoff, saved_state_is_the_decayed_sum_of_outer_products) {
  const index_t T = 45, H = 2, D = 8, Dv = 16;
  linear_io<> io(1, T, T, H, D, Dv, layout::bshd, 29);
  std::vector<float> decay = {0.8f, 1.0f};
  linear_params p;
  p.norm = linear_norm::denominator;
  p.decay = make_view<const float>(decay.data(), H);
  p.chunk = 16;
  linear_state<linear::identity> st(1, H, D, Dv, p);
  st.prefill(io.q.view, io.k.view, io.v.view, io.o.view);
  for (index_t h = 0; h < H; ++h)
    for (index_t d = 0; d < D; ++d) {
      double z = 0.0;
      for (index_t j = 0; j < T; ++j) z += std::pow(double(decay[h]), T - 1 - j) * io.k.view(0, j, h, d);
      EXPECT_NEAR(st.z()(0, h, d), z, 1e-4 * (1 + std::abs(z)));
      for (index_t e = 0; e < Dv; ++e) {
        double s = 0.0;
        for (index_t j = 0; j < T; ++j)
          s += std::pow(double(decay[h]), T - 1 - j) * io.k.view(0, j, h, d) * io.v.view(0, j, h, e);
        EXPECT_NEAR(st.kv()(0, h, d, e), s, 1e-4 * (1 + std::abs(s)));
      }
    }
}

/// reset(b) empties one slot only: the slot then behaves as a fresh state, the others keep theirs.
TEST(state_reset, one_slot) {
  const index_t B = 2, T = 40, H = 2, D = 16, Dv = 16;
  linear_io<> first(B, T, T, H, D, Dv, layout::bshd, 31), second(B, T, T, H, D, Dv, layout::bshd, 37);
  linear_params p;
  linear_state<> st(B, H, D, Dv, p);
  st.prefill(first.q.view, first.k.view, first.v.view, first.o.view);
  tensor<float, 4> kv0 = tensor<float, 4>::make({B, H, D, Dv});
  st.save(kv0.view);
  st.reset(1);
  EXPECT_EQ(st.tokens(1), 0);
  EXPECT_EQ(st.tokens(0), T);
  const std::vector<index_t> lens = {0, T};  // sequence 0 takes no tokens
  st.prefill(second.q.view, second.k.view, second.v.view, second.o.view, {},
             make_view<const index_t>(lens.data(), B));
  linear_attention(second.q.view, second.k.view, second.v.view, first.o.view, p);
  for (index_t t = 0; t < T; ++t)
    for (index_t e = 0; e < Dv; ++e) EXPECT_NEAR(second.o.view(1, t, 0, e), first.o.view(1, t, 0, e), 3e-5);
  tensor<float, 4> kv1 = tensor<float, 4>::make({B, H, D, Dv});
  st.save(kv1.view);
  for (index_t h = 0; h < H; ++h)
    for (index_t d = 0; d < D; ++d)
      for (index_t e = 0; e < Dv; ++e) EXPECT_EQ(kv1.view(0, h, d, e), kv0.view(0, h, d, e));
  st.reset();
  EXPECT_EQ(st.tokens(0), 0);
  EXPECT_EQ(st.kv()(1, 1, 3, 3), 0.0f);
}

}  // namespace
}  // namespace attend::testing
