// Storage types for K/V (and optionally Q/O): bf16 and fp16, each a 16-bit pattern. All compute
// and accumulation is fp32. Conversions from fp32 round to nearest even, keep NaN a NaN (quiet)
// and Inf an Inf; fp16 overflows to Inf and underflows through its subnormals. Vectorised bulk
// conversions (`attend::convert`) and in-register loads live in simd/convert.hpp, included below.
#ifndef ATTEND_CORE_DTYPE_HPP_
#define ATTEND_CORE_DTYPE_HPP_

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "config.hpp"

namespace attend {

/// bfloat16: the top 16 bits of an IEEE float.
struct bf16 {
  std::uint16_t bits;
};

/// IEEE 754 binary16.
struct fp16 {
  std::uint16_t bits;
};

static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16>);
static_assert(sizeof(fp16) == 2 && std::is_trivially_copyable_v<fp16>);

namespace detail {

inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::uint16_t float_to_half_bits(float f) noexcept {
#if defined(__F16C__)
  // (not _cvtss_sh: Clang's spells it with a compound literal, which -Wpedantic rejects)
  return static_cast<std::uint16_t>(
      _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0));
#else
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  if (ax >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520: Inf
  if (ax < 0x38800000u) {  // below 2^-14: the half is subnormal (or zero)
    // Adding 0.5 leaves a float whose ulp is 2^-24, the half subnormal step: the FPU rounds.
    const float t = bits_float(ax) + 0.5f;
    return static_cast<std::uint16_t>(sign | (float_bits(t) - 0x3F000000u));
  }
  const std::uint32_t odd = (ax >> 13) & 1u;
  return static_cast<std::uint16_t>(sign | ((ax + 0xC8000FFFu + odd) >> 13));  // rebias, RNE
#endif
}

inline float half_bits_to_float(std::uint16_t h) noexcept {
#if defined(__F16C__)
  return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
#else
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1Fu;
  const std::uint32_t m = h & 0x3FFu;
  if (e == 0x1F) return bits_float(sign | 0x7F800000u | (m << 13));
  if (e == 0) {
    const float mag = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return bits_float(sign | float_bits(mag));
  }
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
#endif
}

}  // namespace detail

/// Exact widening of a storage value to float (identity for float).
inline float to_float(float x) noexcept { return x; }
inline float to_float(bf16 x) noexcept {
  return detail::bits_float(static_cast<std::uint32_t>(x.bits) << 16);
}
inline float to_float(fp16 x) noexcept { return detail::half_bits_to_float(x.bits); }

/// fp32 -> bf16, round to nearest even; NaN stays a (quiet) NaN, Inf stays Inf.
inline bf16 to_bf16(float f) noexcept {
  const std::uint32_t u = detail::float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  return bf16{static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}

/// fp32 -> fp16, round to nearest even, overflow to Inf, subnormals kept, NaN stays NaN.
inline fp16 to_fp16(float f) noexcept { return fp16{detail::float_to_half_bits(f)}; }

/// Converts a float to the storage type T (float, bf16 or fp16).
template <class T>
inline T from_float(float f) noexcept {
  if constexpr (std::is_same_v<T, bf16>) {
    return to_bf16(f);
  } else if constexpr (std::is_same_v<T, fp16>) {
    return to_fp16(f);
  } else {
    static_assert(std::is_same_v<T, float>, "storage types are float, bf16 and fp16");
    return f;
  }
}

/// True for the K/V storage types the kernels accept: float, bf16, fp16.
template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, bf16> || std::is_same_v<T, fp16>;

/// Short name of a storage type, as used in benchmark names ("f32", "bf16", "f16").
template <class T>
constexpr const char* dtype_name() noexcept {
  if constexpr (std::is_same_v<T, bf16>) return "bf16";
  if constexpr (std::is_same_v<T, fp16>) return "f16";
  return "f32";
}

}  // namespace attend

#include "../simd/convert.hpp"

#endif  // ATTEND_CORE_DTYPE_HPP_
