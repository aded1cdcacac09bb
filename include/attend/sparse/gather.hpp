// gather_attention: exact softmax attention of each query over the keys of a sorted index list
// (token-level sparse attention), plus implicit always-on ranges (attention sinks, a recent
// window) that need not be listed. The keys live in a contiguous [batch, seq_k, heads_kv, dim]
// cache or in a paged cache. The operator is the engine of engine/flash.hpp with one more key
// source: `gather_keys` merges list + sinks + window into ascending tiles of K/V row pointers,
// so the engine's QK / PV micro-kernels read (and widen bf16/fp16) the gathered rows in place.
//
// Lists are per (batch, owner, query tile) (token_lists.hpp). A list owned by a KV head or by the
// layer serves a row block of all query heads of a group at once, so each gathered K/V row is
// loaded once per group. Decode calls with few row blocks split every list into chunks that run
// in parallel and are merged by LSE (flash-decoding), with splits chosen from the sizes only, so
// results never depend on the thread count.
#ifndef ATTEND_SPARSE_GATHER_HPP_
#define ATTEND_SPARSE_GATHER_HPP_

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
#include "../dense/attention.hpp"
#include "../engine/flash.hpp"
#include "../engine/masks.hpp"
#include "token_lists.hpp"

namespace attend::sparse {

/// A paged KV cache: token p of sequence b is slot p % page_size of page page_table(b, p /
/// page_size). Pages may be shared between sequences and appear in any order.
///   k_pages [pages, page_size, heads_kv, dk], v_pages [pages, page_size, heads_kv, dv]
///   page_table [batch, max_pages_per_sequence], lengths [batch] (tokens per sequence)
template <class KV>
struct paged_kv {
  view4<const KV> k_pages{};
  view4<const KV> v_pages{};
  view2<const index_t> page_table{};
  view1<const index_t> lengths{};
};

/// Parameters of gather_attention.
struct gather_params {
  /// Multiplies q . k; default 1/sqrt(head_dim).
  std::optional<float> scale{};
  /// Keys after a query's position are excluded (bottom-right aligned: query i of a call with
  /// seq_q queries sits at position kv_len - seq_q + i). Lists may hold such keys; they are
  /// masked, not an error.
  bool causal = true;
  /// Keys [0, sinks) are attended by every query without being listed.
  index_t sinks = 0;
  /// Keys [first - window + 1, last] are attended without being listed, where first / last are
  /// the positions of the first / last query of the list's tile: every query sees at least its
  /// `window` most recent keys (with causal, exactly those before it). 0 = off.
  index_t window = 0;
  /// [batch]: valid keys per sequence of a contiguous cache (<= seq_k). Empty = seq_k. Paged
  /// caches carry their own lengths.
  view1<const index_t> kv_lens{};
  /// Optional output [batch, heads_q, seq_q]: natural-log LSE of each row; -inf for an empty row.
  view3<float> lse{};
  /// Optional reusable scratch.
  workspace* scratch = nullptr;
};

namespace detail {

using ::attend::detail::bump;
using ::attend::detail::check_disjoint;
using ::attend::detail::check_extents;
using ::attend::detail::check_output;
using ::attend::detail::check_tensor;
using ::attend::detail::max_threads;
using ::attend::detail::parallel_for;
using ::attend::detail::shape_string;

/// K/V rows of a contiguous [batch, seq_k, heads_kv, dim] cache.
template <class KV>
struct contiguous_rows {
  view4<const KV> k, v;
  const index_t* lens = nullptr;

  index_t heads() const noexcept { return k.extent(2); }
  index_t length(index_t b) const noexcept { return lens ? lens[b] : k.extent(1); }
  const KV* k_row(index_t b, index_t pos, index_t h) const noexcept {
    return k.data() + b * k.stride(0) + pos * k.stride(1) + h * k.stride(2);
  }
  const KV* v_row(index_t b, index_t pos, index_t h) const noexcept {
    return v.data() + b * v.stride(0) + pos * v.stride(1) + h * v.stride(2);
  }
  index_t k_head_stride() const noexcept { return k.stride(2); }
  index_t v_head_stride() const noexcept { return v.stride(2); }
  bool interleaved() const noexcept { return k.stride(2) < k.stride(1); }
  index_t k_elems() const noexcept { return k.extent(3); }
  index_t v_elems() const noexcept { return v.extent(3); }
};

/// K/V rows of a paged cache.
template <class KV>
struct paged_rows {
  view4<const KV> k, v;
  view2<const index_t> table;
  const index_t* lens = nullptr;

