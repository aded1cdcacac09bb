// Per-token int8 quantisation of keys, shared by the two int8 key copies (their shape, scales,
// lengths and quantising store are detail::int8_copy_base):
//   int8_keys      (topk_int8.hpp) blocks of 16 tokens, for scans that score every key;
//   int8_row_keys  (here) one row per token, for searches that gather scattered keys (HiP).
// Both quantise the same way (scale = max |k[d]| / 127, code = round(k * 127 / max |k[d]|)), so
// they represent the same values.
//
// int8_row_keys lays out each (batch, KV head) as [capacity][dim] signed bytes, with the scales
// [capacity] beside them: a gathered key reads dim bytes (a quarter of an fp32 row), and
// neighbouring tokens (HiP's blocks of block_k keys) are adjacent. Kernels widen the codes in
// registers (simd::load) and apply the token's scale to the finished dot product.
#ifndef ATTEND_SPARSE_SELECT_INT8_ROW_KEYS_HPP_
#define ATTEND_SPARSE_SELECT_INT8_ROW_KEYS_HPP_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/memory.hpp"
#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"

namespace attend::sparse {
namespace detail {

/// Quantises k [batch, n, heads, dim] (float, bf16 or fp16) into positions [pos0, pos0 + n) of a
/// copy of `capacity` tokens, per token and head: put(b, h, pos, scale, codes) receives the scale
/// (max |k| / 127) and the dim int8 codes round(k * 127 / max |k|) in [-127, 127] (all 0 for a
/// zero row). NaN elements are ignored by the maximum and get code 0; a row holding an infinity
/// gets scale inf and codes 0, so its scores are NaN and a search never selects it.
template <class KV, class Put>
void quantise_keys_int8(const char* op, const view4<const KV>& k, index_t batch, index_t heads,
                        index_t dim, index_t capacity, index_t pos0, Put&& put) {
  static_assert(is_storage_type_v<KV>, "keys must be float, bf16 or fp16");
  attend::detail::check_tensor(op, "k", k);
  attend::detail::check_extents(op, "k", k, {batch, k.extent(1), heads, dim});
  ATTEND_CHECK(pos0 >= 0 && pos0 + k.extent(1) <= capacity, op, ": positions [", pos0, ", ",
               pos0 + k.extent(1), ") exceed the capacity (", capacity, ")");
  const index_t n = k.extent(1);
  attend::detail::parallel_for(batch * heads, attend::detail::max_threads(), [&](index_t bh,
                                                                                 int) {
    const index_t b = bh / heads, h = bh % heads;
    std::vector<std::int8_t> codes(static_cast<std::size_t>(dim));  // once per (b, h), not per row
    for (index_t t = 0; t < n; ++t) {
      const KV* src = k.data() + k.offset(b, t, h, 0);
      float amax = 0.0f;
      for (index_t d = 0; d < dim; ++d) amax = std::max(amax, std::abs(to_float(src[d])));
      // In double: 127 / amax overflows float for amax below ~1e-36.
      const double inv = amax > 0.0f ? 127.0 / double(amax) : 0.0;
      for (index_t d = 0; d < dim; ++d) {
        const double x = std::nearbyint(double(to_float(src[d])) * inv);
        // NaN (a NaN key, or an infinite one times inv = 0) becomes code 0: converting it to
        // an integer would be undefined.
        codes[static_cast<std::size_t>(d)] =
            static_cast<std::int8_t>(x == x ? std::clamp(x, -127.0, 127.0) : 0.0);
      }
      put(b, h, pos0 + t, amax / 127.0f, codes.data());
    }
  });
}

/// Checks that an int8 key copy (int8_keys or int8_row_keys) fits q [batch, seq_q, heads_q, dim]
/// and that kv_lens, if given, stays within the stored keys.
template <class Keys>
void validate_int8_copy(const char* op, const view4<const float>& q, const Keys& keys,
                        const view1<const index_t>& kv_lens) {
  attend::detail::check_tensor(op, "q", q);
  ATTEND_CHECK(keys.batch() == q.extent(0) && keys.dim() == q.extent(3) &&
                   q.extent(2) % keys.heads() == 0,
               op, ": int8 keys (batch ", keys.batch(), ", heads ", keys.heads(), ", dim ",
               keys.dim(), ") do not fit q ", attend::detail::shape_string(q));
  if (!kv_lens.has_value()) return;
  attend::detail::check_tensor(op, "kv_lens", kv_lens);
  attend::detail::check_extents(op, "kv_lens", kv_lens, {q.extent(0)});
  for (index_t b = 0; b < q.extent(0); ++b)
    ATTEND_CHECK(kv_lens(b) >= 0 && kv_lens(b) <= keys.length(b), op, ": kv_lens[", b, "] = ",
                 kv_lens(b), " exceeds the stored keys (", keys.length(b), ")");
}

/// What the two int8 key copies share: the shape, the per-token scales [batch][heads][capacity],
/// the stored lengths, and the quantising store. The derived copy lays out the codes.
class int8_copy_base {
 public:
  int8_copy_base() = default;
  // Move-only: a copy of a whole cache's keys should not happen by accident.
  int8_copy_base(const int8_copy_base&) = delete;
  int8_copy_base& operator=(const int8_copy_base&) = delete;
  int8_copy_base(int8_copy_base&&) noexcept = default;
  int8_copy_base& operator=(int8_copy_base&&) noexcept = default;

