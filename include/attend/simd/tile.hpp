// Register-blocked tile products for the attention engine. Scores are kept transposed,
// st[j * ld + r] (key j, query row r, ld a multiple of the SIMD width), so that softmax
// reductions run down columns of registers and never across lanes:
//
//   qk_bcast  st  = K · Qᵀ   broadcast K elements, vectors of query rows (Qᵀ packed [dk][ld])
//   qk_bcast_max  best[j] = max_r (K · Qᵀ)[j, r]   row maxima of gathered keys (HiP's search),
//                 reduced in registers, no score tile
//   qk_dot    st  = K · Qᵀ   for fewer rows than one register (decode): vectors along the head
//                            dim, one horizontal reduction per (key, row) pair via haddp
//   pv_bcast  acc += P · V   broadcast probabilities, vectors of V columns loaded (and widened
//                            from bf16/fp16) straight from the cache rows
//
// One micro-kernel, gemm_accumulate<MR, NR>, serves the broadcast products: MR broadcast rows
// times NR registers of columns accumulate in MR*NR registers over the reduction axis
// (gemm_micro loads and stores them around it; qk_bcast_max reduces them in place).
#ifndef ATTEND_SIMD_TILE_HPP_
#define ATTEND_SIMD_TILE_HPP_

#include <algorithm>
#include <limits>
#include <type_traits>

#include "convert.hpp"

namespace attend::simd {

/// Register blocking per target: MR broadcast rows x NR registers of accumulators, chosen to use
/// most of the register file (16 registers below AVX-512, 32 with it) while leaving room for the
/// NR loaded vectors and one broadcast. `kv_tile` (keys per engine tile) is a multiple of MR so
/// that full tiles need no remainder block in K Qᵀ.
template <class Arch>
struct tile_config {
  static constexpr int mr = is_avx512<Arch> ? 8 : 6;
  static constexpr int nr = is_avx512<Arch> ? 3 : 2;
  static constexpr int accumulators = mr * nr;
  static constexpr int kv_tile = 10 * mr;
};

/// acc[m][n] += sum_k a(m, k) * b(k, n) for k < kdim, in registers; `a` returns a float to
/// broadcast, `b` a register.
template <class Arch, int MR, int NR, class AFn, class BFn>
ATTEND_INLINE void gemm_accumulate(index_t kdim, const AFn& a, const BFn& b,
                                   vfloat<Arch> (&acc)[MR][NR]) noexcept {
  using V = vfloat<Arch>;
  for (index_t k = 0; k < kdim; ++k) {
    V bv[NR];
    ATTEND_UNROLL for (int n = 0; n < NR; ++n) bv[n] = b(k, n);
    ATTEND_UNROLL for (int m = 0; m < MR; ++m) {
      const V av(a(m, k));
      ATTEND_UNROLL for (int n = 0; n < NR; ++n) acc[m][n] = fmadd<Arch>(av, bv[n], acc[m][n]);
    }
  }
}

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
  gemm_accumulate<Arch, MR, NR>(kdim, a, b, acc);
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

/// Prefetches rows[j] + off (n elements each) for j < count into L2: the next tile's rows,
/// requested one tile ahead while the current one is computed.
template <class T>
ATTEND_INLINE void prefetch_rows_l2(const T* const* rows, index_t count, index_t off,
                                    index_t n) noexcept {
  const index_t bytes = n * static_cast<index_t>(sizeof(T));
  for (index_t j = 0; j < count; ++j) {
    const char* c = reinterpret_cast<const char*>(rows[j] + off);
    for (index_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 2);
  }
}

/// What the decode kernel prefetches while it computes: K rows `distance` keys ahead (reaching
/// into the tile that follows) and the current tile's V rows. score_tiles' token walk, which
/// reads every KV head of a token row, sets the distance to about 16 KiB of token rows (4 to 16
/// keys).
template <class KV>
struct prefetch_plan {
  const KV* const* k = nullptr;
  index_t count = 0;
  const KV* const* next_k = nullptr;
  index_t next_count = 0;
  index_t k_off = 0, k_elems = 0;
  const KV* const* v = nullptr;
  index_t v_off = 0, v_elems = 0;
  index_t distance = 8;

