// attend_bench: measures the machine (FMA peak, read and row-gather bandwidth), prints the
// context, runs the quick default subset (or every row with --full, or a --benchmark_filter of
// your own) and ends with a summary table of the counters every benchmark reports.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>
#include <vector>
#include <xsimd/xsimd.hpp>

#include <Eigen/Core>

#include "attend/core/config.hpp"
#include "attend/simd/xsimd_compat.hpp"
#include "bench_common.hpp"

namespace attend::bench {

machine& the_machine() {
  static machine m;
  return m;
}

std::vector<std::string>& quick_rows() {
  static std::vector<std::string> rows;
  return rows;
}

namespace {

/// fp32 FMA peak: on every thread, independent register-only FMA chains (enough of them to
/// cover the FMA latency on every pipe), best of several trials.
double measure_fma_peak(int threads) {
  using Arch = xsimd::default_arch;
  using V = simd::vfloat<Arch>;
  constexpr int chains = simd::is_avx512<Arch> ? 16 : 12;  // 24 made GCC 12 spill
  constexpr long iters = 20'000'000;
  double best = 0;
  for (int trial = 0; trial < 5; ++trial) {
    double seconds = 0;
    float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink) reduction(max : seconds)
    {
      V acc[chains];
      for (int c = 0; c < chains; ++c) acc[c] = V(1.0f + 1e-7f * c);
      const V a(0.999999f), b(1e-7f);
#pragma omp barrier
      const double t0 = omp_get_wtime();
      // Unrolled explicitly: at -O2 GCC 12 keeps acc[] in memory otherwise (a 3.7x lower peak).
      for (long i = 0; i < iters; ++i) {
        ATTEND_UNROLL for (int c = 0; c < chains; ++c) acc[c] = simd::fmadd<Arch>(acc[c], a, b);
      }
      const double t1 = omp_get_wtime();
      V s = acc[0];
      for (int c = 1; c < chains; ++c) s += acc[c];
      sink += simd::reduce_sum<Arch>(s);
      seconds = t1 - t0;
    }
    const double flops = 2.0 * chains * V::size * double(iters) * threads;
    best = std::max(best, flops / seconds / 1e9);
    if (sink == 12345.0f) std::puts("");  // use the result
  }
  return best;
}

/// 1 GiB of ones (far larger than any last-level cache), first-touched by the threads that
/// read it.
constexpr std::size_t probe_floats = std::size_t{1} << 28;
std::unique_ptr<float[]> probe_array(int threads) {
  std::unique_ptr<float[]> a(new float[probe_floats]);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::size_t i = 0; i < probe_floats; ++i) a[i] = 1.0f;
  return a;
}

/// Read bandwidth: a vectorised sum over the probe array, best of several passes.
double measure_read_bandwidth(int threads, const std::unique_ptr<float[]>& a) {
  using Arch = xsimd::default_arch;
  using V = simd::vfloat<Arch>;
  const std::size_t n = probe_floats;
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    float total = 0;
    const double t0 = omp_get_wtime();
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (std::size_t blk = 0; blk < n / 4096; ++blk) {
      V s0(0.0f), s1(0.0f), s2(0.0f), s3(0.0f);
      const float* p = a.get() + blk * 4096;
      for (std::size_t i = 0; i < 4096; i += 4 * V::size) {
        s0 += V::load_aligned(p + i);
        s1 += V::load_aligned(p + i + V::size);
        s2 += V::load_aligned(p + i + 2 * V::size);
        s3 += V::load_aligned(p + i + 3 * V::size);
      }
      total += simd::reduce_sum<Arch>(s0 + s1 + s2 + s3);
    }
    const double t1 = omp_get_wtime();
    if (total != float(n)) std::puts("bandwidth check sum mismatch");
    best = std::max(best, double(n) * sizeof(float) / (t1 - t0) / 1e9);
  }
  return best;
}