  index_t heads() const noexcept { return k.extent(2); }
  index_t length(index_t b) const noexcept { return lens[b]; }
  const KV* k_row(index_t b, index_t pos, index_t h) const noexcept {
    const index_t page = table(b, pos / k.extent(1));
    return k.data() + page * k.stride(0) + (pos % k.extent(1)) * k.stride(1) + h * k.stride(2);
  }
  const KV* v_row(index_t b, index_t pos, index_t h) const noexcept {
    const index_t page = table(b, pos / v.extent(1));
    return v.data() + page * v.stride(0) + (pos % v.extent(1)) * v.stride(1) + h * v.stride(2);
  }
  index_t k_head_stride() const noexcept { return k.stride(2); }
  index_t v_head_stride() const noexcept { return v.stride(2); }
  bool interleaved() const noexcept { return k.stride(2) < k.stride(1); }
  index_t k_elems() const noexcept { return k.extent(3); }
  index_t v_elems() const noexcept { return v.extent(3); }
};

/// The ascending union of [0, sink_end), a sorted list and [win_lo, win_hi), restricted to
/// [lo, hi), each position once.
struct position_merge {
  const index_t* list = nullptr;
  index_t count = 0;
  index_t sink_end = 0, win_lo = 0, win_hi = 0;
  index_t s = 0, i = 0, w = 0, hi = 0;

  void start(index_t lo, index_t end) noexcept {
    hi = end;
    s = lo;
    w = std::max(win_lo, lo);
    i = static_cast<index_t>(std::lower_bound(list, list + count, lo) - list);
  }
  /// The next position, or hi when the union is exhausted.
  index_t next() noexcept {
    constexpr index_t none = std::numeric_limits<index_t>::max();
    const index_t a = s < sink_end ? s : none;
    const index_t b = i < count ? list[i] : none;
    const index_t c = w < win_hi ? w : none;
    const index_t p = std::min(a, std::min(b, c));
    if (p >= hi) return hi;
    if (a == p) ++s;
    if (b == p) ++i;
    if (c == p) ++w;
    return p;
  }
};

/// Key source over the union of a list and the implicit ranges, for one KV head per block
/// (rb.kv_heads == 1). `skip` / `take` select a chunk of the union (split-K decode). Gathered
/// rows are scattered, so the rows of each tile are prefetched into L2 one tile ahead (K, and V
/// when `prefetch_v`), deeper than the decode kernel's own few-key lookahead.
template <class KV, class Rows>
struct gather_keys {
  Rows rows;
  const index_t* list = nullptr;
  index_t count = 0;
  index_t sink_end = 0, win_lo = 0, win_hi = 0;
  index_t skip = 0;
  index_t take = std::numeric_limits<index_t>::max();
  bool prefetch_v = true;

  template <class Mask, class Visit>
  void for_each_tile(const engine::row_block& rb, const Mask& mask,
                     const engine::tile_buffers<KV>& buf, Visit&& visit) const noexcept {
    const auto range = mask.key_range(rb, 0, rows.length(rb.batch));
    const index_t lo = range.first, hi = range.second;  // (lambdas cannot capture bindings)
    position_merge m{list, count, sink_end, win_lo, win_hi};
    m.start(lo, hi);
    for (index_t s = 0; s < skip; ++s)
      if (m.next() >= hi) return;
    index_t left = take;
    const index_t kvh = rb.kv_head;
    auto fill = [&](int set, engine::kv_tile<KV>& t, bool ahead) {
      const index_t off = set * buf.capacity;
      for (;;) {
        index_t n = 0;
        while (n < buf.capacity && left > 0) {
          const index_t p = m.next();
          if (p >= hi) {
            left = 0;
            break;
          }
          buf.pos[off + n] = p;
          buf.k[off + n] = rows.k_row(rb.batch, p, kvh);
          buf.v[off + n] = rows.v_row(rb.batch, p, kvh);
          ++n;
          --left;
        }
        if (n == 0) {
          t.count = 0;
          return;
        }
        const engine::tile_kind kind = mask.classify(rb, buf.pos[off], buf.pos[off + n - 1]);
        if (kind == engine::tile_kind::empty) continue;
        if (ahead) {
          simd::prefetch_rows_l2(buf.k + off, n, index_t{0}, rows.k_elems());
          if (prefetch_v) simd::prefetch_rows_l2(buf.v + off, n, index_t{0}, rows.v_elems());
        }
        t = engine::kv_tile<KV>{n,
                                kind,
                                buf.pos + off,
                                buf.k + off,
                                buf.v + off,
                                rows.k_head_stride(),
                                rows.v_head_stride(),
                                rows.interleaved()};
        return;
      }
    };
    engine::kv_tile<KV> cur, next;
    fill(0, cur, false);
    for (int set = 1; cur.count > 0; set ^= 1) {
      fill(set, next, true);
      cur.next_count = next.count;
      cur.next_k = next.k;
      cur.next_v = next.v;
      visit(static_cast<const engine::kv_tile<KV>&>(cur));
      cur = next;
    }
  }
};

/// The implicit ranges of a tile whose queries sit at positions [first, last].
struct implicit_ranges {
  index_t sink_end = 0, win_lo = 0, win_hi = 0;
};

inline implicit_ranges implicit_for(index_t len, index_t first, index_t last, index_t sinks,
                                    index_t window) noexcept {
  implicit_ranges r;
  r.sink_end = std::min(sinks, len);
  if (window > 0) {
    r.win_lo = std::max<index_t>(0, first - window + 1);
    r.win_hi = std::max(r.win_lo, std::min(len, last + 1));
  }
  return r;
}

/// How the rows of a gather call are cut into row blocks: one list owner's heads (a query head,
/// or a KV group's heads) times the queries of one tile, cut to at most max_rows rows.
struct gather_plan {
  index_t batch = 0, heads_q = 0, heads_kv = 0, group = 1, seq_q = 0;
  list_owner owner = list_owner::kv_head;
  index_t query_block = 1, tiles = 1;
  index_t heads_per_block = 1, head_chunks = 1, units = 1, queries_per_block = 1, subs = 1;

