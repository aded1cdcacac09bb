// The sink-calibrated family against plain dense attention at the same shape, in the same run:
//   sink.logits/P1/f32        learnable sink logits (row hook)                target ratio <= 1.05
//   sink.gate/P1/f32[/elem]   headwise (elementwise) sigmoid output gate      target ratio <= 1.05
//   sink.stats/P1/f32         two-pass statistics: entropy, sink mass, column sums / means
//                                                                             target ratio <= 2.2
//   sink.act/P1/f32           ACT prefill: forward, column means, detection, epilogue (all heads)
//                                                                             target ratio <= 2.2
//   sink.duo/D3/f32/half      DuoAttention decode, half the KV heads streaming (sink 64,
//                             recent 256), head-major cache [B, H, L, D]      target speedup >= 1.8
//   sink.duo/D3/f32/half_bshd the same with a token-major cache [B, L, H, D]: every token row
//                             interleaves both kinds, so skipping the streaming heads' halves
//                             saves far less than half the DRAM time (reported, no target)
//   sink.duo/P1/f32/half      the same split in causal prefill (token-major)
//   sink.h2o/D2/f32[/two_pass] decode with H2O running scores as a by-product of the forward
//                             (one pass over K/V), or forward + column pass (two)
//
// Each iteration times the dense operator and the variant back to back (alternating which goes
// first), so both see the same machine state; the counters are medians: `ms` (variant),
// `dense_ms`, `ratio` (median of the per-iteration variant / dense ratios) and
// `speedup` = 1 / ratio. Google Benchmark's own time column is the pair's sum.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "attend/dense/attention.hpp"
#include "attend/sink/act.hpp"
#include "attend/sink/duo.hpp"
#include "attend/sink/gate.hpp"
#include "attend/sink/stats.hpp"
#include "bench_common.hpp"
#include "dense_problem.hpp"

namespace attend::bench {
namespace {

double median_of(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

struct paired {
  double seconds = 0, dense_seconds = 0, ratio = 0;
};

/// Times dense() and variant() once per iteration, alternating their order.
template <class Dense, class Variant>
paired time_pair(benchmark::State& st, Dense&& dense, Variant&& variant) {
  std::vector<double> tv, td, ratio;
  auto clock = [](auto&& f) {
    const auto a = std::chrono::steady_clock::now();
    f();
    benchmark::ClobberMemory();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
  };
  dense();  // warm caches and workspaces once
  variant();
  bool dense_first = true;
  for (auto _ : st) {
    double a, b;
    if (dense_first) {
      a = clock(dense);
      b = clock(variant);
    } else {
      b = clock(variant);
      a = clock(dense);
    }
    dense_first = !dense_first;
    td.push_back(a);
    tv.push_back(b);
    ratio.push_back(b / a);
  }
  return {median_of(tv), median_of(td), median_of(ratio)};
}

void report(benchmark::State& st, const paired& t, double flops) {
  report_compute(st, t.seconds, flops);
  st.counters["dense_ms"] = t.dense_seconds * 1e3;
  st.counters["ratio"] = t.ratio;
  st.counters["speedup"] = 1.0 / t.ratio;
}

void run_logits(benchmark::State& st, const shape& s) {
  dense_problem<float> pb(s);
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  std::vector<float> sinks(static_cast<std::size_t>(s.heads_q));
  for (index_t h = 0; h < s.heads_q; ++h) sinks[h] = 0.25f * float(h % 8);
  attention_params ps = p;
  ps.sinks = make_view<const float>(sinks.data(), s.heads_q);
  const auto t = time_pair(
      st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); },
      [&] { attention(pb.q, pb.k, pb.v, pb.o, ps); });
  report(st, t, pb.flops());
}

void run_gate(benchmark::State& st, const shape& s, bool elementwise) {
  dense_problem<float> pb(s);
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  const index_t ge = elementwise ? s.dim : 1;
  std::vector<float> gate =
      random_buffer<float>(std::size_t(s.batch * s.seq_q * s.heads_q * ge), 9, -3.0f, 3.0f);
  const view4<const float> g = bshd(gate.data(), s.batch, s.seq_q, s.heads_q, ge);
  const auto t = time_pair(
      st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); },
      [&] { sink::gated_attention(pb.q, pb.k, pb.v, pb.o, g, p); });
  report(st, t, pb.flops());
}

void run_stats(benchmark::State& st, const shape& s) {
  dense_problem<float> pb(s);
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  const std::size_t rows = std::size_t(s.batch * s.heads_q * s.seq_q);
  const std::size_t cols = std::size_t(s.batch * s.heads_q * s.seq_k);
  std::vector<float> lse(rows), entropy(rows), token_mass(rows), col_sum(cols), col_mean(cols);
  attention_params ps = p;
  ps.lse = view3<float>::contiguous(lse.data(), {s.batch, s.heads_q, s.seq_q});
  sink::stats_outputs out;
  out.entropy = view3<float>::contiguous(entropy.data(), {s.batch, s.heads_q, s.seq_q});
  out.sink_token_mass = view3<float>::contiguous(token_mass.data(), {s.batch, s.heads_q, s.seq_q});
  out.col_sum = view3<float>::contiguous(col_sum.data(), {s.batch, s.heads_q, s.seq_k});
  out.col_mean = view3<float>::contiguous(col_mean.data(), {s.batch, s.heads_q, s.seq_k});
  const auto t = time_pair(
      st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); },
      [&] { sink::attention_stats(pb.q, pb.k, pb.v, pb.o, ps, out); });
  report(st, t, pb.flops());
}

