// tensor_view<T, Rank>: a non-owning strided view (pointer + extents + strides in elements),
// modelled on mdspan's layout_stride. Attention tensors are rank 4 with logical axes
// [batch, seq, heads, dim]; any physical order (BSHD, BHSD, fused QKV, KV caches whose capacity
// exceeds their length) is expressed by strides. The innermost stride must be 1 where a kernel
// reads rows with SIMD; the operators check it.
#ifndef ATTEND_CORE_TENSOR_VIEW_HPP_
#define ATTEND_CORE_TENSOR_VIEW_HPP_

#include <array>
#include <cstddef>
#include <type_traits>

#include "config.hpp"

namespace attend {

/// A non-owning view of Rank-dimensional data of type T (const T for read-only views): element
/// (i0, ..., i{Rank-1}) lives at data()[i0 * stride(0) + ... ], strides counted in elements, not
/// bytes. Copying a view is cheap; nothing is checked on access (operators validate once).
template <class T, std::size_t Rank>
class tensor_view {
  static_assert(Rank >= 1, "tensor_view needs at least one axis");

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using extents_type = std::array<index_t, Rank>;
  static constexpr std::size_t rank = Rank;

  /// An empty view (null data, all extents 0): the "absent" value of optional arguments.
  constexpr tensor_view() noexcept = default;

  /// View over data with the given extents and strides (in elements).
  constexpr tensor_view(T* data, const extents_type& extents, const extents_type& strides) noexcept
      : data_(data), extents_(extents), strides_(strides) {}

  /// Read-only view from a mutable one (T -> const T), never the reverse.
  template <class U, class = std::enable_if_t<std::is_convertible_v<U (*)[], T (*)[]> &&
                                              !std::is_same_v<U, T>>>
  constexpr tensor_view(const tensor_view<U, Rank>& other) noexcept  // NOLINT: implicit by design
      : data_(other.data()), extents_(other.extents()), strides_(other.strides()) {}

  /// Row-major (layout_right) view: the last axis is contiguous.
  static constexpr tensor_view contiguous(T* data, const extents_type& extents) noexcept {
    extents_type strides{};
    index_t s = 1;
    for (std::size_t r = Rank; r-- > 0;) {
      strides[r] = s;
      s *= extents[r];
    }
    return tensor_view(data, extents, strides);
  }

  constexpr T* data() const noexcept { return data_; }
  constexpr index_t extent(std::size_t r) const noexcept { return extents_[r]; }
  constexpr index_t stride(std::size_t r) const noexcept { return strides_[r]; }
  constexpr const extents_type& extents() const noexcept { return extents_; }
  constexpr const extents_type& strides() const noexcept { return strides_; }

  /// Number of elements (product of extents).
  constexpr index_t size() const noexcept {
    index_t n = 1;
    for (index_t e : extents_) n *= e;
    return n;
  }
  constexpr bool empty() const noexcept { return size() == 0; }
  /// True when the view refers to memory (non-null data). Optional arguments test this.
  constexpr bool has_value() const noexcept { return data_ != nullptr; }

  /// Offset in elements of an element from data().
  template <class... I>
  constexpr index_t offset(I... idx) const noexcept {
    static_assert(sizeof...(I) == Rank, "one index per axis");
    const std::array<index_t, Rank> i{static_cast<index_t>(idx)...};
    index_t off = 0;
    for (std::size_t r = 0; r < Rank; ++r) off += i[r] * strides_[r];
    return off;
  }

  /// Element access; no bounds check (the operators validate shapes once, up front).
  template <class... I>
  constexpr T& operator()(I... idx) const noexcept {
    return data_[offset(idx...)];
  }

  /// 1 + the largest offset the view can address (0 when empty), as mdspan's layout_stride.
  /// Assumes non-negative strides, which the operators require.
  constexpr index_t required_span_size() const noexcept {
    if (empty()) return 0;
    index_t span = 1;
    for (std::size_t r = 0; r < Rank; ++r) span += (extents_[r] - 1) * strides_[r];
    return span;
  }

