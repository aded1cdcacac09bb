// Context parallelism over MPI: one KV cache split by length across the ranks. Every rank holds
// only its shard of the keys and values, computes the decode queries' partial attention (o, lse)
// over that shard with attend::attention, and an MPI reduction whose operator is
// attend::merge_states combines the partial states into attention over the whole cache. Rank 0
// checks the result against single-process attention over the whole cache and prints both.
//
//   mpiexec -np 2 context_parallel_mpi [tokens=8192] [queries=4]
//
// The queries are the last `queries` tokens of the sequence (multi-token decode), so attention
// is causal: every shard but the last is entirely visible to every query, the last shard is
// masked causally (bottom-right aligned within the shard, which is the global alignment too).
// Per-head sink logits join the softmax denominator exactly once, so only rank 0 passes them.
#include <mpi.h>

#include <attend/attend.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

using attend::index_t;

constexpr index_t heads_q = 8, heads_kv = 2, dim = 64;

/// Value of element `i` of tensor `tensor`, uniform in [-1, 1), from a counter-based hash: any
/// rank can generate any part of the cache without generating the rest.
float value_at(std::uint64_t tensor, std::uint64_t i) {
  std::uint64_t z = (tensor << 56) + i + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return float(z >> 40) / float(1 << 23) - 1.0f;
}

/// Tokens [begin, end) of the K (tensor 1) or V (tensor 2) cache, [tokens, heads_kv, dim].
std::vector<float> cache_rows(std::uint64_t tensor, index_t begin, index_t end) {
  std::vector<float> rows(std::size_t((end - begin) * heads_kv * dim));
  for (std::size_t i = 0; i < rows.size(); ++i)
    rows[i] = value_at(tensor, std::uint64_t(begin * heads_kv * dim) + i);
  return rows;
}

/// A partial state travels as one buffer: o [1, queries, heads_q, dim], then lse [1, heads_q,
/// queries]. The reduction operator reads the sizes from here.
index_t g_queries = 0;

attend::view4<float> o_part(float* buf) { return attend::bshd(buf, 1, g_queries, heads_q, dim); }
attend::view3<float> lse_part(float* buf) {
  return attend::tensor_view<float, 3>::contiguous(buf + g_queries * heads_q * dim,
                                                   {1, heads_q, g_queries});
}