  gather_plan() = default;
  gather_plan(index_t b, index_t hq, index_t hkv, index_t sq, list_owner own, index_t qb,
              index_t max_rows)
      : batch(b), heads_q(hq), heads_kv(hkv), group(hq / hkv), seq_q(sq), owner(own) {
    query_block = std::min(qb, seq_q);
    tiles = tile_count(seq_q, qb);
    heads_per_block = owner == list_owner::q_head ? 1 : std::min(group, max_rows);
    head_chunks = owner == list_owner::q_head ? 1 : (group + heads_per_block - 1) / heads_per_block;
    units = owner == list_owner::q_head ? heads_q : heads_kv * head_chunks;
    queries_per_block = std::max<index_t>(1, max_rows / heads_per_block);
    subs = (query_block + queries_per_block - 1) / queries_per_block;
  }

  index_t blocks() const noexcept { return batch * units * tiles * subs; }

  /// Block `item` (last tiles first: the heaviest under causality); false when the block holds
  /// no query (short last tile). Fills the block (all but pos0), its list owner and tile.
  bool block(index_t item, engine::row_block& rb, index_t& own, index_t& tile) const noexcept {
    const index_t per_tile = batch * units * subs;
    tile = tiles - 1 - item / per_tile;
    index_t rest = item % per_tile;
    const index_t sub = rest % subs;
    rest /= subs;
    const index_t unit = rest % units;
    rb.batch = rest / units;
    rb.group = group;
    if (owner == list_owner::q_head) {
      rb.kv_head = unit / group;
      rb.head0 = unit;
      rb.heads = 1;
      own = unit;
    } else {
      const index_t chunk = unit % head_chunks;
      rb.kv_head = unit / head_chunks;
      rb.head0 = rb.kv_head * group + chunk * heads_per_block;
      rb.heads = std::min(heads_per_block, group - chunk * heads_per_block);
      own = owner == list_owner::kv_head ? rb.kv_head : 0;
    }
    rb.kv_heads = 1;
    const index_t t0 = tile * query_block;
    const index_t t1 = std::min(seq_q, t0 + query_block);
    rb.query0 = t0 + sub * queries_per_block;
    if (rb.query0 >= t1) return false;
    rb.queries = std::min(queries_per_block, t1 - rb.query0);
    return true;
  }

  /// Positions of the first and last query of a tile.
  std::pair<index_t, index_t> tile_positions(index_t tile, index_t len) const noexcept {
    const index_t t0 = tile * query_block;
    const index_t t1 = std::min(seq_q, t0 + query_block);
    return {len - seq_q + t0, len - seq_q + t1 - 1};
  }
};

/// The lists as the driver reads them: the owner kind that lays out row blocks and, per
/// (batch, owner, tile), a sorted list (`thread` indexes per-thread buffers).
struct direct_lists {
  const token_lists* lists = nullptr;
  list_owner layout() const noexcept { return lists->owner; }
  index_t longest() const noexcept {
    index_t n = 0;
    for (index_t b = 0; b < lists->indices.extent(0); ++b)
      for (index_t w = 0; w < lists->indices.extent(1); ++w)
        for (index_t t = 0; t < lists->indices.extent(2); ++t) n = std::max(n, lists->count(b, w, t));
    return n;
  }
  std::pair<const index_t*, index_t> get(index_t b, index_t own, index_t tile, int) const noexcept {
    return {lists->list(b, own, tile), lists->count(b, own, tile)};
  }
};

/// Whether running a KV group's per-head lists over their union pays: the union (`merged`
/// keys) is at most three quarters of the lists' `entries`, so each shared K/V row read once
/// outweighs the heads' extra masked keys.
inline bool union_pays(index_t merged, index_t entries) noexcept {
  return 4 * merged <= 3 * entries;
}

/// Sorted union of the ascending lists l[0, n) (lengths c); bits[e] gets bit g set when list g
/// holds out[e] (n <= 32). Returns the union's length.
inline index_t merge_sorted_lists(const index_t* const* l, const index_t* c, index_t n,
                                  index_t* out, std::uint32_t* bits) noexcept {
  ATTEND_DCHECK(n <= 32);
  index_t at[32] = {};
  constexpr index_t none = std::numeric_limits<index_t>::max();
  index_t m = 0;
  for (;;) {  // k-way merge
    index_t p = none;
    for (index_t g = 0; g < n; ++g)
      if (at[g] < c[g]) p = std::min(p, l[g][at[g]]);
    if (p == none) return m;
    std::uint32_t who = 0;
    for (index_t g = 0; g < n; ++g)
      if (at[g] < c[g] && l[g][at[g]] == p) {
        ++at[g];
        who |= std::uint32_t{1} << g;
      }
    out[m] = p;
    bits[m++] = who;
  }
}

/// Per-query-head lists served one KV group per row block (decode): the union of the group's
/// lists, merged once per call (in parallel) into `buffer`; each row then masks the keys outside
/// its own list (own_list_mask). Every gathered K/V row is loaded once for the group instead of
/// once per head.
struct group_union_lists {
  const token_lists* lists = nullptr;
  index_t group = 1, heads_kv = 1;
  index_t* buffer = nullptr;  // [batch][heads_kv][tiles][group * capacity] merged lists
  index_t* counts = nullptr;  // [batch][heads_kv][tiles] their lengths
  std::uint32_t* owners = nullptr;  // like buffer: bit g set when head g of the group lists the key

