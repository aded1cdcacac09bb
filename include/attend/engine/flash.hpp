// The tiled online-softmax engine: one block of query rows (all query heads of a KV group times a
// few queries, so each K/V tile loaded serves the whole group) against a sequence of KV tiles
// delivered by a key source. Every softmax operator of the library (dense prefill and split-K
// decode, block-sparse, gather/top-k, streaming, sink-calibrated) is this loop with other
// policies:
//
//   for each tile the key source delivers (empty tiles never delivered):
//     st = K Qᵀ (scaled)          simd::qk_bcast, or simd::qk_dot for a few rows (decode)
//     variant.score(st)            softcap / ALiBi / bias / ...
//     variant.mask.keep on partial tiles only
//     online softmax (m, l), acc *= alpha
//     acc += P V                   simd::pv_bcast, V widened in registers
//   o = acc / l, lse = m + log l -> emit (final store with sink + output hook, or a partial state)
#ifndef ATTEND_ENGINE_FLASH_HPP_
#define ATTEND_ENGINE_FLASH_HPP_

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../core/workspace.hpp"
#include "../simd/tile.hpp"
#include "online_softmax.hpp"
#include "variant.hpp"

namespace attend::engine {

/// Keys per KV tile (60 on AVX2, 80 on AVX-512: ten micro-kernel blocks): a tile of 128 rows'
/// scores (30-40 KiB) and a 128-dim K tile stay in L1/L2.
template <class Arch>
inline constexpr index_t kv_tile_size = simd::tile_config<Arch>::kv_tile;

/// Query rows per row block for a head dimension: enough rows to amortise loading a K/V tile,
/// few enough that Qᵀ, the scores and the accumulators stay in L2.
inline index_t max_rows_for(index_t dk, index_t dv) noexcept {
  return std::max(dk, dv) <= 128 ? 128 : 64;
}

/// True when a row block with `rows_per_kv` rows per KV head runs the dot-product QK kernel
/// (fewer rows than half a register: decode). Such blocks may span several KV heads.
template <class Arch>
constexpr bool uses_dot_kernel(index_t rows_per_kv) noexcept {
  return rows_per_kv <= simd::lanes<Arch> / 2;
}

/// Rows per KV head as packed for the dot-product kernel (a power of two).
constexpr int dot_rows_padded(index_t rows_per_kv) noexcept {
  return rows_per_kv <= 1 ? 1 : rows_per_kv <= 2 ? 2 : rows_per_kv <= 4 ? 4 : 8;
}

/// Views and scalars shared by every row block of one call.
template <class KV>
struct problem {
  view4<const float> q;  // [batch, seq_q, heads_q, dk]
  float scale = 1.0f;
  index_t dk = 0, dv = 0;
};

/// One thread's tile buffers, carved from a workspace by `carve` (which also computes the size).
template <class Arch, class KV>
struct scratch {
  index_t ld_max = 0, ldacc = 0, tile = 0;
  float* q = nullptr;        // Qᵀ [dk][ld] or Q rows [ld][dk]
  float* st = nullptr;       // scores / probabilities, transposed [tile][ld]
  float* acc = nullptr;      // output accumulators [ld][ldacc]
  float* m = nullptr;        // [ld] running max
  float* l = nullptr;        // [ld] running sum
  float* alpha = nullptr;    // [ld] rescale factors of the last tile
  float* kf = nullptr;       // [tile][dk] K tile packed as float (widened, transformed)
  float* vf = nullptr;       // [tile][ldacc] V tile packed as float (prefill)
  index_t* row_head = nullptr;
  index_t* row_query = nullptr;
  index_t* row_pos = nullptr;
  float* row_posf = nullptr;
  index_t* tile_pos = nullptr;
  const KV** tile_k = nullptr;
  const KV** tile_v = nullptr;
  const float** tile_kf = nullptr;
  float* stats_tile = nullptr;   // [4][ld] row statistics of the current tile
  float* stats_total = nullptr;  // [4][ld] row statistics so far

