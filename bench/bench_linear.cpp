// linear.* rows: linear attention on the L1 shape (B 1, H 16/16, D 128, causal).
//   linear.chunked/L1/f32/<L>       Lightning-2 form (identity map, per-head decay, no norm),
//                                   L = 256 .. 64K; speedup over dense causal at the same L
//   linear.chunked/L1/f32/16K/gla   per-token log gates (simple GLA), identity, no norm
//   linear.chunked/L1/f32/16K/elu   Katharopoulos: elu+1, normalised, no decay
//   linear.chunked/L1/f32/64K/h2    two heads only: the parallel segment passes
//   linear.mala/L1/f32/<L>          causal MALA prefix form
//   linear.recurrent/L1/f32/step    one decode step of the recurrent state (all 16 heads);
//                                   speedup over dense decode on a 4K cache
//   linear.dense_ref/L1/f32/<L>     attend::attention, causal, the same shape (the crossover)
// Flops are counted as computed: per chunk of m tokens and head, the causal intra-chunk
// products QKᵀ and AV on the lower triangle (2 (dk + dv) m(m+1)/2), the inter-chunk product
// Q·S (2 m dk dv) and the state update KᵀV (2 m dk dv).
#include <map>
#include <vector>

#include "attend/dense/attention.hpp"
#include "attend/linear/linear.hpp"
#include "bench_common.hpp"
#include "dense_problem.hpp"

namespace attend::bench {
namespace {

constexpr index_t kHeads = 16, kDim = 128, kChunk = 64;

std::string length_name(index_t len) {
  return len >= 1024 ? std::to_string(len / 1024) + "K" : std::to_string(len);
}

/// Cheap deterministic uniform fill in [-1, 1) (the 64K rows hold 2 GB of inputs).
void fill(std::vector<float>& x, std::uint32_t seed) {
  std::uint32_t s = seed * 2654435761u + 1u;
  for (auto& v : x) {
    s = s * 1664525u + 1013904223u;
    v = static_cast<float>(s >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
}

struct linear_problem {
  index_t seq, heads;
  std::vector<float> q, k, v, o, decay, gates;
  linear_problem(index_t len, index_t h) : seq(len), heads(h) {
    const std::size_t n = static_cast<std::size_t>(len * h * kDim);
    q.resize(n);
    k.resize(n);
    v.resize(n);
    o.assign(n, 0.0f);
    fill(q, 1);
    fill(k, 2);
    fill(v, 3);
    for (index_t i = 0; i < h; ++i) decay.push_back(1.0f - std::pow(2.0f, -5.0f - float(i % 8)));
  }
  view4<float> view(std::vector<float>& x) { return bshd(x.data(), 1, seq, heads, kDim); }
  double flops() const {
    double f = 0.0;
    for (index_t t0 = 0; t0 < seq; t0 += kChunk) {
      const double m = double(std::min(kChunk, seq - t0));
      f += 2.0 * (kDim + kDim) * m * (m + 1) / 2 + 4.0 * m * kDim * kDim;
    }
    return f * double(heads);
  }
};

shape l1_shape(index_t len) { return shape{"L1", 1, kHeads, kHeads, kDim, len, len, true}; }

/// Dense causal medians per length, measured once per process (by the dense_ref rows or on
/// first use by a linear row).
std::map<index_t, double>& dense_medians() {
  static std::map<index_t, double> m;
  return m;
}

double dense_seconds(index_t len) {
  auto it = dense_medians().find(len);
  if (it != dense_medians().end()) return it->second;
  dense_problem<float> pb(l1_shape(len));
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  attention(pb.q, pb.k, pb.v, pb.o, p);  // warm-up
  const double s = median_seconds(len >= 8192 ? 2 : 3, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); });
  dense_medians()[len] = s;
  return s;
}

constexpr index_t kDenseMax = 16384;  // dense beyond this takes minutes

void report_linear(benchmark::State& st, double seconds, double flops, index_t len) {
  report_compute(st, seconds, flops);
  st.counters["us_per_tok"] = seconds * 1e6 / double(len);
  if (len <= kDenseMax) st.counters["speedup"] = dense_seconds(len) / seconds;
}

enum class variant { lightning, gla, elu };

void run_chunked(benchmark::State& st, index_t len, index_t heads, variant var) {
  linear_problem pb(len, heads);
  workspace ws;
  linear_params p;
  p.scratch = &ws;
  p.chunk = kChunk;
  if (var == variant::lightning || var == variant::gla) p.norm = linear_norm::none;
  if (var == variant::lightning) p.decay = make_view<const float>(pb.decay.data(), heads);
  if (var == variant::gla) {
    pb.gates.resize(static_cast<std::size_t>(len * heads));
    fill(pb.gates, 4);
    for (auto& g : pb.gates) g = -0.05f * (g + 1.0f);  // log gates in (-0.1, 0]
    p.log_gates = view3<const float>::contiguous(pb.gates.data(), {1, len, heads});
  }
  auto run = [&] {
    if (var == variant::elu)
      linear_attention(pb.view(pb.q), pb.view(pb.k), pb.view(pb.v), pb.view(pb.o), p,
                       linear::elu_plus_one{});
    else
      linear_attention(pb.view(pb.q), pb.view(pb.k), pb.view(pb.v), pb.view(pb.o), p,
                       linear::identity{});
  };
  run();  // warm-up (first touch of o)
  const double seconds = timed_loop(st, run);
  if (heads == kHeads) {
    report_linear(st, seconds, pb.flops(), len);
  } else {
    report_compute(st, seconds, pb.flops());
    st.counters["us_per_tok"] = seconds * 1e6 / double(len);
  }
}

void run_mala(benchmark::State& st, index_t len) {
  linear_problem pb(len, kHeads);
  workspace ws;
  linear_params p;
  p.scratch = &ws;
  mala_attention(pb.view(pb.q), pb.view(pb.k), pb.view(pb.v), pb.view(pb.o), p);
  const double seconds = timed_loop(
      st, [&] { mala_attention(pb.view(pb.q), pb.view(pb.k), pb.view(pb.v), pb.view(pb.o), p); });
  report_linear(st, seconds, pb.flops(), len);
}

void run_step(benchmark::State& st) {
  const index_t prompt = 1024;
  linear_problem pb(prompt, kHeads);
  linear_params p;
  p.norm = linear_norm::none;
  p.decay = make_view<const float>(pb.decay.data(), kHeads);
  linear_state<linear::identity> state(1, kHeads, kDim, kDim, p);
  state.prefill(pb.view(pb.q), pb.view(pb.k), pb.view(pb.v), pb.view(pb.o));
  std::vector<float> q1(kHeads * kDim), k1(q1), v1(q1), o1(q1);
  fill(q1, 5);
  fill(k1, 6);
  fill(v1, 7);
  auto one = [&](std::vector<float>& x) { return bshd(x.data(), 1, 1, kHeads, kDim); };
  const double seconds =
      timed_loop(st, [&] { state.step(one(q1), one(k1), one(v1), one(o1)); }, 1, caches::warm);
  const double state_bytes = double(kHeads) * kDim * kDim * sizeof(float);
  report_bandwidth(st, seconds, state_bytes, 4.0 * kHeads * kDim * kDim);
  st.counters["us"] = seconds * 1e6;
  // Dense decode of one token on a 4K cache of the same heads (measured once; warm, like the
  // step this row measures).
  static double dense_decode = 0.0;
  if (dense_decode == 0.0) {
    shape d{"L1", 1, kHeads, kHeads, kDim, 1, 4096, false};
    dense_problem<float> dp(d);
    workspace ws;
    attention_params ap = dp.params();
    ap.scratch = &ws;
    attention(dp.q, dp.k, dp.v, dp.o, ap);
    dense_decode =
        median_seconds(51, [&] { attention(dp.q, dp.k, dp.v, dp.o, ap); }, caches::warm);
  }
  st.counters["speedup"] = dense_decode / seconds;
}

void run_dense_ref(benchmark::State& st, index_t len) {
  dense_problem<float> pb(l1_shape(len));
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  attention(pb.q, pb.k, pb.v, pb.o, p);
  const double seconds = timed_loop(st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); });
  dense_medians()[len] = seconds;
  report_compute(st, seconds, pb.flops());
  st.counters["us_per_tok"] = seconds * 1e6 / double(len);
}

