// Fuzz target for the storage-type conversions of core/dtype.hpp and simd/convert.hpp: the
// fuzzer's bytes are the values (any bit pattern: NaNs with payloads, subnormals, infinities).
//   - bulk attend::convert (SIMD body + scalar tail, at any start alignment) equals the scalar
//     from_float(to_float(x)) bit for bit;
//   - narrowing equals an independent round-to-nearest-even written here over the table of
//     representable values (overflow to Inf, subnormals kept, NaN stays NaN with its sign);
//   - widening is exact and narrowing a widened value gives it back (round trip), NaN stays NaN.
// Built twice: for the native target (F16C, AVX2/AVX-512 paths) and for baseline x86-64
// (software fp16, SSE2 paths), see CMakeLists.txt.
#include <cmath>
#include <vector>

#include "attend/core/dtype.hpp"
#include "fuzz_common.hpp"

namespace attend::fuzz {
namespace {

template <class T>
std::uint16_t bits_of(T x) {
  return x.bits;
}

/// Exact value of a non-NaN 16-bit pattern, written from the format definitions.
double exact_value(bf16 x) {
  const std::uint32_t u = static_cast<std::uint32_t>(x.bits) << 16;  // bf16 is a float's top half
  return static_cast<double>(detail::bits_float(u));
}
double exact_value(fp16 x) {
  const int sign = x.bits & 0x8000 ? -1 : 1;
  const int e = (x.bits >> 10) & 0x1F, m = x.bits & 0x3FF;
  if (e == 0x1F) return sign * INFINITY;
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), -24);
  return sign * std::ldexp(1.0 + m / 1024.0, e - 15);
}

/// Round-to-nearest-even of a float into T, by search over the monotone table of non-negative
/// finite patterns 0 .. max_finite; the pattern after max_finite (Inf) stands for the value the
/// exponent range would give next, so values past the midpoint overflow to Inf.
template <class T>
std::uint16_t reference_narrow(float f) {
  constexpr std::uint16_t inf_bits = std::is_same_v<T, bf16> ? 0x7F80 : 0x7C00;
  const double past_max = std::is_same_v<T, bf16> ? std::ldexp(1.0, 128) : 65536.0;
  const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return 0xFFFF;  // any NaN: compared as "is NaN" below
  const double a = std::abs(static_cast<double>(f));
  if (std::isinf(a)) return sign | inf_bits;
  auto value = [&](std::uint32_t b) {
    return b == inf_bits ? past_max : exact_value(T{static_cast<std::uint16_t>(b)});
  };
  std::uint32_t lo = 0, hi = inf_bits;  // value(lo) <= a < value(hi) after the search
  if (a >= past_max) return sign | inf_bits;
  while (hi - lo > 1) {
    const std::uint32_t mid = (lo + hi) / 2;
    (value(mid) <= a ? lo : hi) = mid;
  }
  const double dl = a - value(lo), dh = value(hi) - a;
  std::uint32_t pick = dl < dh ? lo : dh < dl ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<std::uint16_t>(sign | pick);
}

template <class T>
bool is_nan16(T x) {
  constexpr std::uint16_t exp_mask = std::is_same_v<T, bf16> ? 0x7F80 : 0x7C00;
  constexpr std::uint16_t man_mask = std::is_same_v<T, bf16> ? 0x007F : 0x03FF;
  return (x.bits & exp_mask) == exp_mask && (x.bits & man_mask) != 0;
}

template <class T>
void check_narrowing(const std::vector<float>& src, index_t off) {
  const index_t n = static_cast<index_t>(src.size()) - off;
  std::vector<T> bulk(static_cast<std::size_t>(n) + 1, T{0x5555});
  convert<T, float>(src.data() + off, bulk.data(), n);
  FUZZ_CHECK(bits_of(bulk[n]) == 0x5555, "convert wrote past n");
  for (index_t i = 0; i < n; ++i) {
    const float f = src[off + i];
    const T scalar = from_float<T>(f);
    FUZZ_CHECK(bits_of(bulk[i]) == bits_of(scalar), dtype_name<T>(), ": bulk ", bits_of(bulk[i]),
               " != scalar ", bits_of(scalar), " for float bits ", detail::float_bits(f));
    if (std::isnan(f)) {
      FUZZ_CHECK(is_nan16(scalar), dtype_name<T>(), ": NaN became ", bits_of(scalar));
      FUZZ_CHECK((scalar.bits & 0x8000) == (detail::float_bits(f) >> 31 << 15), "NaN sign lost");
    } else {
      FUZZ_CHECK(bits_of(scalar) == reference_narrow<T>(f), dtype_name<T>(), ": ", bits_of(scalar),
                 " but round-to-nearest-even gives ", reference_narrow<T>(f), " for ", f, " (bits ",
                 detail::float_bits(f), ")");
    }
  }
}

