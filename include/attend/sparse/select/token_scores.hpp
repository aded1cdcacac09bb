// The pipeline shared by the token-level selectors that score every candidate key (exact top-k,
// low-bit top-k, TokenSelect, Recycled attention). For each query tile:
//
//   fingerprint   q_f[b, h] = mean of the tile's queries (decode: the query itself)
//   score         s[b, h, j] = scale * q_f[b, h] . k[b, j, h / G] for the candidate keys j,
//                 by the engine's score_tiles (K read once per KV group, in its storage type,
//                 with prefetch) or by another scorer (int8 keys); per-chunk (max, sum exp)
//   reduce        shared lists: per key, the sum over the owner's heads of each head's softmax
//                 probability (TokenSelect's soft vote) or the maximum score over the heads (a
//                 scorer that holds a KV group's scores in registers may write that maximum
//                 itself: no per-head rows are written or read back)
//   select        exact top-k per owner (select::top_k_long), ascending, into the token lists
//   attend        optional (scored_attention): when a tile is one query, its fingerprint is the
//                 query, so the scores of the selected keys are already its attention logits;
//                 attention then reads only their V rows (plus the few implicit keys)
//
// Candidates of a tile are the keys a causal query of the tile may see, minus the implicit sinks
// and window that gather_attention adds anyway: [sinks, min(last + 1, first - window + 1)).
#ifndef ATTEND_SPARSE_SELECT_TOKEN_SCORES_HPP_
#define ATTEND_SPARSE_SELECT_TOKEN_SCORES_HPP_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "../../core/parallel.hpp"
#include "../../core/workspace.hpp"
#include "../../engine/flash.hpp"
#include "../../engine/key_sources.hpp"
#include "../../simd/exp.hpp"
#include "../../simd/tile.hpp"
#include "../gather.hpp"
#include "../token_lists.hpp"
#include "common.hpp"

namespace attend::sparse {

/// How the scores of the query heads that share a list become one score per key.
enum class head_reduce {
  softmax_sum,  ///< sum over heads of each head's softmax over the candidates (soft vote)
  max_score     ///< maximum over heads of the scaled score
};

namespace detail {

/// What one selection pass does; shared by the selectors.
struct selection_spec {
  index_t k = 2048;
  list_owner owner = list_owner::q_head;
  head_reduce reduce = head_reduce::softmax_sum;
  index_t query_block = 1;
  index_t sinks = 0, window = 0;
  bool causal = true;
  float scale = 1.0f;
};

/// Candidate keys [lo, hi) of a tile whose queries sit at positions [first, last].
inline std::pair<index_t, index_t> candidate_range(index_t len, index_t first, index_t last,
                                                   index_t sinks, index_t window,
                                                   bool causal) noexcept {
  const index_t lo = std::min(sinks, len);
  index_t hi = causal ? std::min(len, last + 1) : len;
  if (window > 0) hi = std::min(hi, std::max<index_t>(0, first - window + 1));
  return {lo, std::max(lo, hi)};
}

/// Score buffers of one pass, carved from a workspace.
struct score_buffers {
  index_t batch = 0, heads_q = 0, heads_kv = 0, group = 1, dk = 0;
  float scale = 1.0f;  // multiplies q_f . k
  index_t ld = 0;      // keys per score row (the longest sequence)
  index_t owners = 1;  // lists per batch entry
  index_t chunk = 8192, chunks = 1;
  float* scores = nullptr;   // [batch][heads_q][ld]
  float* partial = nullptr;  // [batch][heads_q][chunks][2]: (max, sum of exp(s - max))
  float* lse = nullptr;      // [batch][heads_q]
  float* agg = nullptr;      // [batch][owners][ld]
  float* qf = nullptr;       // [batch][heads_q][dk] query fingerprints
  float* topk = nullptr;     // [threads][topk_stride]
  float* engine = nullptr;   // [threads][engine_stride]
  float* scorer = nullptr;   // the scorer's own scratch (carve_scores' scorer_floats)
  index_t topk_stride = 0, engine_stride = 0;
  index_t* lo = nullptr;  // [batch] candidate range of the current tile
  index_t* hi = nullptr;
  /// The scorer writes agg (the maximum over each KV group's heads) instead of the head rows.
  bool scorer_takes_group_max = false;
  /// Lists per query head: [batch][heads_q][list_k], the scores of each list's keys in list
  /// order (the attend stage's logits, without a gather from the score rows).
  float* values = nullptr;
  index_t list_k = 0;

