// HiP attention (Lee et al., ICLR 2025): hierarchically pruned top-k by tree search, then exact
// attention over the chosen keys plus sinks and a sliding window.
//
// Per query block (block_q queries) and list owner (a query head, or a KV group whose heads are
// scored together, like HiP's head groups), over the causal range [sinks, t - window) in blocks
// of block_k keys (t = the block's last position + 1):
//   init     k / block_k nodes splitting the range evenly (node i covers blocks
//            [floor(B i / m), floor(B (i + 1) / m)), B blocks, m nodes)
//   iterate  while a node spans more than one block: split every node in two halves; score each
//            half by its first key block ("representative"): the maximum of q . k over those keys
//            and over the block's queries (every reduce_stride-th, including the last) and heads;
//            keep the m best halves (ties: the earlier). The first half shares its parent's
//            representative, so only second halves are scored: about m new blocks per round.
//   result   m key blocks (k tokens), ascending
// A range of at most k keys is taken whole. Selection costs O(m log(T / k)) representative
// blocks per query block: O(T log T) for prefill, sublinear for decode (block_q = 1).
// Representatives are scored by the engine's score_tiles over a gathered key source.
// Defaults follow the v1.0 reference (hip_attention): k 512, block_q 32, block_k 2, window 128,
// reduce_stride 2, max reduction; v1.1's representative is a node's first block (used here).
#ifndef ATTEND_SPARSE_HIERARCHICAL_HPP_
#define ATTEND_SPARSE_HIERARCHICAL_HPP_

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>

#include "../core/parallel.hpp"
#include "../core/validate.hpp"
#include "../core/workspace.hpp"
#include "../engine/flash.hpp"
#include "gather.hpp"
#include "select/common.hpp"
#include "select/topk.hpp"
#include "token_lists.hpp"

namespace attend::sparse {

/// Parameters of HiP selection and attention.
struct hip_params {
  index_t k = 512;            ///< tokens selected per (owner, query block) (mask_k)
  index_t block_q = 32;       ///< queries sharing a selection (1 for decode)
  index_t block_k = 2;        ///< keys per selected block
  index_t sinks = 0;          ///< first keys always attended (not searched)
  index_t window = 128;       ///< sliding window always attended (not searched)
  index_t reduce_stride = 2;  ///< every reduce_stride-th query of a block scores representatives
  /// One selection per query head (the reference) or per KV group (heads scored together).
  list_owner owner = list_owner::q_head;
  /// Multiplies q . k in attention; default 1/sqrt(dim). (The search ranks raw dot products.)
  std::optional<float> scale{};
  /// [batch]: valid keys per sequence. Empty = seq_k.
  view1<const index_t> kv_lens{};
  /// Optional reusable scratch for the search.
  workspace* scratch = nullptr;

  /// gather_params of the attention step (causal, same sinks / window / lengths / scale).
  gather_params gather(const view3<float>& lse = {}, workspace* ws = nullptr) const {
    gather_params g;
    g.scale = scale;
    g.causal = true;
    g.sinks = sinks;
    g.window = window;
    g.kv_lens = kv_lens;
    g.lse = lse;
    g.scratch = ws;
    return g;
  }
  /// Key blocks per selection: ceil(k / block_k).
  index_t nodes() const noexcept { return (k + block_k - 1) / block_k; }
};

namespace detail {

/// One thread's buffers for the tree search.
template <class Arch, class KV>
struct hip_scratch {
  index_t* start = nullptr;   // [m] nodes: first block, size in blocks, score (NaN = unknown)
  index_t* size = nullptr;
  float* score = nullptr;
  index_t* cstart = nullptr;  // [2m] children
  index_t* csize = nullptr;
  float* cscore = nullptr;
  index_t* sel = nullptr;     // [2m] chosen children
  index_t* rep = nullptr;     // [2m] children whose representative is scored this round
  index_t* keys = nullptr;    // [2m * block_k] representative key positions
  float* topk = nullptr;
  engine::scratch<Arch, KV> eng;

