// Owning test tensors with views, random fills and comparison against the double oracle.
#ifndef ATTEND_TESTS_COMMON_TENSORS_HPP_
#define ATTEND_TESTS_COMMON_TENSORS_HPP_

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

#include "attend/core/dtype.hpp"
#include "attend/core/tensor_view.hpp"

namespace attend::testing {

/// Storage plus a view over it. `make(extents)` is contiguous; `make_strided` pads every axis.
template <class T, std::size_t R>
struct tensor {
  std::vector<T> storage;
  tensor_view<T, R> view;

  static tensor make(const std::array<index_t, R>& extents) {
    tensor t;
    index_t n = 1;
    for (index_t e : extents) n *= e;
    t.storage.assign(static_cast<std::size_t>(n), T{});
    t.view = tensor_view<T, R>::contiguous(t.storage.data(), extents);
    return t;
  }
  /// Same logical extents, laid out with axis order `order` (outermost first) and `pad` extra
  /// elements after each row of the innermost axis: non-contiguous on purpose.
  static tensor make_permuted(const std::array<index_t, R>& extents,
                              const std::array<std::size_t, R>& order, index_t pad) {
    tensor t;
    std::array<index_t, R> strides{};
    index_t s = 1;
    for (std::size_t a = R; a-- > 0;) {
      strides[order[a]] = s;
      s *= extents[order[a]] + (a == R - 1 ? pad : 0);
    }
    t.storage.assign(static_cast<std::size_t>(s), T{});
    t.view = tensor_view<T, R>(t.storage.data(), extents, strides);
    return t;
  }
  tensor_view<const T, R> cview() const { return view; }
};

/// Fills every element of v with uniform values in [lo, hi) (converted to T).
template <class T, std::size_t R>
void fill_uniform(const tensor_view<T, R>& v, std::mt19937& rng, float lo = -1.0f,
                  float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::array<index_t, R> idx{};
  const index_t n = v.size();
  for (index_t flat = 0; flat < n; ++flat) {
    index_t rest = flat;
    for (std::size_t r = R; r-- > 0;) {
      idx[r] = rest % v.extent(r);
      rest /= v.extent(r);
    }
    index_t off = 0;
    for (std::size_t r = 0; r < R; ++r) off += idx[r] * v.stride(r);
    v.data()[off] = from_float<std::remove_cv_t<T>>(dist(rng));
  }
}

/// Largest |a - e| - (atol + rtol |e|) over all elements must be <= 0; NaN anywhere fails.
/// The message names the worst element.
template <class A, class E, std::size_t R>
::testing::AssertionResult all_close(const tensor_view<A, R>& actual,
                                     const tensor_view<E, R>& expected, double atol,
                                     double rtol) {
  if (actual.extents() != expected.extents()) return ::testing::AssertionFailure() << "extents differ";
  const index_t n = actual.size();
  double worst = -std::numeric_limits<double>::infinity();
  index_t worst_flat = -1, bad = 0;
  double worst_a = 0, worst_e = 0;
  std::array<index_t, R> idx{};
  for (index_t flat = 0; flat < n; ++flat) {
    index_t rest = flat;
    for (std::size_t r = R; r-- > 0;) {
      idx[r] = rest % actual.extent(r);
      rest /= actual.extent(r);
    }
    index_t oa = 0, oe = 0;
    for (std::size_t r = 0; r < R; ++r) {
      oa += idx[r] * actual.stride(r);
      oe += idx[r] * expected.stride(r);
    }
    const double a = static_cast<double>(actual.data()[oa]);
    const double e = static_cast<double>(expected.data()[oe]);
    double excess;
    if (std::isnan(a) || std::isnan(e)) {
      excess = (std::isnan(a) && std::isnan(e)) ? -1.0 : std::numeric_limits<double>::infinity();
    } else if (std::isinf(a) || std::isinf(e)) {
      excess = a == e ? -1.0 : std::numeric_limits<double>::infinity();
    } else {
      excess = std::abs(a - e) - (atol + rtol * std::abs(e));
    }
    if (excess > 0) ++bad;
    if (excess > worst) {
      worst = excess;
      worst_flat = flat;
      worst_a = a;
      worst_e = e;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << bad << " of " << n << " elements differ; worst at flat index " << worst_flat
     << ": actual " << worst_a << ", expected " << worst_e << " (atol " << atol << ", rtol "
     << rtol << ")";
  return ::testing::AssertionFailure() << os.str();
}

/// True when the two float views hold bitwise identical values.
template <std::size_t R>
bool bitwise_equal(const tensor_view<const float, R>& a, const tensor_view<const float, R>& b) {
  if (a.extents() != b.extents()) return false;
  for (index_t flat = 0; flat < a.size(); ++flat) {
    index_t rest = flat, oa = 0, ob = 0;
    for (std::size_t r = R; r-- > 0;) {
      const index_t i = rest % a.extent(r);
      rest /= a.extent(r);
      oa += i * a.stride(r);
      ob += i * b.stride(r);
    }
    if (detail::float_bits(a.data()[oa]) != detail::float_bits(b.data()[ob])) return false;
  }
  return true;
}

/// Tolerances against the double oracle, per K/V storage type. The oracle reads the same
/// rounded bf16/fp16 values, so narrow storage does not widen the bound; what remains is fp32
/// accumulation over the keys and the 2-ulp exp.
template <class KV>
struct tolerance {
  static constexpr double atol = 2e-5;
  static constexpr double rtol = 2e-4;
};

}  // namespace attend::testing

#endif  // ATTEND_TESTS_COMMON_TENSORS_HPP_
