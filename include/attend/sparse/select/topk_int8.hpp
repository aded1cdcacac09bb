// Low-bit top-k: the selection scores come from an int8 copy of the keys (one float scale per
// token and head) kept alongside the cache, so choosing the keys reads a quarter of the bytes of
// fp32 keys (half of bf16); attention then runs exactly on the real cache over the chosen keys.
//
// int8_keys stores each (batch, KV head) as blocks of 16 tokens laid out [dim / 2][16][2]: a
// 16-byte (AVX2) or 32-byte (AVX-512) load holds dimension pair (2p, 2p + 1) of 8 or 16 tokens,
// which widen to int16 and multiply-add (vpmaddwd) against the int16-quantised query pair
// broadcast to every lane: one int32 lane per token, no horizontal sums. Exact integer dot
// products, scaled back by scale_q * scale_k(token).
#ifndef ATTEND_SPARSE_SELECT_TOPK_INT8_HPP_
#define ATTEND_SPARSE_SELECT_TOPK_INT8_HPP_

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../../core/memory.hpp"
#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"
#include "topk.hpp"

namespace attend::sparse {

/// An int8 copy of a key cache [batch, capacity, heads_kv, dim]: k ~= scale(b, t, h) * int8.
/// Per-token symmetric quantisation: scale = max |k[d]| / 127, int8 = round(k / scale).
class int8_keys {
 public:
  static constexpr index_t block = 16;  // tokens per block
  /// Largest head dimension: dot products of int16 queries and int8 keys accumulate in int32
  /// (dim / 2 pairs of 2 * 32767 * 127 stay below 2^31 up to dim 516).
  static constexpr index_t max_dim = 512;

  int8_keys() = default;
  int8_keys(index_t batch, index_t capacity, index_t heads_kv, index_t dim) {
    reshape(batch, capacity, heads_kv, dim);
  }
  // Move-only: a copy of a whole cache's keys should not happen by accident.
  int8_keys(const int8_keys&) = delete;
  int8_keys& operator=(const int8_keys&) = delete;
  int8_keys(int8_keys&&) noexcept = default;
  int8_keys& operator=(int8_keys&&) noexcept = default;

  /// Re-shapes (contents are discarded; lengths become 0). dim must be even.
  void reshape(index_t batch, index_t capacity, index_t heads_kv, index_t dim) {
    ATTEND_CHECK(batch >= 1 && capacity >= 1 && heads_kv >= 1 && dim >= 2 && dim % 2 == 0 &&
                     dim <= max_dim,
                 "attend::sparse::int8_keys: need batch, capacity, heads >= 1 and an even dim in "
                 "[2, ", max_dim, "] (got ", batch, ", ", capacity, ", ", heads_kv, ", ", dim, ")");
    batch_ = batch;
    heads_ = heads_kv;
    dim_ = dim;
    blocks_ = (capacity + block - 1) / block;
    capacity_ = blocks_ * block;
    const std::size_t bytes = static_cast<std::size_t>(batch * heads_kv * blocks_ * block * dim);
    data_.assign(bytes, std::int8_t{0});
    scales_.assign(static_cast<std::size_t>(batch * heads_kv * capacity_), 0.0f);
    lengths_.assign(static_cast<std::size_t>(batch), 0);
  }

