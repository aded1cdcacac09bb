// ProxyAttn (Wang et al., 2025; card 9, [unverified vs code]): compress along the head axis
// instead of the sequence. The query heads of a GQA group are averaged into one proxy head that
// shares the group's keys; token-level proxy attention for a sample of queries (the last
// `sample_queries` of every query block) against all keys, max-pooled over the sampled rows
// and over each key block, ranks key blocks for the whole group
//   A_g = maxpool(softmax(Q_g K_g^T / sqrt(d)))   (block level, shared by the group's heads).
// Heads differ in how many blocks they need ("block-aware dynamic budget"): per head and query
// block, the head's own attention row of the block's last query, sum-pooled over key blocks,
// gives n = the fewest blocks holding gamma of that row's mass, and the head takes the n blocks
// ranked highest by A_g (the first block and the diagonal block always). Cost: the proxy rows
// (sample_queries per block per KV group) plus one row per block per head, against all keys.
// Block size 128 and gamma 0.9 follow FlexPrefill's defaults; the query samples and the forced
// sink / diagonal blocks are this implementation's choices where the paper leaves them open.
#ifndef ATTEND_SPARSE_SELECT_PROXY_HPP_
#define ATTEND_SPARSE_SELECT_PROXY_HPP_

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"
#include "../../dense/attention.hpp"
#include "../block_mask.hpp"
#include "common.hpp"
#include "scores.hpp"

namespace attend::sparse {

/// ProxyAttn parameters.
struct proxy_params {
  index_t block_size = 128;     // query and key block
  index_t sample_queries = 8;   // proxy rows per query block (its last queries)
  double gamma = 0.9;           // per-head budget: mass of its own last-query rows
  index_t min_blocks = 2;       // per head and query block, forced blocks included
};

namespace detail {

/// Causal mask for gathered query rows: the row block's query q (an index into a gathered list)
/// sits at pos[q]; positions ascend along the list.
struct gathered_causal_mask {
  static constexpr bool is_identity = false;
  const index_t* pos = nullptr;

