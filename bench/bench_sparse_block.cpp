// Block-sparse attention rows (issue 4):
//   sparse.block/S1/f32/d{5,10,20}   block_sparse_attention at 5/10/20 % of the causal blocks
//   sparse.quest/S2/{f32,bf16}/b{2048,4096}   Quest decode (selection + attention) over 131072 keys
//   sparse.{moba,flexprefill,minference,proxy,lowbit}/S1/f32   prefill selectors + attention
// Each row reports `speedup` over the dense operator at the same shape measured in this process
// (dense S1 takes seconds: measured once and cached), `recall` (attention mass inside the
// sparse key set, via LSE) and `rel_err` (||o - o_dense|| / ||o_dense||) on the structured data
// of sparse_problem.hpp. Selector rows also report `select_ms` and `select_pct` (selection time
// as a percentage of the sparse attention it drives) and `density` (of the causal work).
#include <algorithm>
#include <memory>
#include <mutex>
#include <random>

#include "attend/dense/attention.hpp"
#include "attend/sparse/accuracy.hpp"
#include "attend/sparse/block_sparse.hpp"
#include "bench_common.hpp"
#include "sparse_problem.hpp"

namespace attend::bench {
namespace {

/// A problem on the suite's data and the dense reference measured on it (once per process).
template <class KV>
struct dense_reference {
  sparse_problem<KV> pb;
  std::vector<float> o, lse;
  double seconds = 0;

  dense_reference(const shape& s, int reps) : pb(s) {
    o.resize(pb.obuf.size());
    lse.resize(std::size_t(s.batch * s.heads_q * s.seq_q));
    attention_params p;
    p.causal = s.causal;
    workspace ws;
    p.scratch = &ws;
    const auto ov = bshd(o.data(), s.batch, s.seq_q, s.heads_q, s.dim);
    attention(pb.q, pb.k, pb.v, ov, p);  // warm-up (page faults, workspace)
    seconds = median_seconds(reps, [&] { attention(pb.q, pb.k, pb.v, ov, p); });
    p.lse = lse_view();
    attention(pb.q, pb.k, pb.v, ov, p);
  }
  view3<float> lse_view() {
    return view3<float>::contiguous(lse.data(), {pb.s.batch, pb.s.heads_q, pb.s.seq_q});
  }
  view4<float> o_view() { return bshd(o.data(), pb.s.batch, pb.s.seq_q, pb.s.heads_q, pb.s.dim); }

  static dense_reference& get(const char* name, int reps) {
    static std::unique_ptr<dense_reference> cached;
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    if (!cached) cached = std::make_unique<dense_reference>(shapes().at(name), reps);
    return *cached;
  }
};

dense_reference<float>& dense_s1() { return dense_reference<float>::get("S1", 3); }

/// Reports speedup / recall / rel_err of a sparse run whose output (o, lse) was produced with
/// the same params as the dense reference.
template <class KV>
void report_accuracy(benchmark::State& st, dense_reference<KV>& ref, double seconds,
                     const view4<float>& o, const view3<float>& lse) {
  st.counters["speedup"] = ref.seconds / seconds;
  const auto rec = sparse::mass_recall(view3<const float>(lse), view3<const float>(ref.lse_view()));
  st.counters["recall"] = rec.mean;
  st.counters["recall_min"] = rec.min;
  st.counters["rel_err"] =
      sparse::relative_error(view4<const float>(o), view4<const float>(ref.o_view()));
}

/// Per KV head, 64 x 64 blocks: the diagonal block, the first block and random other causal
/// blocks, `density` of each query block's causal blocks in all.
sparse::block_mask s1_density_mask(const shape& s, double density) {
  const sparse::mask_geometry g{s.batch, s.heads_kv, s.seq_q, s.seq_k, 64, 64};
  sparse::block_mask_builder bld(g);
  std::mt19937 rng(99);
  std::vector<index_t> pool;
  for (index_t r = 0; r < g.rows(); ++r) {
    const index_t qb = r % g.q_blocks();
    const index_t want = std::max<index_t>(std::min<index_t>(2, qb + 1),
                                           index_t(std::llround(density * double(qb + 1))));
    bld.add(r, qb);
    bld.add(r, 0);
    pool.clear();
    for (index_t kb = 1; kb < qb; ++kb) pool.push_back(kb);
    std::shuffle(pool.begin(), pool.end(), rng);
    for (index_t e = 0; e + 2 < want && e < index_t(pool.size()); ++e) bld.add(r, pool[e]);
  }
  return bld.build();
}

void run_block_density(benchmark::State& st, double density) {
  auto& ref = dense_s1();
  const shape& s = ref.pb.s;
  const sparse::block_mask mask = s1_density_mask(s, density);
  attention_params p;
  p.causal = true;
  workspace ws;
  p.scratch = &ws;
  auto& pb = ref.pb;
  const double seconds = timed_loop(
      st, [&] { sparse::block_sparse_attention(pb.q, pb.k, pb.v, pb.o, mask, p); });
  std::vector<float> lse(ref.lse.size());
  p.lse = view3<float>::contiguous(lse.data(), {s.batch, s.heads_q, s.seq_q});
  sparse::block_sparse_attention(pb.q, pb.k, pb.v, pb.o, mask, p);
  const double dens = mask.density(true);
  report_compute(st, seconds, attention_flops(s) * dens);
  st.counters["density"] = dens;
  report_accuracy(st, ref, seconds, pb.o, p.lse);
}

const bool registered = [] {
  for (int d : {5, 10, 20})
    add("sparse.block/S1/f32/d" + std::to_string(d),
        [d](benchmark::State& st) { run_block_density(st, d / 100.0); });
  add_quick("^sparse\\.block/S1/f32/d10$");
  return true;
}();

}  // namespace
}  // namespace attend::bench