  float* row(index_t b, index_t h) const noexcept { return scores + (b * heads_q + h) * ld; }
  float* agg_row(index_t b, index_t o) const noexcept { return agg + (b * owners + o) * ld; }
  float* value_row(index_t b, index_t h) const noexcept {
    return values + (b * heads_q + h) * list_k;
  }
  float* part(index_t b, index_t h, index_t c) const noexcept {
    return partial + ((b * heads_q + h) * chunks + c) * 2;
  }
  view4<const float> fingerprints() const noexcept {
    return view4<const float>::contiguous(qf, {batch, 1, heads_q, dk});
  }
};

/// Lays out the buffers in `ws` (grown as needed), with `scorer_floats` for the scorer and,
/// for lists per query head of capacity list_k, their scores (values).
template <class Arch, class KV>
score_buffers carve_scores(workspace& ws, index_t batch, index_t heads_q, index_t heads_kv,
                           index_t dk, index_t ld, list_owner owner, index_t scorer_floats = 0,
                           index_t list_k = 0) {
  score_buffers s;
  s.batch = batch;
  s.heads_q = heads_q;
  s.heads_kv = heads_kv;
  s.group = heads_q / heads_kv;
  s.dk = dk;
  s.ld = ld;
  s.owners = owner_count(owner, heads_q, heads_kv);
  s.chunks = (ld + s.chunk - 1) / s.chunk;
  const int threads = attend::detail::max_threads();
  s.list_k = owner == list_owner::q_head ? list_k : 0;
  s.topk_stride = select::top_k_long_scratch(ld);
  const index_t max_rows = engine::max_rows_for(dk, dk);
  s.engine_stride = engine::scratch<Arch, KV>::floats(max_rows, dk, dk);
  auto layout = [&](attend::detail::bump& b) {
    s.scores = b.take<float>(batch * heads_q * ld);
    s.partial = b.take<float>(batch * heads_q * s.chunks * 2);
    s.lse = b.take<float>(batch * heads_q);
    s.agg = owner == list_owner::q_head ? nullptr : b.take<float>(batch * s.owners * ld);
    s.qf = b.take<float>(batch * heads_q * dk);
    s.topk = b.take<float>(threads * s.topk_stride);
    s.engine = b.take<float>(threads * s.engine_stride);
    s.scorer = b.take<float>(scorer_floats);
    s.values = b.take<float>(batch * heads_q * s.list_k);
    s.lo = b.take<index_t>(batch);
    s.hi = b.take<index_t>(batch);
  };
  attend::detail::bump count(nullptr);
  layout(count);
  attend::detail::bump carve(ws.reserve(count.used()));
  layout(carve);
  std::fill(s.lo, s.lo + batch, index_t{0});
  std::fill(s.hi, s.hi + batch, index_t{0});
  return s;
}

/// q_f[b, h] = mean of q(b, i, h) over i in [t0, t1).
inline void fingerprint(const view4<const float>& q, index_t t0, index_t t1,
                        const score_buffers& s) noexcept {
  const float inv = 1.0f / static_cast<float>(t1 - t0);
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads_q; ++h) {
      float* dst = s.qf + (b * s.heads_q + h) * s.dk;
      std::fill(dst, dst + s.dk, 0.0f);
      for (index_t i = t0; i < t1; ++i) {
        const float* src = q.data() + q.offset(b, i, h, 0);
        for (index_t d = 0; d < s.dk; ++d) dst[d] += src[d];
      }
      if (t1 - t0 > 1)
        for (index_t d = 0; d < s.dk; ++d) dst[d] *= inv;
    }
}

/// max of x[0, n); -inf when n == 0 (NaN-free input).
template <class Arch>
float max_of(const float* x, index_t n) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  V mv(-std::numeric_limits<float>::infinity());
  index_t j = 0;
  for (; j + w <= n; j += w) mv = xsimd::max(mv, V::load_unaligned(x + j));
  float m = simd::reduce_max<Arch>(mv);
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

/// (max, sum exp(x - max)) of x[0, n) (NaN-free input).
template <class Arch>
std::pair<float, float> max_and_sum(const float* x, index_t n) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const float ninf = -std::numeric_limits<float>::infinity();
  const float m = max_of<Arch>(x, n);
  if (m == ninf) return {ninf, 0.0f};
  V sv(0.0f);
  const V mm(m);
  index_t j = 0;
  for (; j + w <= n; j += w) sv += simd::exp<Arch>(V::load_unaligned(x + j) - mm);
  float sum = simd::reduce_sum<Arch>(sv);
  for (; j < n; ++j) sum += std::exp(x[j] - m);
  return {m, sum};
}