void run_act(benchmark::State& st, const shape& s) {
  dense_problem<float> pb(s);
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  sink::act_params a;  // beta 0.4, tau 0.1, every head calibrated (the worst case)
  double moved = 0.0;
  const auto t = time_pair(
      st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); },
      [&] { moved = sink::act_attention(pb.q, pb.k, pb.v, pb.o, a, p).moved_mass; });
  report(st, t, pb.flops());
  st.counters["moved_mass"] = moved;
}

void run_duo(benchmark::State& st, const shape& s, bool head_major) {
  dense_problem<float> pb(s);
  if (head_major) {  // the same buffers viewed [batch, heads, seq, dim]: each head contiguous
    pb.k = bhsd(pb.kbuf.data(), s.batch, s.heads_kv, s.seq_k, s.dim);
    pb.v = bhsd(pb.vbuf.data(), s.batch, s.heads_kv, s.seq_k, s.dim);
  }
  workspace ws;
  attention_params p = pb.params();
  p.causal = true;  // DuoAttention's streaming pattern is causal (decode: every key visible)
  p.scratch = &ws;
  // Half the KV heads streaming; retrieval heads first, as the reference reorders them.
  std::vector<std::uint8_t> kinds(static_cast<std::size_t>(s.heads_kv), 0);
  for (index_t h = s.heads_kv / 2; h < s.heads_kv; ++h) kinds[h] = 1;
  sink::duo_params d;
  d.streaming = make_view<const std::uint8_t>(kinds.data(), s.heads_kv);
  d.sink = 64;
  d.recent = 256;
  sink::duo_report rep;
  const auto t = time_pair(
      st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); },
      [&] { rep = sink::duo_attention(pb.q, pb.k, pb.v, pb.o, d, p); });
  const double flops = pb.flops() * (1.0 - rep.work_saved);
  if (s.seq_q <= 16)
    report_bandwidth(st, t.seconds, pb.kv_bytes() * (1.0 - rep.work_saved), flops);
  else
    report_compute(st, t.seconds, flops);
  st.counters["dense_ms"] = t.dense_seconds * 1e3;
  st.counters["ratio"] = t.ratio;
  st.counters["speedup"] = 1.0 / t.ratio;
  st.counters["memory_saved"] = rep.memory_saved;
  st.counters["work_saved"] = rep.work_saved;
}

// H2O running scores at decode: one pass (scores recorded by the forward) or two (forward, then
// the column pass over K again).
void run_h2o(benchmark::State& st, const shape& s, bool two_pass) {
  dense_problem<float> pb(s);
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  std::vector<float> scores(std::size_t(s.batch * s.heads_q * s.seq_k), 0.0f);
  std::vector<float> lse(std::size_t(s.batch * s.heads_q * s.seq_q));
  const auto sv = view3<float>::contiguous(scores.data(), {s.batch, s.heads_q, s.seq_k});
  attention_params pl = p;
  pl.lse = view3<float>::contiguous(lse.data(), {s.batch, s.heads_q, s.seq_q});
  const auto t = time_pair(
      st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); },
      [&] {
        if (two_pass) {
          attention(pb.q, pb.k, pb.v, pb.o, pl);
          sink::accumulate_attention(pb.q, pb.k, view3<const float>(pl.lse), p, sv);
        } else {
          sink::attention_h2o(pb.q, pb.k, pb.v, pb.o, p, sv);
        }
      });
  report_bandwidth(st, t.seconds, pb.kv_bytes(), pb.flops());
  st.counters["dense_ms"] = t.dense_seconds * 1e3;
  st.counters["ratio"] = t.ratio;
  st.counters["speedup"] = 1.0 / t.ratio;
}

const bool registered = [] {
  const shape p1 = shapes().at("P1"), d3 = shapes().at("D3");
  add("sink.logits/P1/f32", [p1](benchmark::State& st) { run_logits(st, p1); })->Iterations(9);
  add("sink.gate/P1/f32", [p1](benchmark::State& st) { run_gate(st, p1, false); })->Iterations(9);
  add("sink.gate/P1/f32/elem", [p1](benchmark::State& st) {
    run_gate(st, p1, true);
  })->Iterations(9);
  add("sink.stats/P1/f32", [p1](benchmark::State& st) { run_stats(st, p1); })->Iterations(7);
  add("sink.act/P1/f32", [p1](benchmark::State& st) { run_act(st, p1); })->Iterations(7);
  add("sink.duo/D3/f32/half", [d3](benchmark::State& st) {
    run_duo(st, d3, true);
  })->Iterations(31);
  add("sink.duo/D3/f32/half_bshd", [d3](benchmark::State& st) {
    run_duo(st, d3, false);
  })->Iterations(31);
  add("sink.duo/P1/f32/half", [p1](benchmark::State& st) {
    run_duo(st, p1, false);
  })->Iterations(7);
  const shape d2 = shapes().at("D2");
  add("sink.h2o/D2/f32", [d2](benchmark::State& st) { run_h2o(st, d2, false); })->Iterations(51);
  add("sink.h2o/D2/f32/two_pass", [d2](benchmark::State& st) {
    run_h2o(st, d2, true);
  })->Iterations(51);
  add_quick("^sink\\.(logits|stats|act)/P1/f32");
  add_quick("^sink\\.duo/D3/f32/half/");
  return true;
}();

}  // namespace
}  // namespace attend::bench