/// MPI reduction operator: inout = merge(in, inout). `in` holds the lower ranks' keys, so the
/// merge order follows the cache (the operator is registered non-commutative).
void merge_op(void* in, void* inout, int* count, MPI_Datatype*) {
  for (int c = 0; c < *count; ++c) {
    const index_t n = g_queries * heads_q * (dim + 1);
    float* a = static_cast<float*>(in) + c * n;
    float* b = static_cast<float*>(inout) + c * n;
    attend::merge_states(o_part(a), lse_part(a), o_part(b), lse_part(b), o_part(b), lse_part(b));
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const index_t tokens = argc > 1 ? std::atol(argv[1]) : 8192;
  const index_t queries = argc > 2 ? std::atol(argv[2]) : 4;
  g_queries = queries;
  const index_t last_shard = tokens - (ranks - 1) * tokens / ranks;
  if (queries < 1 || tokens / ranks < 1 || last_shard < queries) {
    if (rank == 0)
      std::fprintf(stderr, "need queries >= 1, tokens >= ranks and a last shard >= queries\n");
    MPI_Finalize();
    return 2;
  }

  // This rank's shard: tokens [begin, end) of the cache. The queries (the last tokens' query
  // vectors) and the sink logits are replicated.
  const index_t begin = rank * tokens / ranks, end = (rank + 1) * tokens / ranks;
  const std::vector<float> k = cache_rows(1, begin, end), v = cache_rows(2, begin, end);
  std::vector<float> q(std::size_t(queries * heads_q * dim)), sinks(heads_q);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = value_at(3, i);
  for (index_t h = 0; h < heads_q; ++h) sinks[h] = value_at(4, std::uint64_t(h));

  const index_t part_floats = queries * heads_q * (dim + 1);
  std::vector<float> part(static_cast<std::size_t>(part_floats)), merged(part.size());
  attend::attention_params p;
  p.causal = rank == ranks - 1;  // earlier shards lie wholly before every query
  if (rank == 0) p.sinks = attend::make_view<const float>(sinks.data(), heads_q);
  p.lse = lse_part(part.data());

  auto shard_attention = [&] {
    attend::attention(attend::bshd<const float>(q.data(), 1, queries, heads_q, dim),
                      attend::bshd<const float>(k.data(), 1, end - begin, heads_kv, dim),
                      attend::bshd<const float>(v.data(), 1, end - begin, heads_kv, dim),
                      o_part(part.data()), p);
  };
  shard_attention();  // warm-up (threads, first touch); the timed call below gives the result
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime();
  shard_attention();
  const double t1 = MPI_Wtime();
  MPI_Datatype state;
  MPI_Type_contiguous(int(part_floats), MPI_FLOAT, &state);
  MPI_Type_commit(&state);
  MPI_Op merge;
  MPI_Op_create(&merge_op, /*commute=*/0, &merge);
  MPI_Reduce(part.data(), merged.data(), 1, state, merge, 0, MPI_COMM_WORLD);
  const double t2 = MPI_Wtime();
  double shard_ms = (t1 - t0) * 1e3, slowest_ms = 0;
  MPI_Reduce(&shard_ms, &slowest_ms, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
  MPI_Op_free(&merge);
  MPI_Type_free(&state);

  int status = 0;
  if (rank == 0) {
    // Single-process attention over the whole cache, the same causal queries and sinks.
    const std::vector<float> k_all = cache_rows(1, 0, tokens), v_all = cache_rows(2, 0, tokens);
    std::vector<float> whole(merged.size());
    attend::attention_params pw;
    pw.causal = true;
    pw.sinks = attend::make_view<const float>(sinks.data(), heads_q);
    pw.lse = lse_part(whole.data());
    const double t3 = MPI_Wtime();
    attend::attention(attend::bshd<const float>(q.data(), 1, queries, heads_q, dim),
                      attend::bshd<const float>(k_all.data(), 1, tokens, heads_kv, dim),
                      attend::bshd<const float>(v_all.data(), 1, tokens, heads_kv, dim),
                      o_part(whole.data()), pw);
    const double whole_ms = (MPI_Wtime() - t3) * 1e3;

    double worst_o = 0, worst_lse = 0;
    const index_t n_o = queries * heads_q * dim;
    for (index_t i = 0; i < part_floats; ++i) {
      const double d = std::abs(double(merged[i]) - double(whole[i]));
      (i < n_o ? worst_o : worst_lse) = std::max(i < n_o ? worst_o : worst_lse, d);
    }
    std::printf("context-parallel decode: %ld cached tokens split over %d MPI ranks "
                "(%ld..%ld tokens each), %ld causal queries, %d query / %d kv heads, dim %ld\n",
                long(tokens), ranks, long(tokens / ranks), long((tokens + ranks - 1) / ranks),
                long(queries), int(heads_q), int(heads_kv), long(dim));
    std::printf("  slowest shard %.3f ms + merge reduction %.3f ms; "
                "one process, whole cache %.3f ms\n",
                slowest_ms, (t2 - t1) * 1e3, whole_ms);
    std::printf("  lse[head 0, query 0]: merged %.6f, whole %.6f\n",
                double(lse_part(merged.data())(0, 0, 0)), double(lse_part(whole.data())(0, 0, 0)));
    std::printf("  max |o_merged - o_whole| = %.3g, max |lse_merged - lse_whole| = %.3g: %s\n",
                worst_o, worst_lse, worst_o < 1e-5 && worst_lse < 1e-4 ? "equal" : "DIFFERENT");
    status = worst_o < 1e-5 && worst_lse < 1e-4 ? 0 : 1;
  }
  MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Finalize();
  return status;
}
