// MInference vertical-slash (Jiang et al., NeurIPS 2024; card 13), the online estimation of
// minference_forward's vertical_and_slash_kernel. Per (batch, query head):
//  1. probe: A = softmax of the last 64 queries (scaled, causal) against all keys;
//  2. vertical score v_j = sum of A[:, j] over the probe rows, the first 30 columns forced;
//     the top vertical_size columns;
//  3. slash score s_o = sum of A along diagonal offset o >= 0, offsets 0..99 forced; the top
//     slash_size offsets;
//  4. index build per query block of 64 rows [m0, m1): each selected offset o covers the key
//     range [p(m0) - o, p(m1 - 1) - o]; the merged ranges are rounded out to key blocks of
//     block_k (16 by default: the reference uses 64-wide ranges at arbitrary offsets, which
//     this covers with at most 15 extra keys per side) and the selected vertical columns not
//     inside those blocks become the row's extra columns.
// The attention is exact over blocks + columns with the element causal mask (params.causal).
// Defaults: last_q 64, (vertical, slash) = (1000, 6096), the most frequent per-head setting of
// the reference's Llama-3.1-8B-128K config.
#ifndef ATTEND_SPARSE_SELECT_MINFERENCE_HPP_
#define ATTEND_SPARSE_SELECT_MINFERENCE_HPP_

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

/// MInference vertical-slash parameters.
struct minference_params {
  index_t last_q = 64;           // probe rows
  index_t vertical_size = 1000;  // columns kept (>= forced_columns)
  index_t slash_size = 6096;     // diagonals kept (>= forced_slashes)
  index_t forced_columns = 30;   // the first columns are always kept
  index_t forced_slashes = 100;  // offsets 0..forced_slashes-1 are always kept
  index_t block_q = 64;          // query block of the index build
  index_t block_k = 16;          // key block the slash ranges are rounded out to
};

