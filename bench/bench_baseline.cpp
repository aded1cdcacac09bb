// baseline.eigen/{P1,P2,D1,D2}/f32: the naive attention a user would write with Eigen — per head
// S = Q Kᵀ, row softmax, O = S V — parallel over heads, buffers allocated outside the timed
// loop. It is the in-binary peer of ../shared/BENCHMARKS.md's "naive Eigen" column.
#include <omp.h>

#include <Eigen/Core>
#include <limits>

#include "bench_common.hpp"
#include "dense_problem.hpp"

namespace attend::bench {
namespace {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_map = Eigen::Map<const row_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;
using map = Eigen::Map<row_matrix, Eigen::Unaligned, Eigen::OuterStride<>>;

void run_baseline(benchmark::State& st, const shape& s) {
  dense_problem<float> pb(s);
  const int threads = omp_get_max_threads();
  std::vector<row_matrix> scores(threads, row_matrix(s.seq_q, s.seq_k));
  const float scale = 1.0f / std::sqrt(float(s.dim));
  const index_t group = s.heads_q / s.heads_kv;
  const index_t rq = s.heads_q * s.dim, rk = s.heads_kv * s.dim;
  const double seconds = timed_loop(st, [&] {
#pragma omp parallel for schedule(static)
    for (index_t h = 0; h < s.heads_q; ++h) {
      row_matrix& sc = scores[omp_get_thread_num()];
      const_map q(pb.qbuf.data() + h * s.dim, s.seq_q, s.dim, Eigen::OuterStride<>(rq));
      const_map k(pb.kbuf.data() + (h / group) * s.dim, s.seq_k, s.dim, Eigen::OuterStride<>(rk));
      const_map v(pb.vbuf.data() + (h / group) * s.dim, s.seq_k, s.dim, Eigen::OuterStride<>(rk));
      map o(pb.obuf.data() + h * s.dim, s.seq_q, s.dim, Eigen::OuterStride<>(rq));
      sc.noalias() = (q * k.transpose()) * scale;
      if (s.causal)
        for (index_t i = 0; i < s.seq_q; ++i)
          sc.row(i).tail(s.seq_k - (s.seq_k - s.seq_q + i + 1))
              .setConstant(-std::numeric_limits<float>::infinity());
      for (index_t i = 0; i < s.seq_q; ++i) {
        auto row = sc.row(i);
        row = (row.array() - row.maxCoeff()).exp();
        row /= row.sum();
      }
      o.noalias() = sc * v;
    }
  });
  if (s.seq_q <= 16)
    report_bandwidth(st, seconds, pb.kv_bytes(), pb.flops());
  else
    report_compute(st, seconds, pb.flops());
}

const bool registered = [] {
  for (const char* n : {"P1", "P2", "D1", "D2"}) {
    const shape s = shapes().at(n);
    add(std::string("baseline.eigen/") + n + "/f32", [s](benchmark::State& st) { run_baseline(st, s); });
  }
  add_quick("^baseline\\.eigen/(P1|P2|D1|D2)/");
  return true;
}();

}  // namespace
}  // namespace attend::bench