/// x[j] = exp(x[j] - m) for j < n; returns their sum (m finite, x NaN-free).
template <class Arch>
float exp_shifted(float* x, index_t n, float m) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const V mm(m);
  V sv(0.0f);
  index_t j = 0;
  for (; j + w <= n; j += w) {
    const V e = simd::exp<Arch>(V::load_unaligned(x + j) - mm);
    e.store_unaligned(x + j);
    sv += e;
  }
  float sum = simd::reduce_sum<Arch>(sv);
  for (; j < n; ++j) sum += (x[j] = std::exp(x[j] - m));
  return sum;
}

/// Fills the (max, sum) partials of the rows [h0, h0 + heads) of batch b over chunk c.
template <class Arch>
void chunk_partials(const score_buffers& s, index_t b, index_t h0, index_t heads,
                    index_t c) noexcept {
  const index_t j0 = std::max(s.lo[b], c * s.chunk);
  const index_t j1 = std::min(s.hi[b], (c + 1) * s.chunk);
  for (index_t h = h0; h < h0 + heads; ++h) {
    float* p = s.part(b, h, c);
    if (j1 <= j0) {
      p[0] = -std::numeric_limits<float>::infinity();
      p[1] = 0.0f;
      continue;
    }
    const auto [m, sum] = max_and_sum<Arch>(s.row(b, h) + j0, j1 - j0);
    p[0] = m;
    p[1] = sum;
  }
}

