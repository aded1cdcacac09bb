// In-register conversion of storage types: load<Arch>(p) turns W floats, bf16s or fp16s (or the
// int8 codes of a quantised key copy) at p into one fp32 register (bf16 is a zero-extend and a
// shift; fp16 uses F16C where the target has it), store<Arch>(p, x) rounds back. Kernels stream
// K/V through these, so a bf16 cache is never widened in a separate pass. The bulk
// `attend::convert` at the bottom uses the same functions.
#ifndef ATTEND_SIMD_CONVERT_HPP_
#define ATTEND_SIMD_CONVERT_HPP_

#include "../core/dtype.hpp"
#include "xsimd_compat.hpp"

namespace attend::simd {

/// Scalar load of one element as float (used for broadcasts and tails).
template <class T>
ATTEND_INLINE float load_scalar(const T* p) noexcept {
  if constexpr (std::is_same_v<T, std::int8_t>) return static_cast<float>(*p);
  else return to_float(*p);
}

/// Loads lanes<Arch> consecutive elements of type T (unaligned) as floats.
template <class Arch, class T>
ATTEND_INLINE vfloat<Arch> load(const T* p) noexcept {
  using V = vfloat<Arch>;
  if constexpr (std::is_same_v<T, float>) {
    return V::load_unaligned(p);
  } else if constexpr (std::is_same_v<T, bf16>) {
#if defined(__AVX512F__)
    if constexpr (is_avx512<Arch>) {
      const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
#endif
#if defined(__AVX2__)
    if constexpr (!is_avx512<Arch> && is_avx2<Arch>) {
      const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
    }
#endif
    if constexpr (!is_avx<Arch> && !is_avx512<Arch>) {  // SSE: interleave zeros below the bits
      const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
      return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));
    }
  } else if constexpr (std::is_same_v<T, std::int8_t>) {  // quantised keys (scale applied later)
#if defined(__AVX512F__)
    if constexpr (is_avx512<Arch>)
      return _mm512_cvtepi32_ps(
          _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#endif
#if defined(__AVX2__)
    if constexpr (!is_avx512<Arch> && is_avx2<Arch>)
      return _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#endif
  } else if constexpr (std::is_same_v<T, fp16>) {
#if defined(__AVX512F__)
    if constexpr (is_avx512<Arch>)
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#endif
#if defined(__F16C__)
    if constexpr (!is_avx512<Arch> && is_avx<Arch>)
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    if constexpr (!is_avx<Arch> && !is_avx512<Arch>)
      return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#endif
  }
  // Targets without a conversion instruction: widen through a small aligned buffer.
  alignas(64) float tmp[V::size];
  for (std::size_t i = 0; i < V::size; ++i) tmp[i] = load_scalar(p + i);
  return V::load_aligned(tmp);
}

/// Stores lanes<Arch> floats as type T (round to nearest even, NaN kept), unaligned.
template <class Arch, class T>
ATTEND_INLINE void store(T* p, vfloat<Arch> x) noexcept {
  using V = vfloat<Arch>;
  using U = vuint<Arch>;
  if constexpr (std::is_same_v<T, float>) {
    x.store_unaligned(p);
    return;
  } else if constexpr (std::is_same_v<T, bf16>) {
    const U u = simd::bit_cast<U>(x);
    const U rounded = (u + U(0x7FFFu) + ((u >> 16) & U(1u))) >> 16;
    const U quiet = (u >> 16) | U(0x40u);
    const U abs = u & U(0x7FFFFFFFu);
    const U r = xsimd::select(abs > U(0x7F800000u), quiet, rounded);
#if defined(__AVX512F__)
    if constexpr (is_avx512<Arch>) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
      return;
    }
#endif
#if defined(__AVX2__)
    if constexpr (!is_avx512<Arch> && is_avx2<Arch>) {
      const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
      return;
    }
#endif
    alignas(64) std::uint32_t tmp[V::size];
    r.store_aligned(tmp);
    for (std::size_t i = 0; i < V::size; ++i) p[i].bits = static_cast<std::uint16_t>(tmp[i]);
    return;
  } else {
    static_assert(std::is_same_v<T, fp16>, "storage types are float, bf16 and fp16");
#if defined(__AVX512F__)
    if constexpr (is_avx512<Arch>) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                          _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
      return;
    }
#endif
#if defined(__F16C__)
    if constexpr (!is_avx512<Arch> && is_avx<Arch>) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
      return;
    }
#endif
    alignas(64) float tmp[V::size];
    x.store_aligned(tmp);
    for (std::size_t i = 0; i < V::size; ++i) p[i] = to_fp16(tmp[i]);
  }
}

}  // namespace attend::simd

namespace attend {

/// Converts n >= 0 elements between storage types (float <-> bf16 / fp16, or a copy),
/// vectorised for the compile target. src and dst must not overlap; nothing is validated.
template <class To, class From, class Arch = xsimd::default_arch>
void convert(const From* ATTEND_RESTRICT src, To* ATTEND_RESTRICT dst, index_t n) noexcept {
  static_assert(is_storage_type_v<From> && is_storage_type_v<To>);
  constexpr index_t w = simd::lanes<Arch>;
  index_t i = 0;
  for (; i + w <= n; i += w) simd::store<Arch>(dst + i, simd::load<Arch>(src + i));
  for (; i < n; ++i) dst[i] = from_float<To>(to_float(src[i]));
}

}  // namespace attend

#endif  // ATTEND_SIMD_CONVERT_HPP_
