// ProxyAttn (Wang et al., 2025; card 9, [unverified vs code]): compress along the head axis
// instead of the sequence. The query heads of a GQA group are averaged into one proxy head that
// shares the group's keys; token-level proxy attention for a sample of queries (the last
// `sample_queries` of every query block) against all keys, max-pooled over the sampled rows
// and over each key block, ranks key blocks for the whole group
//   A_g = maxpool(softmax(Q_g K_g^T / sqrt(d)))   (block level, shared by the group's heads).
// Heads differ in how many blocks they need ("block-aware dynamic budget"): per head and query
// block, the cheap estimate softmax(mean-pooled q_h . mean-pooled K^T / sqrt(d)) over the
// visible key blocks gives n = the fewest blocks holding gamma of its mass, and the head takes
// the n blocks ranked highest by A_g (the first block and the diagonal block always).
// Block size 128 and gamma 0.9 follow FlexPrefill's defaults; the query sample and the forced
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
  double gamma = 0.9;           // per-head cumulative budget on the pooled estimate
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
  const index_t ldk = select::padded_cols<Arch>(nk);
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

  // 1. Proxy block importance per (batch, KV head): [nq][nk].
  std::vector<float> importance(static_cast<std::size_t>(batch * hkv * nq * nk), 0.0f);
  using scratch_t = engine::scratch<Arch, KV>;
  const index_t ws_floats = scratch_t::floats(max_rows, dim, dv);
  {
    const index_t items = batch * hkv;
    const int threads = static_cast<int>(std::min<index_t>(attend::detail::max_threads(), items));
    struct buffers {
      std::vector<float> ws, s, qs;
    };
    std::vector<buffers> tb(static_cast<std::size_t>(threads));
    for (auto& t : tb) {
      t.ws.resize(static_cast<std::size_t>(ws_floats + 16));
      t.s.resize(static_cast<std::size_t>(std::min(max_rows, ns) * seq_k));
      t.qs.resize(static_cast<std::size_t>(ns * dim));
    }
    const detail::gathered_causal_mask mask{sample_pos.data()};
    attend::detail::parallel_for(items, threads, [&](index_t item, int t) {
      buffers& B = tb[t];
      const index_t b = item / hkv, hk = item % hkv;
      float* base = reinterpret_cast<float*>(
          (reinterpret_cast<std::uintptr_t>(B.ws.data()) + 63) / 64 * 64);
      attend::detail::bump bump(base);
      const scratch_t ws = scratch_t::carve(bump, max_rows, dim, dv);
      // Proxy queries: the mean of the group's query heads.
      const float inv = 1.0f / static_cast<float>(group);
      for (index_t r = 0; r < ns; ++r) {
        float* dst = B.qs.data() + r * dim;
        std::fill(dst, dst + dim, 0.0f);
        const index_t i = sample_pos[r] - off;
        for (index_t h = hk * group; h < (hk + 1) * group; ++h)
          for (index_t d = 0; d < dim; ++d) dst[d] += q(b, i, h, d) * inv;
      }
      const view4<const float> qv(B.qs.data(), {batch, ns, hq, dim}, {0, dim, 0, 1});
      float* imp = importance.data() + (b * hkv + hk) * nq * nk;
      for (index_t c0 = 0; c0 < ns; c0 += max_rows) {
        engine::row_block rb;
        rb.batch = b;
        rb.kv_head = hk;
        rb.group = group;
        rb.head0 = hk * group;
        rb.query0 = c0;
        rb.queries = std::min(max_rows, ns - c0);
        rb.pos0 = sample_pos[c0];
        const index_t kend = sample_pos[c0 + rb.queries - 1] + 1;
        attend::detail::dispatch_head_dims(dim, dim, [&](auto kdk, auto) {
          select::engine_scores<Arch, decltype(kdk)::value>(qv, k, v, rb, mask, kend, scale, ws,
                                                            B.s.data(), seq_k);
        });
        select::softmax_rows<Arch>(B.s.data(), rb.queries, kend, seq_k);
        for (index_t r = 0; r < rb.queries; ++r) {
          const float* a = B.s.data() + r * seq_k;
          float* row = imp + sample_block[c0 + r] * nk;
          for (index_t j0 = 0, kb = 0; j0 < kend; j0 += bs, ++kb) {
            float m = row[kb];
            for (index_t j = j0; j < std::min(kend, j0 + bs); ++j) m = std::max(m, a[j]);
            row[kb] = m;
          }
        }
      }
    });
  }

  // 2. Per head: pooled estimate -> budget; proxy ranking -> blocks.
  std::vector<float> kpool_t(static_cast<std::size_t>(batch * hkv * dim * ldk));
  {
    std::vector<float> pooled(static_cast<std::size_t>(nk * dim));
    for (index_t b = 0; b < batch; ++b)
      for (index_t h = 0; h < hkv; ++h) {
        select::pool_rows(view2<const KV>(k.matrix(b, h)), bs, select::pool_mode::mean,
                          pooled.data());
        select::pack_transposed(pooled.data(), dim, nk, dim,
                                kpool_t.data() + (b * hkv + h) * dim * ldk, ldk);
      }
  }
  block_mask_builder bld(g);
  const index_t items = batch * hq;
  const int threads = static_cast<int>(std::min<index_t>(attend::detail::max_threads(), items));
  struct buffers {
    std::vector<float> qpool, est, tmp;
    std::vector<index_t> pick, scratch;
  };
  std::vector<buffers> tb(static_cast<std::size_t>(threads));
  for (auto& t : tb) {
    t.qpool.resize(static_cast<std::size_t>(nq * dim));
    t.est.resize(static_cast<std::size_t>(nq * ldk));
    t.tmp.resize(static_cast<std::size_t>(nk));
    t.pick.resize(static_cast<std::size_t>(nk));
    t.scratch.resize(static_cast<std::size_t>(nk));
  }
  attend::detail::parallel_for(items, threads, [&](index_t item, int t) {
    buffers& B = tb[t];
    const index_t b = item / hq, h = item % hq, hk = h / group;
    select::pool_rows(view2<const float>(q.matrix(b, h)), bs, select::pool_mode::mean,
                      B.qpool.data());
    select::gemm_rows<Arch>(B.qpool.data(), dim, nq, kpool_t.data() + (b * hkv + hk) * dim * ldk,
                            ldk, ldk, dim, scale, B.est.data(), ldk);
    const float* imp = importance.data() + (b * hkv + hk) * nq * nk;
    for (index_t qb = 0; qb < nq; ++qb) {
      const auto [i0, i1] = g.q_range(qb);
      const index_t first_diag = (off + i0) / bs, lim = (off + i1 - 1) / bs;
      float* est = B.est.data() + qb * ldk;
      for (index_t kb = lim + 1; kb < nk; ++kb) est[kb] = -std::numeric_limits<float>::infinity();
      select::softmax(est, nk);
      const index_t forced = 1 + (lim - first_diag + 1) - (first_diag == 0 ? 1 : 0);
      const index_t n = std::max({select::mass_budget(est, lim + 1, pp.gamma), pp.min_blocks,
                                  forced});
      float* s = B.tmp.data();
      std::copy(imp + qb * nk, imp + qb * nk + lim + 1, s);
      s[0] = std::numeric_limits<float>::infinity();
      for (index_t kb = first_diag; kb <= lim; ++kb) s[kb] = std::numeric_limits<float>::infinity();
      const index_t c = select::top_k(s, lim + 1, n, B.pick.data(), B.scratch.data());
      bld.add(g.row(b, h, qb), B.pick.data(), c);
    }
  });
  return bld.build();
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_PROXY_HPP_