  index_t tiles() const noexcept { return lists->indices.extent(2); }
  index_t units() const noexcept { return lists->indices.extent(0) * heads_kv * tiles(); }
  index_t unit_of(index_t b, index_t hk, index_t tile) const noexcept {
    return (b * heads_kv + hk) * tiles() + tile;
  }
  /// Merges every unit's lists (each key once); returns (sum of union lengths, sum of entries).
  std::pair<index_t, index_t> build() const {
    ATTEND_DCHECK(group <= 16);  // merge cursors and owner bits below
    const index_t cap = group * lists->capacity();
    parallel_for(units(), max_threads(), [&](index_t u, int) {
      const index_t tile = u % tiles(), hk = (u / tiles()) % heads_kv, b = u / (tiles() * heads_kv);
      const index_t* l[16];
      index_t c[16];
      for (index_t g = 0; g < group; ++g) {
        l[g] = lists->list(b, hk * group + g, tile);
        c[g] = lists->count(b, hk * group + g, tile);
      }
      counts[u] = merge_sorted_lists(l, c, group, buffer + u * cap, owners + u * cap);
    });
    index_t merged = 0, total = 0;
    for (index_t u = 0; u < units(); ++u) merged += counts[u];
    for (index_t b = 0; b < lists->indices.extent(0); ++b)
      for (index_t h = 0; h < lists->indices.extent(1); ++h)
        for (index_t t = 0; t < tiles(); ++t) total += lists->count(b, h, t);
    return {merged, total};
  }

  list_owner layout() const noexcept { return list_owner::kv_head; }
  index_t longest() const noexcept {
    index_t n = 0;
    for (index_t u = 0; u < units(); ++u) n = std::max(n, counts[u]);
    return n;
  }
  std::pair<const index_t*, index_t> get(index_t b, index_t hk, index_t tile,
                                         int) const noexcept {
    const index_t u = unit_of(b, hk, tile);
    return {buffer + u * group * lists->capacity(), counts[u]};
  }
};

/// Score hook of the group-union path: a row keeps a key only if its own head's list (or the
/// implicit sinks / window) holds it; other keys of the union get -inf. One merge walk per tile
/// finds each key's entry in the union and its owner bits.
template <class Rows>
struct own_list_mask {
  static constexpr bool is_identity = false;
  const group_union_lists* unions = nullptr;
  Rows rows;
  index_t seq_q = 1, sinks = 0, window = 0;

