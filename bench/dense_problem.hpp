// Buffers of one dense benchmark problem (q, k, v, o over the suite's shape), reused by every
// family that compares itself with dense attention at the same shape.
#ifndef ATTEND_BENCH_DENSE_PROBLEM_HPP_
#define ATTEND_BENCH_DENSE_PROBLEM_HPP_

#include <vector>

#include "attend/core/params.hpp"
#include "bench_common.hpp"

namespace attend::bench {

template <class KV>
struct dense_problem {
  shape s;
  std::vector<float> qbuf, obuf;
  cache_vector<KV> kbuf, vbuf;  // huge-page backed, as an engine allocates its cache
  std::vector<index_t> lens;  // DB only: ragged KV lengths
  view4<float> q, o;
  view4<KV> k, v;

  explicit dense_problem(const shape& sh, unsigned seed = 1) : s(sh) {
    qbuf = random_buffer<float>(std::size_t(s.batch * s.seq_q * s.heads_q * s.dim), seed);
    const auto kv_elems = std::size_t(s.batch * s.seq_k * s.heads_kv * s.dim);
    kbuf = random_buffer<KV, huge_page_allocator<KV>>(kv_elems, seed + 1);
    vbuf = random_buffer<KV, huge_page_allocator<KV>>(kv_elems, seed + 2);
    obuf.assign(qbuf.size(), 0.0f);
    q = bshd(qbuf.data(), s.batch, s.seq_q, s.heads_q, s.dim);
    o = bshd(obuf.data(), s.batch, s.seq_q, s.heads_q, s.dim);
    k = bshd(kbuf.data(), s.batch, s.seq_k, s.heads_kv, s.dim);
    v = bshd(vbuf.data(), s.batch, s.seq_k, s.heads_kv, s.dim);
    if (std::string(s.name) == "DB") lens = ragged_lengths(s.batch, 1024, s.seq_k);
  }

  attention_params params() const {
    attention_params p;
    p.causal = s.causal;
    if (!lens.empty()) p.kv_lens = make_view<const index_t>(lens.data(), s.batch);
    return p;
  }

  double tokens_read() const {
    if (lens.empty()) return double(s.batch) * s.seq_k;
    double t = 0;
    for (index_t l : lens) t += double(l);
    return t;
  }
  double kv_bytes() const {
    return bench::kv_bytes(index_t(tokens_read()), s.heads_kv, s.dim, sizeof(KV));
  }
  double flops() const {
    if (lens.empty()) return attention_flops(s);
    return 4.0 * s.heads_q * s.seq_q * tokens_read() * s.dim;
  }
};

}  // namespace attend::bench

#endif  // ATTEND_BENCH_DENSE_PROBLEM_HPP_
