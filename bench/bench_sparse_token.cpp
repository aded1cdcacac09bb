// Token-level and hierarchical sparse attention against dense attention at the same shape:
//   sparse.topk/S2/{f32,bf16}/k2048         exact top-k per query head (topk_attention)
//   sparse.topk/S2/f32/k2048/group          exact top-k per KV group (softmax-sum vote)
//   sparse.topk_int8/S2/f32/k2048           top-k scored on int8 keys, exact attention
//   sparse.topk_int8/S2/f32/k2048/group     the same, one list per KV group (max score)
//   sparse.tokenselect/S2/f32/k2048         TokenSelect step (selection-cache miss; hit_ms)
//   sparse.hip/S2/f32/k2048                 HiP decode (mask per KV group)
//   sparse.hip/S2/f32/k2048/search_bf16     the same, searching a bf16 copy of the keys
//   sparse.hip/S2/f32/k2048/search_int8     the same, searching an int8 copy (int8_row_keys)
//   sparse.hip/H1/f32/{8K,16K,32K}          HiP prefill, k 512 (ratio = time / time at L/2)
//   sparse.hyper/H1/f32/{8K,16K,32K}        HyperAttention, causal
// Every row reports speedup over dense attention timed once per process per shape, recall
// (attention-mass recall: mean over rows of exp(lse_sparse - lse_dense)) and rel_err.
//
// Data: random q/k/v (uniform) with planted structure so that sparse attention is meaningful:
// each query head has a direction u_h that its queries lean towards, and a few "passages"
// (bumps of keys around layer-shared positions, strongest at the centre) are aligned with the
// directions of the heads that read them. Most of the softmax mass falls on the bumps, with
// locality (neighbouring keys matter too), as in retrieval-style long-context attention.
#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "attend/dense/attention.hpp"
#include "attend/sparse/gather.hpp"
#include "attend/sparse/hierarchical.hpp"
#include "attend/sparse/select/hyper.hpp"
#include "attend/sparse/select/tokenselect.hpp"
#include "attend/sparse/select/topk.hpp"
#include "attend/sparse/select/topk_int8.hpp"
#include "bench_common.hpp"

namespace attend::bench {
namespace {

/// How the planted structure looks.
struct plant {
  index_t bumps = 8;         // passages per sequence
  index_t half_width = 64;   // keys on each side of a passage centre
  float peak = 13.0f;        // score of a passage centre for an aligned query
  float query_lean = 8.0f;   // length of u_h added to every query
};

/// A problem with its dense reference (time, output, LSE), built once per process.
template <class KV>
struct problem {
  index_t batch = 1, seq_q = 0, seq_k = 0, heads_q = 0, heads_kv = 0, dim = 0;
  bool causal = false;
  std::vector<float> qbuf, obuf, lse_dense, o_dense;
  cache_vector<KV> kbuf, vbuf;  // huge-page backed, as an engine allocates its cache
  double dense_seconds = 0.0;