/// Benchmark settings by length: enough iterations for a median without minutes per row.
benchmark::internal::Benchmark* sized(benchmark::internal::Benchmark* b, index_t len) {
  if (len >= 65536) return b->Iterations(3);
  if (len >= 16384) return b->Iterations(5);
  return b->MinTime(1.0);
}

const bool registered = [] {
  for (index_t len : {256, 512, 1024, 2048, 4096, 8192, 16384})
    sized(add("linear.dense_ref/L1/f32/" + length_name(len),
              [len](benchmark::State& st) { run_dense_ref(st, len); }),
          len);
  for (index_t len : {256, 512, 1024, 2048, 4096, 8192, 16384, 65536})
    sized(add("linear.chunked/L1/f32/" + length_name(len),
              [len](benchmark::State& st) { run_chunked(st, len, kHeads, variant::lightning); }),
          len);
  sized(add("linear.chunked/L1/f32/16K/gla",
            [](benchmark::State& st) { run_chunked(st, 16384, kHeads, variant::gla); }),
        16384);
  sized(add("linear.chunked/L1/f32/16K/elu",
            [](benchmark::State& st) { run_chunked(st, 16384, kHeads, variant::elu); }),
        16384);
  sized(add("linear.chunked/L1/f32/64K/h2",
            [](benchmark::State& st) { run_chunked(st, 65536, 2, variant::lightning); }),
        16384);
  for (index_t len : {4096, 16384})
    sized(add("linear.mala/L1/f32/" + length_name(len),
              [len](benchmark::State& st) { run_mala(st, len); }),
          len);
  add("linear.recurrent/L1/f32/step", [](benchmark::State& st) { run_step(st); })->MinTime(1.0);
  // Names carry Google Benchmark's suffixes (/min_time:.., /iterations:.., /real_time).
  add_quick("^linear\\.chunked/L1/f32/(4K|64K)/(min_time|iterations|real_time)");
  add_quick("^linear\\.recurrent/L1/f32/step/");
  return true;
}();

}  // namespace
}  // namespace attend::bench