template <class T>
void check_widening(const std::vector<T>& src, index_t off) {
  const index_t n = static_cast<index_t>(src.size()) - off;
  std::vector<float> bulk(static_cast<std::size_t>(n) + 1, 1234.5f);
  convert<float, T>(src.data() + off, bulk.data(), n);
  FUZZ_CHECK(bulk[n] == 1234.5f, "convert wrote past n");
  std::vector<T> back(static_cast<std::size_t>(n));
  convert<T, float>(bulk.data(), back.data(), n);
  for (index_t i = 0; i < n; ++i) {
    const T x = src[off + i];
    const float scalar = to_float(x);
    FUZZ_CHECK(same_bits(bulk[i], scalar), dtype_name<T>(), ": bulk widening differs for ",
               bits_of(x));
    if (is_nan16(x)) {
      FUZZ_CHECK(std::isnan(scalar), dtype_name<T>(), ": NaN ", bits_of(x), " widened to ", scalar);
      FUZZ_CHECK(is_nan16(back[i]), dtype_name<T>(), ": NaN round trip gave ", bits_of(back[i]));
    } else {
      FUZZ_CHECK(static_cast<double>(scalar) == exact_value(x) &&
                     std::signbit(scalar) == ((x.bits & 0x8000) != 0),
                 dtype_name<T>(), ": ", bits_of(x), " widened to ", scalar, ", exact ",
                 exact_value(x));
      FUZZ_CHECK(bits_of(back[i]) == bits_of(x), dtype_name<T>(), ": round trip ", bits_of(x),
                 " -> ", scalar, " -> ", bits_of(back[i]));
    }
  }
}

/// bf16 <-> fp16 through float: one rounding, equal to the scalar composition.
template <class To, class From>
void check_cross(const std::vector<From>& src, index_t off) {
  const index_t n = static_cast<index_t>(src.size()) - off;
  std::vector<To> bulk(static_cast<std::size_t>(n));
  convert<To, From>(src.data() + off, bulk.data(), n);
  for (index_t i = 0; i < n; ++i) {
    const To scalar = from_float<To>(to_float(src[off + i]));
    FUZZ_CHECK(bits_of(bulk[i]) == bits_of(scalar), dtype_name<From>(), " -> ", dtype_name<To>(),
               ": bulk ", bits_of(bulk[i]), " != scalar ", bits_of(scalar));
  }
}

}  // namespace
}  // namespace attend::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace attend::fuzz;
  using attend::bf16;
  using attend::fp16;
  using attend::index_t;
  if (size < 2) return 0;
  const int op = data[0] % 6;
  const index_t off = data[1] % 8;  // start misaligned by 0..7 elements
  data += 2;
  size -= 2;
  const std::size_t n32 = std::min<std::size_t>(size / 4, 700),
                    n16 = std::min<std::size_t>(size / 2, 1400);
  std::vector<float> f(n32);
  if (n32) std::memcpy(f.data(), data, n32 * 4);
  std::vector<bf16> b(n16);
  std::vector<fp16> h(n16);
  for (std::size_t i = 0; i < n16; ++i) {
    std::uint16_t u;
    std::memcpy(&u, data + 2 * i, 2);
    b[i].bits = u;
    h[i].bits = u;
  }
  const auto o32 = std::min<index_t>(off, static_cast<index_t>(n32));
  const auto o16 = std::min<index_t>(off, static_cast<index_t>(n16));
  switch (op) {
    case 0:
      check_narrowing<bf16>(f, o32);
      break;
    case 1:
      check_narrowing<fp16>(f, o32);
      break;
    case 2:
      check_widening<bf16>(b, o16);
      break;
    case 3:
      check_widening<fp16>(h, o16);
      break;
    case 4:
      check_cross<fp16, bf16>(b, o16);
      break;
    default:
      check_cross<bf16, fp16>(h, o16);
      break;
  }
  return 0;
}
