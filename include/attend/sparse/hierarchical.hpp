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
// Representatives are scored over the gathered key rows by simd::qk_bcast_max (row maxima of a
// broadcast GEMM) or, for decode's few rows, the dot kernel; the search's queries are packed
// once per search, not per round.
// The search may read a narrower copy of the keys kept beside the cache (a bf16 view, or an
// int8_row_keys copy whose per-token scale multiplies each key's maximum): it is bound by the
// scattered rows it gathers, so fewer bytes per row make it faster; attention reads the cache.
// Defaults follow the v1.0 reference (hip_attention): k 512, block_q 32, block_k 2, window 128,
// reduce_stride 2, max reduction; v1.1's representative is a node's first block (used here).
#ifndef ATTEND_SPARSE_HIERARCHICAL_HPP_
#define ATTEND_SPARSE_HIERARCHICAL_HPP_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <utility>

#include "../core/parallel.hpp"
#include "../core/validate.hpp"
#include "../core/workspace.hpp"
#include "../engine/flash.hpp"
#include "gather.hpp"
#include "select/common.hpp"
#include "select/int8_row_keys.hpp"
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
template <class KV>
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
  index_t* key_child = nullptr;  // [2m * block_k] the child each key represents
  const KV** krow = nullptr;  // [2m * block_k] the keys' rows in one KV head
  float* kbest = nullptr;     // [2m * block_k] each key's maximum over the rows
  float* kscore = nullptr;    // [2m * block_k][lanes / 2] few-row scores (dot kernel)
  float* kf = nullptr;        // [mr][dk] narrow key rows widened
  float* qt = nullptr;        // [KV heads of an owner][dk][ld] the search's queries, transposed
  float* topk = nullptr;

  /// Carves the buffers from b (a counting bump leaves the pointers null); qt_floats: the
  /// owner's packed queries.
  template <class Arch>
  static void layout(attend::detail::bump& b, hip_scratch& s, index_t m, index_t bk, index_t dk,
                     index_t qt_floats) {
    s.start = b.take<index_t>(m);
    s.size = b.take<index_t>(m);
    s.score = b.take<float>(m);
    s.cstart = b.take<index_t>(2 * m);
    s.csize = b.take<index_t>(2 * m);
    s.cscore = b.take<float>(2 * m);
    s.sel = b.take<index_t>(2 * m);
    s.rep = b.take<index_t>(2 * m);
    s.keys = b.take<index_t>(2 * m * bk);
    s.key_child = b.take<index_t>(2 * m * bk);
    s.krow = b.take<const KV*>(2 * m * bk);
    s.kbest = b.take<float>(2 * m * bk);
    s.kscore = b.take<float>(2 * m * bk * simd::lanes<Arch> / 2);
    s.kf = b.take<float>(simd::tile_config<Arch>::mr * dk);
    s.qt = b.take<float>(qt_floats);
    s.topk = b.take<float>(select::top_k_long_scratch(2 * m));
  }
};

/// The rows that score representatives: the owner's heads times the selected queries of one
/// query block, through a strided view of q (query index m -> query first + m * stride). Each
/// KV head's rows are packed once per search: transposed, ld (a whole number of registers)
/// apart, for the broadcast kernel; or, when they fill at most half a register (decode),
/// row-major for the dot kernel, rp (a power of two) rows per KV head.
struct hip_rows {
  view4<const float> q;  // [batch, selected queries, heads_q, dk]
  index_t h0 = 0, h1 = 0, group = 1, ld = 0;
  bool dot = false;
  int rp = 1;

  /// The rows of KV head kv: its first head and how many rows.
  std::pair<index_t, index_t> of_kv(index_t kv) const noexcept {
    const index_t g0 = std::max(h0, kv * group);
    return {g0, (std::min(h1, (kv + 1) * group) - g0) * q.extent(1)};
  }
};