/// Scores every candidate key with the engine's score_tiles (no mask, no score hook). Items are
/// (batch, KV heads, head chunk, key chunk): decode-shaped groups (a KV head's query heads fit
/// half a register) put several KV heads in one block, so a [batch, seq, heads, dim] cache is
/// streamed token by token (sequential rows); each block loads its K rows once for all its heads.
template <class Arch, index_t DK, class KV, class Rows>
void score_with_engine(const Rows& rows, const score_buffers& s, bool need_partials) {
  using scratch_t = engine::scratch<Arch, KV>;
  const index_t max_rows = engine::max_rows_for(s.dk, s.dk);
  const bool dot = engine::uses_dot_kernel<Arch>(s.group);
  const index_t kv_per_block =
      dot ? std::min(s.heads_kv, max_rows / engine::dot_rows_padded(s.group)) : 1;
  const index_t kv_chunks = (s.heads_kv + kv_per_block - 1) / kv_per_block;
  const index_t hpb = std::min(s.group, max_rows);
  const index_t head_chunks = (s.group + hpb - 1) / hpb;
  const index_t items = s.batch * kv_chunks * head_chunks * s.chunks;
  const engine::problem<KV> pb{s.fingerprints(), s.scale, s.dk, s.dk};
  const engine::variant<> var{};
  attend::detail::parallel_for(items, attend::detail::max_threads(), [&](index_t item, int t) {
    const index_t c = item % s.chunks;
    index_t rest = item / s.chunks;
    const index_t hc = rest % head_chunks;
    rest /= head_chunks;
    const index_t kc = rest % kv_chunks, b = rest / kv_chunks;
    engine::row_block rb;
    rb.batch = b;
    rb.kv_head = kc * kv_per_block;
    rb.kv_heads = std::min(kv_per_block, s.heads_kv - rb.kv_head);
    rb.group = s.group;
    rb.head0 = rb.kv_head * s.group + hc * hpb;
    rb.heads = std::min(hpb, s.group - hc * hpb);
    rb.queries = 1;
    const index_t j0 = std::max(s.lo[b], c * s.chunk);
    const index_t j1 = std::min(s.hi[b], (c + 1) * s.chunk);
    if (j1 > j0) {
      attend::detail::bump bp(s.engine + t * s.engine_stride);
      const scratch_t ws = scratch_t::carve(bp, max_rows, s.dk, s.dk);
      const index_t n_rows = rb.rows();
      ATTEND_DCHECK(n_rows <= 128);
      float* out[128];  // score row of each block row (max_rows at most)
      for (index_t r = 0; r < n_rows; ++r) out[r] = s.row(b, rb.head_of(r));
      auto on_tile = [&](const engine::kv_tile<KV>& tile, const float* st, index_t ld) {
        const index_t n = tile.count, p0 = tile.pos[0];
        if (tile.pos[n - 1] - p0 == n - 1) {  // consecutive keys: contiguous stores per row
          float* dst[128];
          for (index_t r = 0; r < n_rows; ++r) dst[r] = out[r] + p0;
          simd::scores_to_rows<Arch>(st, ld, n_rows, n, dst);
          return;
        }
        for (index_t j = 0; j < n; ++j)
          for (index_t r = 0; r < n_rows; ++r) {
            const float x = st[j * ld + r];
            out[r][tile.pos[j]] = x == x ? x : -std::numeric_limits<float>::infinity();
          }
      };
      if constexpr (std::is_same_v<Rows, contiguous_rows<KV>>) {
        const engine::dense_keys<KV> keys{rows.k, rows.k, rows.lens, j0, j1};
        engine::score_tiles<Arch, DK>(pb, rb, keys, var, ws, on_tile);
      } else {
        gather_keys<KV, Rows> keys;
        keys.rows = rows;
        keys.win_lo = j0;
        keys.win_hi = j1;
        keys.prefetch_v = false;
        engine::score_tiles<Arch, DK>(pb, rb, keys, var, ws, on_tile);
      }
    }
    if (need_partials)
      for (index_t g = 0; g < rb.kv_heads; ++g)
        chunk_partials<Arch>(s, b, (rb.kv_head + g) * s.group + hc * hpb, rb.heads, c);
  });
}

/// Per-head LSE over the candidates from the chunk partials.
inline void merge_partials(const score_buffers& s) noexcept {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads_q; ++h) {
      float m = ninf;
      for (index_t c = 0; c < s.chunks; ++c) m = std::max(m, s.part(b, h, c)[0]);
      float l = 0.0f;
      if (m != ninf)
        for (index_t c = 0; c < s.chunks; ++c) {
          const float* p = s.part(b, h, c);
          if (p[1] > 0.0f) l += p[1] * std::exp(p[0] - m);
        }
      s.lse[b * s.heads_q + h] = l > 0.0f ? m + std::log(l) : ninf;
    }
}

/// The query heads [h0, h1) that share list owner o.
inline std::pair<index_t, index_t> owner_heads(list_owner owner, index_t o, index_t heads_q,
                                               index_t group) noexcept {
  switch (owner) {
    case list_owner::q_head: return {o, o + 1};
    case list_owner::kv_head: return {o * group, (o + 1) * group};
    default: return {0, heads_q};
  }
}

