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
#include "../core/tensor_view.hpp"
#include "../core/workspace.hpp"
#include "../simd/tile.hpp"
#include "online_softmax.hpp"
#include "variant.hpp"

namespace attend::engine {

/// Keys per KV tile: 64 keeps a tile of 128 rows' scores (32 KiB) and a 128-dim K tile in L1/L2.
inline constexpr index_t kv_tile_size = 64;

/// Query rows per row block for a head dimension: enough rows to amortise loading a K/V tile,
/// few enough that Qᵀ, the scores and the accumulators stay in L2.
inline index_t max_rows_for(index_t dk, index_t dv) noexcept {
  return std::max(dk, dv) <= 128 ? 128 : 64;
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
  float* kf = nullptr;       // [tile][dk] K tile widened to float (or transformed)
  index_t* row_head = nullptr;
  index_t* row_query = nullptr;
  index_t* row_pos = nullptr;
  float* row_posf = nullptr;
  index_t* tile_pos = nullptr;
  const KV** tile_k = nullptr;
  const KV** tile_v = nullptr;
  const float** tile_kf = nullptr;

  static scratch carve(detail::bump& b, index_t max_rows, index_t dk, index_t dv) {
    constexpr index_t w = simd::lanes<Arch>;
    scratch s;
    s.tile = kv_tile_size;
    s.ld_max = (max_rows + w - 1) / w * w;
    s.ldacc = (dv + w - 1) / w * w;
    s.q = b.take<float>(dk * s.ld_max);
    s.st = b.take<float>(s.tile * s.ld_max);
    s.acc = b.take<float>(s.ld_max * s.ldacc);
    s.m = b.take<float>(s.ld_max);
    s.l = b.take<float>(s.ld_max);
    s.alpha = b.take<float>(s.ld_max);
    s.kf = b.take<float>(s.tile * dk);
    s.row_head = b.take<index_t>(s.ld_max);
    s.row_query = b.take<index_t>(s.ld_max);
    s.row_pos = b.take<index_t>(s.ld_max);
    s.row_posf = b.take<float>(s.ld_max);
    s.tile_pos = b.take<index_t>(s.tile);
    s.tile_k = b.take<const KV*>(s.tile);
    s.tile_v = b.take<const KV*>(s.tile);
    s.tile_kf = b.take<const float*>(s.tile);
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

/// Runs one row block over the tiles of `keys`. `emit(r, ctx, o_row, lse)` receives every row
/// (r < rb.rows()) with its normalised output (dv floats, writable) and LSE, before sinks.
template <class Arch, index_t DK, index_t DV, class KV, class Variant, class Keys, class Emit>
void run_rows(const problem<KV>& pb, const row_block& rb, const Keys& keys, const Variant& var,
              const scratch<Arch, KV>& ws, Emit&& emit) noexcept {
  using V = simd::vfloat<Arch>;
  using Key = std::decay_t<decltype(var.key)>;
  using Score = std::decay_t<decltype(var.score)>;
  using Mask = std::decay_t<decltype(var.mask)>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t dk = DK ? DK : pb.dk;
  const index_t dv = DV ? DV : pb.dv;
  const index_t rows = rb.rows();
  const index_t ld = (rows + w - 1) / w * w;
  const index_t ldacc = ws.ldacc;
  // Rows fewer than half a register use the dot-product QK (no lanes wasted on padding rows).
  const bool dot = rows <= w / 2;
  const int rp = rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8;

  // Row data, padded by repeating the last row.
  for (index_t r = 0; r < ld; ++r) {
    const index_t rr = std::min(r, rows - 1);
    ws.row_head[r] = rb.head_of(rr);
    ws.row_query[r] = rb.query_of(rr);
    ws.row_pos[r] = rb.pos_of(rr);
    ws.row_posf[r] = static_cast<float>(ws.row_pos[r]);
  }
  const row_info ri = ws.rows();

  // Pack the scaled queries: Qᵀ [dk][ld] for the broadcast kernel, rows [rp][dk] for dot.
  const float scale = pb.scale;
  if (dot) {
    std::fill(ws.q, ws.q + rp * dk, 0.0f);
    std::fill(ws.st, ws.st + ws.tile * ld, 0.0f);
  } else {
    std::fill(ws.q, ws.q + dk * ld, 0.0f);
  }
  for (index_t r = 0; r < rows; ++r) {
    const float* src = pb.q.data() + pb.q.offset(rb.batch, ri.query[r], ri.head[r], 0);
    if (dot) {
      for (index_t d = 0; d < dk; ++d) ws.q[r * dk + d] = src[d] * scale;
    } else {
      for (index_t d = 0; d < dk; ++d) ws.q[d * ld + r] = src[d] * scale;
    }
  }
  std::fill(ws.m, ws.m + ld, neg_inf);
  std::fill(ws.l, ws.l + ld, 0.0f);
  std::fill(ws.acc, ws.acc + rows * ldacc, 0.0f);

  tile_buffers<KV> buf{ws.tile, ws.tile_pos, ws.tile_k, ws.tile_v};
  keys.for_each_tile(rb, var.mask, buf, [&](const kv_tile<KV>& t) {
    const index_t n = t.count;
    // K rows as float when the broadcast kernel needs them (narrow storage) or a key transform
    // rewrites them; otherwise the kernels read the cache rows directly.
    constexpr bool transform = !Key::is_identity;
    const bool widen = transform || (!dot && !std::is_same_v<KV, float>);
    if (widen) {
      for (index_t j = 0; j < n; ++j) {
        float* dst = ws.kf + j * dk;
        index_t d = 0;
        for (; d + w <= dk; d += w) simd::load<Arch>(t.k[j] + d).store_unaligned(dst + d);
        for (; d < dk; ++d) dst[d] = simd::load_scalar(t.k[j] + d);
        if constexpr (transform) var.key.apply(dst, dk, t.pos[j], rb.kv_head);
        ws.tile_kf[j] = dst;
      }
    }
    if (dot) {
      auto run_dot = [&](auto krows) {
        switch (rp) {
          case 1: simd::qk_dot<Arch, 1, DK>(krows, n, ws.q, rows, dk, ws.st, ld); break;
          case 2: simd::qk_dot<Arch, 2, DK>(krows, n, ws.q, rows, dk, ws.st, ld); break;
          case 4: simd::qk_dot<Arch, 4, DK>(krows, n, ws.q, rows, dk, ws.st, ld); break;
          default:
            if constexpr (w >= 16) simd::qk_dot<Arch, 8, DK>(krows, n, ws.q, rows, dk, ws.st, ld);
            break;
        }
      };
      if (widen) run_dot(static_cast<const float* const*>(ws.tile_kf));
      else if constexpr (!transform) run_dot(t.k);
    } else if constexpr (std::is_same_v<KV, float> && !transform) {
      simd::qk_bcast<Arch, DK>(widen ? ws.tile_kf : t.k, n, ws.q, ld, dk, ws.st);
    } else {
      simd::qk_bcast<Arch, DK>(ws.tile_kf, n, ws.q, ld, dk, ws.st);
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

    softmax_tile<Arch>(ws.st, ld, n, ws.m, ws.l, ws.alpha, [](index_t, const V&, const V&) {});
    for (index_t r = 0; r < rows; ++r)
      if (ws.alpha[r] != 1.0f) scale_row<Arch>(ws.acc + r * ldacc, dv, ws.alpha[r]);
    simd::pv_bcast<Arch, DV>(ws.st, ld, rows, t.v, n, dv, ws.acc, ldacc);
  });

  for (index_t r = 0; r < rows; ++r) {
    float* o = ws.acc + r * ldacc;
    const float l = ws.l[r];
    float lse = neg_inf;
    if (l > 0.0f) {
      scale_row<Arch>(o, dv, 1.0f / l);
      lse = ws.m[r] + std::log(l);
    } else {
      std::fill(o, o + dv, 0.0f);
    }
    emit(r, row_ctx{rb.batch, ri.head[r], ri.query[r], ri.pos[r]}, o, lse);
  }
}

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_FLASH_HPP_