  /// Quantises k [batch, n, heads_kv, dim] (float, bf16 or fp16) into positions
  /// [pos0, pos0 + n) (append new tokens with pos0 = the current length). Extends length(b).
  template <class TK>
  void store(const tensor_view<TK, 4>& k, index_t pos0 = 0) {
    using KV = std::remove_const_t<TK>;
    static_assert(is_storage_type_v<KV>, "keys must be float, bf16 or fp16");
    constexpr const char* op = "attend::sparse::int8_keys::store";
    const view4<const KV> kc = k;
    attend::detail::check_tensor(op, "k", kc);
    attend::detail::check_extents(op, "k", kc, {batch_, kc.extent(1), heads_, dim_});
    ATTEND_CHECK(pos0 >= 0 && pos0 + kc.extent(1) <= capacity_, op, ": positions [", pos0, ", ",
                 pos0 + kc.extent(1), ") exceed the capacity (", capacity_, ")");
    const index_t n = kc.extent(1);
    attend::detail::parallel_for(batch_ * heads_, attend::detail::max_threads(), [&](index_t bh,
                                                                                      int) {
      const index_t b = bh / heads_, h = bh % heads_;
      for (index_t t = 0; t < n; ++t) {
        const KV* src = kc.data() + kc.offset(b, t, h, 0);
        float amax = 0.0f;
        for (index_t d = 0; d < dim_; ++d) amax = std::max(amax, std::abs(to_float(src[d])));
        const index_t pos = pos0 + t;
        const float scale = amax / 127.0f;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        scales_[static_cast<std::size_t>((b * heads_ + h) * capacity_ + pos)] = scale;
        std::int8_t* blk = block_data(b, h, pos / block);
        const index_t slot = pos % block;
        for (index_t d = 0; d < dim_; ++d) {
          const float x = std::nearbyint(to_float(src[d]) * inv);
          blk[(d / 2) * 2 * block + slot * 2 + d % 2] =
              static_cast<std::int8_t>(std::clamp(x, -127.0f, 127.0f));
        }
      }
    });
    for (index_t b = 0; b < batch_; ++b)
      lengths_[static_cast<std::size_t>(b)] = std::max(length(b), pos0 + n);
  }

  index_t batch() const noexcept { return batch_; }
  index_t heads() const noexcept { return heads_; }
  index_t dim() const noexcept { return dim_; }
  index_t capacity() const noexcept { return capacity_; }
  /// Tokens stored so far in sequence b (the largest stored position + 1).
  index_t length(index_t b) const noexcept { return lengths_[static_cast<std::size_t>(b)]; }

  /// Block blk of (b, h): [dim / 2][16 tokens][2] int8.
  const std::int8_t* block_data(index_t b, index_t h, index_t blk) const noexcept {
    return data_.data() + ((b * heads_ + h) * blocks_ + blk) * block * dim_;
  }
  /// Scales of (b, h): [capacity].
  const float* scales(index_t b, index_t h) const noexcept {
    return scales_.data() + (b * heads_ + h) * capacity_;
  }
  /// The value the copy represents for (b, t, h, d): scale * int8 (for tests).
  float dequantised(index_t b, index_t t, index_t h, index_t d) const noexcept {
    const std::int8_t* blk = block_data(b, h, t / block);
    return scales(b, h)[t] * float(blk[(d / 2) * 2 * block + (t % block) * 2 + d % 2]);
  }
  /// Bytes a full scan of one sequence's keys reads (int8 values plus scales).
  double scan_bytes(index_t len) const noexcept {
    return double(len) * double(heads_) * (double(dim_) + sizeof(float));
  }