  index_t batch() const noexcept { return batch_; }
  index_t heads() const noexcept { return heads_; }
  index_t dim() const noexcept { return dim_; }
  index_t capacity() const noexcept { return capacity_; }
  /// Tokens stored so far in sequence b (the largest stored position + 1).
  index_t length(index_t b) const noexcept { return lengths_[static_cast<std::size_t>(b)]; }

 protected:
  /// Sets the shape (checked by the caller); zero scales, no tokens stored.
  void set_shape(index_t batch, index_t capacity, index_t heads, index_t dim) {
    batch_ = batch;
    heads_ = heads;
    dim_ = dim;
    capacity_ = capacity;
    scales_.assign(static_cast<std::size_t>(batch * heads * capacity), 0.0f);
    lengths_.assign(static_cast<std::size_t>(batch), 0);
  }
  ~int8_copy_base() = default;  // protected: not deleted through the base
  /// Index of token pos of (b, h) among the copy's tokens, (b * heads + h) * capacity + pos: its
  /// scale's index (and its row's, times dim, in int8_row_keys).
  index_t token(index_t b, index_t h, index_t pos) const noexcept {
    return (b * heads_ + h) * capacity_ + pos;
  }
  /// Quantises k into positions [pos0, pos0 + n), storing the scales here and handing each
  /// token's codes to put_codes(b, h, pos, codes); extends the lengths.
  template <class TK, class PutCodes>
  void quantise(const char* op, const tensor_view<TK, 4>& k, index_t pos0, PutCodes&& put_codes) {
    using KV = std::remove_const_t<TK>;
    const view4<const KV> kc = k;
    auto put = [&](index_t b, index_t h, index_t pos, float scale, const std::int8_t* codes) {
      scales_[static_cast<std::size_t>(token(b, h, pos))] = scale;
      put_codes(b, h, pos, codes);
    };
    quantise_keys_int8(op, kc, batch_, heads_, dim_, capacity_, pos0, put);
    for (index_t b = 0; b < batch_; ++b)
      lengths_[static_cast<std::size_t>(b)] = std::max(length(b), pos0 + kc.extent(1));
  }

  cache_vector<float> scales_;
  std::vector<index_t> lengths_;
  index_t batch_ = 0, heads_ = 0, dim_ = 0, capacity_ = 0;
};

}  // namespace detail

/// An int8 copy of a key cache [batch, capacity, heads_kv, dim], one row per token:
/// k ~= scale(b, t, h) * int8. For searches that gather scattered keys: HiP's tree search
/// (hip_select) scores its representatives on it and reads a quarter of the fp32 bytes.
class int8_row_keys : public detail::int8_copy_base {
 public:
  int8_row_keys() = default;
  int8_row_keys(index_t batch, index_t capacity, index_t heads_kv, index_t dim) {
    reshape(batch, capacity, heads_kv, dim);
  }

  /// Re-shapes (contents are discarded; lengths become 0).
  void reshape(index_t batch, index_t capacity, index_t heads_kv, index_t dim) {
    ATTEND_CHECK(batch >= 1 && capacity >= 1 && heads_kv >= 1 && dim >= 1,
                 "attend::sparse::int8_row_keys: need batch, capacity, heads and dim >= 1 (got ",
                 batch, ", ", capacity, ", ", heads_kv, ", ", dim, ")");
    set_shape(batch, capacity, heads_kv, dim);
    codes_.assign(static_cast<std::size_t>(batch * heads_kv * capacity * dim), std::int8_t{0});
  }

  /// Quantises k [batch, n, heads_kv, dim] (float, bf16 or fp16) into positions
  /// [pos0, pos0 + n) (append new tokens with pos0 = the current length). Extends length(b).
  template <class TK>
  void store(const tensor_view<TK, 4>& k, index_t pos0 = 0) {
    quantise("attend::sparse::int8_row_keys::store", k, pos0,
             [&](index_t b, index_t h, index_t pos, const std::int8_t* codes) {
               std::copy(codes, codes + dim_, codes_.data() + token(b, h, pos) * dim_);
             });
  }

  /// The dim codes of token t in (b, h).
  const std::int8_t* row(index_t b, index_t t, index_t h) const noexcept {
    return codes_.data() + token(b, h, t) * dim_;
  }
  /// The scale of token t in (b, h).
  const float* scale(index_t b, index_t t, index_t h) const noexcept {
    return scales_.data() + token(b, h, t);
  }
  /// The value the copy represents for (b, t, h, d): scale * int8 (for tests).
  float dequantised(index_t b, index_t t, index_t h, index_t d) const noexcept {
    return *scale(b, t, h) * float(row(b, t, h)[d]);
  }

 private:
  cache_vector<std::int8_t> codes_;
};

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_INT8_ROW_KEYS_HPP_
