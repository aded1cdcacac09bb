// Feature maps φ of linear attention, applied elementwise to q and k (so the feature dimension
// equals the head dimension). A feature map is a callable on float; it is vectorised when it is
// also callable on xsimd::batch<float, Arch> (one template operator() does both, as below).
// A map callable on float only is applied lane by lane.
//
//   identity      φ(x) = x            not positive: use with linear_norm::none (Lightning,
//                                     RetNet, fla feature_map=None)
//   elu_plus_one  φ(x) = elu(x) + 1   strictly positive; the default (Katharopoulos, MALA)
//   relu          φ(x) = max(x, 0)    non-negative; all-zero rows give o = 0 through eps
//   silu          φ(x) = x σ(x)       TransNormerLLM applies SiLU to q and k before the kernel
#ifndef ATTEND_LINEAR_FEATURE_MAPS_HPP_
#define ATTEND_LINEAR_FEATURE_MAPS_HPP_

#include <cmath>
#include <type_traits>

#include "../core/dtype.hpp"
#include "../simd/convert.hpp"
#include "../simd/exp.hpp"

namespace attend::linear {

/// φ(x) = x.
struct identity {
  template <class V>
  V operator()(V x) const noexcept {
    return x;
  }
};

/// φ(x) = elu(x) + 1 = x + 1 for x > 0, exp(x) otherwise (> 0 everywhere).
struct elu_plus_one {
  float operator()(float x) const noexcept { return x > 0.0f ? x + 1.0f : std::exp(x); }
  template <class Arch>
  xsimd::batch<float, Arch> operator()(xsimd::batch<float, Arch> x) const noexcept {
    using V = xsimd::batch<float, Arch>;
    return xsimd::select(x > V(0.0f), x + V(1.0f), simd::exp<Arch>(xsimd::min(x, V(0.0f))));
  }
};

/// φ(x) = max(x, 0).
struct relu {
  float operator()(float x) const noexcept { return x > 0.0f ? x : 0.0f; }
  template <class Arch>
  xsimd::batch<float, Arch> operator()(xsimd::batch<float, Arch> x) const noexcept {
    return xsimd::max(x, xsimd::batch<float, Arch>(0.0f));
  }
};

/// φ(x) = x / (1 + exp(-x)).
struct silu {
  float operator()(float x) const noexcept { return x / (1.0f + std::exp(-x)); }
  template <class Arch>
  xsimd::batch<float, Arch> operator()(xsimd::batch<float, Arch> x) const noexcept {
    using V = xsimd::batch<float, Arch>;
    return x / (V(1.0f) + simd::exp<Arch>(-x));
  }
};

namespace detail {

template <class FM>
inline constexpr bool is_feature_map_v = std::is_invocable_r_v<float, const FM&, float>;

/// φ of one register: the map's vector form when it has one, else lane by lane.
template <class Arch, class FM>
ATTEND_INLINE simd::vfloat<Arch> apply(const FM& phi, simd::vfloat<Arch> x) noexcept {
  using V = simd::vfloat<Arch>;
  if constexpr (std::is_invocable_r_v<V, const FM&, V>) {
    return phi(x);
  } else {
    alignas(64) float tmp[V::size];
    x.store_aligned(tmp);
    for (std::size_t i = 0; i < V::size; ++i) tmp[i] = static_cast<float>(phi(tmp[i]));
    return V::load_aligned(tmp);
  }
}

/// dst[i] = φ(src[i]) for i < n (src in its storage type, widened on load).
template <class Arch, class FM, class T>
ATTEND_INLINE void map_row(const FM& phi, const T* ATTEND_RESTRICT src, float* ATTEND_RESTRICT dst,
                           index_t n) noexcept {
  constexpr index_t w = simd::lanes<Arch>;
  index_t i = 0;
  for (; i + w <= n; i += w) apply<Arch>(phi, simd::load<Arch>(src + i)).store_unaligned(dst + i);
  for (; i < n; ++i) dst[i] = static_cast<float>(phi(to_float(src[i])));
}

}  // namespace detail

/// Applies φ to n floats (vectorised for Arch): dst[i] = φ(src[i]). Exposed for tests and for
/// callers that want the features themselves.
template <class FM, class Arch = xsimd::default_arch>
void apply_feature_map(const FM& phi, const float* src, float* dst, index_t n) noexcept {
  static_assert(detail::is_feature_map_v<FM>, "a feature map must be callable on float");
  detail::map_row<Arch>(phi, src, dst, n);
}

}  // namespace attend::linear

#endif  // ATTEND_LINEAR_FEATURE_MAPS_HPP_