  template <class Arch>
  void apply(const engine::row_block& rb, const engine::row_info& ri, const index_t* kpos,
             index_t count, float* st, index_t ld) const noexcept {
    const index_t qb = unions->lists->query_block, tile = ri.query[0] / qb;
    const index_t len = rows.length(rb.batch);
    const index_t first = len - seq_q + tile * qb;
    const index_t last = len - seq_q + std::min(seq_q, (tile + 1) * qb) - 1;
    const implicit_ranges ir = implicit_for(len, first, last, sinks, window);
    const auto [list, n] = unions->get(rb.batch, rb.kv_head, tile, 0);
    const std::uint32_t* bits =
        unions->owners + unions->unit_of(rb.batch, rb.kv_head, tile) * unions->group *
                             unions->lists->capacity();
    const index_t n_rows = rb.rows(), head0 = rb.kv_head * unions->group;
    index_t u = static_cast<index_t>(std::lower_bound(list, list + n, kpos[0]) - list);
    for (index_t j = 0; j < count; ++j) {
      const index_t p = kpos[j];
      while (u < n && list[u] < p) ++u;
      std::uint32_t keep = u < n && list[u] == p ? bits[u] : 0;
      if (p < ir.sink_end || (p >= ir.win_lo && p < ir.win_hi)) keep = ~std::uint32_t{0};
      float* col = st + j * ld;
      for (index_t r = 0; r < n_rows; ++r)
        col[r] = (keep >> (ri.head[r] - head0)) & 1u ? col[r] : engine::neg_inf;
    }
  }
};

/// Split-K of decode-shaped gathers (few row blocks): at most this many splits per block.
inline index_t max_gather_splits(index_t seq_q, index_t blocks) noexcept {
  return seq_q <= 16 && blocks < 32 ? (32 + blocks - 1) / blocks : 1;
}

/// Floats gather_forward takes from its workspace (after the caller's `front` floats): the
/// threads' engine scratch and the split-K partial rows. Depends on shapes only, not on lists,
/// so a caller can reserve it together with buffers of its own before it builds them.
template <class Arch, class KV>
index_t gather_forward_floats(const gather_plan& plan, index_t dk, index_t dv) {
  const index_t max_rows = engine::max_rows_for(dk, dv);
  const index_t splits = max_gather_splits(plan.seq_q, plan.blocks());
  const index_t partials =
      splits > 1 ? plan.batch * plan.heads_q * plan.seq_q * splits * (dv + 1) : 0;
  return engine::scratch<Arch, KV>::floats(max_rows, dk, dv) * max_threads() + partials;
}

/// The gather driver, generic over the variant (the public operator uses a causal / no mask;
/// HyperAttention adds a per-key log-weight). q [batch, seq_q, heads_q, dk], o [batch, seq_q,
/// heads_q, dv], lse optional [batch, heads_q, seq_q]. Inputs must be validated. The first
/// `front` floats of the workspace belong to the caller (the merged group lists) and are kept.
template <class Arch, index_t DK, index_t DV, class KV, class Rows, class Lists, class Variant>
void gather_forward(const view4<const float>& q, const Rows& rows, index_t dv,
                    const view4<float>& o, const view3<float>& lse, const Lists& lists,
                    index_t query_block, float scale, index_t sinks, index_t window,
                    const Variant& var, workspace* user_scratch, index_t front = 0) {
  using scratch_t = engine::scratch<Arch, KV>;
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t dk = q.extent(3), heads_kv = rows.heads();
  const index_t max_rows = engine::max_rows_for(dk, dv);
  const gather_plan plan(batch, heads_q, heads_kv, seq_q, lists.layout(), query_block, max_rows);
  auto length_of = [&](index_t b) { return rows.length(b); };

  // Split-K for decode-shaped calls with few row blocks: chunks of the merged key stream, sized
  // from the lists, never from the thread count.
  index_t splits = 1, split_len = 0;
  const index_t blocks = plan.blocks();
  if (max_gather_splits(seq_q, blocks) > 1) {
    const index_t longest = lists.longest() + sinks + window + plan.query_block;
    splits = std::min(max_gather_splits(seq_q, blocks), (longest + 1023) / 1024);
    splits = std::max<index_t>(1, splits);
    const index_t tsize = engine::kv_tile_size<Arch>;
    split_len = ((longest + splits - 1) / splits + tsize - 1) / tsize * tsize;
  }

  const int threads = max_threads();
  const index_t per_thread = scratch_t::floats(max_rows, dk, dv);
  const index_t partial_row = dv + 1;
  workspace local;
  workspace& ws = user_scratch ? *user_scratch : local;
  const index_t own_floats = gather_forward_floats<Arch, KV>(plan, dk, dv);
  ATTEND_DCHECK(front == 0 || ws.capacity() >= front + own_floats);  // else reserve drops them
  float* const base = ws.reserve(front + own_floats) + front;
  float* const partial = base + per_thread * threads;
  const engine::problem<KV> pb{q, scale, dk, dv};
  auto scratch_of = [&](int t) {
    bump b(base + t * per_thread);
    return scratch_t::carve(b, max_rows, dk, dv);
  };
  // Sets up the key source of a block; false for blocks without queries.
  auto source_of = [&](index_t item, int thread, engine::row_block& rb,
                       gather_keys<KV, Rows>& keys) {
    index_t own = 0, tile = 0;
    if (!plan.block(item, rb, own, tile)) return false;
    const index_t len = length_of(rb.batch);
    rb.pos0 = len - seq_q + rb.query0;
    const auto [first, last] = plan.tile_positions(tile, len);
    const implicit_ranges ir = implicit_for(len, first, last, sinks, window);
    keys.rows = rows;
    const auto l = lists.get(rb.batch, own, tile, thread);
    keys.list = l.first;
    keys.count = l.second;
    keys.sink_end = ir.sink_end;
    keys.win_lo = ir.win_lo;
    keys.win_hi = ir.win_hi;
    return true;
  };

  if (splits == 1) {
    parallel_for(blocks, threads, [&](index_t item, int t) {
      engine::row_block rb;
      gather_keys<KV, Rows> keys;
      if (!source_of(item, t, rb, keys)) return;
      engine::run_rows<Arch, DK, DV>(pb, rb, keys, var, scratch_of(t),
                                     [&](index_t, const engine::row_ctx& ctx, float* row, float l) {
                                       engine::finish_row<Arch>(var, ctx, row, l, dv, o, lse);
                                     });
    });
    return;
  }

  parallel_for(blocks * splits, threads, [&](index_t item, int t) {
    const index_t s = item % splits;
    engine::row_block rb;
    gather_keys<KV, Rows> keys;
    if (!source_of(item / splits, t, rb, keys)) return;
    keys.skip = s * split_len;
    keys.take = split_len;
    engine::run_rows<Arch, DK, DV>(
        pb, rb, keys, var, scratch_of(t),
        [&](index_t, const engine::row_ctx& ctx, const float* row, float l) {
          float* dst = partial + (((ctx.batch * heads_q + ctx.head) * seq_q + ctx.query) * splits +
                                  s) * partial_row;
          std::copy(row, row + dv, dst);
          dst[dv] = l;
        });
  });
  parallel_for(batch * heads_q * seq_q, threads, [&](index_t row, int) {
    float* acc = partial + row * splits * partial_row;
    float acc_lse = acc[dv];
    for (index_t s = 1; s < splits; ++s) {
      const float* st = acc + s * partial_row;
      engine::merge_state<Arch>(acc, acc_lse, st, st[dv], dv);
    }
    const index_t b = row / (heads_q * seq_q), h = (row / seq_q) % heads_q, i = row % seq_q;
    engine::finish_row<Arch>(var, engine::row_ctx{b, h, i, length_of(b) - seq_q + i}, acc,
                             acc_lse, dv, o, lse);
  });
}

/// Checks a token_lists view against a problem: shapes, counts, and that every list is strictly
/// ascending inside [0, kv_len). Throws attend::invalid_argument naming the list.
template <class LenFn>
void validate_lists(const char* op, const token_lists& lists, index_t batch, index_t heads_q,
                    index_t heads_kv, index_t seq_q, LenFn&& length) {
  ATTEND_CHECK(lists.query_block >= 1, op, ": lists.query_block (", lists.query_block,
               ") must be >= 1");
  check_tensor(op, "lists.indices", lists.indices);
  const index_t owners = owner_count(lists.owner, heads_q, heads_kv);
  const index_t tiles = tile_count(seq_q, lists.query_block);
  check_extents(op, "lists.indices", lists.indices,
                {batch, owners, tiles, lists.indices.extent(3)});
  if (lists.counts.has_value()) {
    check_tensor(op, "lists.counts", lists.counts);
    check_extents(op, "lists.counts", lists.counts, {batch, owners, tiles});
  }
  const index_t cap = lists.capacity();
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = length(b);
    for (index_t w = 0; w < owners; ++w)
      for (index_t t = 0; t < tiles; ++t) {
        const index_t n = lists.count(b, w, t);
        ATTEND_CHECK(n >= 0 && n <= cap, op, ": list (batch ", b, ", owner ", w, ", tile ", t,
                     ") has count ", n, ", outside [0, capacity = ", cap, "]");
        const index_t* l = lists.list(b, w, t);
        for (index_t j = 0; j < n; ++j) {
          ATTEND_CHECK(l[j] >= 0 && l[j] < len, op, ": list (batch ", b, ", owner ", w, ", tile ",
                       t, ") entry ", j, " = ", l[j], " is outside [0, kv_len = ", len, ")");
          if (j > 0) {
            ATTEND_CHECK(l[j] != l[j - 1], op, ": list (batch ", b, ", owner ", w, ", tile ", t,
                         ") repeats key ", l[j], " at entries ", j - 1, " and ", j);
            ATTEND_CHECK(l[j] > l[j - 1], op, ": list (batch ", b, ", owner ", w, ", tile ", t,
                         ") is not sorted: entry ", j - 1, " = ", l[j - 1], " > entry ", j,
                         " = ", l[j]);
          }
        }
      }
  }
}

/// Checks q, o, lse and the scalar parameters shared by both cache kinds.
inline void validate_gather_common(const char* op, const view4<const float>& q,
                                   const view4<float>& o, index_t heads_kv, index_t dk_cache,
                                   index_t dv, const gather_params& p) {
  check_tensor(op, "q", q);
  check_output(op, "o", o);
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  ATTEND_CHECK(heads_q % heads_kv == 0, op, ": q heads (", heads_q,
               ") must be a multiple of kv heads (", heads_kv, ")");
  ATTEND_CHECK(dk_cache == q.extent(3), op, ": head dim of k (", dk_cache,
               ") must equal that of q (", q.extent(3), ")");
  check_extents(op, "o", o, {batch, seq_q, heads_q, dv});
  check_disjoint(op, "o", o, "q", q);
  if (p.scale) ATTEND_CHECK(std::isfinite(*p.scale), op, ": scale must be finite (", *p.scale, ")");
  ATTEND_CHECK(p.sinks >= 0 && p.window >= 0, op, ": sinks (", p.sinks, ") and window (",
               p.window, ") must be >= 0");
  if (p.lse.has_value()) {
    check_output(op, "lse", p.lse);
    check_extents(op, "lse", p.lse, {batch, heads_q, seq_q});
    check_disjoint(op, "lse", p.lse, "o", o);
    check_disjoint(op, "lse", p.lse, "q", q);
  }
}

/// Checks everything of a contiguous-cache gather except the lists.
template <class KV>
void validate_gather_inputs(const char* op, const view4<const float>& q, const view4<const KV>& k,
                            const view4<const KV>& v, const view4<float>& o,
                            const gather_params& p) {
  check_tensor(op, "k", k);
  check_tensor(op, "v", v);
  const index_t batch = q.extent(0), seq_k = k.extent(1);
  ATTEND_CHECK(k.extent(0) == batch && v.extent(0) == batch, op, ": batch of q (", batch,
               "), k (", k.extent(0), ") and v (", v.extent(0), ") differ");
  ATTEND_CHECK(v.extent(1) == seq_k && v.extent(2) == k.extent(2), op, ": v ", shape_string(v),
               " must match k ", shape_string(k), " in seq_k and heads_kv");
  validate_gather_common(op, q, o, k.extent(2), k.extent(3), v.extent(3), p);
  check_disjoint(op, "o", o, "k", k);
  check_disjoint(op, "o", o, "v", v);
  if (p.lse.has_value()) {
    check_disjoint(op, "lse", p.lse, "k", k);
    check_disjoint(op, "lse", p.lse, "v", v);
  }
  if (p.kv_lens.has_value()) {
    check_tensor(op, "kv_lens", p.kv_lens);
    check_extents(op, "kv_lens", p.kv_lens, {batch});
    for (index_t b = 0; b < batch; ++b)
      ATTEND_CHECK(p.kv_lens(b) >= 0 && p.kv_lens(b) <= seq_k, op, ": kv_lens[", b, "] = ",
                   p.kv_lens(b), " is outside [0, seq_k = ", seq_k, "]");
  }
}

template <class KV>
void validate_gather(const char* op, const view4<const float>& q, const view4<const KV>& k,
                     const view4<const KV>& v, const view4<float>& o, const token_lists& lists,
                     const gather_params& p) {
  validate_gather_inputs(op, q, k, v, o, p);
  const index_t seq_k = k.extent(1);
  validate_lists(op, lists, q.extent(0), q.extent(2), k.extent(2), q.extent(1),
                 [&](index_t b) { return p.kv_lens.has_value() ? p.kv_lens(b) : seq_k; });
}

/// Checks a paged cache's key pages, page table and lengths for `batch` sequences: every
/// length within the table, every page a sequence uses inside [0, pages).
template <class KV>
void validate_page_table(const char* op, index_t batch, const paged_kv<KV>& c) {
  check_tensor(op, "k_pages", c.k_pages);
  check_tensor(op, "page_table", c.page_table);
  check_tensor(op, "lengths", c.lengths);
  check_extents(op, "page_table", c.page_table, {batch, c.page_table.extent(1)});
  check_extents(op, "lengths", c.lengths, {batch});
  const index_t pages = c.k_pages.extent(0), page = c.k_pages.extent(1);
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = c.lengths(b);
    ATTEND_CHECK(len >= 0 && len <= c.page_table.extent(1) * page, op, ": lengths[", b, "] = ",
                 len, " is outside [0, ", c.page_table.extent(1) * page,
                 " = page_table columns x page size]");
    for (index_t g = 0; g < (len + page - 1) / page; ++g)
      ATTEND_CHECK(c.page_table(b, g) >= 0 && c.page_table(b, g) < pages, op, ": page_table(",
                   b, ", ", g, ") = ", c.page_table(b, g), " is outside [0, pages = ", pages,
                   ")");
  }
}