  static scratch carve(detail::bump& b, index_t max_rows, index_t dk, index_t dv) {
    constexpr index_t w = simd::lanes<Arch>;
    scratch s;
    s.tile = kv_tile_size<Arch>;
    s.ld_max = (max_rows + w - 1) / w * w;
    s.ldacc = (dv + w - 1) / w * w;
    s.q = b.take<float>(dk * s.ld_max);
    s.st = b.take<float>(s.tile * s.ld_max);
    s.acc = b.take<float>(s.ld_max * s.ldacc);
    s.m = b.take<float>(s.ld_max);
    s.l = b.take<float>(s.ld_max);
    s.alpha = b.take<float>(s.ld_max);
    s.kf = b.take<float>(s.tile * dk);
    s.vf = b.take<float>(s.tile * s.ldacc);
    s.row_head = b.take<index_t>(s.ld_max);
    s.row_query = b.take<index_t>(s.ld_max);
    s.row_pos = b.take<index_t>(s.ld_max);
    s.row_posf = b.take<float>(s.ld_max);
    s.tile_pos = b.take<index_t>(2 * s.tile);
    s.tile_k = b.take<const KV*>(2 * s.tile);
    s.tile_v = b.take<const KV*>(2 * s.tile);
    s.tile_kf = b.take<const float*>(s.tile);
    s.stats_tile = b.take<float>(4 * s.ld_max);
    s.stats_total = b.take<float>(4 * s.ld_max);
    return s;
  }

  /// Floats one thread needs.
  static index_t floats(index_t max_rows, index_t dk, index_t dv) {
    detail::bump b(nullptr);
    carve(b, max_rows, dk, dv);
    return b.used();
  }