  /// Carves the buffers from b (a counting bump leaves the pointers null).
  static void layout(attend::detail::bump& b, hip_scratch& s, index_t m, index_t bk,
                     index_t max_rows, index_t dk) {
    s.start = b.take<index_t>(m);
    s.size = b.take<index_t>(m);
    s.score = b.take<float>(m);
    s.cstart = b.take<index_t>(2 * m);
    s.csize = b.take<index_t>(2 * m);
    s.cscore = b.take<float>(2 * m);
    s.sel = b.take<index_t>(2 * m);
    s.rep = b.take<index_t>(2 * m);
    s.keys = b.take<index_t>(2 * m * bk);
    s.topk = b.take<float>(select::top_k_long_scratch(2 * m));
    s.eng = engine::scratch<Arch, KV>::carve(b, max_rows, dk, dk);
  }
};

/// The rows that score representatives: the owner's heads times the selected queries of one
/// query block, through a strided view of q (query index m -> query first + m * stride).
struct hip_rows {
  view4<const float> q;  // [batch, selected queries, heads_q, dk]
  index_t h0 = 0, h1 = 0, group = 1;
};

/// Scores the representatives of children rep[0, nrep) (ascending starts): cscore[child] =
/// max over the rows and the representative's keys of q . k.
template <class Arch, index_t DK, class KV, class Rows>
void hip_score(const Rows& rows, const hip_rows& hr, index_t b, index_t s0, index_t s1,
               index_t bk, const hip_scratch<Arch, KV>& ws, index_t nrep) noexcept {
  index_t nkeys = 0;
  for (index_t e = 0; e < nrep; ++e) {
    const index_t c = ws.rep[e];
    ws.cscore[c] = -std::numeric_limits<float>::infinity();
    const index_t t0 = s0 + ws.cstart[c] * bk, t1 = std::min(s1, t0 + bk);
    for (index_t t = t0; t < t1; ++t) ws.keys[nkeys++] = t;
  }
  if (nkeys == 0) return;
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t dk = hr.q.extent(3);
  const index_t max_rows = engine::max_rows_for(dk, dk);
  const index_t nq = hr.q.extent(1);
  const engine::problem<KV> pb{hr.q, 1.0f, dk, dk};
  const engine::variant<> var{};
  gather_keys<KV, Rows> keys;
  keys.rows = rows;
  keys.list = ws.keys;
  keys.count = nkeys;
  keys.prefetch_v = false;
  const index_t qchunk = std::min(nq, max_rows);
  for (index_t kv = hr.h0 / hr.group; kv * hr.group < hr.h1; ++kv) {
    const index_t g0 = std::max(hr.h0, kv * hr.group), g1 = std::min(hr.h1, (kv + 1) * hr.group);
    const index_t hchunk = std::max<index_t>(1, max_rows / qchunk);
    for (index_t h = g0; h < g1; h += hchunk)
      for (index_t q0 = 0; q0 < nq; q0 += qchunk) {
        engine::row_block rb;
        rb.batch = b;
        rb.kv_head = kv;
        rb.group = hr.group;
        rb.head0 = h;
        rb.heads = std::min(hchunk, g1 - h);
        rb.query0 = q0;
        rb.queries = std::min(qchunk, nq - q0);
        const index_t n_rows = rb.rows();
        index_t e = 0;  // representative of the next key (keys and representatives ascend)
        engine::score_tiles<Arch, DK>(
            pb, rb, keys, var, ws.eng,
            [&](const engine::kv_tile<KV>& t, const float* st, index_t ld) {
              for (index_t j = 0; j < t.count; ++j) {
                const index_t p = t.pos[j];
                while (s0 + (ws.cstart[ws.rep[e]] + 1) * bk <= p) ++e;
                // The maximum over the rows (padding rows score 0: not taken).
                const float* col = st + j * ld;
                float m = col[0];
                index_t r = 0;
                if (n_rows >= w) {
                  V mv = V::load_aligned(col);
                  for (r = w; r + w <= n_rows; r += w)
                    mv = xsimd::max(mv, V::load_aligned(col + r));
                  m = simd::reduce_max<Arch>(mv);
                }
                for (; r < n_rows; ++r) m = std::max(m, col[r]);
                float& cs = ws.cscore[ws.rep[e]];
                if (m > cs) cs = m;  // NaN never wins
              }
            });
      }
  }
}

/// The tree search of one (owner, query block) over [s0, s1); writes ascending tokens to out and
/// returns their count.
template <class Arch, index_t DK, class KV, class Rows>
index_t hip_search(const Rows& rows, const hip_rows& hr, index_t b, index_t s0, index_t s1,
                   const hip_params& p, const hip_scratch<Arch, KV>& ws, index_t* out) noexcept {
  const index_t n = s1 - s0, bk = p.block_k, m = p.nodes();
  const index_t blocks = (n + bk - 1) / bk;
  if (n <= 0) return 0;
  if (n <= p.k || blocks <= m) {
    for (index_t t = 0; t < n; ++t) out[t] = s0 + t;
    return n;
  }
  const float unknown = std::numeric_limits<float>::quiet_NaN();
  index_t nodes = m, widest = 0;
  for (index_t i = 0; i < m; ++i) {
    ws.start[i] = blocks * i / m;
    ws.size[i] = blocks * (i + 1) / m - ws.start[i];
    ws.score[i] = unknown;
    widest = std::max(widest, ws.size[i]);
  }
  while (widest > 1) {
    index_t nc = 0, nrep = 0;
    for (index_t i = 0; i < nodes; ++i) {
      const index_t half = ws.size[i] / 2;
      ws.cstart[nc] = ws.start[i];  // first half: the parent's representative
      ws.csize[nc] = half;
      ws.cscore[nc] = half >= 1 ? ws.score[i] : -std::numeric_limits<float>::infinity();
      if (half >= 1 && std::isnan(ws.cscore[nc])) ws.rep[nrep++] = nc;
      ++nc;
      ws.cstart[nc] = ws.start[i] + half;  // second half
      ws.csize[nc] = ws.size[i] - half;
      ws.cscore[nc] = half == 0 ? ws.score[i] : unknown;
      if (std::isnan(ws.cscore[nc])) ws.rep[nrep++] = nc;
      ++nc;
    }
    hip_score<Arch, DK>(rows, hr, b, s0, s1, bk, ws, nrep);
    for (index_t c = 0; c < nc; ++c)
      if (std::isnan(ws.cscore[c])) ws.cscore[c] = -std::numeric_limits<float>::infinity();
    nodes = select::top_k_long(ws.cscore, nc, m, ws.sel, ws.topk);
    widest = 0;
    for (index_t i = 0; i < nodes; ++i) {
      const index_t c = ws.sel[i];
      ws.start[i] = ws.cstart[c];
      ws.size[i] = ws.csize[c];
      ws.score[i] = ws.cscore[c];
      widest = std::max(widest, ws.size[i]);
    }
  }
  index_t count = 0;
  for (index_t i = 0; i < nodes; ++i) {
    const index_t t0 = s0 + ws.start[i] * bk, t1 = std::min(s1, t0 + bk);
    for (index_t t = t0; t < t1; ++t) out[count++] = t;
  }
  return count;
}

template <class Arch, index_t DK, class KV, class Rows>
void hip_select_rows(const view4<const float>& q, const Rows& rows, token_list_buffer& out,
                     const hip_params& p) {
  using ws_t = hip_scratch<Arch, KV>;
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t dk = q.extent(3), heads_kv = rows.heads(), group = heads_q / heads_kv;
  const index_t m = p.nodes();
  out.reshape(p.owner, p.block_q, batch, heads_q, heads_kv, seq_q, m * p.block_k);
  const index_t max_rows = engine::max_rows_for(dk, dk);
  attend::detail::bump counter(nullptr);
  ws_t dummy;
  ws_t::layout(counter, dummy, m, p.block_k, max_rows, dk);
  const index_t per_thread = counter.used();
  const int threads = attend::detail::max_threads();
  workspace local;
  workspace& ws = p.scratch ? *p.scratch : local;
  float* const base = ws.reserve(per_thread * threads);
  const index_t owners = out.owners(), tiles = out.tiles();
  attend::detail::parallel_for(batch * owners * tiles, threads, [&](index_t item, int t) {
    const index_t tile = tiles - 1 - item / (batch * owners);  // long ranges first
    const index_t o = item % owners, b = (item / owners) % batch;
    ws_t s;
    attend::detail::bump bp(base + t * per_thread);
    ws_t::layout(bp, s, m, p.block_k, max_rows, dk);
    const index_t len = rows.length(b);
    const index_t t0 = tile * p.block_q, t1 = std::min(seq_q, t0 + p.block_q);
    const index_t t_end = std::clamp<index_t>(len - seq_q + t1, 0, len);  // causal end
    const index_t s0 = std::min(p.sinks, t_end);
    const index_t s1 = std::max(s0, t_end - p.window);
    // Queries t0 + stride - 1, t0 + 2 stride - 1, ... (the last one if the block is shorter).
    index_t first = t0 + p.reduce_stride - 1, nsel = 0;
    if (first < t1) {
      nsel = (t1 - 1 - first) / p.reduce_stride + 1;
    } else {
      first = t1 - 1;
      nsel = 1;
    }
    hip_rows hr;
    hr.q = view4<const float>(q.data() + first * q.stride(1), {batch, nsel, heads_q, dk},
                              {q.stride(0), q.stride(1) * p.reduce_stride, q.stride(2), q.stride(3)});
    hr.group = group;
    const auto [h0, h1] = owner_heads(p.owner, o, heads_q, group);
    hr.h0 = h0;
    hr.h1 = h1;
    out.count(b, o, tile) = hip_search<Arch, DK>(rows, hr, b, s0, s1, p, s, out.list(b, o, tile));
  });
}

inline void validate_hip_params(const char* op, const hip_params& p) {
  ATTEND_CHECK(p.k >= 1 && p.block_q >= 1 && p.block_k >= 1 && p.reduce_stride >= 1, op,
               ": k (", p.k, "), block_q (", p.block_q, "), block_k (", p.block_k,
               ") and reduce_stride (", p.reduce_stride, ") must be >= 1");
  ATTEND_CHECK(p.sinks >= 0 && p.window >= 0, op, ": sinks (", p.sinks, ") and window (",
               p.window, ") must be >= 0");
  if (p.scale) ATTEND_CHECK(std::isfinite(*p.scale), op, ": scale must be finite (", *p.scale, ")");
}

}  // namespace detail

/// HiP selection: per (batch, owner, query block of p.block_q) the ascending key tokens found by
/// the tree search (at most ceil(k / block_k) * block_k of them), sinks and window excluded
/// (gather_attention adds them: use p.gather()).
///
/// \param q [batch, seq_q, heads_q, dim] float (causal, bottom-right aligned)
/// \param k [batch, seq_k, heads_kv, dim] float, bf16 or fp16
/// \param out reshaped to (p.owner, p.block_q, capacity ceil(k / block_k) * block_k)
template <class TQ, class TK>
void hip_select(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k, token_list_buffer& out,
                const hip_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(is_storage_type_v<KV>, "k must be float, bf16 or fp16");
  constexpr const char* op = "attend::sparse::hip_select";
  const view4<const float> qc = q;
  const view4<const KV> kc = k;
  detail::validate_select_keys(op, qc, kc, p.kv_lens);
  detail::validate_hip_params(op, p);
  const detail::contiguous_rows<KV> rows{kc, kc, p.kv_lens.has_value() ? p.kv_lens.data() : nullptr};
  attend::detail::dispatch_head_dims(qc.extent(3), qc.extent(3), [&](auto kdk, auto) {
    constexpr index_t DK = decltype(kdk)::value;
    detail::hip_select_rows<xsimd::default_arch, DK, KV>(qc, rows, out, p);
  });
}

/// HiP attention: hip_select, then exact causal gather_attention over the found tokens, the
/// sinks and the sliding window. o [batch, seq_q, heads_q, dv]; lse optional.
template <class TQ, class TK, class TV>
void hip_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                   const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                   token_list_buffer& lists, const hip_params& p = {},
                   const view3<float>& lse = {}, workspace* gather_scratch = nullptr) {
  hip_select(q, k, lists, p);
  gather_attention(q, k, v, o, lists.view(), p.gather(lse, gather_scratch));
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_HIERARCHICAL_HPP_
