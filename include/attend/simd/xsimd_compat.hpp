// The only place that knows xsimd 8.1 from later versions: reductions (8.1 spells the sum
// `hadd` and has no reduce_max), a fused multiply-add that really fuses on AVX-512 (8.1 has no
// AVX-512 fma kernel and falls back to x*y+z, which Clang 14 does not contract), and bit casts
// (8.1's bitwise_cast takes the batch type). Nothing else in the library names those functions.
#ifndef ATTEND_SIMD_XSIMD_COMPAT_HPP_
#define ATTEND_SIMD_XSIMD_COMPAT_HPP_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <xsimd/xsimd.hpp>

#include "../core/config.hpp"

namespace attend::simd {

/// Registers of float / int32 / uint32 lanes for an xsimd architecture tag.
template <class Arch>
using vfloat = xsimd::batch<float, Arch>;
template <class Arch>
using vint = xsimd::batch<std::int32_t, Arch>;
template <class Arch>
using vuint = xsimd::batch<std::uint32_t, Arch>;

/// Floats per register for Arch (4 on SSE, 8 on AVX/AVX2, 16 on AVX-512).
template <class Arch>
inline constexpr index_t lanes = static_cast<index_t>(vfloat<Arch>::size);

/// Instruction-set tests on an architecture tag (compile time).
template <class Arch>
inline constexpr bool is_avx512 = std::is_base_of_v<xsimd::avx512f, Arch>;
template <class Arch>
inline constexpr bool is_avx2 = std::is_base_of_v<xsimd::avx2, Arch>;
template <class Arch>
inline constexpr bool is_avx = std::is_base_of_v<xsimd::avx, Arch>;

/// a * b + c, fused wherever the target has an FMA unit.
template <class Arch>
ATTEND_INLINE vfloat<Arch> fmadd(vfloat<Arch> a, vfloat<Arch> b, vfloat<Arch> c) noexcept {
#if defined(__AVX512F__)
  if constexpr (is_avx512<Arch>) return _mm512_fmadd_ps(a, b, c);
#endif
#if defined(__FMA__)
  if constexpr (!is_avx512<Arch> && is_avx<Arch>) return _mm256_fmadd_ps(a, b, c);
  if constexpr (!is_avx<Arch> && !is_avx512<Arch>) return _mm_fmadd_ps(a, b, c);
#endif
  return a * b + c;
}

/// c - a * b, fused wherever the target has an FMA unit.
template <class Arch>
ATTEND_INLINE vfloat<Arch> fnmadd(vfloat<Arch> a, vfloat<Arch> b, vfloat<Arch> c) noexcept {
#if defined(__AVX512F__)
  if constexpr (is_avx512<Arch>) return _mm512_fnmadd_ps(a, b, c);
#endif
#if defined(__FMA__)
  if constexpr (!is_avx512<Arch> && is_avx<Arch>) return _mm256_fnmadd_ps(a, b, c);
  if constexpr (!is_avx<Arch> && !is_avx512<Arch>) return _mm_fnmadd_ps(a, b, c);
#endif
  return c - a * b;
}

/// Reinterprets the bits of a batch as another batch type of the same width.
template <class To, class From>
ATTEND_INLINE To bit_cast(const From& x) noexcept {
  return xsimd::bitwise_cast<To>(x);
}

/// Horizontal sum of the lanes.
template <class Arch>
ATTEND_INLINE float reduce_sum(vfloat<Arch> x) noexcept {
  return xsimd::hadd(x);
}

/// Horizontal maximum of the lanes (NaN lanes are ignored unless every lane is NaN).
template <class Arch>
ATTEND_INLINE float reduce_max(vfloat<Arch> x) noexcept {
  alignas(64) float tmp[vfloat<Arch>::size];
  x.store_aligned(tmp);
  float m = tmp[0];
  for (std::size_t i = 1; i < vfloat<Arch>::size; ++i) m = std::max(m, tmp[i]);
  return m;
}

/// Sums of `lanes` rows at once: lane i of the result is the sum of rows[i]'s lanes.
/// xsimd 8.1's AVX-512 haddp returns lanes 2-5 and 10-13 in the wrong order, so AVX-512 folds
/// here: 512 -> 256 bits pairing rows i and i + 8, 256 -> 128 pairing i and i + 4, then two
/// in-lane pairwise adds; the 128-bit lanes come out holding rows 0-3, 8-11, 4-7, 12-15.
template <class Arch>
ATTEND_INLINE vfloat<Arch> reduce_sum_rows(const vfloat<Arch>* rows) noexcept {
#if defined(__AVX512F__)
  if constexpr (is_avx512<Arch>) {
    __m512 half[8], quarter[4];
    for (int i = 0; i < 8; ++i) {
      const __m512 a = rows[i], b = rows[i + 8];
      half[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int i = 0; i < 4; ++i) {
      const __m512 a = half[i], b = half[i + 4];
      quarter[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    auto pairwise = [](__m512 a, __m512 b) {  // per 128-bit lane: a0+a1, a2+a3, b0+b1, b2+b3
      return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    };
    const __m512 sums =
        pairwise(pairwise(quarter[0], quarter[1]), pairwise(quarter[2], quarter[3]));
    return _mm512_shuffle_f32x4(sums, sums, _MM_SHUFFLE(3, 1, 2, 0));
  }
#endif
  return xsimd::haddp(rows);
}

}  // namespace attend::simd

#endif  // ATTEND_SIMD_XSIMD_COMPAT_HPP_