/// MInference vertical-slash selection. q [batch, seq_q, heads_q, dim] float; k, v [batch,
/// seq_k, heads_kv, dim]; causal, bottom-right aligned. Returns the mask {batch, heads_q, seq_q,
/// seq_k, block_q, block_k} with extra columns (entries full; use params.causal).
template <class KV, class Arch = xsimd::default_arch>
block_mask minference_select(const view4<const float>& q, const view4<const KV>& k,
                             const view4<const KV>& v, const minference_params& mp = {}) {
  constexpr const char* op = "attend::sparse::minference_select";
  attend::detail::check_tensor(op, "q", q);
  attend::detail::check_tensor(op, "k", k);
  attend::detail::check_tensor(op, "v", v);
  const index_t batch = q.extent(0), seq_q = q.extent(1), hq = q.extent(2), dim = q.extent(3);
  const index_t seq_k = k.extent(1), hkv = k.extent(2);
  ATTEND_CHECK(k.extent(0) == batch && k.extent(3) == dim && hq % hkv == 0 && seq_k >= seq_q &&
                   v.extent(0) == batch && v.extent(1) == seq_k && v.extent(2) == hkv,
               op, ": q ", attend::detail::shape_string(q), ", k ",
               attend::detail::shape_string(k), " and v ", attend::detail::shape_string(v),
               " do not match");
  ATTEND_CHECK(mp.last_q > 0 && mp.vertical_size >= 0 && mp.slash_size >= 0 &&
                   mp.forced_columns >= 0 && mp.forced_slashes >= 0 && mp.block_q > 0 &&
                   mp.block_k > 0,
               op, ": last_q, block_q and block_k must be > 0 and the sizes >= 0");
  const mask_geometry g{batch, hq, seq_q, seq_k, mp.block_q, mp.block_k};
  const index_t nq = g.q_blocks(), nk = g.k_blocks(), off = seq_k - seq_q;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const index_t max_rows = engine::max_rows_for(dim, v.extent(3));
  const index_t last = std::min(mp.last_q, seq_q);
  const index_t nv = std::min(seq_k, std::max(mp.vertical_size, std::min(mp.forced_columns, seq_k)));
  const index_t ns = std::min(seq_k, std::max(mp.slash_size, std::min(mp.forced_slashes, seq_k)));
  block_mask_builder bld(g);

  struct thread_buffers {
    std::vector<float> ws, s, vertical, slash;
    std::vector<index_t> cols, offs, scratch;
    std::vector<std::uint8_t> marked;
  };
  using scratch_t = engine::scratch<Arch, KV>;
  const index_t ws_floats = scratch_t::floats(max_rows, dim, v.extent(3));
  const index_t items = batch * hq;
  const int threads = static_cast<int>(std::min<index_t>(attend::detail::max_threads(), items));
  std::vector<thread_buffers> tb(static_cast<std::size_t>(threads));
  for (auto& t : tb) {
    t.ws.resize(static_cast<std::size_t>(ws_floats + 16));
    t.s.resize(static_cast<std::size_t>(select::probe_floats<Arch>(seq_k, max_rows)));
    t.vertical.resize(static_cast<std::size_t>(seq_k));
    t.slash.resize(static_cast<std::size_t>(seq_k));
    t.cols.resize(static_cast<std::size_t>(seq_k));
    t.offs.resize(static_cast<std::size_t>(seq_k));
    t.scratch.resize(static_cast<std::size_t>(seq_k));
    t.marked.resize(static_cast<std::size_t>(nk));
  }

  attend::detail::parallel_for(items, threads, [&](index_t item, int t) {
    thread_buffers& B = tb[t];
    const index_t b = item / hq, h = item % hq;
    float* base = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(B.ws.data()) + 63) /
                                           64 * 64);
    attend::detail::bump bump(base);
    const scratch_t ws = scratch_t::carve(bump, max_rows, dim, v.extent(3));
    std::fill(B.vertical.begin(), B.vertical.end(), 0.0f);
    std::fill(B.slash.begin(), B.slash.end(), 0.0f);
    attend::detail::dispatch_head_dims(dim, dim, [&](auto kdk, auto) {
      select::probe_last_queries<Arch, decltype(kdk)::value>(q, k, v, b, h, last, scale, ws,
                                                             max_rows, B.s.data(),
                                                             B.vertical.data(), B.slash.data());
    });
    const float inf = std::numeric_limits<float>::infinity();
    for (index_t j = 0; j < std::min(mp.forced_columns, seq_k); ++j) B.vertical[j] = inf;
    for (index_t o = 0; o < std::min(mp.forced_slashes, seq_k); ++o) B.slash[o] = inf;
    const index_t ncols = select::top_k(B.vertical.data(), seq_k, nv, B.cols.data(),
                                        B.scratch.data());
    const index_t noffs = select::top_k(B.slash.data(), seq_k, ns, B.offs.data(),
                                        B.scratch.data());
    // Offsets descending: key ranges [p0 - o, p1 - o] come in ascending order of start.
    std::reverse(B.offs.begin(), B.offs.begin() + noffs);
    for (index_t qb = 0; qb < nq; ++qb) {
      const index_t r = g.row(b, h, qb);
      const auto [i0, i1] = g.q_range(qb);
      const index_t p0 = off + i0, p1 = off + i1 - 1;
      std::fill(B.marked.begin(), B.marked.end(), 0);
      index_t lo = -1, hi = -2;  // current merged range [lo, hi]
      auto flush = [&] {
        if (hi < 0 || lo > hi) return;
        for (index_t kb = std::max<index_t>(lo, 0) / mp.block_k; kb <= hi / mp.block_k; ++kb)
          B.marked[kb] = 1;
      };
      for (index_t e = 0; e < noffs; ++e) {
        const index_t o = B.offs[e];
        const index_t a = std::max<index_t>(0, p0 - o), z = p1 - o;
        if (z < 0) continue;
        if (a > hi + 1) {
          flush();
          lo = a;
          hi = z;
        } else {
          hi = std::max(hi, z);
        }
      }
      flush();
      for (index_t kb = 0; kb < nk; ++kb)
        if (B.marked[kb]) bld.add(r, kb);
      for (index_t c = 0; c < ncols; ++c) {
        const index_t j = B.cols[c];
        if (j > p1) break;  // ascending: later columns are in every query's future
        if (!B.marked[j / mp.block_k]) bld.add_column(r, j);
      }
    }
  });
  return bld.build();
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_MINFERENCE_HPP_