/// agg[b, o, j] = combination of the owner's head scores at key j (shared lists only).
template <class Arch>
void reduce_heads(const score_buffers& s, list_owner owner, head_reduce reduce) {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t items = s.batch * s.owners * s.chunks;
  attend::detail::parallel_for(items, attend::detail::max_threads(), [&](index_t item, int) {
    const index_t c = item % s.chunks, o = (item / s.chunks) % s.owners;
    const index_t b = item / (s.chunks * s.owners);
    const index_t j0 = std::max(s.lo[b], c * s.chunk);
    const index_t j1 = std::min(s.hi[b], (c + 1) * s.chunk);
    if (j1 <= j0) return;
    const auto [h0, h1] = owner_heads(owner, o, s.heads_q, s.group);
    float* dst = s.agg_row(b, o);
    if (reduce == head_reduce::max_score) {
      std::copy(s.row(b, h0) + j0, s.row(b, h0) + j1, dst + j0);
      for (index_t h = h0 + 1; h < h1; ++h) {
        const float* src = s.row(b, h);
        index_t j = j0;
        for (; j + w <= j1; j += w)
          xsimd::max(V::load_unaligned(dst + j), V::load_unaligned(src + j)).store_unaligned(dst + j);
        for (; j < j1; ++j) dst[j] = std::max(dst[j], src[j]);
      }
      return;
    }
    std::fill(dst + j0, dst + j1, 0.0f);
    for (index_t h = h0; h < h1; ++h) {
      const float lse = s.lse[b * s.heads_q + h];
      if (lse == -std::numeric_limits<float>::infinity()) continue;
      const float* src = s.row(b, h);
      const V l(lse);
      index_t j = j0;
      for (; j + w <= j1; j += w)
        (V::load_unaligned(dst + j) + simd::exp<Arch>(V::load_unaligned(src + j) - l))
            .store_unaligned(dst + j);
      for (; j < j1; ++j) dst[j] += std::exp(src[j] - lse);
    }
  });
}

/// Top-k per (batch, owner) of the scores (own lists) or aggregates (shared lists) into list
/// (b, o, tile) of `out`; lists per query head also keep their keys' scores (s.values).
inline void select_top(const score_buffers& s, const selection_spec& spec, index_t tile,
                       token_list_buffer& out) {
  const index_t items = s.batch * s.owners;
  attend::detail::parallel_for(items, attend::detail::max_threads(), [&](index_t item, int t) {
    const index_t b = item / s.owners, o = item % s.owners;
    const index_t lo = s.lo[b], n = s.hi[b] - lo;
    const float* src = (spec.owner == list_owner::q_head ? s.row(b, o) : s.agg_row(b, o)) + lo;
    index_t* dst = out.list(b, o, tile);
    float* values = s.list_k > 0 ? s.value_row(b, o) : nullptr;
    const index_t c = select::top_k_long(src, n, std::min(spec.k, out.capacity()), dst,
                                         s.topk + t * s.topk_stride, values);
    // One written entry past a short list: the union's branch-free fill reads it (and drops it).
    if (values != nullptr && c < s.list_k) values[c] = 0.0f;
    for (index_t e = 0; e < c; ++e) dst[e] += lo;
    out.count(b, o, tile) = c;
  });
}

/// The attend stage for tiles of one query (query_block == 1): row (b, i, h) attends to its
/// list of tile i, with logits score * logit_scale (the selection scored selection_scale * q . k,
/// kept with a per-head list (s.values) or in the head's score row; logit_scale = attention
/// scale / selection scale), united with the
/// implicit sinks and window, which are not candidates and are scored here. Reads the V rows of
/// the listed keys only. A row with no key gets o = 0 and lse = -inf.
///
/// A work unit is one KV head's query heads. With one list per query head, the unit merges the
/// heads' lists and, when the union is at most three quarters of their entries (heads that
/// chose mostly the same keys), runs once over the union, each head's logit -inf on the keys
/// it did not choose: each V row is read once per group. Otherwise each head runs on its own.
template <class Arch, class KV, class Rows>
struct scored_attention {
  view4<const float> q;
  Rows rows;
  view4<float> o;
  view3<float> lse;  // optional
  float scale = 1.0f;        // attention's
  float logit_scale = 1.0f;  // attention scale / selection scale
  index_t sinks = 0, window = 0;
  bool causal = true;
  index_t seq_k = 0;  // the longest sequence (bounds the implicit ranges)
  float* scratch = nullptr;  // [threads][stride], see floats_per_thread
  index_t stride = 0;

  /// Largest KV group whose per-head lists are merged (one owner bit per head).
  static constexpr index_t max_union_group = 32;

