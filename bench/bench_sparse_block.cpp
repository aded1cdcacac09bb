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
#include <map>
#include <memory>
#include <mutex>
#include <random>

#include "attend/dense/attention.hpp"
#include "attend/sparse/accuracy.hpp"
#include "attend/sparse/block_sparse.hpp"
#include "attend/sparse/select/flexprefill.hpp"
#include "attend/sparse/select/lowbit.hpp"
#include "attend/sparse/select/minference.hpp"
#include "attend/sparse/select/moba.hpp"
#include "attend/sparse/select/proxy.hpp"
#include "attend/sparse/select/quest.hpp"
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
    p.lse = lse_view();
    attention(pb.q, pb.k, pb.v, ov, p);  // the reference outputs; also the warm-up
    p.lse = {};
    seconds = median_seconds(reps, [&] { attention(pb.q, pb.k, pb.v, ov, p); });
  }
  view3<float> lse_view() {
    return view3<float>::contiguous(lse.data(), {pb.s.batch, pb.s.heads_q, pb.s.seq_q});
  }
  view4<float> o_view() { return bshd(o.data(), pb.s.batch, pb.s.seq_q, pb.s.heads_q, pb.s.dim); }

  static dense_reference& get(const std::string& name, int reps) {
    static std::map<std::string, std::unique_ptr<dense_reference>> cached;
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    auto& slot = cached[name];
    if (!slot) slot = std::make_unique<dense_reference>(shapes().at(name), reps);
    return *slot;
  }
};

dense_reference<float>& dense_s1() { return dense_reference<float>::get("S1", 3); }
template <class KV>
dense_reference<KV>& dense_s2() {
  return dense_reference<KV>::get("S2", 15);
}

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

