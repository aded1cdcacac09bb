// Shared argument checks. Each operator gathers its checks in one validate_* function that runs
// before any parallel region; these helpers keep the messages uniform ("<op>: <arg> ...").
#ifndef ATTEND_CORE_VALIDATE_HPP_
#define ATTEND_CORE_VALIDATE_HPP_

#include <cmath>
#include <cstdint>

#include "error.hpp"
#include "tensor_view.hpp"

namespace attend::detail {

template <std::size_t R>
std::string extents_string(const std::array<index_t, R>& e) {
  std::ostringstream os;
  os << "[";
  for (std::size_t r = 0; r < R; ++r) os << (r ? ", " : "") << e[r];
  os << "]";
  return os.str();
}

template <class T, std::size_t R>
std::string shape_string(const tensor_view<T, R>& v) {
  return extents_string(v.extents());
}

/// A required tensor: non-null, every extent > 0, strides >= 0, unit innermost stride.
template <class T, std::size_t R>
void check_tensor(const char* op, const char* name, const tensor_view<T, R>& v) {
  for (std::size_t r = 0; r < R; ++r)
    ATTEND_CHECK(v.extent(r) > 0, op, ": ", name, " has an empty axis ", r, " (extents ",
                 shape_string(v), ")");
  ATTEND_CHECK(v.data() != nullptr, op, ": ", name, " is null (extents ", shape_string(v), ")");
  for (std::size_t r = 0; r < R; ++r) {
    ATTEND_CHECK(v.stride(r) >= 0, op, ": ", name, " has a negative stride on axis ", r, " (",
                 v.stride(r), ")");
  }
  ATTEND_CHECK(v.stride(R - 1) == 1 || v.extent(R - 1) == 1, op, ": ", name,
               " must have a contiguous innermost axis (stride ", v.stride(R - 1), ")");
}

/// An output tensor: a required tensor whose elements are all distinct (no stride-0 axis).
template <class T, std::size_t R>
void check_output(const char* op, const char* name, const tensor_view<T, R>& v) {
  check_tensor(op, name, v);
  ATTEND_CHECK(v.is_unique(), op, ": output ", name,
               " maps several indices to one element (a zero or overlapping stride)");
}

template <class T, std::size_t R>
void check_extents(const char* op, const char* name, const tensor_view<T, R>& v,
                   const std::array<index_t, R>& expected) {
  bool same = true;
  for (std::size_t r = 0; r < R; ++r) same = same && v.extent(r) == expected[r];
  ATTEND_CHECK(same, op, ": ", name, " has extents ", shape_string(v), ", expected ",
               extents_string(expected));
}

/// Byte ranges of two views do not intersect (an output must not alias an input).
template <class T, std::size_t R, class U, std::size_t S>
void check_disjoint(const char* op, const char* out_name, const tensor_view<T, R>& out,
                    const char* in_name, const tensor_view<U, S>& in) {
  if (!out.has_value() || !in.has_value() || out.empty() || in.empty()) return;
  const auto lo_a = reinterpret_cast<std::uintptr_t>(out.data());
  const auto hi_a = lo_a + static_cast<std::uintptr_t>(out.required_span_size()) * sizeof(T);
  const auto lo_b = reinterpret_cast<std::uintptr_t>(in.data());
  const auto hi_b = lo_b + static_cast<std::uintptr_t>(in.required_span_size()) * sizeof(U);
  ATTEND_CHECK(hi_a <= lo_b || hi_b <= lo_a, op, ": output ", out_name, " overlaps input ",
               in_name);
}

/// An optional broadcastable operand [batch or 1, heads or 1, seq_q, seq_k] (bias, mask).
template <class T>
void check_broadcast4(const char* op, const char* name, const tensor_view<T, 4>& v,
                      index_t batch, index_t heads, index_t seq_q, index_t seq_k) {
  check_tensor(op, name, v);
  ATTEND_CHECK((v.extent(0) == batch || v.extent(0) == 1) &&
                   (v.extent(1) == heads || v.extent(1) == 1) && v.extent(2) == seq_q &&
                   v.extent(3) == seq_k,
               op, ": ", name, " has extents ", shape_string(v), ", expected [", batch, " or 1, ",
               heads, " or 1, ", seq_q, ", ", seq_k, "]");
}

/// Stride to use for an axis that may broadcast (extent 1 reads the same element).
template <class T, std::size_t R>
index_t broadcast_stride(const tensor_view<T, R>& v, std::size_t axis) noexcept {
  return v.extent(axis) == 1 ? 0 : v.stride(axis);
}

}  // namespace attend::detail

#endif  // ATTEND_CORE_VALIDATE_HPP_