  /// True when no two index tuples map to the same element (checked by sorting axes by stride).
  constexpr bool is_unique() const noexcept {
    if (empty()) return true;
    std::array<std::size_t, Rank> order{};
    for (std::size_t r = 0; r < Rank; ++r) order[r] = r;
    for (std::size_t a = 1; a < Rank; ++a)  // insertion sort by stride, Rank is tiny
      for (std::size_t b = a; b > 0 && strides_[order[b]] < strides_[order[b - 1]]; --b) {
        const std::size_t t = order[b];
        order[b] = order[b - 1];
        order[b - 1] = t;
      }
    index_t reach = 1;  // elements covered by the faster axes
    for (std::size_t a = 0; a < Rank; ++a) {
      const std::size_t r = order[a];
      if (extents_[r] <= 1) continue;
      if (strides_[r] < reach) return false;
      reach = strides_[r] * extents_[r];
    }
    return true;
  }

  /// The sub-view [begin, begin + count) along `axis`, other axes unchanged. Unchecked: the
  /// caller keeps begin + count <= extent(axis).
  constexpr tensor_view narrow(std::size_t axis, index_t begin, index_t count) const noexcept {
    extents_type e = extents_;
    e[axis] = count;
    return tensor_view(data_ + begin * strides_[axis], e, strides_);
  }

  /// Rank-4 [batch, seq, heads, dim] only: the [seq, dim] matrix of one (batch, head).
  template <std::size_t R = Rank, class = std::enable_if_t<R == 4>>
  constexpr tensor_view<T, 2> matrix(index_t b, index_t h) const noexcept {
    return tensor_view<T, 2>(data_ + b * strides_[0] + h * strides_[2], {extents_[1], extents_[3]},
                             {strides_[1], strides_[3]});
  }

 private:
  T* data_ = nullptr;
  extents_type extents_{};
  extents_type strides_{};
};

/// Shorthands for the ranks operators use.
template <class T>
using view1 = tensor_view<T, 1>;
template <class T>
using view2 = tensor_view<T, 2>;
template <class T>
using view3 = tensor_view<T, 3>;
template <class T>
using view4 = tensor_view<T, 4>;

/// Contiguous rank-1 view over `n` elements.
template <class T>
constexpr tensor_view<T, 1> make_view(T* data, index_t n) noexcept {
  return tensor_view<T, 1>(data, {n}, {1});
}

// ---- Layout helpers: rank-4 [batch, seq, heads, dim] views over common buffers, no copies ----

/// Buffer laid out [batch, seq, heads, dim] (BSHD, "NHD"): the logical order itself.
template <class T>
constexpr tensor_view<T, 4> bshd(T* data, index_t batch, index_t seq, index_t heads,
                                 index_t dim) noexcept {
  return tensor_view<T, 4>::contiguous(data, {batch, seq, heads, dim});
}

/// Buffer laid out [batch, heads, seq, dim] (BHSD, "HND"), viewed as [batch, seq, heads, dim].
template <class T>
constexpr tensor_view<T, 4> bhsd(T* data, index_t batch, index_t heads, index_t seq,
                                 index_t dim) noexcept {
  return tensor_view<T, 4>(data, {batch, seq, heads, dim},
                           {heads * seq * dim, dim, seq * dim, 1});
}

/// KV cache laid out [batch, capacity, heads, dim] holding `length` <= capacity valid tokens:
/// the view covers [batch, length, heads, dim] with the capacity's strides.
template <class T>
constexpr tensor_view<T, 4> bshd_cache(T* data, index_t batch, index_t capacity, index_t heads,
                                       index_t dim, index_t length) noexcept {
  return bshd(data, batch, capacity, heads, dim).narrow(1, 0, length);
}

/// The q, k and v views of one fused projection buffer (see fused_qkv).
template <class T>
struct qkv_views {
  tensor_view<T, 4> q, k, v;
};

/// Fused projection output laid out [batch, seq, heads_q + 2 * heads_kv, dim] (q heads, then k
/// heads, then v heads, as in most fused QKV GEMMs): three views, no copy.
template <class T>
constexpr qkv_views<T> fused_qkv(T* data, index_t batch, index_t seq, index_t heads_q,
                                 index_t heads_kv, index_t dim) noexcept {
  const index_t row = (heads_q + 2 * heads_kv) * dim;
  const typename tensor_view<T, 4>::extents_type sq{seq * row, row, dim, 1};
  return {tensor_view<T, 4>(data, {batch, seq, heads_q, dim}, sq),
          tensor_view<T, 4>(data + heads_q * dim, {batch, seq, heads_kv, dim}, sq),
          tensor_view<T, 4>(data + (heads_q + heads_kv) * dim, {batch, seq, heads_kv, dim}, sq)};
}

static_assert(std::is_trivially_copyable_v<tensor_view<float, 4>>);

}  // namespace attend

#endif  // ATTEND_CORE_TENSOR_VIEW_HPP_
