// Vectorised exp for softmax: Cephes-style range reduction exp(x) = 2^n * exp(r), |r| <= ln2/2,
// with a degree-6 polynomial. Maximum error 2 ulp against the correctly rounded result for
// results >= FLT_MIN (tests/test_simd_exp.cpp sweeps it). Specials are exact:
// exp(-inf) = 0, exp(+inf) = +inf, exp(NaN) = NaN; x < ln(FLT_MIN) (about -87.34) flushes to 0
// instead of producing a subnormal, x > ln(FLT_MAX) gives +inf.
#ifndef ATTEND_SIMD_EXP_HPP_
#define ATTEND_SIMD_EXP_HPP_

#include <limits>

#include "xsimd_compat.hpp"

namespace attend::simd {

namespace detail {

/// exp(x) = 2^n * p(r) for x already clamped to [ln(FLT_MIN), ln(FLT_MAX)] (NaN passes through
/// into p): Cephes-style range reduction with ln2 split in two, and a degree-6 polynomial.
template <class Arch>
struct exp_parts {
  vfloat<Arch> p;
  vint<Arch> n;  // in [-126, 128]
};

template <class Arch>
ATTEND_INLINE exp_parts<Arch> exp_reduce(vfloat<Arch> xc) noexcept {
  using V = vfloat<Arch>;
  using I = vint<Arch>;
  const V magic(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
  const V t = fmadd<Arch>(xc, V(1.44269504088896341f), magic);
  const V n = t - magic;
  V r = fnmadd<Arch>(n, V(0.693359375f), xc);
  r = fnmadd<Arch>(n, V(-2.12194440e-4f), r);
  V p(1.9875691500e-4f);
  p = fmadd<Arch>(p, r, V(1.3981999507e-3f));
  p = fmadd<Arch>(p, r, V(8.3334519073e-3f));
  p = fmadd<Arch>(p, r, V(4.1665795894e-2f));
  p = fmadd<Arch>(p, r, V(1.6666665459e-1f));
  p = fmadd<Arch>(p, r, V(5.0000001201e-1f));
  p = fmadd<Arch>(p, r * r, r + V(1.0f));
  return {p, simd::bit_cast<I>(t) - simd::bit_cast<I>(magic)};
}

/// 2^n as a float for n in [-126, 127], built in the exponent field.
template <class Arch>
ATTEND_INLINE vfloat<Arch> exp2_int(vint<Arch> n) noexcept {
  return simd::bit_cast<vfloat<Arch>>((n + vint<Arch>(127)) << 23);
}

inline constexpr float exp_lo = -87.33654475f;  // ln(FLT_MIN)
inline constexpr float exp_hi = 88.72283905f;   // ln(FLT_MAX)

}  // namespace detail

/// Vectorised exp: 2 ulp, exact specials (see the file comment).
template <class Arch>
ATTEND_INLINE vfloat<Arch> exp(vfloat<Arch> x) noexcept {
  using V = vfloat<Arch>;
  using I = vint<Arch>;
  const V lo(detail::exp_lo), hi(detail::exp_hi);
  const auto e = detail::exp_reduce<Arch>(xsimd::min(xsimd::max(x, lo), hi));
  // n = 128 (just below ln(FLT_MAX)) is done as 2^127 * 2.
  V y = e.p * detail::exp2_int<Arch>(xsimd::min(e.n, I(127)));
  y = xsimd::select(xsimd::bool_cast(e.n > I(127)), y + y, y);
  y = xsimd::select(x < lo, V(0.0f), y);
  y = xsimd::select(x > hi, V(std::numeric_limits<float>::infinity()), y);
  return xsimd::select(xsimd::isnan(x), x, y);  // NaN stays NaN
}

/// exp for the softmax, whose arguments are s - max <= 0: the same reduction and error bound as
/// exp() for x <= 88, without the overflow handling. exp(-inf) = 0, NaN stays NaN (max(lo, x)
/// returns x when x is NaN), x < ln(FLT_MIN) flushes to 0.
template <class Arch>
ATTEND_INLINE vfloat<Arch> exp_nonpositive(vfloat<Arch> x) noexcept {
  using V = vfloat<Arch>;
  const V lo(detail::exp_lo);
  const auto e = detail::exp_reduce<Arch>(xsimd::max(lo, x));  // operand order keeps NaN
  return xsimd::select(x < lo, V(0.0f), e.p * detail::exp2_int<Arch>(e.n));
}

/// Out-of-line wrapper for tests and benchmarks (Highway's CallExp idiom).
template <class Arch>
ATTEND_NOINLINE vfloat<Arch> call_exp(vfloat<Arch> x) noexcept {
  return exp<Arch>(x);
}
template <class Arch>
ATTEND_NOINLINE vfloat<Arch> call_exp_nonpositive(vfloat<Arch> x) noexcept {
  return exp_nonpositive<Arch>(x);
}

}  // namespace attend::simd

#endif  // ATTEND_SIMD_EXP_HPP_
