// Block-sparse attention: exact softmax attention restricted to the key blocks (and extra key
// columns) a block_mask lists, run by the dense engine with the dense operator's hooks (causal,
// window, softcap, ALiBi, bias, boolean mask, sinks, LSE). The only new piece is a key source,
// block_list_keys, that walks a CSR row: it clips each listed block to the row block's visible
// range, packs consecutive blocks into engine tiles (so 16-key pages cost no more per key than
// 64-key blocks) and marks tiles partial where the element predicate must run. Work is
// proportional to the listed blocks.
//
// Two schedules share that source:
//  - row-major (every mask with block_q > 1, decode, masks with columns): one row block per
//    (batch, list owner, query block, query sub-tile), as dense prefill tiles queries;
//  - key-major (block_q == 1 prefill, e.g. MoBA's per-query lists): for every listed key block,
//    the queries that list it are gathered into row blocks (a run of consecutive queries where
//    the block needs an element mask), and the partial states are merged by LSE, so each K/V
//    block is loaded once per owner instead of once per query.
#ifndef ATTEND_SPARSE_BLOCK_SPARSE_HPP_
#define ATTEND_SPARSE_BLOCK_SPARSE_HPP_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../dense/attention.hpp"
#include "block_mask.hpp"

namespace attend::sparse {

/// The absent element predicate: every element of a listed block is attended.
struct no_mask_mod {
  static constexpr bool is_identity = true;
  bool operator()(index_t, index_t, index_t, index_t) const noexcept { return true; }
};

namespace detail {

template <class T, class = void>
struct has_identity_flag : std::false_type {};
template <class T>
struct has_identity_flag<T, std::void_t<decltype(T::is_identity)>>
    : std::bool_constant<T::is_identity> {};

/// True for no_mask_mod (and any predicate that declares is_identity = true).
template <class Mod>
inline constexpr bool is_identity_mod_v = has_identity_flag<Mod>::value;

/// The engine mask of a block-sparse call: the standard causal/window/boolean mask, and on
/// tiles of partial entries or columns the user's element predicate mod(batch, query head,
/// query index, key index). The key source sets `mod_active` before delivering each tile (full
/// entries never run the predicate, whatever tile they share a boundary with); it is per-call
/// state, so every work item runs its own copy of the variant.
template <class Mod>
struct sparse_mask {
  static constexpr bool is_identity = false;
  engine::standard_mask base;
  Mod mod;
  mutable bool mod_active = true;

  std::pair<index_t, index_t> key_range(const engine::row_block& rb, index_t lo,
                                        index_t hi) const noexcept {
    return base.key_range(rb, lo, hi);
  }
  engine::tile_kind classify(const engine::row_block& rb, index_t kmin,
                             index_t kmax) const noexcept {
    return base.classify(rb, kmin, kmax);
  }
  bool keep(const engine::row_block& rb, index_t head, index_t query, index_t qpos,
            index_t kpos) const noexcept {
    if (!base.keep(rb, head, query, qpos, kpos)) return false;
    if constexpr (!is_identity_mod_v<Mod>) {
      if (mod_active) return static_cast<bool>(mod(rb.batch, head, query, kpos));
    }
    return true;
  }
};

template <class T, class = void>
struct has_mod_flag : std::false_type {};
template <class T>
struct has_mod_flag<T, std::void_t<decltype(std::declval<const T&>().mod_active = true)>>
    : std::true_type {};

}  // namespace detail

/// Key source over one CSR row of a block_mask (see engine/key_sources.hpp for the protocol):
/// the listed key blocks of `block_k` keys (clipped to `length` and to the mask's visible
/// range), then the listed columns. Consecutive blocks are packed into one tile up to the
/// engine's tile capacity; columns start a tile of their own (positions must ascend within a
/// tile). A tile is partial when the mask says so or, with an element predicate
/// (mod_on_partial), when it holds keys of a partial entry or columns.
template <class KV>
struct block_list_keys {
  view4<const KV> k, v;
  index_t length = 0;  // valid keys of this batch
  index_t block_k = 1;
  mask_row list;
  bool mod_on_partial = false;