/// Checks everything of a paged-cache gather except the lists.
template <class KV>
void validate_paged_inputs(const char* op, const view4<const float>& q, const paged_kv<KV>& c,
                           const view4<float>& o, const gather_params& p) {
  validate_page_table(op, q.extent(0), c);
  check_tensor(op, "v_pages", c.v_pages);
  ATTEND_CHECK(c.v_pages.extent(0) == c.k_pages.extent(0) &&
                   c.v_pages.extent(1) == c.k_pages.extent(1) &&
                   c.v_pages.extent(2) == c.k_pages.extent(2),
               op, ": v_pages ", shape_string(c.v_pages), " must match k_pages ",
               shape_string(c.k_pages), " in pages, page size and heads");
  ATTEND_CHECK(!p.kv_lens.has_value(), op,
               ": kv_lens must be empty for a paged cache (its lengths are used)");
  validate_gather_common(op, q, o, c.k_pages.extent(2), c.k_pages.extent(3),
                         c.v_pages.extent(3), p);
  check_disjoint(op, "o", o, "k_pages", c.k_pages);
  check_disjoint(op, "o", o, "v_pages", c.v_pages);
}

template <class KV>
void validate_paged(const char* op, const view4<const float>& q, const paged_kv<KV>& c,
                    const view4<float>& o, const token_lists& lists, const gather_params& p) {
  validate_paged_inputs(op, q, c, o, p);
  validate_lists(op, lists, q.extent(0), q.extent(2), c.k_pages.extent(2), q.extent(1),
                 [&](index_t b) { return c.lengths(b); });
}

