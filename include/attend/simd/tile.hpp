// Register-blocked tile products for the attention engine. Scores are kept transposed,
// st[j * ld + r] (key j, query row r, ld a multiple of the SIMD width), so that softmax
// reductions run down columns of registers and never across lanes:
//
//   qk_bcast  st  = K · Qᵀ   broadcast K elements, vectors of query rows (Qᵀ packed [dk][ld])
//   qk_dot    st  = K · Qᵀ   for fewer rows than one register (decode): vectors along the head
//                            dim, one horizontal reduction per (key, row) pair via haddp
//   pv_bcast  acc += P · V   broadcast probabilities, vectors of V columns loaded (and widened
//                            from bf16/fp16) straight from the cache rows
//
// One micro-kernel, gemm_micro<MR, NR>, serves both broadcast products: MR broadcast rows times
// NR registers of columns accumulate in MR*NR registers over the reduction axis.
#ifndef ATTEND_SIMD_TILE_HPP_
#define ATTEND_SIMD_TILE_HPP_

#include <algorithm>

#include "convert.hpp"

#if defined(__clang__)
#define ATTEND_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define ATTEND_UNROLL _Pragma("GCC unroll 32")
#else
#define ATTEND_UNROLL
#endif

namespace attend::simd {

/// Register blocking per target: MR broadcast rows x NR registers of accumulators, chosen to use
/// most of the register file (16 registers below AVX-512, 32 with it) while leaving room for the
/// NR loaded vectors and one broadcast.
template <class Arch>
struct tile_config {
  static constexpr int mr = is_avx512<Arch> ? 8 : 6;
  static constexpr int nr = is_avx512<Arch> ? 3 : 2;
};

/// C[MR][NR lanes] (+)= sum_k a(m, k) * b(k, n) for k < kdim; `a` returns a float to broadcast,
/// `b` a register. C is row-major with row stride ldc.
template <class Arch, int MR, int NR, class AFn, class BFn>
ATTEND_INLINE void gemm_micro(index_t kdim, const AFn& a, const BFn& b, float* ATTEND_RESTRICT c,
                              index_t ldc, bool accumulate) noexcept {
  using V = vfloat<Arch>;
  constexpr index_t w = lanes<Arch>;
  V acc[MR][NR];
  ATTEND_UNROLL for (int m = 0; m < MR; ++m) ATTEND_UNROLL for (int n = 0; n < NR; ++n) acc[m][n] =
      accumulate ? V::load_unaligned(c + m * ldc + n * w) : V(0.0f);
  for (index_t k = 0; k < kdim; ++k) {
    V bv[NR];
    ATTEND_UNROLL for (int n = 0; n < NR; ++n) bv[n] = b(k, n);
    ATTEND_UNROLL for (int m = 0; m < MR; ++m) {
      const V av(a(m, k));
      ATTEND_UNROLL for (int n = 0; n < NR; ++n) acc[m][n] = fmadd<Arch>(av, bv[n], acc[m][n]);
    }
  }
  ATTEND_UNROLL for (int m = 0; m < MR; ++m) ATTEND_UNROLL for (int n = 0; n < NR; ++n)
      acc[m][n].store_unaligned(c + m * ldc + n * w);
}

/// Prefetches the n elements at p into the caches (rows of a KV cache: the per-head rows of a
/// [batch, seq, heads, dim] cache are far apart, which hardware prefetchers do not follow).
template <class T>
ATTEND_INLINE void prefetch_row(const T* p, index_t n) noexcept {
  const char* c = reinterpret_cast<const char*>(p);
  const index_t bytes = n * static_cast<index_t>(sizeof(T));
  for (index_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
}

/// What the decode kernel prefetches while it computes: K rows `distance` keys ahead (reaching
/// into the tile that follows) and the current tile's V rows.
template <class KV>
struct prefetch_plan {
  const KV* const* k = nullptr;
  index_t count = 0;
  const KV* const* next_k = nullptr;
  index_t next_count = 0;
  index_t k_off = 0, k_elems = 0;
  const KV* const* v = nullptr;
  index_t v_off = 0, v_elems = 0;
  static constexpr index_t distance = 8;

  ATTEND_INLINE void at(index_t j) const noexcept {
    const index_t a = j + distance;
    if (a < count) prefetch_row(k[a] + k_off, k_elems);
    else if (a - count < next_count) prefetch_row(next_k[a - count] + k_off, k_elems);
    if (v != nullptr && j < count) prefetch_row(v[j] + v_off, v_elems);
  }
};

namespace detail {

/// Runs gemm_micro with MR = mr (1..MRmax) and NR = nr (1..NRmax) chosen at run time; the full
/// block is the common case, the others handle edges.
template <class Arch, int MRmax, int NRmax, class Body>
ATTEND_INLINE void dispatch_block(int mr, int nr, const Body& body) noexcept {
  if (mr == MRmax && nr == NRmax) return body(std::integral_constant<int, MRmax>{},
                                              std::integral_constant<int, NRmax>{});
  auto with_nr = [&](auto kmr) {
    if constexpr (NRmax >= 3) if (nr == 3) return body(kmr, std::integral_constant<int, 3>{});
    if constexpr (NRmax >= 2) if (nr == 2) return body(kmr, std::integral_constant<int, 2>{});
    return body(kmr, std::integral_constant<int, 1>{});
  };
  switch (mr) {
    case 1: return with_nr(std::integral_constant<int, 1>{});
    case 2: return with_nr(std::integral_constant<int, 2>{});
    case 3: return with_nr(std::integral_constant<int, 3>{});
    case 4: return with_nr(std::integral_constant<int, 4>{});
    case 5: if constexpr (MRmax >= 5) return with_nr(std::integral_constant<int, 5>{}); break;
    case 6: if constexpr (MRmax >= 6) return with_nr(std::integral_constant<int, 6>{}); break;
    case 7: if constexpr (MRmax >= 7) return with_nr(std::integral_constant<int, 7>{}); break;
    case 8: if constexpr (MRmax >= 8) return with_nr(std::integral_constant<int, 8>{}); break;
    default: break;
  }
}

}  // namespace detail

/// st[j * ld + r] = sum_d k_j[d] * qt[d * ld + r] for j < count and all ld rows (Qᵀ packed with
/// zeros in padding rows). K rows are float (converted beforehand when stored narrower).
template <class Arch, index_t DK = 0>
void qk_bcast(const float* const* ATTEND_RESTRICT krows, index_t count, const float* ATTEND_RESTRICT qt,
              index_t ld, index_t dk_runtime, float* ATTEND_RESTRICT st, index_t k_off = 0) noexcept {
  using cfg = tile_config<Arch>;
  constexpr index_t w = lanes<Arch>;
  const index_t dk = DK ? DK : dk_runtime;
  const index_t nvec = ld / w;
  for (index_t v0 = 0; v0 < nvec; v0 += cfg::nr) {
    const int nr = static_cast<int>(std::min<index_t>(cfg::nr, nvec - v0));
    for (index_t j0 = 0; j0 < count; j0 += cfg::mr) {
      const int mr = static_cast<int>(std::min<index_t>(cfg::mr, count - j0));
      detail::dispatch_block<Arch, cfg::mr, cfg::nr>(mr, nr, [&](auto kmr, auto knr) {
        constexpr int MR = decltype(kmr)::value, NR = decltype(knr)::value;
        const float* kp[MR];
        for (int m = 0; m < MR; ++m) kp[m] = krows[j0 + m] + k_off;
        const float* qb = qt + v0 * w;
        gemm_micro<Arch, MR, NR>(
            dk, [&](int m, index_t d) { return kp[m][d]; },
            [&](index_t d, int n) { return vfloat<Arch>::load_aligned(qb + d * ld + n * w); },
            st + j0 * ld + v0 * w, ld, false);
      });
    }
  }
}

/// acc[r * ldacc + c] += sum_j pt[j * ld + r] * v_j[c + v_off] for r < rows, c < dv, j < count.
/// V rows are read in their storage type and widened in registers. Keys are taken `key_chunk`
/// at a time across all columns, so that few-row (decode) calls stream V rows in order instead
/// of sweeping the tile once per column block.
template <class Arch, index_t DV = 0, class KV>
void pv_bcast(const float* ATTEND_RESTRICT pt, index_t ld, index_t rows,
              const KV* const* ATTEND_RESTRICT vrows, index_t count, index_t dv_runtime,
              float* ATTEND_RESTRICT acc, index_t ldacc, index_t v_off = 0,
              index_t key_chunk = 0) noexcept {
  using cfg = tile_config<Arch>;
  constexpr index_t w = lanes<Arch>;
  const index_t dv = DV ? DV : dv_runtime;
  const index_t nvec = dv / w;
  if (key_chunk <= 0) key_chunk = count;
  for (index_t k0 = 0; k0 < count; k0 += key_chunk) {
    const index_t kn = std::min(key_chunk, count - k0);
    const float* pk = pt + k0 * ld;
    const KV* const* vk = vrows + k0;
    for (index_t c0 = 0; c0 < nvec; c0 += cfg::nr) {
      const int nr = static_cast<int>(std::min<index_t>(cfg::nr, nvec - c0));
      for (index_t r0 = 0; r0 < rows; r0 += cfg::mr) {
        const int mr = static_cast<int>(std::min<index_t>(cfg::mr, rows - r0));
        detail::dispatch_block<Arch, cfg::mr, cfg::nr>(mr, nr, [&](auto kmr, auto knr) {
          constexpr int MR = decltype(kmr)::value, NR = decltype(knr)::value;
          const float* pb = pk + r0;
          const index_t col = c0 * w + v_off;
          gemm_micro<Arch, MR, NR>(
              kn, [&](int m, index_t j) { return pb[j * ld + m]; },
              [&](index_t j, int n) { return load<Arch>(vk[j] + col + n * w); },
              acc + r0 * ldacc + c0 * w, ldacc, true);
        });
      }
    }
  }
  for (index_t c = nvec * w; c < dv; ++c)  // generic head dims: columns past the last register
    for (index_t r = 0; r < rows; ++r) {
      float s = acc[r * ldacc + c];
      for (index_t j = 0; j < count; ++j) s += pt[j * ld + r] * load_scalar(vrows[j] + c + v_off);
      acc[r * ldacc + c] = s;
    }
}

/// Decode form of K · Qᵀ for rows < lanes: q is packed row-major, q[r * dk + d], with RP rows
/// (RP a power of two, rows <= RP, padding rows zero). KS = lanes / RP keys are reduced together,
/// so one haddp yields KS x RP scores.
template <class Arch, int RP, index_t DK = 0, class KV, class Plan = prefetch_plan<KV>>
void qk_dot(const KV* const* ATTEND_RESTRICT krows, index_t count, const float* ATTEND_RESTRICT q,
            index_t rows, index_t dk_runtime, float* ATTEND_RESTRICT st, index_t ld,
            index_t k_off = 0, const Plan& ahead = {}) noexcept {
  using V = vfloat<Arch>;
  constexpr index_t w = lanes<Arch>;
  constexpr int KS = static_cast<int>(w) / RP;
  static_assert(KS * RP == w, "RP must divide the register width");
  const index_t dk = DK ? DK : dk_runtime;
  const index_t dfull = dk - dk % w;
  alignas(64) float sums[w];
  for (index_t j0 = 0; j0 < count; j0 += KS) {
    const KV* kp[KS];
    for (int s = 0; s < KS; ++s) kp[s] = krows[std::min<index_t>(j0 + s, count - 1)] + k_off;
    if (ahead.k != nullptr)
      for (int s = 0; s < KS; ++s) ahead.at(j0 + s);
    V acc[KS * RP];
    ATTEND_UNROLL for (int a = 0; a < KS * RP; ++a) acc[a] = V(0.0f);
    for (index_t d = 0; d < dfull; d += w) {
      V qv[RP];
      ATTEND_UNROLL for (int r = 0; r < RP; ++r) qv[r] = V::load_unaligned(q + r * dk + d);
      ATTEND_UNROLL for (int s = 0; s < KS; ++s) {
        const V kv = load<Arch>(kp[s] + d);
        ATTEND_UNROLL for (int r = 0; r < RP; ++r) acc[s * RP + r] =
            fmadd<Arch>(kv, qv[r], acc[s * RP + r]);
      }
    }
    reduce_sum_rows<Arch>(acc).store_aligned(sums);
    const index_t ks = std::min<index_t>(KS, count - j0);
    for (index_t s = 0; s < ks; ++s)
      for (index_t r = 0; r < rows; ++r) {
        float x = sums[s * RP + r];
        for (index_t d = dfull; d < dk; ++d) x += load_scalar(kp[s] + d) * q[r * dk + d];
        st[(j0 + s) * ld + r] = x;
      }
  }
}

}  // namespace attend::simd

#endif  // ATTEND_SIMD_TILE_HPP_