 private:
  std::int8_t* block_data(index_t b, index_t h, index_t blk) noexcept {
    return data_.data() + ((b * heads_ + h) * blocks_ + blk) * block * dim_;
  }
  cache_vector<std::int8_t> data_;  // 64-byte aligned (blocks are loaded aligned)
  cache_vector<float> scales_;
  std::vector<index_t> lengths_;
  index_t batch_ = 0, heads_ = 0, dim_ = 0, blocks_ = 0, capacity_ = 0;
};

namespace detail {

/// The selection pipeline's view of an int8 key copy (heads, lengths).
struct int8_rows {
  const int8_keys* keys = nullptr;
  const index_t* lens = nullptr;
  index_t heads() const noexcept { return keys->heads(); }
  index_t length(index_t b) const noexcept { return lens ? lens[b] : keys->length(b); }
};

/// Each quantised query pair is stored this many times over, so the AVX2 multiply-add takes it
/// as a memory operand instead of a separate broadcast (the scan is bound by issued uops).
inline constexpr index_t int8_query_lanes = 8;
static_assert(int8_query_lanes * sizeof(std::int32_t) >= 32, "the AVX2 path loads 32 bytes");

/// Scores of one 16-token block for GN heads: out[g][t] = scale_g * scale_k[t] * qi_g . k_t,
/// where qp[g][p * int8_query_lanes] packs query pair (2p, 2p + 1) of head g as two int16 in
/// an int32, repeated int8_query_lanes times.
template <class Arch, int GN>
ATTEND_INLINE void int8_block_scores(const std::int8_t* blk, const std::int32_t* const* qp,
                                     const float* qscale, const float* kscale, index_t pairs,
                                     float (*out)[16]) noexcept {
#if defined(__AVX512BW__)
  if constexpr (simd::is_avx512<Arch>) {
    // The head loops are unrolled explicitly: GCC 12 at -O2 kept acc[] on the stack otherwise,
    // and the scan took twice as long as at -O3.
    __m512i acc[GN];
    ATTEND_UNROLL for (int g = 0; g < GN; ++g) acc[g] = _mm512_setzero_si512();
    for (index_t p = 0; p < pairs; ++p) {
      const __m512i k =
          _mm512_cvtepi8_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + p * 32)));
      ATTEND_UNROLL for (int g = 0; g < GN; ++g) {
        const __m512i q = _mm512_set1_epi32(qp[g][p * int8_query_lanes]);
#if defined(__AVX512VNNI__)
        acc[g] = _mm512_dpwssd_epi32(acc[g], k, q);
#else
        acc[g] = _mm512_add_epi32(acc[g], _mm512_madd_epi16(k, q));
#endif
      }
    }
    const __m512 ks = _mm512_loadu_ps(kscale);
    ATTEND_UNROLL for (int g = 0; g < GN; ++g)
      _mm512_storeu_ps(out[g], _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[g]), ks),
                                             _mm512_set1_ps(qscale[g])));
    return;
  }
#endif
#if defined(__AVX2__)
  if constexpr (simd::is_avx2<Arch>) {
    // One half-block (8 tokens) at a time: GN accumulators stay in registers (both halves at
    // once made GCC spill one to the stack, a store-forwarding chain that tripled the time).
    for (int half = 0; half < 2; ++half) {
      const std::int8_t* src = blk + half * 16;
      __m256i acc[GN];
      ATTEND_UNROLL for (int g = 0; g < GN; ++g) acc[g] = _mm256_setzero_si256();
      for (index_t p = 0; p < pairs; ++p) {
        const __m256i k =
            _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(src + p * 32)));
        ATTEND_UNROLL for (int g = 0; g < GN; ++g)
          acc[g] = _mm256_add_epi32(
              acc[g], _mm256_madd_epi16(k, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                               qp[g] + p * int8_query_lanes))));
      }
      const __m256 ks = _mm256_loadu_ps(kscale + half * 8);
      ATTEND_UNROLL for (int g = 0; g < GN; ++g)
        _mm256_storeu_ps(out[g] + half * 8,
                         _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[g]), ks),
                                       _mm256_set1_ps(qscale[g])));
    }
    return;
  }
#endif
  for (int g = 0; g < GN; ++g) {
    std::int32_t acc[16] = {};
    for (index_t p = 0; p < pairs; ++p) {
      const std::int32_t w = qp[g][p * int8_query_lanes];
      const std::int32_t q0 = static_cast<std::int16_t>(w & 0xFFFF);
      const std::int32_t q1 = static_cast<std::int16_t>((w >> 16) & 0xFFFF);
      for (int t = 0; t < 16; ++t) acc[t] += q0 * blk[p * 32 + 2 * t] + q1 * blk[p * 32 + 2 * t + 1];
    }
    for (int t = 0; t < 16; ++t) out[g][t] = float(acc[t]) * kscale[t] * qscale[g];
  }
}