  ATTEND_INLINE void at(index_t j) const noexcept {
    const index_t a = j + distance;
    if (a < count) prefetch_row(k[a] + k_off, k_elems);
    else if (a - count < next_count) prefetch_row(next_k[a - count] + k_off, k_elems);
    if (v != nullptr && j < count) prefetch_row(v[j] + v_off, v_elems);
  }
};

namespace detail {

/// Calls body(integral_constant<N>) for a run-time n in [1, Max].
template <int Max, class Body>
ATTEND_INLINE void with_constant(int n, const Body& body) noexcept {
  if constexpr (Max >= 1) {
    if (n == Max) return body(std::integral_constant<int, Max>{});
    return with_constant<Max - 1>(n, body);
  }
}

/// Covers rows [0, rows) x registers of columns [0, nvec) with micro-kernel blocks, calling
/// block(MR, NR, r0, c0) with compile-time MR and NR. Whole MR-row blocks use the target's
/// MR x NR; the last rows % MR rows use as many column registers per block as the accumulator
/// budget allows, so a remainder of two rows still keeps enough FMA chains in flight.
template <class Arch, class Block>
ATTEND_INLINE void cover(index_t rows, index_t nvec, const Block& block) noexcept {
  using cfg = tile_config<Arch>;
  const index_t whole = rows - rows % cfg::mr;
  for (index_t c0 = 0; c0 < nvec; c0 += cfg::nr)
    with_constant<cfg::nr>(static_cast<int>(std::min<index_t>(cfg::nr, nvec - c0)), [&](auto knr) {
      for (index_t r0 = 0; r0 < whole; r0 += cfg::mr)
        block(std::integral_constant<int, cfg::mr>{}, knr, r0, c0);
    });
  const int rest = static_cast<int>(rows - whole);
  if (rest == 0) return;
  with_constant<cfg::mr - 1>(rest, [&](auto kmr) {
    constexpr int wide = std::min(cfg::accumulators / decltype(kmr)::value, 6);
    for (index_t c0 = 0; c0 < nvec; c0 += wide)
      with_constant<wide>(static_cast<int>(std::min<index_t>(wide, nvec - c0)),
                          [&](auto knr) { block(kmr, knr, whole, c0); });
  });
}

}  // namespace detail

/// st[j * ld + r] = sum_d k_j[d] * qt[d * ld + r] for j < count and all ld rows (Qᵀ packed with
/// zeros in padding rows). K rows are float (converted beforehand when stored narrower).
template <class Arch, index_t DK = 0>
void qk_bcast(const float* const* ATTEND_RESTRICT krows, index_t count, const float* ATTEND_RESTRICT qt,
              index_t ld, index_t dk_runtime, float* ATTEND_RESTRICT st, index_t k_off = 0) noexcept {
  constexpr index_t w = lanes<Arch>;
  const index_t dk = DK ? DK : dk_runtime;
  // Keys are the broadcast rows, query-row registers the columns.
  detail::cover<Arch>(count, ld / w, [&](auto kmr, auto knr, index_t j0, index_t v0) {
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

/// best[j] = max over the ld query rows of k_j . q_r for j < count (Qᵀ packed [dk][ld]; padding
/// rows repeat a real row so that they never win). The row maxima of a search over gathered
/// keys (HiP's representatives): MR keys broadcast against NR registers of rows, reduced in
/// registers, no score tile written; each key group is finished over every column register
/// before the next, so its rows stay in L1. Float rows are broadcast in place; narrower rows are
/// widened a group at a time into kf ([mr][dk] floats). Gathered rows are cache misses: the
/// rows two groups ahead are prefetched one line per row every 64 bytes of the reduction, a
/// trickle that keeps the miss queues from filling.
template <class Arch, index_t DK = 0, class KV>
void qk_bcast_max(const KV* const* ATTEND_RESTRICT krows, index_t count,
                  const float* ATTEND_RESTRICT qt, index_t ld, index_t dk_runtime,
                  float* ATTEND_RESTRICT kf, float* ATTEND_RESTRICT best) noexcept {
  using V = vfloat<Arch>;
  using cfg = tile_config<Arch>;
  constexpr index_t w = lanes<Arch>;
  constexpr index_t line = 64 / static_cast<index_t>(sizeof(KV));  // elements per cache line
  const index_t dk = DK ? DK : dk_runtime;
  const index_t nvec = ld / w;
  auto group = [&](auto kmr, index_t j0) {
    constexpr int MR = decltype(kmr)::value;
    const KV* ahead[cfg::mr];  // past the end: the last row again (cached; no branches)
    for (int a = 0; a < cfg::mr; ++a) ahead[a] = krows[std::min(count - 1, j0 + 2 * cfg::mr + a)];
    const float* kp[MR];
    for (int m = 0; m < MR; ++m) {
      if constexpr (std::is_same_v<KV, float>) {
        kp[m] = krows[j0 + m];
      } else {
        float* dst = kf + m * dk;
        index_t d = 0;
        for (; d + w <= dk; d += w) load<Arch>(krows[j0 + m] + d).store_unaligned(dst + d);
        for (; d < dk; ++d) dst[d] = load_scalar(krows[j0 + m] + d);
        kp[m] = dst;
      }
    }
    float top[MR];
    for (int m = 0; m < MR; ++m) top[m] = -std::numeric_limits<float>::infinity();
    for (index_t v0 = 0; v0 < nvec; v0 += cfg::nr)
      detail::with_constant<cfg::nr>(
          static_cast<int>(std::min<index_t>(cfg::nr, nvec - v0)), [&](auto knr) {
            constexpr int NR = decltype(knr)::value;
            const float* qb = qt + v0 * w;
            V acc[MR][NR];
            ATTEND_UNROLL for (int m = 0; m < MR; ++m) ATTEND_UNROLL for (int n = 0; n < NR; ++n)
                acc[m][n] = V(0.0f);
            auto span = [&](index_t d0, index_t n) {  // d in [d0, d0 + n)
              gemm_accumulate<Arch, MR, NR>(
                  n, [&](int m, index_t d) { return kp[m][d0 + d]; },
                  [&](index_t d, int r) { return V::load_aligned(qb + (d0 + d) * ld + r * w); },
                  acc);
            };
            const index_t lines_end = dk - dk % line;
            for (index_t d0 = 0; d0 < lines_end; d0 += line) {
              if (v0 == 0)  // one line of each row two groups ahead
                for (int a = 0; a < cfg::mr; ++a) __builtin_prefetch(ahead[a] + d0);
              span(d0, line);
            }
            if (lines_end < dk) {
              if (v0 == 0)
                for (int a = 0; a < cfg::mr; ++a) __builtin_prefetch(ahead[a] + lines_end);
              span(lines_end, dk - lines_end);
            }
            ATTEND_UNROLL for (int m = 0; m < MR; ++m) {
              V mv = acc[m][0];
              ATTEND_UNROLL for (int n = 1; n < NR; ++n) mv = xsimd::max(mv, acc[m][n]);
              const float x = reduce_max<Arch>(mv);
              top[m] = x > top[m] ? x : top[m];  // NaN never wins
            }
          });
    for (int m = 0; m < MR; ++m) best[j0 + m] = top[m];
  };
  for (index_t j = 0; j < std::min<index_t>(count, 2 * cfg::mr); ++j) prefetch_row(krows[j], dk);
  const index_t whole = count - count % cfg::mr;
  for (index_t j0 = 0; j0 < whole; j0 += cfg::mr) group(std::integral_constant<int, cfg::mr>{}, j0);
  if (count > whole)
    detail::with_constant<cfg::mr - 1>(static_cast<int>(count - whole),
                                       [&](auto kmr) { group(kmr, whole); });
}

/// acc[r * ldacc + c] += sum_j pt[j * ld + r] * v_j[c + v_off] for r < rows, c < dv, j < count.
/// V rows are read in their storage type and widened in registers. Keys are taken `key_chunk`
/// at a time across all columns, so that few-row (decode) calls stream V rows in order instead
/// of sweeping the tile once per column block.
template <class Arch, index_t DV = 0, class Rows>
void pv_bcast(const float* ATTEND_RESTRICT pt, index_t ld, index_t rows, const Rows& vrows,
              index_t count, index_t dv_runtime,
              float* ATTEND_RESTRICT acc, index_t ldacc, index_t v_off = 0,
              index_t key_chunk = 0) noexcept {
  constexpr index_t w = lanes<Arch>;
  const index_t dv = DV ? DV : dv_runtime;
  const index_t nvec = dv / w;
  if (key_chunk <= 0) key_chunk = count;
  for (index_t k0 = 0; k0 < count; k0 += key_chunk) {
    const index_t kn = std::min(key_chunk, count - k0);
    const float* pk = pt + k0 * ld;
    detail::cover<Arch>(rows, nvec, [&](auto kmr, auto knr, index_t r0, index_t c0) {
      constexpr int MR = decltype(kmr)::value, NR = decltype(knr)::value;
      const float* pb = pk + r0;
      const index_t col = c0 * w + v_off;
      gemm_micro<Arch, MR, NR>(
          kn, [&](int m, index_t j) { return pb[j * ld + m]; },
          [&](index_t j, int n) { return load<Arch>(vrows[k0 + j] + col + n * w); },
          acc + r0 * ldacc + c0 * w, ldacc, true);
    });
  }
  for (index_t c = nvec * w; c < dv; ++c)  // generic head dims: columns past the last register
    for (index_t r = 0; r < rows; ++r) {
      float s = acc[r * ldacc + c];
      for (index_t j = 0; j < count; ++j) s += pt[j * ld + r] * load_scalar(vrows[j] + c + v_off);
      acc[r * ldacc + c] = s;
    }
}

#if defined(__AVX__)
/// Transposes the 8 x 8 floats held by r[0..8) (r[i] = row i) in place: r[i] becomes column i.
ATTEND_INLINE void transpose8x8(__m256* r) noexcept {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}
#endif

/// Key-major scores to rows: dst[r][j] = src[j * ld + r] for r < rows, j < count, with NaN
/// replaced by -inf (selection never picks them). AVX2 and AVX-512 targets move 8 x 8 blocks
/// through registers; other targets and the edges copy element by element.
template <class Arch>
void scores_to_rows(const float* ATTEND_RESTRICT src, index_t ld, index_t rows, index_t count,
                    float* const* dst) noexcept {
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  index_t r_done = 0, j_done = 0;
#if defined(__AVX2__)
  if constexpr (is_avx2<Arch> || is_avx512<Arch>) {
    r_done = rows - rows % 8;
    j_done = count - count % 8;
    const __m256 fill = _mm256_set1_ps(ninf);
    for (index_t r0 = 0; r0 < r_done; r0 += 8)
      for (index_t j0 = 0; j0 < j_done; j0 += 8) {
        __m256 x[8];
        for (int i = 0; i < 8; ++i) x[i] = _mm256_loadu_ps(src + (j0 + i) * ld + r0);
        transpose8x8(x);
        for (int i = 0; i < 8; ++i)
          _mm256_storeu_ps(dst[r0 + i] + j0,
                           _mm256_blendv_ps(fill, x[i], _mm256_cmp_ps(x[i], x[i], _CMP_ORD_Q)));
      }
  }
#endif
  auto copy = [&](index_t r, index_t j) {
    const float x = src[j * ld + r];
    dst[r][j] = x == x ? x : ninf;
  };
  for (index_t r = 0; r < r_done; ++r)
    for (index_t j = j_done; j < count; ++j) copy(r, j);
  for (index_t r = r_done; r < rows; ++r)
    for (index_t j = 0; j < count; ++j) copy(r, j);
}

/// Rows stored `stride` elements apart from `base` (a packed tile): an alternative to an array
/// of row pointers for the kernels' row arguments.
template <class T>
struct strided_rows {
  const T* base;
  index_t stride;
  ATTEND_INLINE const T* operator[](index_t j) const noexcept { return base + j * stride; }
};

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
      ATTEND_UNROLL for (int r = 0; r < RP; ++r) {  // unrolled: a few floats, not a memcpy call
        if (r >= rows) break;
        float x = sums[s * RP + r];
        for (index_t d = dfull; d < dk; ++d) x += load_scalar(kp[s] + d) * q[r * dk + d];
        st[(j0 + s) * ld + r] = x;
      }
  }
}

}  // namespace attend::simd

#endif  // ATTEND_SIMD_TILE_HPP_