/// The mask of gather_params: causal or nothing.
inline engine::standard_mask gather_mask(bool causal) noexcept {
  engine::standard_mask m;
  m.right = causal ? 0 : -1;
  return m;
}

template <class Arch, class KV, class Rows>
void gather_dispatch(const view4<const float>& q, const Rows& rows, index_t dv,
                     const view4<float>& o, const token_lists& lists, const gather_params& p) {
  const float scale = p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(q.extent(3)));
  const engine::standard_mask mask = gather_mask(p.causal);
  const index_t group = q.extent(2) / rows.heads();
  // Per-head lists at decode: when the heads of a KV group chose mostly the same keys (the
  // union is at most three quarters of all their entries), one block per group runs over the
  // union, so each K/V row is read once per group; each row still sees exactly its own list.
  // The test depends on the lists only.
  bool group_union = lists.owner == list_owner::q_head && group > 1 && group <= 16 &&
                     engine::uses_dot_kernel<Arch>(group * std::min(lists.query_block, q.extent(1)));
  // The merged lists, their lengths and owner bits live at the front of the gather workspace,
  // reserved together with what gather_forward takes after them (no allocation with p.scratch).
  group_union_lists gl{&lists, group, rows.heads()};
  workspace local;
  workspace& ws = p.scratch ? *p.scratch : local;
  index_t front = 0;
  if (group_union) {
    const index_t units = gl.units(), merged_cap = units * group * lists.capacity();
    auto carve = [&](bump& b) {
      gl.buffer = b.take<index_t>(merged_cap);
      gl.counts = b.take<index_t>(units);
      gl.owners = b.take<std::uint32_t>(merged_cap);
    };
    bump counter(nullptr);
    carve(counter);
    front = counter.used();
    const gather_plan plan(q.extent(0), q.extent(2), rows.heads(), q.extent(1), gl.layout(),
                           lists.query_block, engine::max_rows_for(q.extent(3), dv));
    bump b(ws.reserve(front + gather_forward_floats<Arch, KV>(plan, q.extent(3), dv)));
    carve(b);
    const auto [merged, total] = gl.build();
    group_union = union_pays(merged, total);
  }
  attend::detail::dispatch_head_dims(q.extent(3), dv, [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    if (group_union) {
      const own_list_mask<Rows> own{&gl, rows, q.extent(1), p.sinks, p.window};
      const auto var = engine::make_variant(own, mask);
      gather_forward<Arch, DK, DV, KV>(q, rows, dv, o, p.lse, gl, lists.query_block, scale,
                                       p.sinks, p.window, var, &ws, front);
    } else {
      const auto var = engine::make_variant(engine::no_score_mod{}, mask);
      gather_forward<Arch, DK, DV, KV>(q, rows, dv, o, p.lse, direct_lists{&lists},
                                       lists.query_block, scale, p.sinks, p.window, var, &ws);
    }
  });
}

}  // namespace detail