  /// Keys one unit may see at most: its heads' lists (one list when shared) plus the implicit
  /// ranges.
  static index_t max_keys(list_owner owner, index_t group, index_t capacity, index_t seq_k,
                          index_t sinks, index_t window) {
    const index_t lists = merges(owner, group) ? group : 1;
    return lists * capacity + std::min(sinks, seq_k) + std::min(window, seq_k);
  }
  /// Query heads in one work unit: a KV head's group.
  static index_t heads_per_unit(list_owner owner, index_t group) {
    return owner == list_owner::q_head && !merges(owner, group) ? 1 : group;
  }
  static index_t floats_per_thread(list_owner owner, index_t group, index_t keys, index_t dk,
                                   index_t dv) {
    const index_t heads = heads_per_unit(owner, group);
    attend::detail::bump b(nullptr);
    b.take<float>(keys * heads);       // logits, then weights: [head][key]
    b.take<float>(heads > 1 ? keys * heads : 0);  // weights [key][head] for pv_bcast
    b.take<const KV*>(keys);           // V rows
    b.take<const KV*>(keys);           // K rows of the implicit keys
    b.take<float>(heads * (dk + dv + 2));  // scaled queries, accumulators, max and sum
    const index_t merged = merges(owner, group) ? keys : 0;
    b.take<index_t>(merged);           // the union of the heads' lists
    b.take<std::uint32_t>(merged);     // bit r: head r listed the key
    return b.used();
  }

  void operator()(const score_buffers& s, const token_list_buffer& lists, index_t tile) const {
    const index_t keys = max_keys(lists.owner(), s.group, lists.capacity(), seq_k, sinks, window);
    const index_t heads = heads_per_unit(lists.owner(), s.group);
    const index_t units = s.heads_q / heads;
    const bool merge = merges(lists.owner(), s.group);
    attend::detail::parallel_for(s.batch * units, attend::detail::max_threads(),
                                 [&](index_t item, int t) {
      const index_t b = item / units, h0 = item % units * heads;
      attend::detail::bump bp(scratch + t * stride);
      unit_scratch ws;
      ws.w = bp.take<float>(keys * heads);
      ws.wt = heads > 1 ? bp.take<float>(keys * heads) : ws.w;
      ws.vrows = bp.take<const KV*>(keys);
      ws.krows = bp.take<const KV*>(keys);
      ws.qs = bp.take<float>(heads * (q.extent(3) + o.extent(3) + 2));
      ws.keys = keys;
      if (!merge) {  // one list for the unit's heads (shared, or a single head's own)
        const index_t own = owner_of(lists.owner(), h0, s.group);
        run(s, b, h0, heads, tile, lists.list(b, own, tile), lists.count(b, own, tile), nullptr,
            ws);
        return;
      }
      index_t* merged = bp.take<index_t>(keys);
      std::uint32_t* bits = bp.take<std::uint32_t>(keys);
      const index_t n = merge_lists(lists, b, h0, heads, tile, merged, bits);
      index_t entries = 0;
      for (index_t r = 0; r < heads; ++r) entries += lists.count(b, h0 + r, tile);
      if (union_pays(n, entries)) {
        run(s, b, h0, heads, tile, merged, n, bits, ws);
        return;
      }
      ws.wt = ws.w;  // one head at a time
      for (index_t r = 0; r < heads; ++r)
        run(s, b, h0 + r, 1, tile, lists.list(b, h0 + r, tile), lists.count(b, h0 + r, tile),
            nullptr, ws);
    });
  }

 private:
  static bool merges(list_owner owner, index_t group) {
    return owner == list_owner::q_head && group > 1 && group <= max_union_group;
  }

  struct unit_scratch {
    float* w = nullptr;   // [heads][keys]
    float* wt = nullptr;  // [keys][heads]
    const KV** vrows = nullptr;
    const KV** krows = nullptr;
    float* qs = nullptr;  // [heads][dk], then accumulators [heads][dv], max and sum [heads]
    index_t keys = 0;     // row length of w
  };

  /// Sorted union of the lists of heads [h0, h0 + heads) at tile; bits[e] marks the heads that
  /// listed merged[e]. Returns its length.
  static index_t merge_lists(const token_list_buffer& lists, index_t b, index_t h0,
                             index_t heads, index_t tile, index_t* merged,
                             std::uint32_t* bits) noexcept {
    const index_t* l[max_union_group];
    index_t c[max_union_group];
    for (index_t r = 0; r < heads; ++r) {
      l[r] = lists.list(b, h0 + r, tile);
      c[r] = lists.count(b, h0 + r, tile);
    }
    return merge_sorted_lists(l, c, heads, merged, bits);
  }