/// Row-gather bandwidth: what a sparse decode step's selection and attention see when they
/// read scattered cache rows. Each thread sums 2^16 rows of 512 bytes (one f32 head row at
/// head dim 128) at random row-aligned offsets of the probe array, in ascending order, caches
/// cold (evicted before each pass); median of five passes.
double measure_gather_bandwidth(int threads, const std::unique_ptr<float[]>& a) {
  using Arch = xsimd::default_arch;
  using V = simd::vfloat<Arch>;
  constexpr std::size_t row = 128, rows_per_thread = std::size_t{1} << 16;
  std::vector<std::size_t> offsets(rows_per_thread * static_cast<std::size_t>(threads));
  std::uint64_t x = 0x9E3779B97F4A7C15ull;  // xorshift: reproducible, no <random> state
  for (auto& o : offsets) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    o = x % (probe_floats / row) * row;
  }
  for (int t = 0; t < threads; ++t)
    std::sort(offsets.begin() + t * rows_per_thread, offsets.begin() + (t + 1) * rows_per_thread);
  std::vector<double> rates;
  for (int pass = 0; pass < 5; ++pass) {
    evict_caches();
    float total = 0;
    const double t0 = omp_get_wtime();
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (std::size_t i = 0; i < offsets.size(); ++i) {
      const float* p = a.get() + offsets[i];
      V s(0.0f);
      for (std::size_t j = 0; j < row; j += V::size) s += V::load_aligned(p + j);
      total += simd::reduce_sum<Arch>(s);
    }
    const double t1 = omp_get_wtime();
    if (total != float(offsets.size() * row)) std::puts("gather check sum mismatch");
    rates.push_back(double(offsets.size() * row) * sizeof(float) / (t1 - t0) / 1e9);
  }
  std::nth_element(rates.begin(), rates.begin() + 2, rates.end());
  return rates[2];
}

std::string cpu_model() {
  FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (!f) return "unknown";
  char line[512];
  std::string model = "unknown";
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "model name", 10) == 0) {
      const char* c = std::strchr(line, ':');
      if (c) model = std::string(c + 2);
      if (!model.empty() && model.back() == '\n') model.pop_back();
      break;
    }
  std::fclose(f);
  return model;
}

/// Console output as usual, plus a summary table of the suite's counters at the end.
class summary_reporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs)
      if (!r.error_occurred) rows_.push_back(r);
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    const char* cols[] = {"ms", "gflops", "pct_peak", "gbps", "pct_bw", "speedup", "recall", "rel_err"};
    std::ostringstream os;
    os << "\n| benchmark | median ms | GFLOP/s | % peak | GB/s | % bw | speedup | recall | rel_err |\n"
       << "|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& r : rows_) {
      os << "| " << r.run_name.function_name;
      for (const char* c : cols) {
        const auto it = r.counters.find(c);
        char buf[32] = "";
        if (it != r.counters.end()) {
          const double v = it->second.value;
          std::snprintf(buf, sizeof buf, std::abs(v) < 0.01 && v != 0 ? "%.2e" : "%.3g", v);
        }
        os << " | " << buf;
      }
      os << " |\n";
    }
    GetOutputStream() << os.str() << std::flush;
  }

 private:
  std::vector<Run> rows_;
};

}  // namespace
}  // namespace attend::bench

int main(int argc, char** argv) {
  using namespace attend::bench;
  bool full = false, has_filter = false, console = true;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--full") == 0) {
      full = true;
      continue;
    }
    if (std::strncmp(argv[i], "--benchmark_filter", 18) == 0) has_filter = true;
    if (std::strncmp(argv[i], "--benchmark_format=", 19) == 0 &&
        std::strcmp(argv[i] + 19, "console") != 0)
      console = false;
    args.push_back(argv[i]);
  }
  std::string filter;
  if (!full && !has_filter) {
    filter = "--benchmark_filter=";
    for (std::size_t i = 0; i < quick_rows().size(); ++i)
      filter += (i ? "|" : "") + std::string("(") + quick_rows()[i] + ")";
    args.push_back(filter.data());
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;

  machine& m = the_machine();
  m.threads = omp_get_max_threads();
  m.peak_gflops = measure_fma_peak(m.threads);
  {
    const std::unique_ptr<float[]> probe = probe_array(m.threads);
    m.read_gbps = measure_read_bandwidth(m.threads, probe);
    m.gather_gbps = measure_gather_bandwidth(m.threads, probe);
  }
  char buf[64];
  benchmark::AddCustomContext("cpu", cpu_model());
  benchmark::AddCustomContext("isa", xsimd::default_arch::name());
  benchmark::AddCustomContext("threads", std::to_string(m.threads));
  std::snprintf(buf, sizeof buf, "%.1f GFLOP/s", m.peak_gflops);
  benchmark::AddCustomContext("fma_peak", buf);
  std::snprintf(buf, sizeof buf, "%.1f GB/s", m.read_gbps);
  benchmark::AddCustomContext("read_bandwidth", buf);
  std::snprintf(buf, sizeof buf, "%.1f GB/s (random 512-byte rows)", m.gather_gbps);
  benchmark::AddCustomContext("gather_bandwidth", buf);
  benchmark::AddCustomContext("xsimd", std::to_string(XSIMD_VERSION_MAJOR) + "." +
                                           std::to_string(XSIMD_VERSION_MINOR) + "." +
                                           std::to_string(XSIMD_VERSION_PATCH));
  benchmark::AddCustomContext("eigen", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                           std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                           std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("subset", full ? "full" : has_filter ? "filter" : "quick");

  if (console) {
    summary_reporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}
