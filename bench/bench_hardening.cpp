// dense/D1M/f32: decode (one query) over a 1M-token (2^20) f32 KV cache, the huge-size row of
// the hardening issue: 8 query heads sharing 2 KV heads of dim 64, so K + V are 1 GiB and the
// cache's element offsets pass 2^27 per head (2^28 elements per tensor). Split-K decode cuts the
// keys into 256 splits. Bandwidth-bound: reported with report_bandwidth (K/V bytes read).
#include "attend/dense/attention.hpp"
#include "bench_common.hpp"
#include "dense_problem.hpp"

namespace attend::bench {
namespace {

const shape kD1M{"D1M", 1, 8, 2, 64, 1, index_t{1} << 20, false};

void run_d1m(benchmark::State& st) {
  dense_problem<float> pb(kD1M);
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  const double seconds = timed_loop(st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); });
  report_bandwidth(st, seconds, pb.kv_bytes(), pb.flops());
}

const bool registered = [] {
  add("dense/D1M/f32", run_d1m);
  return true;
}();

}  // namespace
}  // namespace attend::bench