  /// Attention of heads [h0, h0 + heads) (one KV head's) over the implicit keys and `list`
  /// (count keys); owners, when given, marks which heads listed each entry (-inf logit for the
  /// others).
  void run(const score_buffers& s, index_t b, index_t h0, index_t heads, index_t tile,
           const index_t* list, index_t count, const std::uint32_t* owners,
           const unit_scratch& ws) const {
    const index_t seq_q = q.extent(1), dk = q.extent(3), dv = o.extent(3);
    const index_t keys = ws.keys, hk = h0 / s.group;
    float* w = ws.w;
    float* wt = ws.wt;
    const KV** vrows = ws.vrows;
    const KV** krows = ws.krows;
    float* qs = ws.qs;
    float* acc = qs + heads * dk;
    float* m = acc + heads * dv;
    float* l = m + heads;
    const index_t len = rows.length(b), pos = len - seq_q + tile;
    implicit_ranges imp = implicit_for(len, pos, pos, sinks, window);
    if (causal) imp.sink_end = std::max<index_t>(0, std::min(imp.sink_end, pos + 1));
    // Implicit keys first (sinks, then the window past them), scored against the scaled query.
    index_t n = 0;
    auto take_range = [&](index_t j0, index_t j1) {
      for (index_t j = j0; j < j1; ++j, ++n) {
        krows[n] = rows.k_row(b, j, hk);
        vrows[n] = rows.v_row(b, j, hk);
      }
    };
    take_range(0, imp.sink_end);
    take_range(std::max(imp.win_lo, imp.sink_end), imp.win_hi);
    if (n > 0)
      for (index_t r = 0; r < heads; ++r) {
        const float* qr = q.data() + q.offset(b, tile, h0 + r, 0);
        for (index_t d = 0; d < dk; ++d) qs[r * dk + d] = qr[d] * scale;
        simd::qk_dot<Arch, 1>(krows, n, qs + r * dk, 1, dk, w + r * keys, 1);
      }
    const float ninf = -std::numeric_limits<float>::infinity();
    for (index_t r = 0; r < heads; ++r) {
      float* dst = w + r * keys + n;
      if (s.list_k == 0) {  // a shared list: logits from the head's score row
        ATTEND_DCHECK(owners == nullptr);  // unions are of per-head lists, which keep values
        const float* logits = s.row(b, h0 + r);
        for (index_t e = 0; e < count; ++e) dst[e] = logits[list[e]] * logit_scale;
        continue;
      }
      const float* own = s.value_row(b, h0 + r);  // the head's list's scores, in list order
      if (owners == nullptr) {
        for (index_t e = 0; e < count; ++e) dst[e] = own[e] * logit_scale;
        continue;
      }
      // The union: each head's keys in order. Branch-free (about half the entries are a
      // head's own); the read index stays within the head's count + 1 written values.
      for (index_t e = 0, next = 0; e < count; ++e) {
        const bool mine = owners[e] >> r & 1u;
        const float x = own[std::min(next, s.list_k - 1)] * logit_scale;
        dst[e] = mine ? x : ninf;
        next += mine;
      }
    }
    for (index_t e = 0; e < count; ++e) vrows[n + e] = rows.v_row(b, list[e], hk);
    n += count;
    constexpr index_t ahead = 32, chunk = 16;  // V rows prefetched ahead of the sum
    for (index_t j = 0; j < std::min(n, ahead); ++j) simd::prefetch_row(vrows[j], dv);
    // Per head: weights exp(logit - max) in place, the sum kept for the normalisation.
    for (index_t r = 0; r < heads; ++r) {
      float* x = w + r * keys;
      m[r] = max_of<Arch>(x, n);
      if (m[r] == ninf) {  // no key (or all -inf): the row adds nothing
        std::fill(x, x + n, 0.0f);
        l[r] = 0.0f;
      } else {
        l[r] = exp_shifted<Arch>(x, n, m[r]);
      }
    }
    if (heads > 1)
      for (index_t j = 0; j < n; ++j)
        for (index_t r = 0; r < heads; ++r) wt[j * heads + r] = w[r * keys + j];
    std::fill(acc, acc + heads * dv, 0.0f);
    for (index_t j0 = 0; j0 < n; j0 += chunk) {
      const index_t kn = std::min(chunk, n - j0);
      for (index_t j = j0 + ahead; j < std::min(n, j0 + ahead + chunk); ++j)
        simd::prefetch_row(vrows[j], dv);
      simd::pv_bcast<Arch>(wt + j0 * heads, heads, heads, vrows + j0, kn, dv, acc, dv);
    }
    for (index_t r = 0; r < heads; ++r) {
      float* orow = o.data() + o.offset(b, tile, h0 + r, 0);
      const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
      for (index_t c = 0; c < dv; ++c) orow[c] = acc[r * dv + c] * inv;
      if (lse.has_value()) lse(b, h0 + r, tile) = l[r] > 0.0f ? m[r] + std::log(l[r]) : ninf;
    }
  }
};