/// A selector row: per iteration, select (timed) then block_sparse_attention (timed); speedup
/// over dense counts both.
template <class Select>
void run_selector(benchmark::State& st, Select&& select) {
  auto& ref = dense_s1();
  const shape& s = ref.pb.s;
  auto& pb = ref.pb;
  attention_params p;
  p.causal = true;
  workspace ws;
  p.scratch = &ws;
  std::vector<double> t_sel, t_att;
  sparse::block_mask mask;
  const double seconds = timed_loop(st, [&] {
    const auto a = std::chrono::steady_clock::now();
    mask = select(pb);
    const auto b = std::chrono::steady_clock::now();
    sparse::block_sparse_attention(pb.q, pb.k, pb.v, pb.o, mask, p);
    const auto c = std::chrono::steady_clock::now();
    t_sel.push_back(std::chrono::duration<double>(b - a).count());
    t_att.push_back(std::chrono::duration<double>(c - b).count());
  });
  auto median = [](std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  std::vector<float> lse(ref.lse.size());
  p.lse = view3<float>::contiguous(lse.data(), {s.batch, s.heads_q, s.seq_q});
  sparse::block_sparse_attention(pb.q, pb.k, pb.v, pb.o, mask, p);
  const double dens = mask.density(true);
  report_compute(st, seconds, attention_flops(s) * dens);
  st.counters["density"] = dens;
  st.counters["select_ms"] = median(t_sel) * 1e3;
  st.counters["attend_ms"] = median(t_att) * 1e3;
  st.counters["select_pct"] = 100.0 * median(t_sel) / median(t_att);
  report_accuracy(st, ref, seconds, pb.o, p.lse);
}

/// Quest on S2: metadata built once (it is kept incrementally during decoding); per iteration
/// the page selection and the attention over the selected pages.
template <class KV>
void run_quest(benchmark::State& st, index_t budget, bool shared) {
  auto& ref = dense_s2<KV>();
  const shape& s = ref.pb.s;
  auto& pb = ref.pb;
  sparse::page_metadata<bf16> meta(s.batch, s.heads_kv, s.dim, s.seq_k, 16);
  meta.update(view4<const KV>(pb.k), s.seq_k);
  attention_params p;
  workspace ws;
  p.scratch = &ws;
  sparse::quest_params qp{budget, shared};
  std::vector<double> t_sel, t_att;
  sparse::block_mask mask;
  const view4<const float> q = pb.q;
  const double seconds = timed_loop(st, [&] {
    const auto a = std::chrono::steady_clock::now();
    mask = sparse::quest_select(q, s.seq_k, meta, qp);
    const auto b = std::chrono::steady_clock::now();
    sparse::block_sparse_attention(pb.q, pb.k, pb.v, pb.o, mask, p);
    const auto c = std::chrono::steady_clock::now();
    t_sel.push_back(std::chrono::duration<double>(b - a).count());
    t_att.push_back(std::chrono::duration<double>(c - b).count());
  });
  auto median = [](std::vector<double> v) {
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  std::vector<float> lse(ref.lse.size());
  p.lse = view3<float>::contiguous(lse.data(), {s.batch, s.heads_q, s.seq_q});
  sparse::block_sparse_attention(pb.q, pb.k, pb.v, pb.o, mask, p);
  // Bytes: metadata of every page (bf16 max + min per KV head) + the selected K/V rows.
  const double rows = double(mask.nnz()) * 16;
  const double bytes = double(s.heads_kv) * double(s.seq_k / 16) * 2 * s.dim * 2 +
                       rows * 2 * s.dim * sizeof(KV);
  report_bandwidth(st, seconds, bytes, 4.0 * s.heads_q * budget * s.dim);
  st.counters["select_ms"] = median(t_sel) * 1e3;
  st.counters["attend_ms"] = median(t_att) * 1e3;
  report_accuracy(st, ref, seconds, pb.o, p.lse);
}

const bool registered = [] {
  for (int d : {5, 10, 20})
    add("sparse.block/S1/f32/d" + std::to_string(d),
        [d](benchmark::State& st) { run_block_density(st, d / 100.0); });
  for (index_t budget : {2048, 4096})
    for (bool shared : {false, true}) {
      const std::string suffix = "/b" + std::to_string(budget) + (shared ? "/kvshared" : "");
      add("sparse.quest/S2/f32" + suffix,
          [=](benchmark::State& st) { run_quest<float>(st, budget, shared); });
      add("sparse.quest/S2/bf16" + suffix,
          [=](benchmark::State& st) { run_quest<bf16>(st, budget, shared); });
    }
  using P = sparse_problem<float>;
  add("sparse.moba/S1/f32", [](benchmark::State& st) {
    run_selector(st, [](P& pb) { return sparse::moba_select(view4<const float>(pb.q), view4<const float>(pb.k)); });
  });
  add("sparse.flexprefill/S1/f32", [](benchmark::State& st) {
    run_selector(st, [](P& pb) {
      return sparse::flexprefill_select(view4<const float>(pb.q), view4<const float>(pb.k),
                                        view4<const float>(pb.v));
    });
  });
  add("sparse.minference/S1/f32", [](benchmark::State& st) {
    run_selector(st, [](P& pb) {
      return sparse::minference_select(view4<const float>(pb.q), view4<const float>(pb.k),
                                       view4<const float>(pb.v));
    });
  });
  add("sparse.proxy/S1/f32", [](benchmark::State& st) {
    run_selector(st, [](P& pb) {
      return sparse::proxy_select(view4<const float>(pb.q), view4<const float>(pb.k),
                                  view4<const float>(pb.v));
    });
  });
  add("sparse.lowbit/S1/f32", [](benchmark::State& st) {
    run_selector(st, [](P& pb) {
      return sparse::lowbit_select(view4<const float>(pb.q), view4<const float>(pb.k),
                                   view4<const float>(pb.v));
    });
  });
  add_quick("^sparse\\.block/S1/f32/d10/");
  add_quick("^sparse\\.quest/S2/bf16/b2048/");
  add_quick("^sparse\\.flexprefill/S1/f32/");
  return true;
}();

}  // namespace
}  // namespace attend::bench