/// Exact attention over listed keys plus implicit sinks / window (token-level sparse attention).
///
/// \param q [batch, seq_q, heads_q, head_dim] float
/// \param k [batch, seq_k, heads_kv, head_dim], v [batch, seq_k, heads_kv, head_dim_v]: float,
///        bf16 or fp16 (one type), any strides with a contiguous last axis
/// \param o [batch, seq_q, heads_q, head_dim_v] float output
/// \param lists per (batch, owner, tile) sorted key positions (token_lists.hpp); query i of head
///        h attends to list (b, owner_of(h), i / query_block) united with [0, sinks) and the
///        tile's window, restricted by causality (p.causal)
/// A row that sees no key gets o = 0 and lse = -inf. Throws attend::invalid_argument on bad
/// shapes or lists (entries outside [0, kv_len), unsorted, repeated; counts above capacity)
/// before any work.
template <class TQ, class TK, class TV>
void gather_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                      const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                      const token_lists& lists, const gather_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  detail::validate_gather("attend::sparse::gather_attention", qc, kc, vc, o, lists, p);
  const detail::contiguous_rows<KV> rows{kc, vc, p.kv_lens.has_value() ? p.kv_lens.data() : nullptr};
  detail::gather_dispatch<xsimd::default_arch, KV>(qc, rows, vc.extent(3), o, lists, p);
}

/// gather_attention over a paged KV cache (see paged_kv); p.kv_lens must be empty.
template <class TQ, class KV>
void gather_attention(const tensor_view<TQ, 4>& q, const paged_kv<KV>& cache,
                      const tensor_view<float, 4>& o, const token_lists& lists,
                      const gather_params& p = {}) {
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  const view4<const float> qc = q;
  detail::validate_paged("attend::sparse::gather_attention", qc, cache, o, lists, p);
  const detail::paged_rows<KV> rows{cache.k_pages, cache.v_pages, cache.page_table,
                                    cache.lengths.data()};
  detail::gather_dispatch<xsimd::default_arch, KV>(qc, rows, cache.v_pages.extent(3), o, lists, p);
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_GATHER_HPP_
