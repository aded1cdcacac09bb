// Online softmax: the per-row state (m, l, acc) of FlashAttention-2 and the merge of normalised
// partial states (o, lse). The same merge serves split-K decode, block-sparse + window unions,
// cascade/shared-prefix attention, context-parallel shards and the sink logit (a sink is a state
// with lse = sigma and o = 0). An empty state has lse = -inf and o = 0 and never produces NaN.
#ifndef ATTEND_ENGINE_ONLINE_SOFTMAX_HPP_
#define ATTEND_ENGINE_ONLINE_SOFTMAX_HPP_

#include <cmath>
#include <limits>

#include "../simd/exp.hpp"

namespace attend::engine {

inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// Scales n floats by `factor` (vectorised).
template <class Arch>
ATTEND_INLINE void scale_row(float* x, index_t n, float factor) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const V f(factor);
  index_t c = 0;
  for (; c + w <= n; c += w) (V::load_unaligned(x + c) * f).store_unaligned(x + c);
  for (; c < n; ++c) x[c] *= factor;
}

/// Weights of two normalised states in their merge: o = wa o_a + wb o_b, lse = logaddexp.
/// Two empty states (lse = -inf) give wa = wb = 0 and lse = -inf, never NaN; a NaN state
/// (lse = NaN) makes everything NaN, also against an empty one.
struct merge_weights {
  float wa = 0.0f, wb = 0.0f, lse = neg_inf;
};

/// The merge weights of two normalised states with LSEs lse_a and lse_b.
inline merge_weights weights_of(float lse_a, float lse_b) noexcept {
  if (std::isnan(lse_a) || std::isnan(lse_b)) {  // fmax below would drop the NaN
    const float nan = std::numeric_limits<float>::quiet_NaN();
    return {nan, nan, nan};
  }
  const float m = std::fmax(lse_a, lse_b);
  if (m == neg_inf) return {};
  const float ea = std::exp(lse_a - m), eb = std::exp(lse_b - m);
  const float sum = ea + eb;
  return {ea / sum, eb / sum, m + std::log(sum)};
}

/// Merges the normalised state (o_b, lse_b) into (o_a, lse_a): afterwards o_a is the attention
/// output over the union of both key sets and lse_a its log-sum-exp. o_b may be null when the
/// state carries no value (a sink logit).
template <class Arch>
ATTEND_INLINE void merge_state(float* o_a, float& lse_a, const float* o_b, float lse_b,
                               index_t dv) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const merge_weights mw = weights_of(lse_a, lse_b);
  lse_a = mw.lse;
  if (o_b == nullptr) {
    scale_row<Arch>(o_a, dv, mw.wa);
    return;
  }
  const V va(mw.wa), vb(mw.wb);
  index_t c = 0;
  for (; c + w <= dv; c += w)
    simd::fmadd<Arch>(va, V::load_unaligned(o_a + c), vb * V::load_unaligned(o_b + c))
        .store_unaligned(o_a + c);
  for (; c < dv; ++c) o_a[c] = mw.wa * o_a[c] + mw.wb * o_b[c];
}

/// Joins a sink logit to a finished row: the sink takes probability mass but carries no value.
template <class Arch>
ATTEND_INLINE void join_sink(float* o, float& lse, float sink_logit, index_t dv) noexcept {
  if (sink_logit == neg_inf) return;
  merge_state<Arch>(o, lse, nullptr, sink_logit, dv);
}

/// One KV tile of the online softmax, vectorised along query rows. `st` holds the scores
/// transposed, st[j * ld + r] for key j < count and row r < ld (ld a multiple of the SIMD width);
/// they are replaced by p = exp(s - m_new). m and l (length ld) are updated in place and alpha
/// (length ld) receives exp(m_old - m_new), the factor the caller applies to its accumulators.
/// A row that has seen only -inf keeps m = -inf, l = 0 and gets p = 0, alpha = 0: no NaN.
/// `visit(j, r, s, p)` sees each score vector (key j, rows r..r+lanes) and its probability, for
/// row statistics.
template <class Arch, class Visit>
ATTEND_INLINE void softmax_tile(float* ATTEND_RESTRICT st, index_t ld, index_t count,
                                float* ATTEND_RESTRICT m, float* ATTEND_RESTRICT l,
                                float* ATTEND_RESTRICT alpha, Visit&& visit) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const V ninf(neg_inf), zero(0.0f);
  for (index_t r = 0; r < ld; r += w) {
    const V m_old = V::load_aligned(m + r);
    V mx0 = ninf, mx1 = ninf;
    index_t j = 0;
    for (; j + 2 <= count; j += 2) {
      mx0 = xsimd::max(mx0, V::load_aligned(st + j * ld + r));
      mx1 = xsimd::max(mx1, V::load_aligned(st + (j + 1) * ld + r));
    }
    if (j < count) mx0 = xsimd::max(mx0, V::load_aligned(st + j * ld + r));
    const V m_new = xsimd::max(m_old, xsimd::max(mx0, mx1));
    const V m_use = xsimd::select(m_new == ninf, zero, m_new);  // exp(-inf - 0) = 0
    const V a = simd::exp_nonpositive<Arch>(m_old - m_use);
    V sum0 = zero, sum1 = zero;
    j = 0;
    for (; j + 2 <= count; j += 2) {
      float* p0 = st + j * ld + r;
      float* p1 = p0 + ld;
      const V s0 = V::load_aligned(p0), s1 = V::load_aligned(p1);
      const V e0 = simd::exp_nonpositive<Arch>(s0 - m_use);
      const V e1 = simd::exp_nonpositive<Arch>(s1 - m_use);
      e0.store_aligned(p0);
      e1.store_aligned(p1);
      sum0 += e0;
      sum1 += e1;
      visit(j, r, s0, e0);
      visit(j + 1, r, s1, e1);
    }
    if (j < count) {
      float* p0 = st + j * ld + r;
      const V s0 = V::load_aligned(p0);
      const V e0 = simd::exp_nonpositive<Arch>(s0 - m_use);
      e0.store_aligned(p0);
      sum0 += e0;
      visit(j, r, s0, e0);
    }
    simd::fmadd<Arch>(V::load_aligned(l + r), a, sum0 + sum1).store_aligned(l + r);
    m_new.store_aligned(m + r);
    a.store_aligned(alpha + r);
  }
}

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_ONLINE_SOFTMAX_HPP_