/// Packs the queries of every KV head the owner spans into ws.qt, slot by slot (dk * ld floats
/// apart); broadcast-kernel padding rows repeat the head's last row, so they never change a
/// maximum (the dot kernel's are zero, and their scores are not read).
template <class KV>
void hip_pack_queries(const hip_rows& hr, index_t b, const hip_scratch<KV>& ws) noexcept {
  const index_t nq = hr.q.extent(1), dk = hr.q.extent(3);
  index_t slot = 0;
  for (index_t kv = hr.h0 / hr.group; kv * hr.group < hr.h1; ++kv, ++slot) {
    const auto [g0, rows] = hr.of_kv(kv);
    float* qt = ws.qt + slot * dk * hr.ld;
    if (hr.dot) std::fill(qt, qt + hr.rp * dk, 0.0f);
    for (index_t r = 0; r < (hr.dot ? rows : hr.ld); ++r) {
      const index_t rr = std::min(r, rows - 1);
      const float* src = hr.q.data() + hr.q.offset(b, rr % nq, g0 + rr / nq, 0);
      if (hr.dot) {  // row-major for the dot kernel
        std::copy(src, src + dk, qt + r * dk);
      } else {  // transposed for the broadcast kernel
        for (index_t d = 0; d < dk; ++d) qt[d * hr.ld + r] = src[d];
      }
    }
  }
}