  template <class Mask, class Visit>
  void for_each_tile(const engine::row_block& rb, const Mask& mask,
                     const engine::tile_buffers<KV>& buf, Visit&& visit) const noexcept {
    const KV* kb = k.data() + rb.batch * k.stride(0) + rb.kv_head * k.stride(2);
    const KV* vb = v.data() + rb.batch * v.stride(0) + rb.kv_head * v.stride(2);
    const index_t cap = buf.capacity;
    // Cursor over the row: entry e (keys [t, hi) still to deliver), then column c. Keys of
    // entries that need the predicate (forced) and of full entries never share a tile.
    index_t e = 0, t = 0, hi = 0, c = 0;
    bool in_entry = false, forced = false;
    bool tile_mod[2] = {false, false};
    auto put = [&](index_t off, index_t n, index_t pos) {
      buf.pos[off + n] = pos;
      buf.k[off + n] = kb + pos * k.stride(1);
      buf.v[off + n] = vb + pos * v.stride(1);
    };
    auto fill = [&](int set, engine::kv_tile<KV>& tile) {
      const index_t off = set * cap;
      index_t n = 0;
      bool partial = false, with_mod = false;
      while (n < cap && e < list.count) {
        if (!in_entry) {
          const index_t k0 = list.blocks[e] * block_k;
          const index_t k1 = std::min(k0 + block_k, length);
          const auto r = mask.key_range(rb, k0, std::max(k0, k1));
          if (r.first >= r.second) {
            ++e;
            continue;
          }
          t = r.first;
          hi = r.second;
          in_entry = true;
          forced = mod_on_partial && list.full[e] == 0;
        }
        if (n > 0 && forced != with_mod) break;  // the next tile takes this entry
        with_mod = forced;
        const index_t take = std::min(cap - n, hi - t);
        const engine::tile_kind kind = mask.classify(rb, t, t + take - 1);
        if (kind != engine::tile_kind::empty) {
          partial = partial || forced || kind == engine::tile_kind::partial;
          for (index_t j = 0; j < take; ++j) put(off, n + j, t + j);
          n += take;
        }
        t += take;
        if (t >= hi) {
          in_entry = false;
          ++e;
        }
      }
      if (n == 0) {  // blocks exhausted: columns, in a tile of their own
        with_mod = mod_on_partial;
        while (n < cap && c < list.column_count) {
          const index_t j = list.columns[c++];
          if (j >= length) {
            c = list.column_count;  // sorted: every later column is past the end too
            break;
          }
          const engine::tile_kind kind = mask.classify(rb, j, j);
          if (kind == engine::tile_kind::empty) continue;
          partial = partial || mod_on_partial || kind == engine::tile_kind::partial;
          put(off, n++, j);
        }
      }
      tile_mod[set] = with_mod;
      tile = engine::kv_tile<KV>{n,
                                 partial ? engine::tile_kind::partial : engine::tile_kind::full,
                                 buf.pos + off,
                                 buf.k + off,
                                 buf.v + off,
                                 k.stride(2),
                                 v.stride(2),
                                 k.stride(2) < k.stride(1)};
    };
    engine::kv_tile<KV> cur, next;
    fill(0, cur);
    for (int set = 1; cur.count > 0; set ^= 1) {
      fill(set, next);
      cur.next_count = next.count;
      cur.next_k = next.k;
      cur.next_v = next.v;
      if constexpr (detail::has_mod_flag<Mask>::value) mask.mod_active = tile_mod[set ^ 1];
      visit(static_cast<const engine::kv_tile<KV>&>(cur));
      cur = next;
    }
  }
};

namespace detail {

/// How the heads of a call map to the lists of a mask.
struct owner_map {
  index_t heads_q = 1, heads_kv = 1, group = 1, owners = 1;
  bool per_query = false;  // one list per query head (GQA groups not shared)

