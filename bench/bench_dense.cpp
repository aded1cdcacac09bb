// dense/{P1,P2,P3,D1,D2,D3,DB}/{f32,bf16}: the dense operator on the suite's shapes.
#include "attend/dense/attention.hpp"
#include "bench_common.hpp"
#include "dense_problem.hpp"

namespace attend::bench {
namespace {

template <class KV>
void run_dense(benchmark::State& st, const shape& s) {
  dense_problem<KV> pb(s);
  workspace ws;
  attention_params p = pb.params();
  p.scratch = &ws;
  const double seconds = timed_loop(st, [&] { attention(pb.q, pb.k, pb.v, pb.o, p); });
  if (s.seq_q <= 16)
    report_bandwidth(st, seconds, pb.kv_bytes(), pb.flops());
  else
    report_compute(st, seconds, pb.flops());
}

template <class KV>
void register_shape(const char* name) {
  const shape s = shapes().at(name);
  add(std::string("dense/") + name + "/" + dtype_name<KV>(),
      [s](benchmark::State& st) { run_dense<KV>(st, s); });
}

const bool registered = [] {
  for (const char* n : {"P1", "P2", "P3", "D1", "D2", "D3", "DB"}) {
    register_shape<float>(n);
    register_shape<bf16>(n);
  }
  add_quick("^dense/(P1|P2|D1|D2|DB)/");
  return true;
}();

}  // namespace
}  // namespace attend::bench