/// Quantised fingerprints: pairs [batch][heads_q][dim / 2][int8_query_lanes] int32 pairs of
/// int16, scale [batch][heads_q] (times the attention scale). Carved from the selection's
/// workspace (score_buffers::scorer), so a call allocates nothing once it has grown.
struct int8_queries {
  std::int32_t* pairs = nullptr;
  float* scale = nullptr;

  /// Lays the buffers out from base (null: only counts); returns the floats they take.
  index_t carve(float* base, index_t batch, index_t heads_q, index_t dk) noexcept {
    attend::detail::bump b(base);
    pairs = b.take<std::int32_t>(batch * heads_q * (dk / 2) * int8_query_lanes);
    scale = b.take<float>(batch * heads_q);
    return b.used();
  }
};

inline void quantise_queries(const score_buffers& s, int8_queries& out) {
  const index_t pairs = s.dk / 2;
  out.carve(s.scorer, s.batch, s.heads_q, s.dk);
  for (index_t bh = 0; bh < s.batch * s.heads_q; ++bh) {
    const float* q = s.qf + bh * s.dk;
    float amax = 0.0f;
    for (index_t d = 0; d < s.dk; ++d) amax = std::max(amax, std::abs(q[d]));
    const float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
    out.scale[bh] = amax / 32767.0f * s.scale;
    for (index_t p = 0; p < pairs; ++p) {
      const auto q0 = static_cast<std::int16_t>(std::nearbyint(q[2 * p] * inv));
      const auto q1 = static_cast<std::int16_t>(std::nearbyint(q[2 * p + 1] * inv));
      const auto packed = static_cast<std::int32_t>(
          static_cast<std::uint32_t>(static_cast<std::uint16_t>(q0)) |
          (static_cast<std::uint32_t>(static_cast<std::uint16_t>(q1)) << 16));
      std::int32_t* lanes = out.pairs + (bh * pairs + p) * int8_query_lanes;
      std::fill(lanes, lanes + int8_query_lanes, packed);
    }
  }
}

/// Scores the candidates of every (batch, KV head, key chunk) from the int8 copy.
template <class Arch>
void score_with_int8(const int8_keys& keys, const score_buffers& s, bool need_partials,
                     int8_queries& qq) {
  quantise_queries(s, qq);
  const index_t pairs = s.dk / 2;
  const index_t items = s.batch * s.heads_kv * s.chunks;
  attend::detail::parallel_for(items, attend::detail::max_threads(), [&](index_t item, int) {
    const index_t c = item % s.chunks, hk = (item / s.chunks) % s.heads_kv;
    const index_t b = item / (s.chunks * s.heads_kv);
    const index_t j0 = std::max(s.lo[b], c * s.chunk);
    const index_t j1 = std::min(s.hi[b], (c + 1) * s.chunk);
    if (j1 > j0) {
      const float* ks = keys.scales(b, hk);
      for (index_t g0 = 0; g0 < s.group; g0 += 4) {
        const int gn = static_cast<int>(std::min<index_t>(4, s.group - g0));
        const std::int32_t* qp[4];
        float qs[4];
        float* rows[4];
        for (int g = 0; g < gn; ++g) {
          const index_t h = hk * s.group + g0 + g;
          qp[g] = qq.pairs + (b * s.heads_q + h) * pairs * int8_query_lanes;
          qs[g] = qq.scale[b * s.heads_q + h];
          rows[g] = s.row(b, h);
        }
        alignas(64) float tmp[4][16];
        for (index_t blk = j0 / int8_keys::block; blk * int8_keys::block < j1; ++blk) {
          const index_t t0 = blk * int8_keys::block;
          const std::int8_t* data = keys.block_data(b, hk, blk);
          switch (gn) {
            case 1: int8_block_scores<Arch, 1>(data, qp, qs, ks + t0, pairs, tmp); break;
            case 2: int8_block_scores<Arch, 2>(data, qp, qs, ks + t0, pairs, tmp); break;
            case 3: int8_block_scores<Arch, 3>(data, qp, qs, ks + t0, pairs, tmp); break;
            default: int8_block_scores<Arch, 4>(data, qp, qs, ks + t0, pairs, tmp); break;
          }
          const index_t a = std::max(t0, j0), e = std::min(t0 + int8_keys::block, j1);
          for (int g = 0; g < gn; ++g)
            for (index_t t = a; t < e; ++t) rows[g][t] = tmp[g][t - t0];
        }
      }
    }
    if (need_partials) chunk_partials<Arch>(s, b, hk * s.group, s.group, c);
  });
}