/// Runs the whole pipeline for every query tile of q [batch, seq_q, heads_q, dk] over keys of
/// `rows` (lengths per batch), writing `out` (reshaped to the spec's owner and query block,
/// capacity k). `score(s, need_partials)` fills s.scores (and the partials when asked) for the
/// candidates [s.lo[b], s.hi[b]) of the current tile from s.fingerprints(); `attend_stage(s,
/// out, tile)`, when given, runs after each tile's selection (the attend stage). The scorer gets
/// `scorer_floats` of its own scratch in s.scorer, from the same workspace. A scorer that can
/// write the maximum over a KV group's heads into s.agg says so (`group_max_scorer`); it is
/// asked to (s.scorer_takes_group_max) for lists per KV head reduced by max_score.
template <class Arch, class KV, class Rows, class Scorer, class Attend = std::nullptr_t>
void select_tokens(const view4<const float>& q, const Rows& rows, index_t seq_k,
                   token_list_buffer& out, const selection_spec& spec, workspace* user_scratch,
                   Scorer&& score, const Attend& attend_stage = nullptr,
                   index_t scorer_floats = 0, bool group_max_scorer = false) {
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t dk = q.extent(3), heads_kv = rows.heads();
  ATTEND_CHECK(seq_k <= std::numeric_limits<std::int32_t>::max(), "attend::sparse: ", seq_k,
               " keys per sequence; the token selectors take at most 2^31 - 1");
  out.reshape(spec.owner, spec.query_block, batch, heads_q, heads_kv, seq_q,
              std::max<index_t>(1, spec.k));
  workspace local;
  workspace& ws = user_scratch ? *user_scratch : local;
  score_buffers s = carve_scores<Arch, KV>(ws, batch, heads_q, heads_kv, dk, seq_k, spec.owner,
                                           scorer_floats, out.capacity());
  s.scale = spec.scale;
  const bool shared = spec.owner != list_owner::q_head;
  const bool partials = shared && spec.reduce == head_reduce::softmax_sum;
  s.scorer_takes_group_max = group_max_scorer && spec.owner == list_owner::kv_head &&
                             spec.reduce == head_reduce::max_score;
  for (index_t tile = 0; tile < out.tiles(); ++tile) {
    const index_t t0 = tile * spec.query_block, t1 = std::min(seq_q, t0 + spec.query_block);
    for (index_t b = 0; b < batch; ++b) {
      const index_t len = rows.length(b);
      const auto [lo, hi] = candidate_range(len, len - seq_q + t0, len - seq_q + t1 - 1,
                                            spec.sinks, spec.window, spec.causal);
      s.lo[b] = lo;
      s.hi[b] = hi;
    }
    fingerprint(q, t0, t1, s);
    score(s, partials);
    if (partials) merge_partials(s);
    if (shared && !s.scorer_takes_group_max) reduce_heads<Arch>(s, spec.owner, spec.reduce);
    select_top(s, spec, tile, out);
    if constexpr (!std::is_same_v<Attend, std::nullptr_t>) attend_stage(s, out, tile);
  }
}

}  // namespace detail
}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_TOKEN_SCORES_HPP_