  owner_map(index_t hq, index_t hkv, index_t mask_heads)
      : heads_q(hq), heads_kv(hkv), group(hq / hkv), owners(mask_heads),
        per_query(mask_heads == hq && hq != hkv) {}
  /// Units of work: query heads (per_query) or KV heads (their group shares one list).
  index_t units() const noexcept { return per_query ? heads_q : heads_kv; }
  index_t heads_of_unit() const noexcept { return per_query ? 1 : group; }
  index_t first_head(index_t u) const noexcept { return per_query ? u : u * group; }
  index_t kv_head(index_t u) const noexcept { return per_query ? u / group : u; }
  index_t owner(index_t u) const noexcept { return owners == 1 ? 0 : u; }
};

/// True when the call's score hooks only see scores (softcap): the key-major schedule gathers
/// rows of unrelated queries, so position- or query-dependent hooks (ALiBi, bias) rule it out.
inline bool position_free_scores(const attention_params& p) {
  return !p.alibi_slopes.has_value() && !p.bias.has_value();
}

/// The block-sparse driver (inputs validated): q [batch, seq_q, heads_q, dk], k/v [batch, seq_k,
/// heads_kv, dk/dv], o [batch, seq_q, heads_q, dv], lse optional [batch, heads_q, seq_q].
template <class Arch, index_t DK, index_t DV, class KV, class ScoreMod, class Mod>
void block_sparse_forward(const view4<const float>& q, const view4<const KV>& k,
                          const view4<const KV>& v, const view4<float>& o, const view3<float>& lse,
                          const index_t* kv_lens, float scale, const block_mask& mask,
                          const ScoreMod& score, const engine::standard_mask& base,
                          const engine::sink_logits& sink, const Mod& mod, bool key_major,
                          workspace* user_scratch) {
  using scratch_t = engine::scratch<Arch, KV>;
  constexpr bool has_mod = !is_identity_mod_v<Mod>;
  const mask_geometry& g = mask.geometry();
  const index_t batch = q.extent(0), seq_q = q.extent(1);
  const index_t dk = q.extent(3), dv = v.extent(3);
  const owner_map om(q.extent(2), k.extent(2), g.heads);
  const index_t max_rows = engine::max_rows_for(dk, dv);
  const int threads = attend::detail::max_threads();
  const index_t per_thread = scratch_t::floats(max_rows, dk, dv);
  const index_t hu = om.heads_of_unit();

  // Key-major extras per thread: gathered queries [max_rows][dk], the accumulated LSE of the
  // unit's rows, one output row.
  // (A multiple of 16 floats, so every thread's scratch stays 64-byte aligned.)
  const index_t gather_floats = key_major ? (max_rows * dk + hu * seq_q + dv + 15) / 16 * 16 : 0;
  workspace local;
  workspace& ws = user_scratch ? *user_scratch : local;
  float* const base_ptr = ws.reserve((per_thread + gather_floats) * threads);
  auto scratch_of = [&](int t) {
    attend::detail::bump b(base_ptr + t * (per_thread + gather_floats));
    return scratch_t::carve(b, max_rows, dk, dv);
  };
  auto extra_of = [&](int t) { return base_ptr + t * (per_thread + gather_floats) + per_thread; };

  const engine::problem<KV> pb{q, scale, dk, dv};
  const auto var = engine::make_variant(score, sparse_mask<Mod>{base, mod}, sink);
  auto length_of = [&](index_t b) { return kv_lens ? kv_lens[b] : k.extent(1); };
  auto keys_for = [&](index_t b, const mask_row& row) {
    block_list_keys<KV> keys;
    keys.k = k;
    keys.v = v;
    keys.length = length_of(b);
    keys.block_k = g.block_k;
    keys.list = row;
    keys.mod_on_partial = has_mod;
    return keys;
  };
  auto finish = [&](index_t, const engine::row_ctx& ctx, float* row, float l) {
    engine::finish_row<Arch>(var, ctx, row, l, dv, o, lse);
  };

  if (!key_major) {
    // Row-major: (batch, unit, head chunk, query block, query sub-tile), last query blocks
    // first (heaviest under causal masks).
    const index_t heads_per_block = std::min(hu, max_rows);
    const index_t head_chunks = (hu + heads_per_block - 1) / heads_per_block;
    const index_t qt = std::min(g.block_q, std::max<index_t>(1, max_rows / heads_per_block));
    const index_t subs = (g.block_q + qt - 1) / qt;
    const index_t nqb = g.q_blocks();
    const index_t per_qb = batch * om.units() * head_chunks * subs;
    attend::detail::parallel_for(per_qb * nqb, threads, [&](index_t item, int t) {
      const index_t qb = nqb - 1 - item / per_qb;
      index_t rest = item % per_qb;
      const index_t sub = rest % subs;
      rest /= subs;
      const index_t chunk = rest % head_chunks;
      rest /= head_chunks;
      const index_t u = rest % om.units(), b = rest / om.units();
      engine::row_block rb;
      rb.batch = b;
      rb.kv_head = om.kv_head(u);
      rb.group = om.group;
      rb.head0 = om.first_head(u) + chunk * heads_per_block;
      rb.heads = std::min(heads_per_block, hu - chunk * heads_per_block);
      rb.query0 = qb * g.block_q + sub * qt;
      rb.queries = std::min(qt, std::min(seq_q, (qb + 1) * g.block_q) - rb.query0);
      if (rb.queries <= 0) return;
      rb.pos0 = length_of(b) - seq_q + rb.query0;
      const auto item_var = var;  // the mask's per-tile flag is per work item
      engine::run_rows<Arch, DK, DV>(pb, rb, keys_for(b, mask.row(b, om.owner(u), qb)),
                                     item_var, scratch_of(t), finish);
    });
    return;
  }

  // Key-major (block_q == 1): per (batch, unit), transpose the unit's lists to "queries per
  // key block", run each key block against its gathered queries and merge the partial states
  // into o (used as the accumulator) and an LSE per row.
  const index_t nk = g.k_blocks();
  const index_t units = batch * om.units();
  index_t max_nnz = 0;
  for (index_t item = 0; item < units; ++item) {
    const index_t b = item / om.units(), u = item % om.units();
    const index_t r0 = g.row(b, om.owner(u), 0);
    max_nnz = std::max(max_nnz, mask.offsets()[r0 + seq_q] - mask.offsets()[r0]);
  }
  const int used_threads = static_cast<int>(std::min<index_t>(threads, units));
  std::vector<std::vector<index_t>> by_block(static_cast<std::size_t>(used_threads),
                                             std::vector<index_t>(max_nnz));
  std::vector<std::vector<index_t>> starts(static_cast<std::size_t>(used_threads),
                                           std::vector<index_t>(nk + 1));
  std::vector<std::vector<index_t>> gathered(static_cast<std::size_t>(used_threads),
                                             std::vector<index_t>(seq_q));
  std::vector<std::vector<index_t>> runs(static_cast<std::size_t>(used_threads),
                                         std::vector<index_t>(seq_q));
  const auto gather_var = engine::make_variant(score, engine::no_mask{});
  const index_t q_per_gather = std::max<index_t>(1, max_rows / hu);

  attend::detail::parallel_for(units, used_threads, [&](index_t item, int t) {
    const index_t b = item / om.units(), u = item % om.units();
    const index_t owner = om.owner(u), h0 = om.first_head(u), kvh = om.kv_head(u);
    const index_t len = length_of(b), off = len - seq_q;
    const scratch_t sc = scratch_of(t);
    const auto item_var = var;  // the mask's per-tile flag is per work item
    float* const gq = extra_of(t);               // [max_rows][dk]
    float* const acc_lse = gq + max_rows * dk;   // [hu][seq_q]
    float* const row_tmp = acc_lse + hu * seq_q; // [dv]
    index_t* const tq = by_block[t].data();
    index_t* const st = starts[t].data();
    index_t* const gl = gathered[t].data();
    index_t* const pl = runs[t].data();

    for (index_t i = 0; i < seq_q; ++i)
      for (index_t hh = 0; hh < hu; ++hh) std::fill_n(&o(b, i, h0 + hh, 0), dv, 0.0f);
    std::fill_n(acc_lse, hu * seq_q, engine::neg_inf);
    auto merge_into = [&](index_t i, index_t hh, const float* row, float l) {
      engine::merge_state<Arch>(&o(b, i, h0 + hh, 0), acc_lse[hh * seq_q + i], row, l, dv);
    };

    // Counting sort of (query, flag) by key block; queries stay ascending within a block.
    std::fill_n(st, nk + 1, 0);
    for (index_t i = 0; i < seq_q; ++i) {
      const mask_row mr = mask.row(b, owner, i);
      for (index_t e = 0; e < mr.count; ++e) ++st[mr.blocks[e] + 1];
    }
    for (index_t kb = 0; kb < nk; ++kb) st[kb + 1] += st[kb];
    for (index_t i = 0; i < seq_q; ++i) {
      const mask_row mr = mask.row(b, owner, i);
      for (index_t e = 0; e < mr.count; ++e) tq[st[mr.blocks[e]]++] = i * 2 + mr.full[e];
    }
    for (index_t kb = nk; kb > 0; --kb) st[kb] = st[kb - 1];
    st[0] = 0;

    for (index_t kb = 0; kb < nk; ++kb) {
      const index_t k0 = kb * g.block_k, k1 = std::min(k0 + g.block_k, len);
      if (k0 >= k1 || st[kb] == st[kb + 1]) continue;
      index_t ng = 0, np = 0;
      for (index_t e = st[kb]; e < st[kb + 1]; ++e) {
        const index_t i = tq[e] >> 1;
        engine::row_block one;
        one.pos0 = off + i;
        const auto r = base.key_range(one, k0, k1);
        if (r.first >= r.second) continue;
        const bool whole = r.first == k0 && r.second == k1 &&
                           base.classify(one, k0, k1 - 1) == engine::tile_kind::full;
        if (whole && (!has_mod || (tq[e] & 1))) gl[ng++] = i;
        else pl[np++] = tq[e];
      }
      // Fully visible: gathered rows against the whole block, no mask.
      const engine::dense_keys<KV> block_keys{k, v, nullptr, k0, k1};
      for (index_t c0 = 0; c0 < ng; c0 += q_per_gather) {
        const index_t nq = std::min(q_per_gather, ng - c0);
        for (index_t qi = 0; qi < nq; ++qi)
          for (index_t hh = 0; hh < hu; ++hh) {
            const float* src = &q(b, gl[c0 + qi], h0 + hh, 0);
            std::copy(src, src + dk, gq + (qi * hu + hh) * dk);
          }
        const view4<const float> qg(gq, {batch, nq * hu, om.heads_q, dk}, {0, dk, 0, 1});
        const engine::problem<KV> gpb{qg, scale, dk, dv};
        engine::row_block rb;
        rb.batch = b;
        rb.kv_head = kvh;
        rb.group = om.group;
        rb.head0 = h0;
        rb.queries = nq * hu;
        engine::run_rows<Arch, DK, DV>(
            gpb, rb, block_keys, gather_var, sc,
            [&](index_t r, const engine::row_ctx&, const float* row, float l) {
              merge_into(gl[c0 + r / hu], r % hu, row, l);
            });
      }
      // Needs an element mask: runs of consecutive queries with their true positions.
      for (index_t p0 = 0; p0 < np;) {
        // A run: consecutive queries with the same full flag (pl holds query * 2 + flag).
        index_t p1 = p0 + 1;
        while (p1 < np && p1 - p0 < q_per_gather && pl[p1] == pl[p1 - 1] + 2) ++p1;
        const index_t one_block[1] = {kb};
        const std::uint8_t one_flag[1] = {static_cast<std::uint8_t>(pl[p0] & 1)};
        mask_row mr;
        mr.blocks = one_block;
        mr.full = one_flag;
        mr.count = 1;
        engine::row_block rb;
        rb.batch = b;
        rb.kv_head = kvh;
        rb.group = om.group;
        rb.head0 = h0;
        rb.heads = hu;
        rb.query0 = pl[p0] >> 1;
        rb.queries = p1 - p0;
        rb.pos0 = off + rb.query0;
        engine::run_rows<Arch, DK, DV>(
            pb, rb, keys_for(b, mr), item_var, sc,
            [&](index_t r, const engine::row_ctx&, const float* row, float l) {
              merge_into(rb.query0 + r % rb.queries, r / rb.queries, row, l);
            });
        p0 = p1;
      }
    }
    // Sinks, output hook, LSE.
    for (index_t i = 0; i < seq_q; ++i)
      for (index_t hh = 0; hh < hu; ++hh) {
        std::copy_n(&o(b, i, h0 + hh, 0), dv, row_tmp);
        engine::finish_row<Arch>(var, engine::row_ctx{b, h0 + hh, i, off + i}, row_tmp,
                                 acc_lse[hh * seq_q + i], dv, o, lse);
      }
  });
}

/// Checks a block-sparse call (attention arguments, then the mask against them).
template <class KV>
void validate_block_sparse(const char* op, const view4<const float>& q, const view4<const KV>& k,
                           const view4<const KV>& v, const view4<float>& o, const block_mask& mask,
                           const attention_params& p) {
  attend::detail::validate_attention(op, q, k, v, o, p);
  const mask_geometry& g = mask.geometry();
  const index_t hq = q.extent(2), hkv = k.extent(2);
  ATTEND_CHECK(g.batch == q.extent(0), op, ": mask batch (", g.batch, ") must equal q batch (",
               q.extent(0), ")");
  ATTEND_CHECK(g.seq_q == q.extent(1), op, ": mask seq_q (", g.seq_q, ") must equal q seq (",
               q.extent(1), ")");
  ATTEND_CHECK(g.seq_k == k.extent(1), op, ": mask seq_k (", g.seq_k, ") must equal k seq (",
               k.extent(1), ")");
  ATTEND_CHECK(g.heads == hq || g.heads == hkv || g.heads == 1, op, ": mask heads (", g.heads,
               ") must be the query heads (", hq, "), the KV heads (", hkv, ") or 1");
  ATTEND_CHECK(static_cast<index_t>(mask.offsets().size()) == g.rows() + 1, op,
               ": mask is not built (offsets ", mask.offsets().size(), ", rows ", g.rows(), ")");
}

template <class Arch, class KV, class Mod>
void block_sparse_dispatch(const view4<const float>& q, const view4<const KV>& k,
                           const view4<const KV>& v, const view4<float>& o, const block_mask& mask,
                           const attention_params& p, const Mod& mod) {
  const engine::standard_mask base = attend::detail::make_mask(p);
  const engine::sink_logits sink{p.sinks.has_value() ? p.sinks.data() : nullptr};
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = attend::detail::resolve_scale(p, q.extent(3));
  const bool key_major = mask.geometry().block_q == 1 && q.extent(1) > 16 &&
                         !mask.has_columns() && position_free_scores(p);
  attend::detail::dispatch_head_dims(q.extent(3), v.extent(3), [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    if (attend::detail::has_score_mod(p))
      block_sparse_forward<Arch, DK, DV>(q, k, v, o, p.lse, lens, scale, mask,
                                         attend::detail::make_score_mod(p), base, sink, mod,
                                         key_major, p.scratch);
    else
      block_sparse_forward<Arch, DK, DV>(q, k, v, o, p.lse, lens, scale, mask,
                                         engine::no_score_mod{}, base, sink, mod, key_major,
                                         p.scratch);
  });
}

}  // namespace detail

/// Exact softmax attention over the elements a block mask selects.
///
/// \param q [batch, seq_q, heads_q, head_dim] float
/// \param k [batch, seq_k, heads_kv, head_dim] float, bf16 or fp16
/// \param v [batch, seq_k, heads_kv, head_dim_v], same type as k
/// \param o [batch, seq_q, heads_q, head_dim_v] float output (every row written)
/// \param mask geometry {batch, heads, seq_q, seq_k, block_q, block_k} with heads = heads_q
///        (one list per query head), heads_kv (one list per KV head, shared by its GQA group:
///        one row block serves the group) or 1 (one list for all heads)
/// \param params as attention(): causal / window / kv_lens / boolean mask restrict the
///        elements further (bottom-right aligned), softcap / ALiBi / bias modify scores, sinks
///        join the denominator, lse [batch, heads_q, seq_q] receives the natural-log LSE
/// \param mod optional element predicate mod(batch, query_head, query_index, key_index) -> bool,
///        evaluated on partial blocks and columns only (FlexAttention's mask_mod)
/// Cost is proportional to the listed blocks (plus columns). A row that sees no key gets o = 0
/// and lse = -inf (or the sink logit). Throws attend::invalid_argument before any work when
/// shapes, strides, parameters or the mask geometry do not match.
template <class TQ, class TK, class TV, class Mod = no_mask_mod>
void block_sparse_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                            const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                            const block_mask& mask, const attention_params& params = {},
                            const Mod& mod = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  detail::validate_block_sparse("attend::sparse::block_sparse_attention", qc, kc, vc, o, mask,
                                params);
  detail::block_sparse_dispatch<xsimd::default_arch>(qc, kc, vc, o, mask, params, mod);
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_BLOCK_SPARSE_HPP_