template <class Arch>
void select_int8(const view4<const float>& q, const int8_keys& keys, const index_t* lens,
                 token_list_buffer& out, const selection_spec& spec, workspace* scratch) {
  const int8_rows rows{&keys, lens};
  int8_queries qq;
  const index_t query_floats = qq.carve(nullptr, q.extent(0), q.extent(2), q.extent(3));
  select_tokens<Arch, float>(
      q, rows, keys.capacity(), out, spec, scratch,
      [&](const score_buffers& s, bool partials) { score_with_int8<Arch>(keys, s, partials, qq); },
      nullptr, query_floats);
}

}  // namespace detail

/// Top-k selection scored on an int8 key copy (same lists and rules as topk_select).
///
/// \param q [batch, seq_q, heads_q, dim] float
/// \param keys int8 copy of the key cache (heads_kv, dim as the cache); candidates run to
///        p.kv_lens[b] if given, else keys.length(b)
/// \param out reshaped to (p.owner, p.query_block, capacity p.k)
template <class TQ>
void topk_int8_select(const tensor_view<TQ, 4>& q, const int8_keys& keys, token_list_buffer& out,
                      const topk_params& p = {}) {
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  constexpr const char* op = "attend::sparse::topk_int8_select";
  const view4<const float> qc = q;
  detail::check_tensor(op, "q", qc);
  detail::validate_topk_params(op, p);
  ATTEND_CHECK(keys.batch() == qc.extent(0) && keys.dim() == qc.extent(3) &&
                   qc.extent(2) % keys.heads() == 0,
               op, ": int8 keys (batch ", keys.batch(), ", heads ", keys.heads(), ", dim ",
               keys.dim(), ") do not fit q ", detail::shape_string(qc));
  if (p.kv_lens.has_value()) {
    detail::check_tensor(op, "kv_lens", p.kv_lens);
    detail::check_extents(op, "kv_lens", p.kv_lens, {qc.extent(0)});
    for (index_t b = 0; b < qc.extent(0); ++b)
      ATTEND_CHECK(p.kv_lens(b) >= 0 && p.kv_lens(b) <= keys.length(b), op, ": kv_lens[", b,
                   "] = ", p.kv_lens(b), " exceeds the stored keys (", keys.length(b), ")");
  }
  detail::select_int8<xsimd::default_arch>(qc, keys, p.kv_lens.has_value() ? p.kv_lens.data() : nullptr,
                                           out, detail::spec_of(p, qc.extent(3)), p.scratch);
}

/// Low-bit top-k attention: topk_int8_select on `keys`, then exact gather_attention on k / v.
template <class TQ, class TK, class TV>
void topk_int8_attention(const tensor_view<TQ, 4>& q, const int8_keys& keys,
                         const tensor_view<TK, 4>& k, const tensor_view<TV, 4>& v,
                         const tensor_view<float, 4>& o, token_list_buffer& lists,
                         const topk_params& p = {}, const view3<float>& lse = {},
                         workspace* gather_scratch = nullptr) {
  topk_int8_select(q, keys, lists, p);
  gather_attention(q, k, v, o, lists.view(), p.gather(lse, gather_scratch));
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_TOPK_INT8_HPP_