  std::pair<index_t, index_t> key_range(const engine::row_block& rb, index_t lo,
                                        index_t hi) const noexcept {
    return {lo, std::max(lo, std::min(hi, pos[rb.query0 + rb.queries - 1] + 1))};
  }
  engine::tile_kind classify(const engine::row_block& rb, index_t kmin,
                             index_t kmax) const noexcept {
    if (kmin > pos[rb.query0 + rb.queries - 1]) return engine::tile_kind::empty;
    return kmax <= pos[rb.query0] ? engine::tile_kind::full : engine::tile_kind::partial;
  }
  bool keep(const engine::row_block&, index_t, index_t query, index_t, index_t kpos) const noexcept {
    return kpos <= pos[query];
  }
};

}  // namespace detail

/// ProxyAttn selection. q [batch, seq_q, heads_q, dim] float; k, v [batch, seq_k, heads_kv,
/// dim]; causal, bottom-right aligned. Returns the mask {batch, heads_q, seq_q, seq_k,
/// block_size, block_size} (entries full; use params.causal).
template <class KV, class Arch = xsimd::default_arch>
block_mask proxy_select(const view4<const float>& q, const view4<const KV>& k,
                        const view4<const KV>& v, const proxy_params& pp = {}) {
  constexpr const char* op = "attend::sparse::proxy_select";
  attend::detail::check_tensor(op, "q", q);
  attend::detail::check_tensor(op, "k", k);
  attend::detail::check_tensor(op, "v", v);
  const index_t batch = q.extent(0), seq_q = q.extent(1), hq = q.extent(2), dim = q.extent(3);
  const index_t seq_k = k.extent(1), hkv = k.extent(2), dv = v.extent(3);
  ATTEND_CHECK(k.extent(0) == batch && k.extent(3) == dim && hq % hkv == 0 && seq_k >= seq_q &&
                   v.extent(0) == batch && v.extent(1) == seq_k && v.extent(2) == hkv,
               op, ": q ", attend::detail::shape_string(q), ", k ",
               attend::detail::shape_string(k), " and v ", attend::detail::shape_string(v),
               " do not match");
  ATTEND_CHECK(pp.block_size > 0 && pp.sample_queries > 0 && pp.gamma >= 0.0 &&
                   pp.gamma <= 1.0 && pp.min_blocks >= 0,
               op, ": need block_size > 0, sample_queries > 0, gamma in [0, 1], min_blocks >= 0");
  const index_t bs = pp.block_size, group = hq / hkv, off = seq_k - seq_q;
  const mask_geometry g{batch, hq, seq_q, seq_k, bs, bs};
  const index_t nq = g.q_blocks(), nk = g.k_blocks();
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const index_t max_rows = engine::max_rows_for(dim, dv);

  // The sampled queries (ascending positions) and their query blocks.
  std::vector<index_t> sample_pos, sample_block;
  for (index_t qb = 0; qb < nq; ++qb) {
    const auto [i0, i1] = g.q_range(qb);
    for (index_t i = std::max(i0, i1 - pp.sample_queries); i < i1; ++i) {
      sample_pos.push_back(off + i);
      sample_block.push_back(qb);
    }
  }
  const index_t ns = static_cast<index_t>(sample_pos.size());

  // Workspace per thread: engine scratch, key-major scores [seq_k][ld], gathered query rows.
  using scratch_t = engine::scratch<Arch, KV>;
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t ldmax = (max_rows + w - 1) / w * w;
  const index_t ws_floats = scratch_t::floats(max_rows, dim, dv);
  const index_t s_floats = seq_k * ldmax + 2 * ldmax + max_rows * dim + 16;
  const int threads = static_cast<int>(
      std::min<index_t>(attend::detail::max_threads(), std::max(batch * hq, batch * hkv)));
  std::vector<std::vector<float>> wsbuf(static_cast<std::size_t>(threads),
                                        std::vector<float>(ws_floats + s_floats + 32));
  auto carve = [&](int t, float*& S, float*& tmp, float*& qs) {
    float* base = reinterpret_cast<float*>(
        (reinterpret_cast<std::uintptr_t>(wsbuf[t].data()) + 63) / 64 * 64);
    attend::detail::bump bump(base);
    const scratch_t ws = scratch_t::carve(bump, max_rows, dim, dv);
    S = base + bump.used();
    tmp = S + seq_k * ldmax;
    qs = tmp + 2 * ldmax;
    return ws;
  };
  // Key-major probabilities of `rows` gathered query rows (qs, positions pos[0, rows)) of KV
  // head hk: S[j * ld + r], j < kend; returns ld.
  auto gathered_softmax = [&](const scratch_t& ws, float* S, float* tmp, const float* qs,
                              const index_t* pos, index_t rows, index_t b, index_t hk) {
    const view4<const float> qv(qs, {batch, rows, hq, dim}, {0, dim, 0, 1});
    engine::row_block rb;
    rb.batch = b;
    rb.kv_head = hk;
    rb.group = group;
    rb.head0 = hk * group;
    rb.queries = rows;
    rb.pos0 = pos[0];
    const detail::gathered_causal_mask mask{pos};
    const index_t kend = pos[rows - 1] + 1;
    index_t ld = 0;
    attend::detail::dispatch_head_dims(dim, dim, [&](auto kdk, auto) {
      ld = select::keymajor_scores<Arch, decltype(kdk)::value>(qv, k, v, rb, mask, kend, scale,
                                                               ws, S);
    });
    select::keymajor_softmax<Arch>(S, kend, ld, tmp);
    return ld;
  };

  // 1. Proxy block importance per (batch, KV head): [nq][nk], max-pooled probabilities.
  std::vector<float> importance(static_cast<std::size_t>(batch * hkv * nq * nk), 0.0f);
  attend::detail::parallel_for(batch * hkv, threads, [&](index_t item, int t) {
    const index_t b = item / hkv, hk = item % hkv;
    float *S, *tmp, *qs;
    const scratch_t ws = carve(t, S, tmp, qs);
    float* imp = importance.data() + item * nq * nk;
    const float inv = 1.0f / static_cast<float>(group);
    for (index_t c0 = 0; c0 < ns; c0 += max_rows) {
      const index_t rows = std::min(max_rows, ns - c0);
      for (index_t r = 0; r < rows; ++r) {  // proxy query: the mean of the group's heads
        float* dst = qs + r * dim;
        std::fill(dst, dst + dim, 0.0f);
        const index_t i = sample_pos[c0 + r] - off;
        for (index_t h = hk * group; h < (hk + 1) * group; ++h)
          for (index_t d = 0; d < dim; ++d) dst[d] += q(b, i, h, d) * inv;
      }
      const index_t kend = sample_pos[c0 + rows - 1] + 1;
      const index_t ld = gathered_softmax(ws, S, tmp, qs, sample_pos.data() + c0, rows, b, hk);
      for (index_t kb = 0; kb * bs < kend; ++kb) {
        for (index_t r = 0; r < ld; r += w) {
          V mx(0.0f);
          for (index_t j = kb * bs; j < std::min(kend, (kb + 1) * bs); ++j)
            mx = xsimd::max(mx, V::load_aligned(S + j * ld + r));
          mx.store_aligned(tmp + r);
        }
        for (index_t r = 0; r < rows; ++r) {
          float& cell = imp[sample_block[c0 + r] * nk + kb];
          cell = std::max(cell, tmp[r]);
        }
      }
    }
  });

  // 2. Per head: budgets from its own last-query rows, blocks from the proxy ranking.
  std::vector<index_t> last_pos(static_cast<std::size_t>(nq));
  for (index_t qb = 0; qb < nq; ++qb) last_pos[qb] = off + g.q_range(qb).second - 1;
  block_mask_builder bld(g);
  struct picks {
    std::vector<float> mass, s;
    std::vector<index_t> pick, scratch;
  };
  std::vector<picks> pk(static_cast<std::size_t>(threads));
  for (auto& x : pk) {
    x.mass.resize(static_cast<std::size_t>(std::min(max_rows, nq) * nk));
    x.s.resize(static_cast<std::size_t>(nk));
    x.pick.resize(static_cast<std::size_t>(nk));
    x.scratch.resize(static_cast<std::size_t>(nk));
  }
  attend::detail::parallel_for(batch * hq, threads, [&](index_t item, int t) {
    const index_t b = item / hq, h = item % hq, hk = h / group;
    float *S, *tmp, *qs;
    const scratch_t ws = carve(t, S, tmp, qs);
    picks& P = pk[t];
    const float* imp = importance.data() + (b * hkv + hk) * nq * nk;
    for (index_t c0 = 0; c0 < nq; c0 += max_rows) {
      const index_t rows = std::min(max_rows, nq - c0);
      for (index_t r = 0; r < rows; ++r)
        std::copy_n(&q(b, last_pos[c0 + r] - off, h, 0), dim, qs + r * dim);
      const index_t kend = last_pos[c0 + rows - 1] + 1;
      const index_t ld = gathered_softmax(ws, S, tmp, qs, last_pos.data() + c0, rows, b, hk);
      for (index_t kb = 0; kb * bs < kend; ++kb) {
        for (index_t r = 0; r < ld; r += w) {
          V sum(0.0f);
          for (index_t j = kb * bs; j < std::min(kend, (kb + 1) * bs); ++j)
            sum += V::load_aligned(S + j * ld + r);
          sum.store_aligned(tmp + r);
        }
        for (index_t r = 0; r < rows; ++r) P.mass[r * nk + kb] = tmp[r];
      }
      for (index_t r = 0; r < rows; ++r) {
        const index_t qb = c0 + r;
        const auto [i0, i1] = g.q_range(qb);
        const index_t first_diag = (off + i0) / bs, lim = (off + i1 - 1) / bs;
        const index_t forced = 1 + (lim - first_diag + 1) - (first_diag == 0 ? 1 : 0);
        const index_t n = std::max(
            {select::mass_budget(P.mass.data() + r * nk, lim + 1, pp.gamma), pp.min_blocks,
             forced});
        float* s = P.s.data();
        std::copy(imp + qb * nk, imp + qb * nk + lim + 1, s);
        s[0] = std::numeric_limits<float>::infinity();
        for (index_t kb = first_diag; kb <= lim; ++kb)
          s[kb] = std::numeric_limits<float>::infinity();
        const index_t c = select::top_k(s, lim + 1, n, P.pick.data(), P.scratch.data());
        bld.add(g.row(b, h, qb), P.pick.data(), c);
      }
    }
  });
  return bld.build();
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_PROXY_HPP_