  row_info rows() const noexcept { return {row_head, row_pos, row_posf, row_query}; }
};

/// Finishes one row whose normalised output `o` (dv floats) and LSE are known: joins the sink
/// logit, runs the output hook, stores o and lse. Shared by the engine and the split-K merge.
template <class Arch, class Variant>
ATTEND_INLINE void finish_row(const Variant& var, const row_ctx& ctx, float* o, float lse,
                              index_t dv, const view4<float>& out, const view3<float>& lse_out) {
  if constexpr (!std::decay_t<decltype(var.row)>::is_identity)
    join_sink<Arch>(o, lse, var.row.logit(ctx.head), dv);
  if constexpr (!std::decay_t<decltype(var.output)>::is_identity) var.output.apply(ctx, o, lse, dv);
  float* dst = out.data() + out.offset(ctx.batch, ctx.query, ctx.head, 0);
  std::memcpy(dst, o, static_cast<std::size_t>(dv) * sizeof(float));
  if (lse_out.has_value()) lse_out(ctx.batch, ctx.head, ctx.query) = lse;
}

/// How a tile is walked: several KV heads whose rows interleave token by token are taken
/// 8 tokens at a time across every head (a sequential read); otherwise each head streams its own
/// rows. The decode kernel prefetches K rows (`prefetch`) on a head's own rows, and on a token
/// walk that covers whole token rows: one sequential stream, which the hardware prefetchers,
/// confined to 4 KiB pages, lose at every token of a head dim 128 f32 cache. A walk over part
/// of each token row (DuoAttention's full heads, say) is left to them: measured slower with it.
struct tile_walk {
  bool by_token;
  bool prefetch;
  index_t chunk;
  template <class KV>
  static tile_walk of(const row_block& rb, const kv_tile<KV>& t) noexcept {
    const bool by_token = rb.kv_heads > 1 && t.heads_interleaved;
    const bool whole_rows = t.count > 1 && t.k[1] - t.k[0] == (t.pos[1] - t.pos[0]) *
                                                                  rb.kv_heads * t.k_head_stride;
    return {by_token, !by_token || whole_rows, by_token ? index_t{8} : t.count};
  }
};

/// The score half of the engine: packs the block's queries, then for every tile the key source
/// delivers computes st[j * ld + r] = scale q_r . k_j, applies the score hook and (on partial
/// tiles) the mask, and calls on_tile(t, st, ld). Row data are in ws.rows() (ld entries, the
/// padding rows repeating the last one). run_rows adds the softmax and P V; statistics passes
/// (column sums of P) use this directly.
template <class Arch, index_t DK, class KV, class Variant, class Keys, class OnTile>
void score_tiles(const problem<KV>& pb, const row_block& rb, const Keys& keys, const Variant& var,
                 const scratch<Arch, KV>& ws, OnTile&& on_tile) noexcept {
  using Key = std::decay_t<decltype(var.key)>;
  using Score = std::decay_t<decltype(var.score)>;
  using Mask = std::decay_t<decltype(var.mask)>;
  constexpr index_t w = simd::lanes<Arch>;
  constexpr bool transform = !Key::is_identity;
  const index_t dk = DK ? DK : pb.dk;
  const index_t rows = rb.rows();
  const index_t rpk = rb.rows_per_kv();  // rows of one KV head
  const index_t ld = (rows + w - 1) / w * w;
  // A KV head with fewer rows than half a register uses the dot-product QK (no lanes wasted on
  // padding rows); its queries are packed row-major, `rp` rows per KV head.
  const bool dot = uses_dot_kernel<Arch>(rpk);
  const int rp = dot_rows_padded(rpk);
  ATTEND_DCHECK(dot || rb.kv_heads == 1);  // the broadcast kernel serves one KV head
  ATTEND_DCHECK(!dot || rb.kv_heads * rp <= ws.ld_max);

  // Row data, padded by repeating the last row.
  for (index_t r = 0; r < ld; ++r) {
    const index_t rr = std::min(r, rows - 1);
    ws.row_head[r] = rb.head_of(rr);
    ws.row_query[r] = rb.query_of(rr);
    ws.row_pos[r] = rb.pos_of(rr);
    ws.row_posf[r] = static_cast<float>(ws.row_pos[r]);
  }
  const row_info ri = ws.rows();

  // Pack the scaled queries: Qᵀ [dk][ld] for the broadcast kernel, [kv_heads][rp][dk] for dot.
  const float scale = pb.scale;
  if (dot) {
    std::fill(ws.q, ws.q + rb.kv_heads * rp * dk, 0.0f);
    std::fill(ws.st, ws.st + ws.tile * ld, 0.0f);
  } else {
    std::fill(ws.q, ws.q + dk * ld, 0.0f);
  }
  for (index_t r = 0; r < rows; ++r) {
    const float* src = pb.q.data() + pb.q.offset(rb.batch, ri.query[r], ri.head[r], 0);
    if (dot) {
      float* dst = ws.q + ((r / rpk) * rp + r % rpk) * dk;
      for (index_t d = 0; d < dk; ++d) dst[d] = src[d] * scale;
    } else {
      for (index_t d = 0; d < dk; ++d) ws.q[d * ld + r] = src[d] * scale;
    }
  }

  tile_buffers<KV> buf{ws.tile, ws.tile_pos, ws.tile_k, ws.tile_v};
  keys.for_each_tile(rb, var.mask, buf, [&](const kv_tile<KV>& t) {
    const index_t n = t.count;
    // The broadcast (prefill) kernel reads K from a packed float tile: rows of a
    // [batch, seq, heads, dim] cache are a page apart and would collide in L1, and narrow types
    // are widened once per tile instead of once per row block. Decode streams the cache rows
    // directly unless a key transform rewrites them.
    const bool widen = transform || !dot;
    const tile_walk walk = tile_walk::of(rb, t);
    for (index_t c0 = 0; c0 < n; c0 += walk.chunk) {
      const index_t cn = std::min(walk.chunk, n - c0);
      for (index_t g = 0; g < rb.kv_heads; ++g) {
        const index_t k_off = g * t.k_head_stride;
        float* st = ws.st + c0 * ld + g * rpk;
        if (widen) {
          if (!dot) simd::prefetch_rows_l2(t.next_k, t.next_count, k_off, dk);
          for (index_t j = 0; j < cn; ++j) {
            float* dst = ws.kf + j * dk;
            const KV* src = t.k[c0 + j] + k_off;
            index_t d = 0;
            for (; d + w <= dk; d += w) simd::load<Arch>(src + d).store_unaligned(dst + d);
            for (; d < dk; ++d) dst[d] = simd::load_scalar(src + d);
            if constexpr (transform) var.key.apply(dst, dk, t.pos[c0 + j], rb.kv_head + g);
            ws.tile_kf[j] = dst;
          }
        }
        if (dot) {
          const float* q = ws.q + g * rp * dk;
          // Each head's K rows `distance` keys ahead: 8 on a per-head walk, which also takes
          // the tile's V rows; about 16 KiB of token rows on a token walk (4 tokens of 8 f32
          // heads of dim 128: measured ~3% faster for S2's selection and ~1-2% for dense
          // decode than 8; 8 tokens of bf16, where 4 was slower).
          simd::prefetch_plan<KV> ahead;
          if (walk.prefetch) ahead = {t.k + c0, n - c0, t.next_k, t.next_count, k_off, dk};
          if (walk.by_token) {
            const index_t row_bytes = rb.kv_heads * dk * static_cast<index_t>(sizeof(KV));
            ahead.distance = std::clamp<index_t>(16384 / row_bytes, 4, 16);
          }
          if (!walk.by_token) {
            ahead.v = t.v + c0;
            ahead.v_off = g * t.v_head_stride;
            ahead.v_elems = pb.dv;
          }
          auto run_dot = [&](auto krows, index_t off) {
            switch (rp) {
              case 1: simd::qk_dot<Arch, 1, DK>(krows, cn, q, rpk, dk, st, ld, off, ahead); break;
              case 2: simd::qk_dot<Arch, 2, DK>(krows, cn, q, rpk, dk, st, ld, off, ahead); break;
              case 4: simd::qk_dot<Arch, 4, DK>(krows, cn, q, rpk, dk, st, ld, off, ahead); break;
              default:
                if constexpr (w >= 16)
                  simd::qk_dot<Arch, 8, DK>(krows, cn, q, rpk, dk, st, ld, off, ahead);
                break;
            }
          };
          if (widen) run_dot(static_cast<const float* const*>(ws.tile_kf), 0);
          else if constexpr (!transform) run_dot(t.k + c0, k_off);
        } else {
          simd::qk_bcast<Arch, DK>(ws.tile_kf, cn, ws.q, ld, dk, st);
        }
      }
    }

    if constexpr (!Score::is_identity) var.score.template apply<Arch>(rb, ri, t.pos, n, ws.st, ld);
    if constexpr (!Mask::is_identity) {
      if (t.kind == tile_kind::partial) {
        for (index_t j = 0; j < n; ++j) {
          float* srow = ws.st + j * ld;
          const index_t kp = t.pos[j];
          for (index_t r = 0; r < rows; ++r)
            if (!var.mask.keep(rb, ri.head[r], ri.query[r], ri.pos[r], kp)) srow[r] = neg_inf;
        }
      }
    }
    on_tile(t, ws.st, ld);
  });
}

/// Runs one row block over the tiles of `keys`: score_tiles, then the online softmax (with the
/// row-statistics hook) and acc += P V per tile. `emit(r, ctx, o_row, lse)` receives every row
/// (r < rb.rows()) with its normalised output (dv floats, writable) and LSE, before sinks.
template <class Arch, index_t DK, index_t DV, class KV, class Variant, class Keys, class Emit>
void run_rows(const problem<KV>& pb, const row_block& rb, const Keys& keys, const Variant& var,
              const scratch<Arch, KV>& ws, Emit&& emit) noexcept {
  using V = simd::vfloat<Arch>;
  using Stats = std::decay_t<decltype(var.stats)>;
  constexpr index_t w = simd::lanes<Arch>;
  static_assert(Stats::accumulators <= 4, "row statistics keep at most 4 floats per row");
  const index_t dv = DV ? DV : pb.dv;
  const index_t rows = rb.rows();
  const index_t rpk = rb.rows_per_kv();
  const index_t ld = (rows + w - 1) / w * w;
  const index_t ldacc = ws.ldacc;
  // Decode blocks that stream each head on its own take V 8 keys at a time, in order.
  const bool dot = uses_dot_kernel<Arch>(rpk);

  std::fill(ws.m, ws.m + ld, neg_inf);
  std::fill(ws.l, ws.l + ld, 0.0f);
  std::fill(ws.acc, ws.acc + rows * ldacc, 0.0f);
  if constexpr (!Stats::is_identity) std::fill(ws.stats_total, ws.stats_total + 4 * ld, 0.0f);

  score_tiles<Arch, DK>(pb, rb, keys, var, ws, [&](const kv_tile<KV>& t, float* st, index_t) {
    const index_t n = t.count;
    if constexpr (Stats::is_identity) {
      softmax_tile<Arch>(st, ld, n, ws.m, ws.l, ws.alpha,
                         [](index_t, index_t, const V&, const V&) {});
    } else {
      std::fill(ws.stats_tile, ws.stats_tile + Stats::accumulators * ld, 0.0f);
      softmax_tile<Arch>(st, ld, n, ws.m, ws.l, ws.alpha,
                         [&](index_t j, index_t r, const V& sv, const V& pv) {
                           var.stats.template visit<Arch>(ws.stats_tile, ld, t.pos, j, r, sv, pv);
                         });
      for (int a = 0; a < Stats::accumulators; ++a)  // total = total * alpha + tile
        for (index_t r = 0; r < ld; r += w) {
          float* tot = ws.stats_total + a * ld + r;
          simd::fmadd<Arch>(V::load_aligned(tot), V::load_aligned(ws.alpha + r),
                            V::load_aligned(ws.stats_tile + a * ld + r))
              .store_aligned(tot);
        }
    }
    for (index_t r = 0; r < rows; ++r)
      if (ws.alpha[r] != 1.0f) scale_row<Arch>(ws.acc + r * ldacc, dv, ws.alpha[r]);
    if (!dot) {  // prefill: V packed as a float tile, for the reasons K is (see score_tiles)
      simd::prefetch_rows_l2(t.next_v, t.next_count, index_t{0}, dv);
      for (index_t j = 0; j < n; ++j) {
        float* dst = ws.vf + j * ldacc;
        const KV* src = t.v[j];
        index_t c = 0;
        for (; c + w <= dv; c += w) simd::load<Arch>(src + c).store_aligned(dst + c);
        for (; c < dv; ++c) dst[c] = simd::load_scalar(src + c);
      }
      simd::pv_bcast<Arch, DV>(st, ld, rows, simd::strided_rows<float>{ws.vf, ldacc}, n, dv,
                               ws.acc, ldacc);
      return;
    }
    const tile_walk walk = tile_walk::of(rb, t);
    const index_t pv_chunk = walk.by_token ? 0 : 8;
    for (index_t c0 = 0; c0 < n; c0 += walk.chunk) {
      const index_t cn = std::min(walk.chunk, n - c0);
      for (index_t g = 0; g < rb.kv_heads; ++g)
        simd::pv_bcast<Arch, DV>(st + c0 * ld + g * rpk, ld, rpk, t.v + c0, cn, dv,
                                 ws.acc + g * rpk * ldacc, ldacc, g * t.v_head_stride, pv_chunk);
    }
  });

  const row_info ri = ws.rows();
  for (index_t r = 0; r < rows; ++r) {
    float* o = ws.acc + r * ldacc;
    const float l = ws.l[r];
    float lse = neg_inf;
    if (l == 0.0f) {  // no key, or only -inf scores: the empty state
      std::fill(o, o + dv, 0.0f);
    } else {  // l is NaN after a NaN or +inf score: o and lse become NaN, never "empty"
      scale_row<Arch>(o, dv, 1.0f / l);
      lse = ws.m[r] + std::log(l);
    }
    const row_ctx ctx{rb.batch, ri.head[r], ri.query[r], ri.pos[r]};
    if constexpr (!Stats::is_identity)
      var.stats.finish(rb, r, ctx, ws.stats_total + r, ld, ws.m[r], l);
    emit(r, ctx, o, lse);
  }
}

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_FLASH_HPP_
