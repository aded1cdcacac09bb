// Shared machinery of the libFuzzer targets (tests/fuzz/fuzz_*.cpp): reading choices from the
// fuzzer's bytes, special floating-point values, owning strided buffers whose unaddressed cells
// hold poison, checks that abort with a message, and the "invalid input is rejected and writes
// nothing" check. One target per operator: a .cpp with LLVMFuzzerTestOneInput plus one line in
// tests/fuzz/CMakeLists.txt.
#ifndef ATTEND_TESTS_FUZZ_FUZZ_COMMON_HPP_
#define ATTEND_TESTS_FUZZ_FUZZ_COMMON_HPP_

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "attend/core/dtype.hpp"
#include "attend/core/error.hpp"
#include "attend/core/tensor_view.hpp"

namespace attend::fuzz {

/// Prints "file:line: fuzz check failed: ..." and aborts, which libFuzzer reports as a crash
/// and saves the input that caused it.
template <class... Parts>
[[noreturn]] void fail(const char* file, int line, const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", file, line, os.str().c_str());
  std::fflush(stderr);
  std::abort();
}

#define FUZZ_CHECK(cond, ...)                                                           \
  do {                                                                                  \
    if (!(cond)) ::attend::fuzz::fail(__FILE__, __LINE__, "(" #cond ") ", __VA_ARGS__); \
  } while (0)

/// ATTEND_FUZZ_VERBOSE=1 prints a one-line description of every case (to reproduce a crash).
inline bool verbose() {
  static const bool v = std::getenv("ATTEND_FUZZ_VERBOSE") != nullptr;
  return v;
}

/// The fuzzer's bytes as a stream of choices. Exhausted input yields the smallest choice, so
/// every input, even an empty one, describes a valid case.
class input {
 public:
  input(const std::uint8_t* data, std::size_t size) : fdp_(data, size) {}

  index_t range(index_t lo, index_t hi) { return fdp_.ConsumeIntegralInRange<index_t>(lo, hi); }
  bool flag() { return fdp_.ConsumeBool(); }
  /// True with probability about percent / 100 (for uniformly random bytes).
  bool chance(int percent) { return range(0, 99) < percent; }
  template <class T, std::size_t N>
  T pick(const T (&options)[N]) {
    return options[static_cast<std::size_t>(range(0, static_cast<index_t>(N) - 1))];
  }
  std::uint32_t u32() { return fdp_.ConsumeIntegral<std::uint32_t>(); }
  /// Any float bit pattern (NaNs with payloads, subnormals, infinities included).
  float any_float() { return detail::bits_float(u32()); }
  /// A float uniformly in [lo, hi] at 16-bit resolution.
  float uniform(float lo, float hi) {
    const double t = static_cast<double>(fdp_.ConsumeIntegral<std::uint16_t>()) / 65535.0;
    return static_cast<float>(lo + (hi - lo) * t);
  }
  std::size_t remaining() { return fdp_.remaining_bytes(); }
  FuzzedDataProvider& provider() { return fdp_; }

 private:
  FuzzedDataProvider fdp_;
};

// ---- Special values ----------------------------------------------------------------------------

enum class special : std::uint8_t {
  nan,
  pos_inf,
  neg_inf,
  huge,
  neg_huge,
  flt_max,
  denormal,
  min_denormal,
  flt_min,
  zero,
  neg_zero
};
inline constexpr special kAllSpecials[] = {
    special::nan,      special::pos_inf, special::neg_inf,  special::huge,
    special::neg_huge, special::flt_max, special::denormal, special::min_denormal,
    special::flt_min,  special::zero,    special::neg_zero};

inline float special_value(special s) {
  using lim = std::numeric_limits<float>;
  switch (s) {
    case special::nan:
      return lim::quiet_NaN();
    case special::pos_inf:
      return lim::infinity();
    case special::neg_inf:
      return -lim::infinity();
    case special::huge:
      return 1e30f;
    case special::neg_huge:
      return -1e30f;
    case special::flt_max:
      return lim::max();
    case special::denormal:
      return 3.5e-39f;
    case special::min_denormal:
      return -lim::denorm_min();
    case special::flt_min:
      return lim::min();
    case special::zero:
      return 0.0f;
    case special::neg_zero:
      return -0.0f;
  }
  return 0.0f;
}

/// The poison of unaddressed cells: NaN for floating types, `true` for bool masks (a kernel
/// that reads an unaddressed mask cell then sees a key it should not).
template <class T>
T poison() {
  if constexpr (std::is_same_v<T, bool>) {
    return true;
  } else if constexpr (std::is_same_v<T, double>) {
    return std::numeric_limits<double>::quiet_NaN();
  } else {
    return from_float<T>(std::numeric_limits<float>::quiet_NaN());
  }
}

// ---- Strided buffers ---------------------------------------------------------------------------

/// Calls f(index array, offset) for every index tuple of v, in row-major order.
template <class T, std::size_t R, class F>
void for_each_index(const tensor_view<T, R>& v, F&& f) {
  if (v.empty()) return;
  std::array<index_t, R> idx{};
  for (;;) {
    index_t off = 0;
    for (std::size_t r = 0; r < R; ++r) off += idx[r] * v.stride(r);
    f(idx, off);
    std::size_t r = R;
    while (r > 0) {
      --r;
      if (++idx[r] < v.extent(r)) break;
      idx[r] = 0;
      if (r == 0) return;
    }
  }
}

/// An owning allocation and a view into it. Cells the view does not address hold poison, so a
/// kernel that reads padding, capacity or a cell before the view's start produces NaN (and
/// reading past the allocation is caught by AddressSanitizer: every buffer is its own vector).
/// Element type of a buffer's storage: T itself, except bool, which gets a one-byte struct
/// (std::vector<bool> packs bits and has no data()).
template <class T>
struct cell_of {
  using type = T;
};
struct bool_cell {
  bool value;
};
template <>
struct cell_of<bool> {
  using type = bool_cell;
};

template <class T, std::size_t R>
struct buffer {
  using cell = typename cell_of<T>::type;
  static_assert(sizeof(cell) == sizeof(T));
  std::vector<cell> storage;
  tensor_view<T, R> view;

  T* base() { return reinterpret_cast<T*>(storage.data()); }
  const T* base() const { return reinterpret_cast<const T*>(storage.data()); }

  /// A buffer with the given strides (all >= 0), view starting `offset` elements in.
  static buffer strided(const std::array<index_t, R>& extents,
                        const std::array<index_t, R>& strides, index_t offset) {
    buffer b;
    const tensor_view<T, R> probe(nullptr, extents, strides);
    const T p = poison<T>();
    b.storage.assign(
        static_cast<std::size_t>(offset + std::max<index_t>(probe.required_span_size(), 1)),
        *reinterpret_cast<const cell*>(&p));
    b.view = tensor_view<T, R>(b.base() + offset, extents, strides);
    return b;
  }
  static buffer contiguous(const std::array<index_t, R>& extents) {
    return strided(extents, tensor_view<T, R>::contiguous(nullptr, extents).strides(), 0);
  }
  /// Axes stored in `order` (outermost first), `pad` unused cells after each innermost run,
  /// `extra[r]` unused capacity along axis r (a cache longer than its valid part).
  static buffer permuted(const std::array<index_t, R>& extents,
                         const std::array<std::size_t, R>& order, index_t pad,
                         const std::array<index_t, R>& extra, index_t offset) {
    std::array<index_t, R> strides{};
    index_t s = 1;
    for (std::size_t a = R; a-- > 0;) {
      strides[order[a]] = s;
      s *= extents[order[a]] + extra[order[a]] + (a == R - 1 ? pad : 0);
    }
    return strided(extents, strides, offset);
  }

  tensor_view<const T, R> cview() const { return view; }
  /// Bitwise snapshot of the whole allocation (the "nothing was written" check).
  std::vector<unsigned char> bytes() const {
    std::vector<unsigned char> out(storage.size() * sizeof(T));
    if (!out.empty()) std::memcpy(out.data(), storage.data(), out.size());
    return out;
  }
};

/// Writes gen() (a float, converted to T) into every cell the view addresses.
template <class T, std::size_t R, class Gen>
void fill(const tensor_view<T, R>& v, Gen&& gen) {
  for_each_index(v, [&](const std::array<index_t, R>&, index_t off) {
    v.data()[off] = from_float<std::remove_cv_t<T>>(gen());
  });
}

/// Float value of a stored element.
template <class T>
float value_of(const T& x) {
  return to_float(x);
}
inline float value_of(bool x) { return x ? 1.0f : 0.0f; }

// ---- Comparisons -------------------------------------------------------------------------------

/// The all_close rule of tests/common/tensors.hpp for one element: NaN only matches NaN, an
/// infinity only itself, otherwise |a - e| <= atol + rtol |e|.
inline bool close(double a, double e, double atol, double rtol) {
  if (std::isnan(a) || std::isnan(e)) return std::isnan(a) && std::isnan(e);
  if (std::isinf(a) || std::isinf(e)) return a == e;
  return std::abs(a - e) <= atol + rtol * std::abs(e);
}

inline bool same_bits(float a, float b) { return detail::float_bits(a) == detail::float_bits(b); }

// ---- Rejection ---------------------------------------------------------------------------------

/// Runs call(), which must throw attend::invalid_argument whose message contains `needle`;
/// every snapshot in `watched` (buffer, its bytes before) must be unchanged afterwards.
struct watched_bytes {
  const void* data;
  std::vector<unsigned char> before;
};

template <class T, std::size_t R>
watched_bytes watch(const buffer<T, R>& b) {
  return {b.base(), b.bytes()};
}

template <class Call>
void expect_rejected(const char* what, Call&& call, const std::string& needle,
                     const std::vector<watched_bytes>& watched) {
  bool thrown = false;
  std::string message;
  try {
    call();
  } catch (const invalid_argument& e) {
    thrown = true;
    message = e.what();
  }
  FUZZ_CHECK(thrown, what, ": accepted; expected attend::invalid_argument mentioning '", needle,
             "'");
  FUZZ_CHECK(message.find(needle) != std::string::npos, what, ": message '", message,
             "' does not mention '", needle, "'");
  for (const auto& w : watched)
    FUZZ_CHECK(w.before.empty() || std::memcmp(w.data, w.before.data(), w.before.size()) == 0, what,
               ": output memory written before the error (", message, ")");
}

}  // namespace attend::fuzz

#endif  // ATTEND_TESTS_FUZZ_FUZZ_COMMON_HPP_