  view4<float> q() { return bshd(qbuf.data(), batch, seq_q, heads_q, dim); }
  view4<float> o() { return bshd(obuf.data(), batch, seq_q, heads_q, dim); }
  view4<KV> k() { return bshd(kbuf.data(), batch, seq_k, heads_kv, dim); }
  view4<KV> v() { return bshd(vbuf.data(), batch, seq_k, heads_kv, dim); }
  view3<float> lse_view(std::vector<float>& buf) {
    buf.resize(static_cast<std::size_t>(batch * heads_q * seq_q));
    return view3<float>::contiguous(buf.data(), {batch, heads_q, seq_q});
  }
  double kv_bytes_dense() const {
    return 2.0 * double(batch) * double(seq_k) * double(heads_kv) * double(dim) * sizeof(KV);
  }
};

template <class KV>
void build(problem<KV>& p, const plant& pl, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::normal_distribution<float> nrm(0.0f, 1.0f);
  const index_t d = p.dim, g = p.heads_q / p.heads_kv;
  std::vector<float> u(static_cast<std::size_t>(p.heads_q * d));
  for (index_t h = 0; h < p.heads_q; ++h) {
    float n2 = 0;
    for (index_t c = 0; c < d; ++c) n2 += (u[h * d + c] = nrm(rng)) * u[h * d + c];
    for (index_t c = 0; c < d; ++c) u[h * d + c] /= std::sqrt(n2);
  }
  p.qbuf.resize(static_cast<std::size_t>(p.batch * p.seq_q * p.heads_q * d));
  for (index_t i = 0; i < p.batch * p.seq_q; ++i)
    for (index_t h = 0; h < p.heads_q; ++h)
      for (index_t c = 0; c < d; ++c)
        p.qbuf[(i * p.heads_q + h) * d + c] = uni(rng) + pl.query_lean * u[h * d + c];
  // Keys: noise, plus passages along the sum of the group's directions.
  std::vector<float> kf(static_cast<std::size_t>(p.batch * p.seq_k * p.heads_kv * d));
  for (auto& x : kf) x = uni(rng);
  const float amp = pl.peak * std::sqrt(float(d)) / pl.query_lean;
  std::uniform_int_distribution<index_t> where(p.seq_k / 64, p.seq_k - p.seq_k / 64 - 1);
  std::uniform_real_distribution<float> strength(0.7f, 1.0f);
  for (index_t b = 0; b < p.batch; ++b)
    for (index_t m = 0; m < pl.bumps; ++m) {
      const index_t c0 = where(rng);
      const float a = strength(rng) * amp;
      for (index_t j = std::max<index_t>(0, c0 - pl.half_width);
           j <= std::min(p.seq_k - 1, c0 + pl.half_width); ++j) {
        const float prof = a * (1.0f - float(std::abs(j - c0)) / float(pl.half_width + 1));
        for (index_t hk = 0; hk < p.heads_kv; ++hk) {
          float* row = kf.data() + ((b * p.seq_k + j) * p.heads_kv + hk) * d;
          for (index_t h = hk * g; h < (hk + 1) * g; ++h)
            for (index_t c = 0; c < d; ++c) row[c] += prof * u[h * d + c];
        }
      }
    }
  p.kbuf.resize(kf.size());
  for (std::size_t i = 0; i < kf.size(); ++i) p.kbuf[i] = from_float<KV>(kf[i]);
  p.vbuf = random_buffer<KV, huge_page_allocator<KV>>(kf.size(), seed + 7);
  p.obuf.assign(p.qbuf.size(), 0.0f);
}

/// The dense reference of a problem: median time (same process) and its output and LSE.
template <class KV>
void dense_reference(problem<KV>& p, int reps) {
  attention_params ap;
  ap.causal = p.causal;
  workspace ws;
  ap.scratch = &ws;
  p.o_dense.assign(p.obuf.size(), 0.0f);
  ap.lse = p.lse_view(p.lse_dense);
  const auto od = bshd(p.o_dense.data(), p.batch, p.seq_q, p.heads_q, p.dim);
  attention(p.q(), p.k(), p.v(), od, ap);  // warm-up and the reference output
  ap.lse = {};
  p.dense_seconds = median_seconds(reps, [&] { attention(p.q(), p.k(), p.v(), p.o(), ap); });
}

/// Problems are cached per (shape, type, length): dense is timed once per process per shape.
template <class KV>
problem<KV>& cached(const std::string& key, index_t seq_q, index_t seq_k, index_t hq, index_t hkv,
                    bool causal, const plant& pl, int dense_reps) {
  static std::map<std::string, std::unique_ptr<problem<KV>>> cache;
  auto& slot = cache[key];
  if (!slot) {
    slot = std::make_unique<problem<KV>>();
    problem<KV>& p = *slot;
    p.seq_q = seq_q;
    p.seq_k = seq_k;
    p.heads_q = hq;
    p.heads_kv = hkv;
    p.dim = 128;
    p.causal = causal;
    build(p, pl, 11);
    dense_reference(p, dense_reps);
  }
  return *slot;
}

template <class KV>
problem<KV>& s2_problem() {
  const shape s = shapes().at("S2");
  return cached<KV>(std::string("S2/") + dtype_name<KV>(), s.seq_q, s.seq_k, s.heads_q,
                    s.heads_kv, false, plant{}, 7);
}

/// Accuracy counters of a sparse output against the problem's dense reference.
template <class KV>
void report_accuracy(benchmark::State& st, problem<KV>& p, const std::vector<float>& lse) {
  double recall = 0.0, num = 0.0, den = 0.0;
  index_t rows = 0;
  for (std::size_t r = 0; r < lse.size(); ++r) {
    if (!std::isfinite(p.lse_dense[r])) continue;
    recall += std::min(1.0, std::exp(double(lse[r]) - double(p.lse_dense[r])));
    ++rows;
  }
  for (std::size_t i = 0; i < p.obuf.size(); ++i) {
    const double e = p.o_dense[i], a = p.obuf[i];
    num += (a - e) * (a - e);
    den += e * e;
  }
  st.counters["recall"] = rows ? recall / double(rows) : 1.0;
  st.counters["rel_err"] = den > 0 ? std::sqrt(num / den) : 0.0;
}

template <class KV>
double selected_bytes(const problem<KV>& p, const sparse::token_list_buffer& lists, index_t extra) {
  double keys = 0;
  for (index_t b = 0; b < lists.batch(); ++b)
    for (index_t o = 0; o < lists.owners(); ++o)
      for (index_t t = 0; t < lists.tiles(); ++t) keys += double(lists.count(b, o, t) + extra);
  const double per_owner_heads =
      lists.owner() == sparse::list_owner::q_head ? 1.0
      : lists.owner() == sparse::list_owner::kv_head ? 1.0 : double(p.heads_kv);
  return keys * per_owner_heads * 2.0 * double(p.dim) * sizeof(KV);
}

/// select_ms: the median time of the selection alone (the rest of a row's time is attention).
void report_selection(benchmark::State& st, double seconds) {
  st.counters["select_ms"] = seconds * 1e3;
}

// ---- exact top-k ------------------------------------------------------------------------

template <class KV>
void run_topk(benchmark::State& st, sparse::list_owner owner) {
  problem<KV>& p = s2_problem<KV>();
  sparse::topk_params tp;
  tp.k = 2048;
  tp.owner = owner;
  workspace sel, gat;
  tp.scratch = &sel;
  sparse::token_list_buffer lists;
  std::vector<float> lse;
  // One call: the selection's scores are reused as the listed keys' logits (one query per
  // tile), so attention reads only their V rows.
  auto run = [&](const view3<float>& l) {
    sparse::topk_attention(p.q(), p.k(), p.v(), p.o(), lists, tp, l, &gat);
  };
  run(p.lse_view(lse));
  report_accuracy(st, p, lse);
  const double seconds = timed_loop(st, [&] { run({}); });
  report_selection(st, median_seconds(9, [&] { sparse::topk_select(p.q(), p.k(), lists, tp); }));
  const double bytes = p.kv_bytes_dense() / 2 + selected_bytes(p, lists, 0) / 2;
  report_bandwidth(st, seconds, bytes, 0.0);
  st.counters["speedup"] = p.dense_seconds / seconds;
  st.counters["dense_ms"] = p.dense_seconds * 1e3;
}

// ---- int8-key top-k ---------------------------------------------------------------------

/// The int8 copy of S2's keys, built once (it is kept alongside the cache, not per step).
sparse::int8_keys& s2_int8_keys() {
  static std::unique_ptr<sparse::int8_keys> keys;
  if (!keys) {
    problem<float>& p = s2_problem<float>();
    keys = std::make_unique<sparse::int8_keys>(p.batch, p.seq_k, p.heads_kv, p.dim);
    keys->store(p.k());
  }
  return *keys;
}

/// int8-key top-k with one list per query head, or one per KV group (heads combined by their
/// maximum score: the union a group's attention gathers shrinks to k keys). mass_vs_exact is
/// always against the exact per-head top-k.
void run_topk_int8(benchmark::State& st, sparse::list_owner owner) {
  problem<float>& p = s2_problem<float>();
  sparse::int8_keys& keys = s2_int8_keys();
  sparse::topk_params exact;
  exact.k = 2048;
  sparse::topk_params tp = exact;
  tp.owner = owner;
  tp.reduce = sparse::head_reduce::max_score;
  workspace sel, gat;
  tp.scratch = exact.scratch = &sel;
  sparse::token_list_buffer lists;
  std::vector<float> lse, lse_exact;
  // The exact top-k's mass, for recall relative to exact selection.
  sparse::topk_select(p.q(), p.k(), lists, exact);
  sparse::gather_attention(p.q(), p.k(), p.v(), p.o(), lists.view(),
                           exact.gather(p.lse_view(lse_exact), &gat));
  auto run = [&](const view3<float>& l) {
    sparse::topk_int8_select(p.q(), keys, lists, tp);
    sparse::gather_attention(p.q(), p.k(), p.v(), p.o(), lists.view(), tp.gather(l, &gat));
  };
  run(p.lse_view(lse));
  report_accuracy(st, p, lse);
  double ratio = 0.0;
  for (std::size_t r = 0; r < lse.size(); ++r)
    ratio += std::exp(double(lse[r]) - double(lse_exact[r])) / double(lse.size());
  st.counters["mass_vs_exact"] = ratio;
  const double seconds = timed_loop(st, [&] { run({}); });
  report_selection(st,
                   median_seconds(9, [&] { sparse::topk_int8_select(p.q(), keys, lists, tp); }));
  const double bytes = keys.scan_bytes(p.seq_k) * p.batch + selected_bytes(p, lists, 0);
  report_bandwidth(st, seconds, bytes, 0.0);
  st.counters["speedup"] = p.dense_seconds / seconds;
  st.counters["dense_ms"] = p.dense_seconds * 1e3;
}

// ---- TokenSelect ------------------------------------------------------------------------

void run_tokenselect(benchmark::State& st) {
  problem<float>& p = s2_problem<float>();
  sparse::tokenselect_params tp;  // reference defaults: top_k 2048, n_init 128, n_local 512
  sparse::tokenselect ts(tp);
  std::vector<float> lse;
  ts.attend(p.q(), p.k(), p.v(), p.o(), p.lse_view(lse));
  report_accuracy(st, p, lse);
  // A selection-cache miss per step (the cost of selecting); hits are reported as hit_ms.
  const double seconds = timed_loop(st, [&] {
    ts.reset();
    ts.attend(p.q(), p.k(), p.v(), p.o());
  });
  const double hit = median_seconds(9, [&] { ts.attend(p.q(), p.k(), p.v(), p.o()); });
  const double bytes = p.kv_bytes_dense() / 2 +
                       selected_bytes(p, ts.lists(), tp.n_init + tp.n_local);
  report_bandwidth(st, seconds, bytes, 0.0);
  st.counters["speedup"] = p.dense_seconds / seconds;
  st.counters["hit_ms"] = hit * 1e3;
  st.counters["hit_speedup"] = p.dense_seconds / hit;
  st.counters["dense_ms"] = p.dense_seconds * 1e3;
}

// ---- HiP ----------------------------------------------------------------------------------

/// A bf16 copy of S2's keys, built once. HiP's search is a gather of scattered representative
/// rows, bound by rows per second rather than bytes; a copy with half the bytes per row kept
/// beside the cache (as int8 top-k keeps its int8 copy) makes it faster, while attention still
/// reads the f32 cache.
view4<const bf16> s2_bf16_keys() {
  static cache_vector<bf16> copy;
  problem<float>& p = s2_problem<float>();
  if (copy.empty()) {
    copy.resize(p.kbuf.size());
    for (std::size_t i = 0; i < copy.size(); ++i) copy[i] = from_float<bf16>(p.kbuf[i]);
  }
  return bshd(copy.data(), p.batch, p.seq_k, p.heads_kv, p.dim);
}

/// An int8 copy of S2's keys, one row per token (HiP's search copy), built once.
const sparse::int8_row_keys& s2_int8_row_keys() {
  static sparse::int8_row_keys copy;
  problem<float>& p = s2_problem<float>();
  if (copy.batch() == 0) {
    copy.reshape(p.batch, p.seq_k, p.heads_kv, p.dim);
    copy.store(p.k());
  }
  return copy;
}

/// What HiP's decode search reads: the f32 cache itself, or a copy kept beside it.
enum class search_keys { cache, bf16_copy, int8_copy };

/// HiP decode; the search reads `keys`, attention the f32 cache.
void run_hip_decode(benchmark::State& st, search_keys keys) {
  problem<float>& p = s2_problem<float>();
  sparse::hip_params hp;
  hp.k = 2048;
  hp.block_q = 1;
  hp.owner = sparse::list_owner::kv_head;  // one mask per KV group (heads scored together)
  workspace sel, gat;
  hp.scratch = &sel;
  sparse::token_list_buffer lists;
  std::vector<float> lse;
  auto select = [&] {
    switch (keys) {
      case search_keys::cache: sparse::hip_select(p.q(), p.k(), lists, hp); break;
      case search_keys::bf16_copy: sparse::hip_select(p.q(), s2_bf16_keys(), lists, hp); break;
      case search_keys::int8_copy: sparse::hip_select(p.q(), s2_int8_row_keys(), lists, hp); break;
    }
  };
  select();  // builds the copy outside the timed runs
  auto run = [&](const view3<float>& l) {
    select();
    sparse::gather_attention(p.q(), p.k(), p.v(), p.o(), lists.view(), hp.gather(l, &gat));
  };
  run(p.lse_view(lse));
  report_accuracy(st, p, lse);
  const double seconds = timed_loop(st, [&] { run({}); });
  report_selection(st, median_seconds(9, select));
  report_bandwidth(st, seconds, selected_bytes(p, lists, hp.window + hp.sinks), 0.0);
  st.counters["speedup"] = p.dense_seconds / seconds;
  st.counters["dense_ms"] = p.dense_seconds * 1e3;
}

/// H1: causal self-attention, 8 query / 2 KV heads, planted passages fewer and narrower than
/// S2's (HiP's budget is 512 keys).
problem<float>& h1_problem(index_t len) {
  plant pl;
  pl.bumps = 4;
  pl.half_width = 48;
  return cached<float>("H1/" + std::to_string(len), len, len, 8, 2, true, pl,
                       len >= 32768 ? 1 : 2);
}

/// Timed runs per H1 row at least: the per-doubling ratio divides two medians.
constexpr int h1_samples = 5;

/// Median seconds of each H1 row at each length, for the time ratio per doubling.
std::map<std::string, double>& h1_times() {
  static std::map<std::string, double> t;
  return t;
}

void report_h1(benchmark::State& st, problem<float>& p, const std::string& family, index_t len,
               double seconds, const std::vector<float>& lse) {
  report_accuracy(st, p, lse);
  report_compute(st, seconds, 0.0);
  st.counters["speedup"] = p.dense_seconds / seconds;
  st.counters["dense_ms"] = p.dense_seconds * 1e3;
  h1_times()[family + std::to_string(len)] = seconds;
  const auto half = h1_times().find(family + std::to_string(len / 2));
  if (half != h1_times().end()) st.counters["ratio"] = seconds / half->second;
}

void run_hip_prefill(benchmark::State& st, index_t len) {
  problem<float>& p = h1_problem(len);
  sparse::hip_params hp;  // reference defaults: k 512, block_q 32, block_k 2, window 128
  workspace sel, gat;
  hp.scratch = &sel;
  sparse::token_list_buffer lists;
  std::vector<float> lse;
  auto run = [&](const view3<float>& l) {
    sparse::hip_select(p.q(), p.k(), lists, hp);
    sparse::gather_attention(p.q(), p.k(), p.v(), p.o(), lists.view(), hp.gather(l, &gat));
  };
  run(p.lse_view(lse));
  report_h1(st, p, "hip", len, timed_loop(st, [&] { run({}); }, h1_samples), lse);
}

void run_hyper(benchmark::State& st, index_t len) {
  problem<float>& p = h1_problem(len);
  sparse::hyper_params hp;  // reference defaults: 7 projections, block 256, sample 256, 4096
  std::vector<float> lse;
  hp.lse = p.lse_view(lse);
  sparse::hyper_attention(p.q(), p.k(), p.v(), p.o(), hp);
  hp.lse = {};
  report_h1(st, p, "hyper", len,
            timed_loop(st, [&] { sparse::hyper_attention(p.q(), p.k(), p.v(), p.o(), hp); },
                       h1_samples),
            lse);
}

const bool registered = [] {
  add("sparse.topk/S2/f32/k2048", [](benchmark::State& st) {
    run_topk<float>(st, sparse::list_owner::q_head);
  });
  add("sparse.topk/S2/bf16/k2048", [](benchmark::State& st) {
    run_topk<bf16>(st, sparse::list_owner::q_head);
  });
  add("sparse.topk/S2/f32/k2048/group", [](benchmark::State& st) {
    run_topk<float>(st, sparse::list_owner::kv_head);
  });
  add("sparse.topk_int8/S2/f32/k2048", [](benchmark::State& st) {
    run_topk_int8(st, sparse::list_owner::q_head);
  });
  add("sparse.topk_int8/S2/f32/k2048/group", [](benchmark::State& st) {
    run_topk_int8(st, sparse::list_owner::kv_head);
  });
  add("sparse.tokenselect/S2/f32/k2048", run_tokenselect);
  add("sparse.hip/S2/f32/k2048", [](benchmark::State& st) { run_hip_decode(st, search_keys::cache); });
  add("sparse.hip/S2/f32/k2048/search_bf16",
      [](benchmark::State& st) { run_hip_decode(st, search_keys::bf16_copy); });
  add("sparse.hip/S2/f32/k2048/search_int8",
      [](benchmark::State& st) { run_hip_decode(st, search_keys::int8_copy); });
  for (index_t len : {8192, 16384, 32768}) {
    const std::string tag = std::to_string(len / 1024) + "K";
    add("sparse.hip/H1/f32/" + tag, [len](benchmark::State& st) { run_hip_prefill(st, len); });
  }
  for (index_t len : {8192, 16384, 32768}) {
    const std::string tag = std::to_string(len / 1024) + "K";
    add("sparse.hyper/H1/f32/" + tag, [len](benchmark::State& st) { run_hyper(st, len); });
  }
  add_quick("^sparse\\.topk/S2/f32/k2048/real_time");
  return true;
}();

}  // namespace
}  // namespace attend::bench
