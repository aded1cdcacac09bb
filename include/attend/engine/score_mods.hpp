// Score modifiers: rewrite a tile of transposed scores st[j * ld + r] after q.k * scale.
// `apply<Arch>(rb, rows, kpos, count, st, ld)` sees the row block, its per-row data, the key
// positions of the tile and the scores; it runs once per tile, vectorised along query rows.
#ifndef ATTEND_ENGINE_SCORE_MODS_HPP_
#define ATTEND_ENGINE_SCORE_MODS_HPP_

#include "../simd/xsimd_compat.hpp"
#include "variant.hpp"

namespace attend::engine {

/// softcap * tanh(s / softcap), then ALiBi -slope_h * |p_i - j|, then an additive bias
/// [batch, heads_q, seq_q, seq_k] (broadcast axes have stride 0). Each part is off when its
/// parameter is 0 / null; the checks run once per tile, never per element.
struct standard_score_mod {
  static constexpr bool is_identity = false;
  float softcap = 0.0f;
  const float* alibi_slopes = nullptr;  // [heads_q]
  const float* bias = nullptr;
  index_t bias_stride_b = 0, bias_stride_h = 0, bias_stride_q = 0, bias_stride_k = 0;

  template <class Arch>
  void apply(const row_block& rb, const row_info& ri, const index_t* kpos, index_t count,
             float* st, index_t ld) const noexcept {
    using V = simd::vfloat<Arch>;
    constexpr index_t w = simd::lanes<Arch>;
    if (softcap > 0.0f) {
      const V cap(softcap), inv(1.0f / softcap);
      for (index_t j = 0; j < count; ++j)
        for (index_t r = 0; r < ld; r += w) {
          float* p = st + j * ld + r;
          (cap * xsimd::tanh(V::load_aligned(p) * inv)).store_aligned(p);
        }
    }
    if (alibi_slopes != nullptr) {
      alignas(64) float slope[w];
      for (index_t r = 0; r < ld; r += w) {
        for (index_t i = 0; i < w; ++i) slope[i] = alibi_slopes[ri.head[r + i]];
        const V sl = V::load_aligned(slope), qp = V::load_aligned(ri.posf + r);
        for (index_t j = 0; j < count; ++j) {
          float* p = st + j * ld + r;
          const V dist = xsimd::abs(qp - V(static_cast<float>(kpos[j])));
          simd::fnmadd<Arch>(sl, dist, V::load_aligned(p)).store_aligned(p);
        }
      }
    }
    if (bias != nullptr) {
      const float* base = bias + rb.batch * bias_stride_b;
      for (index_t j = 0; j < count; ++j) {
        const float* col = base + kpos[j] * bias_stride_k;
        float* p = st + j * ld;
        for (index_t r = 0; r < ld; ++r)
          p[r] += col[ri.head[r] * bias_stride_h + ri.query[r] * bias_stride_q];
      }
    }
  }
};

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_SCORE_MODS_HPP_