/// kbest[j] = max over `rows` (<= half a register) of q_r . k_j, by the decode dot kernel
/// (vectors along the head dimension; rows prefetched eight keys ahead).
template <class Arch, index_t DK, class KV>
void hip_dot_max(const hip_rows& hr, const float* q, index_t rows, index_t dk, index_t nkeys,
                 const hip_scratch<KV>& ws) noexcept {
  const simd::prefetch_plan<KV> ahead{ws.krow, nkeys, nullptr, 0, 0, dk, nullptr, 0, 0};
  auto run = [&](auto krp) {
    constexpr int RP = decltype(krp)::value;
    if constexpr (RP <= simd::lanes<Arch>)
      simd::qk_dot<Arch, RP, DK>(ws.krow, nkeys, q, rows, dk, ws.kscore, RP, 0, ahead);
  };
  switch (hr.rp) {
    case 1: run(std::integral_constant<int, 1>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 4: run(std::integral_constant<int, 4>{}); break;
    default: run(std::integral_constant<int, 8>{}); break;
  }
  for (index_t j = 0; j < nkeys; ++j) {
    const float* s = ws.kscore + j * hr.rp;
    float m = s[0];
    for (index_t r = 1; r < rows; ++r) m = s[r] > m ? s[r] : m;
    ws.kbest[j] = m;
  }
}

/// The rows of an int8_row_keys copy: codes widened by the kernels, scales applied per key.
struct int8_search_rows {
  const int8_row_keys* keys = nullptr;
  const index_t* lens = nullptr;

  index_t heads() const noexcept { return keys->heads(); }
  index_t length(index_t b) const noexcept { return lens ? lens[b] : keys->length(b); }
  const std::int8_t* k_row(index_t b, index_t pos, index_t h) const noexcept {
    return keys->row(b, pos, h);
  }
  const float* k_scale(index_t b, index_t pos, index_t h) const noexcept {
    return keys->scale(b, pos, h);
  }
};

/// True for rows whose keys carry a scale (k_scale): a quantised copy.
template <class Rows, class = void>
struct has_key_scales : std::false_type {};
template <class Rows>
struct has_key_scales<Rows, std::void_t<decltype(std::declval<const Rows&>().k_scale(0, 0, 0))>>
    : std::true_type {};

/// Scores the representatives of children rep[0, nrep): cscore[child] = max over the rows and
/// the representative's keys of q . k (simd::qk_bcast_max over the gathered key rows).
template <class Arch, index_t DK, class KV, class Rows>
void hip_score(const Rows& rows, const hip_rows& hr, index_t b, index_t s0, index_t s1,
               index_t bk, const hip_scratch<KV>& ws, index_t nrep) noexcept {
  index_t nkeys = 0;
  for (index_t e = 0; e < nrep; ++e) {
    const index_t c = ws.rep[e];
    ws.cscore[c] = -std::numeric_limits<float>::infinity();
    const index_t t0 = s0 + ws.cstart[c] * bk, t1 = std::min(s1, t0 + bk);
    for (index_t t = t0; t < t1; ++t) {
      ws.keys[nkeys] = t;
      ws.key_child[nkeys++] = c;
    }
  }
  const index_t dk = hr.q.extent(3);
  constexpr bool scaled = has_key_scales<Rows>::value;
  index_t slot = 0;
  for (index_t kv = hr.h0 / hr.group; kv * hr.group < hr.h1 && nkeys > 0; ++kv, ++slot) {
    for (index_t j = 0; j < nkeys; ++j) {
      ws.krow[j] = rows.k_row(b, ws.keys[j], kv);
      if constexpr (scaled) __builtin_prefetch(rows.k_scale(b, ws.keys[j], kv));  // read below
    }
    const float* q = ws.qt + slot * dk * hr.ld;
    if (hr.dot) hip_dot_max<Arch, DK>(hr, q, hr.of_kv(kv).second, dk, nkeys, ws);
    else simd::qk_bcast_max<Arch, DK>(ws.krow, nkeys, q, hr.ld, dk, ws.kf, ws.kbest);
    for (index_t j = 0; j < nkeys; ++j) {  // branch-free: the winners are unpredictable
      float best = ws.kbest[j];
      if constexpr (scaled) best *= *rows.k_scale(b, ws.keys[j], kv);  // >= 0: keeps the max
      float& cs = ws.cscore[ws.key_child[j]];
      cs = best > cs ? best : cs;  // NaN never wins
    }
  }
}

/// The tree search of one (owner, query block) over [s0, s1); writes ascending tokens to out and
/// returns their count.
template <class Arch, index_t DK, class KV, class Rows>
index_t hip_search(const Rows& rows, const hip_rows& hr, index_t b, index_t s0, index_t s1,
                   const hip_params& p, const hip_scratch<KV>& ws, index_t* out) noexcept {
  const index_t n = s1 - s0, bk = p.block_k, m = p.nodes();
  const index_t blocks = (n + bk - 1) / bk;
  if (n <= 0) return 0;
  if (n <= p.k || blocks <= m) {
    for (index_t t = 0; t < n; ++t) out[t] = s0 + t;
    return n;
  }
  hip_pack_queries(hr, b, ws);
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
  using ws_t = hip_scratch<KV>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t dk = q.extent(3), heads_kv = rows.heads(), group = heads_q / heads_kv;
  const index_t m = p.nodes();
  out.reshape(p.owner, p.block_q, batch, heads_q, heads_kv, seq_q, m * p.block_k);
  // Packed queries: per KV head an owner spans, its heads times the selected queries.
  const index_t heads_per_kv = p.owner == list_owner::q_head ? 1 : group;
  const index_t kv_slots = p.owner == list_owner::layer ? heads_kv : 1;
  const index_t max_sel = std::max<index_t>(1, p.block_q / p.reduce_stride);
  const index_t qt_floats = kv_slots * dk * ((heads_per_kv * max_sel + w - 1) / w * w);
  attend::detail::bump counter(nullptr);
  ws_t dummy;
  ws_t::template layout<Arch>(counter, dummy, m, p.block_k, dk, qt_floats);
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
    ws_t::template layout<Arch>(bp, s, m, p.block_k, dk, qt_floats);
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
    const index_t rows_per_kv = std::min(group, h1 - h0) * nsel;
    hr.ld = (rows_per_kv + w - 1) / w * w;
    hr.dot = engine::uses_dot_kernel<Arch>(rows_per_kv);
    hr.rp = engine::dot_rows_padded(rows_per_kv);
    ATTEND_DCHECK(nsel <= max_sel);
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

/// HiP selection scored on an int8 copy of the keys (int8_row_keys): the search gathers a quarter
/// of the bytes of fp32 keys; each representative's score is scale * (q . int8). Candidates run to
/// p.kv_lens[b] if given, else keys.length(b). Attend with gather_attention on the real cache.
template <class TQ>
void hip_select(const tensor_view<TQ, 4>& q, const int8_row_keys& keys, token_list_buffer& out,
                const hip_params& p = {}) {
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  constexpr const char* op = "attend::sparse::hip_select";
  const view4<const float> qc = q;
  detail::validate_int8_copy(op, qc, keys, p.kv_lens);
  detail::validate_hip_params(op, p);
  const detail::int8_search_rows rows{&keys, p.kv_lens.has_value() ? p.kv_lens.data() : nullptr};
  attend::detail::dispatch_head_dims(qc.extent(3), qc.extent(3), [&](auto kdk, auto) {
    constexpr index_t DK = decltype(kdk)::value;
    detail::hip_select_rows<xsimd::default_arch, DK, std::int8_t>(qc, rows, out, p);
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
