// Shared benchmark machinery: the machine's FMA peak and read bandwidth (measured once by this
// binary at start-up), the suite's shapes, counters, median timing and the summary table.
#ifndef ATTEND_BENCH_BENCH_COMMON_HPP_
#define ATTEND_BENCH_BENCH_COMMON_HPP_

#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "attend/core/dtype.hpp"
#include "attend/core/memory.hpp"
#include "attend/core/tensor_view.hpp"

namespace attend::bench {

/// Machine figures measured by this binary before any benchmark runs.
struct machine {
  double peak_gflops = 0;  // fp32 FMA peak, all threads
  double read_gbps = 0;    // read bandwidth over arrays far larger than the last-level cache
  double gather_gbps = 0;  // the same over scattered 512-byte rows (a sparse decode's reads)
  int threads = 1;
};
machine& the_machine();

/// One row of ../shared/BENCHMARKS.md's shape table.
struct shape {
  const char* name;
  index_t batch, heads_q, heads_kv, dim, seq_q, seq_k;
  bool causal;
};

inline const std::map<std::string, shape>& shapes() {
  static const std::map<std::string, shape> s = {
      {"P1", {"P1", 1, 32, 8, 128, 2048, 2048, true}},
      {"P2", {"P2", 1, 12, 12, 64, 512, 512, false}},
      {"P3", {"P3", 1, 32, 8, 128, 8192, 8192, true}},
      {"D1", {"D1", 1, 32, 8, 128, 1, 4096, false}},
      {"D2", {"D2", 1, 32, 8, 128, 1, 32768, false}},
      {"D3", {"D3", 1, 32, 8, 128, 1, 131072, false}},
      {"DB", {"DB", 8, 32, 8, 128, 1, 16384, false}},  // ragged lengths 1K..16K
      {"S1", {"S1", 1, 8, 2, 128, 16384, 16384, true}},
      {"S2", {"S2", 1, 32, 8, 128, 1, 131072, false}},
      {"L1", {"L1", 1, 16, 16, 128, 4096, 4096, true}},
  };
  return s;
}

/// The DB shape's ragged KV lengths: 1K..16K spread evenly over the batch.
inline std::vector<index_t> ragged_lengths(index_t batch, index_t lo = 1024, index_t hi = 16384) {
  std::vector<index_t> lens(static_cast<std::size_t>(batch));
  for (index_t b = 0; b < batch; ++b) lens[b] = lo + (hi - lo) * b / std::max<index_t>(1, batch - 1);
  return lens;
}

/// Softmax attention flops: 4 * B * Hq * Lq * Lk * D, halved for causal self-attention.
inline double attention_flops(const shape& s) {
  const double f = 4.0 * s.batch * s.heads_q * double(s.seq_q) * double(s.seq_k) * s.dim;
  return s.causal && s.seq_q > 1 ? f / 2 : f;
}

/// Bytes of K and V read by one pass over the cache.
inline double kv_bytes(index_t batch_tokens, index_t heads_kv, index_t dim, std::size_t elem) {
  return 2.0 * double(batch_tokens) * heads_kv * dim * double(elem);
}

/// Owning random buffer of T.
template <class T, class Alloc = std::allocator<T>>
std::vector<T, Alloc> random_buffer(std::size_t n, unsigned seed, float lo = -1.0f,
                                    float hi = 1.0f) {
  std::vector<T, Alloc> v(n);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  for (auto& x : v) x = from_float<T>(d(rng));
  return v;
}

/// Whether a timed sample starts from cold caches. An engine's decode step finds a layer's KV
/// cache evicted by the other layers' traffic, so by default every sample first streams over
/// twice the last-level cache (untimed): on a machine whose LLC holds a whole cache, repeating
/// one call would otherwise time it from the LLC.
enum class caches { cold, warm };

/// Evicts the last-level (and each core's) caches: every thread reads its share of a buffer of
/// twice the largest cache benchmark::CPUInfo reports (at least 64 MiB).
inline void evict_caches() {
  static const cache_vector<float> buffer = [] {
    std::size_t llc = 0;
    for (const auto& c : benchmark::CPUInfo::Get().caches)
      llc = std::max<std::size_t>(llc, static_cast<std::size_t>(c.size));
    const std::size_t bytes = std::max<std::size_t>(2 * llc, std::size_t{64} << 20);
    return cache_vector<float>(bytes / sizeof(float), 1.0f);
  }();
  const float* data = buffer.data();
  const auto n = static_cast<std::ptrdiff_t>(buffer.size());
  float sum = 0.0f;
#pragma omp parallel for reduction(+ : sum) schedule(static)
  for (std::ptrdiff_t i = 0; i < n; i += 16) sum += data[i];  // one load per 64-byte line
  benchmark::DoNotOptimize(sum);
}

/// Times `body` once per benchmark iteration and returns the median seconds per iteration. Rows
/// that take seconds (one iteration by default) ask for `min_samples`: extra timed runs after the
/// loop, so that their median is not a single sample.
template <class Body>
double timed_loop(benchmark::State& st, Body&& body, int min_samples = 1,
                  caches start = caches::cold) {
  std::vector<double> t;
  auto sample = [&] {
    if (start == caches::cold) evict_caches();
    const auto a = std::chrono::steady_clock::now();
    body();
    benchmark::ClobberMemory();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  };
  for (auto _ : st) sample();
  if (t.empty()) return 0.0;
  while (static_cast<int>(t.size()) < min_samples) sample();
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

/// Median of `reps` runs of body, in seconds (for reference timings inside a benchmark).
template <class Body>
double median_seconds(int reps, Body&& body, caches start = caches::cold) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    if (start == caches::cold) evict_caches();
    const auto a = std::chrono::steady_clock::now();
    body();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

/// Compute-bound counters from the median time: ms, gflops, pct_peak.
inline void report_compute(benchmark::State& st, double seconds, double flops) {
  st.counters["ms"] = seconds * 1e3;
  st.counters["gflops"] = flops / seconds / 1e9;
  st.counters["pct_peak"] = 100.0 * flops / seconds / 1e9 / the_machine().peak_gflops;
}

/// Bandwidth-bound counters from the median time: ms, gbps, pct_bw (and gflops, pct_peak).
inline void report_bandwidth(benchmark::State& st, double seconds, double bytes, double flops) {
  report_compute(st, seconds, flops);
  st.counters["gbps"] = bytes / seconds / 1e9;
  st.counters["pct_bw"] = 100.0 * bytes / seconds / 1e9 / the_machine().read_gbps;
}

/// Registers a benchmark under the suite's naming scheme with the settings every row shares.
inline benchmark::internal::Benchmark* add(const std::string& name,
                                           std::function<void(benchmark::State&)> fn) {
  return benchmark::RegisterBenchmark(name.c_str(), [fn](benchmark::State& st) { fn(st); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

/// Regex of the quick default subset (the README's bench command); each family adds its rows.
std::vector<std::string>& quick_rows();
inline bool add_quick(const std::string& regex) {
  quick_rows().push_back(regex);
  return true;
}

}  // namespace attend::bench

#endif  // ATTEND_BENCH_BENCH_COMMON_HPP_
