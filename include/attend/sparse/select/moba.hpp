// MoBA (Lu et al., 2025; card 4): mixture of block attention. Keys are cut into blocks
// ("chunks") of C tokens; each query t of each head gates every block i that ends before t's own
// block with g_{t,i} = q_t . mean(K_block_i) (fp32, unscaled), forces its own block, and keeps
// the top-k blocks (k includes the own block). Attention is exact over the selected past blocks
// plus causal attention inside the own block. The selection is per query token and per head, so
// the mask has 1-query blocks; block_sparse_attention runs it key-major (each key block against
// the queries that chose it, merged by LSE), which is MoBA's own efficient schedule.
#ifndef ATTEND_SPARSE_SELECT_MOBA_HPP_
#define ATTEND_SPARSE_SELECT_MOBA_HPP_

#include <algorithm>
#include <vector>

#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"
#include "../block_mask.hpp"
#include "../block_sparse.hpp"
#include "common.hpp"
#include "scores.hpp"

namespace attend::sparse {

/// MoBA parameters. Defaults: the paper's scaling-law setting (block 512, top-3); the
/// reference example for 1M-token Llama uses block 4096, top-12.
struct moba_params {
  index_t block_size = 512;  // C, tokens per key block
  index_t top_k = 3;         // blocks per query, the own block included
};

/// MoBA selection. q [batch, seq_q, heads_q, dim] float, k [batch, seq_k, heads_kv, dim]
/// (causal, bottom-right aligned: query i at position seq_k - seq_q + i). Returns the mask
/// {batch, heads_q, seq_q, seq_k, 1, block_size}: per (batch, head, query) the own block and
/// the top (top_k - 1) earlier blocks by gate (all earlier blocks when fewer). Use it with
/// params.causal = true (the own block is cut causally by the attention call).
template <class KV, class Arch = xsimd::default_arch>
block_mask moba_select(const view4<const float>& q, const view4<const KV>& k,
                       const moba_params& mp = {}) {
  constexpr const char* op = "attend::sparse::moba_select";
  attend::detail::check_tensor(op, "q", q);
  attend::detail::check_tensor(op, "k", k);
  const index_t batch = q.extent(0), seq_q = q.extent(1), hq = q.extent(2), dim = q.extent(3);
  const index_t seq_k = k.extent(1), hkv = k.extent(2);
  ATTEND_CHECK(k.extent(0) == batch && k.extent(3) == dim && hq % hkv == 0 && seq_k >= seq_q, op,
               ": q ", attend::detail::shape_string(q), " and k ",
               attend::detail::shape_string(k), " do not match (same batch and dim, heads_q a ",
               "multiple of heads_kv, seq_k >= seq_q)");
  ATTEND_CHECK(mp.block_size > 0 && mp.top_k > 0, op, ": block_size (", mp.block_size,
               ") and top_k (", mp.top_k, ") must be > 0");
  const index_t C = mp.block_size, nb = (seq_k + C - 1) / C, group = hq / hkv;
  const index_t ldb = select::padded_cols<Arch>(nb);
  const mask_geometry g{batch, hq, seq_q, seq_k, 1, C};
  block_mask_builder bld(g);

  // Mean-pooled keys, transposed: [batch, heads_kv][dim][ldb].
  std::vector<float> pooled(static_cast<std::size_t>(nb * dim));
  std::vector<float> means(static_cast<std::size_t>(batch * hkv * dim * ldb));
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < hkv; ++h) {
      select::pool_rows(view2<const KV>(k.matrix(b, h)), C, select::pool_mode::mean,
                        pooled.data());
      select::pack_transposed(pooled.data(), dim, nb, dim,
                              means.data() + (b * hkv + h) * dim * ldb, ldb);
    }

  // Gates for chunks of 64 queries of one head, then top-k per query.
  constexpr index_t chunk = 64;
  const index_t chunks = (seq_q + chunk - 1) / chunk;
  const index_t items = batch * hq * chunks;
  const int threads = static_cast<int>(std::min<index_t>(attend::detail::max_threads(), items));
  std::vector<std::vector<float>> gates(static_cast<std::size_t>(threads),
                                        std::vector<float>(chunk * ldb));
  std::vector<std::vector<float>> qrows(static_cast<std::size_t>(threads),
                                        std::vector<float>(chunk * dim));
  std::vector<std::vector<index_t>> picks(static_cast<std::size_t>(threads),
                                          std::vector<index_t>(mp.top_k + 1 + nb));
  attend::detail::parallel_for(items, threads, [&](index_t item, int t) {
    const index_t c = item % chunks, h = (item / chunks) % hq, b = item / (chunks * hq);
    const index_t i0 = c * chunk, n = std::min(chunk, seq_q - i0);
    float* qr = qrows[t].data();
    for (index_t r = 0; r < n; ++r) std::copy_n(&q(b, i0 + r, h, 0), dim, qr + r * dim);
    float* gt = gates[t].data();
    select::gemm_rows<Arch>(qr, dim, n, means.data() + (b * hkv + h / group) * dim * ldb, ldb, ldb, dim,
                            1.0f, gt, ldb);
    index_t* pick = picks[t].data();
    for (index_t r = 0; r < n; ++r) {
      const index_t i = i0 + r, own = (seq_k - seq_q + i) / C;
      const index_t cnt = select::top_k(gt + r * ldb, own, mp.top_k - 1, pick, pick + mp.top_k + 1);
      pick[cnt] = own;
      bld.add(g.row(b, h, i), pick, cnt + 1);
    }
  });
  return bld.build();
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_MOBA_HPP_
