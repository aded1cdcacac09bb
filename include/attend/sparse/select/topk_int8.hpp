// Low-bit top-k: the selection scores come from an int8 copy of the keys (one float scale per
// token and head) kept alongside the cache, so choosing the keys reads a quarter of the bytes of
// fp32 keys (half of bf16); attention then runs exactly on the real cache over the chosen keys.
//
// int8_keys stores each (batch, KV head) as blocks of 16 tokens laid out [dim / 4][16][4], each
// int8 value offset by 128 (an unsigned byte): one 64-byte line holds dimensions 4p..4p+3 of all
// 16 tokens. Queries are quantised to int16 and split into two signed bytes (q = 256 hi + lo).
// With AVX-512 VNNI, vpdpbusd multiplies a line by a broadcast byte quadruple of the query and
// sums each token's four products into its int32 lane: two instructions per line and head, no
// widening. AVX2 (and AVX-512 without VNNI) widens the bytes to int16 and multiply-adds the int16
// query (vpmaddwd). Every path computes the same exact integer q . (k + 128), minus the query's
// 128 * sum(q), scaled back by scale_q * scale_k(token).
#ifndef ATTEND_SPARSE_SELECT_TOPK_INT8_HPP_
#define ATTEND_SPARSE_SELECT_TOPK_INT8_HPP_

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../../core/memory.hpp"
#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"
#include "int8_row_keys.hpp"
#include "topk.hpp"

namespace attend::sparse {

/// An int8 copy of a key cache [batch, capacity, heads_kv, dim]: k ~= scale(b, t, h) * int8,
/// quantised per token as int8_row_keys (detail::quantise_keys_int8), laid out for scans.
class int8_keys : public detail::int8_copy_base {
 public:
  static constexpr index_t block = 16;  // tokens per block
  /// Largest head dimension: the exact dot product of an int16 query (|q| <= 32896) and int8
  /// keys (|k| <= 127) stays below 2^31 up to dim 514. (Partial sums may wrap; int32 arithmetic
  /// is modular, so the final value is still exact.)
  static constexpr index_t max_dim = 512;

  int8_keys() = default;
  int8_keys(index_t batch, index_t capacity, index_t heads_kv, index_t dim) {
    reshape(batch, capacity, heads_kv, dim);
  }

  /// Re-shapes (contents are discarded; lengths become 0). dim must be a multiple of 4.
  void reshape(index_t batch, index_t capacity, index_t heads_kv, index_t dim) {
    ATTEND_CHECK(batch >= 1 && capacity >= 1 && heads_kv >= 1 && dim >= 4 && dim % 4 == 0 &&
                     dim <= max_dim,
                 "attend::sparse::int8_keys: need batch, capacity, heads >= 1 and a dim in [4, ",
                 max_dim, "] that is a multiple of 4 (got ", batch, ", ", capacity, ", ", heads_kv,
                 ", ", dim, ")");
    blocks_ = (capacity + block - 1) / block;
    set_shape(batch, blocks_ * block, heads_kv, dim);
    const std::size_t bytes = static_cast<std::size_t>(batch * heads_kv * blocks_ * block * dim);
    data_.assign(bytes, std::uint8_t{128});  // zero
  }

  /// Quantises k [batch, n, heads_kv, dim] (float, bf16 or fp16) into positions
  /// [pos0, pos0 + n) (append new tokens with pos0 = the current length). Extends length(b).
  template <class TK>
  void store(const tensor_view<TK, 4>& k, index_t pos0 = 0) {
    quantise("attend::sparse::int8_keys::store", k, pos0,
             [&](index_t b, index_t h, index_t pos, const std::int8_t* codes) {
               std::uint8_t* blk = block_data(b, h, pos / block);
               for (index_t d = 0; d < dim_; ++d)
                 blk[offset(pos % block, d)] = static_cast<std::uint8_t>(codes[d] + 128);
             });
  }

  /// Block blk of (b, h): [dim / 4][16 tokens][4] bytes, int8 + 128 (see offset).
  const std::uint8_t* block_data(index_t b, index_t h, index_t blk) const noexcept {
    return data_.data() + ((b * heads_ + h) * blocks_ + blk) * block * dim_;
  }
  /// Offset of (token slot in its block, dimension d) in block_data.
  static constexpr index_t offset(index_t slot, index_t d) noexcept {
    return (d / 4) * 4 * block + slot * 4 + d % 4;
  }
  /// Scales of (b, h): [capacity].
  const float* scales(index_t b, index_t h) const noexcept {
    return scales_.data() + token(b, h, 0);
  }
  /// The value the copy represents for (b, t, h, d): scale * int8 (for tests).
  float dequantised(index_t b, index_t t, index_t h, index_t d) const noexcept {
    const std::uint8_t* blk = block_data(b, h, t / block);
    return scales(b, h)[t] * float(int(blk[offset(t % block, d)]) - 128);
  }
  /// Bytes a full scan of one sequence's keys reads (int8 values plus scales).
  double scan_bytes(index_t len) const noexcept {
    return double(len) * double(heads_) * (double(dim_) + sizeof(float));
  }

 private:
  std::uint8_t* block_data(index_t b, index_t h, index_t blk) noexcept {
    return data_.data() + ((b * heads_ + h) * blocks_ + blk) * block * dim_;
  }
  cache_vector<std::uint8_t> data_;  // 64-byte aligned (blocks are loaded aligned)
  index_t blocks_ = 0;
};

namespace detail {

/// The selection pipeline's view of an int8 key copy (heads, lengths).
struct int8_rows {
  const int8_keys* keys = nullptr;
  const index_t* lens = nullptr;
  index_t heads() const noexcept { return keys->heads(); }
  index_t length(index_t b) const noexcept { return lens ? lens[b] : keys->length(b); }
};

/// One quantised query head: q ~= scale * q16 (q16 = 256 * hi + lo, both signed bytes).
struct int8_query {
  const std::int16_t* q16 = nullptr;  // [dim]
  const std::int32_t* hi = nullptr;   // [dim / 4] four signed high bytes (one per dimension)
  const std::int32_t* lo = nullptr;   // [dim / 4] four signed low bytes
  std::int32_t offset = 0;            // 128 * sum(q16) (mod 2^32): the keys' +128, removed
  float scale = 0.0f;                 // amax / 32639 * the selection scale
};

/// Scores of one 16-token block for GN heads: out[g][t] = q[g].scale * kscale[t] * q16_g . k_t.
/// `ahead` is a block further on in the same stream, prefetched a line per step (with the light
/// VNNI loop the hardware prefetcher alone fell behind: 18 against 23-25 GB/s).
template <class Arch, int GN>
ATTEND_INLINE void int8_block_scores(const std::uint8_t* blk, const int8_query* q,
                                     const float* kscale, index_t quads, const std::uint8_t* ahead,
                                     float (*out)[16]) noexcept {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
  if constexpr (simd::is_avx512<Arch>) {
    // The head loops are unrolled explicitly: GCC 12 at -O2 kept the accumulators on the stack
    // otherwise, and the scan took twice as long as at -O3.
    __m512i hi[GN], lo[GN];
    ATTEND_UNROLL for (int g = 0; g < GN; ++g) hi[g] = lo[g] = _mm512_setzero_si512();
    for (index_t p = 0; p < quads; ++p) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + p * 64), _MM_HINT_T0);
      const __m512i k = _mm512_load_si512(blk + p * 64);
      ATTEND_UNROLL for (int g = 0; g < GN; ++g) {
        hi[g] = _mm512_dpbusd_epi32(hi[g], k, _mm512_set1_epi32(q[g].hi[p]));
        lo[g] = _mm512_dpbusd_epi32(lo[g], k, _mm512_set1_epi32(q[g].lo[p]));
      }
    }
    const __m512 ks = _mm512_loadu_ps(kscale);
    ATTEND_UNROLL for (int g = 0; g < GN; ++g) {
      const __m512i dot = _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(hi[g], 8), lo[g]),
                                           _mm512_set1_epi32(q[g].offset));
      _mm512_storeu_ps(out[g], _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(dot), ks),
                                             _mm512_set1_ps(q[g].scale)));
    }
    return;
  }
#endif
#if defined(__AVX2__)
  if constexpr (simd::is_avx2<Arch>) {  // also AVX-512 without VNNI
    // Half a block (8 tokens) at a time, tokens 0-3 and 4-7 in separate accumulators (two
    // int32 lanes per token, summed at the end): 2 GN accumulators stay in registers.
    for (index_t p = 0; p < quads; ++p)
      _mm_prefetch(reinterpret_cast<const char*>(ahead + p * 64), _MM_HINT_T0);
    for (int half = 0; half < 2; ++half) {
      const std::uint8_t* src = blk + half * 32;
      __m256i a[GN], b[GN];
      ATTEND_UNROLL for (int g = 0; g < GN; ++g) a[g] = b[g] = _mm256_setzero_si256();
      for (index_t p = 0; p < quads; ++p) {
        const __m256i k03 =
            _mm256_cvtepu8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(src + p * 64)));
        const __m256i k47 = _mm256_cvtepu8_epi16(
            _mm_load_si128(reinterpret_cast<const __m128i*>(src + p * 64 + 16)));
        ATTEND_UNROLL for (int g = 0; g < GN; ++g) {
          std::int64_t quad;
          std::memcpy(&quad, q[g].q16 + 4 * p, sizeof quad);
          const __m256i qv = _mm256_set1_epi64x(quad);
          a[g] = _mm256_add_epi32(a[g], _mm256_madd_epi16(k03, qv));
          b[g] = _mm256_add_epi32(b[g], _mm256_madd_epi16(k47, qv));
        }
      }
      const __m256 ks = _mm256_loadu_ps(kscale + half * 8);
      ATTEND_UNROLL for (int g = 0; g < GN; ++g) {
        // hadd: [t0 t1 t4 t5 | t2 t3 t6 t7]; the 64-bit permute restores token order.
        const __m256i dot = _mm256_sub_epi32(
            _mm256_permute4x64_epi64(_mm256_hadd_epi32(a[g], b[g]), 0xD8),
            _mm256_set1_epi32(q[g].offset));
        _mm256_storeu_ps(out[g] + half * 8,
                         _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), ks),
                                       _mm256_set1_ps(q[g].scale)));
      }
    }
    return;
  }
#endif
  (void)ahead;
  for (int g = 0; g < GN; ++g)
    for (int t = 0; t < 16; ++t) {
      std::uint32_t acc = 0;  // modular, as the vector paths
      for (index_t d = 0; d < 4 * quads; ++d)
        acc += static_cast<std::uint32_t>(q[g].q16[d] * int(blk[int8_keys::offset(t, d)]));
      const auto dot = static_cast<std::int32_t>(acc - static_cast<std::uint32_t>(q[g].offset));
      out[g][t] = float(dot) * kscale[t] * q[g].scale;
    }
}

/// Quantised fingerprints of every (batch, query head), carved from the selection's workspace
/// (score_buffers::scorer), so a call allocates nothing once it has grown.
struct int8_queries {
  std::int16_t* q16 = nullptr;  // [batch * heads_q][dk]
  std::int32_t* hi = nullptr;   // [batch * heads_q][dk / 4]
  std::int32_t* lo = nullptr;
  std::int32_t* offset = nullptr;  // [batch * heads_q]
  float* scale = nullptr;
  index_t dk = 0;

  /// Lays the buffers out from base (null: only counts); returns the floats they take.
  index_t carve(float* base, index_t batch, index_t heads_q, index_t dim) noexcept {
    attend::detail::bump b(base);
    const index_t rows = batch * heads_q;
    dk = dim;
    q16 = b.take<std::int16_t>(rows * dk);
    hi = b.take<std::int32_t>(rows * dk / 4);
    lo = b.take<std::int32_t>(rows * dk / 4);
    offset = b.take<std::int32_t>(rows);
    scale = b.take<float>(rows);
    return b.used();
  }
  int8_query row(index_t bh) const noexcept {
    return {q16 + bh * dk, hi + bh * dk / 4, lo + bh * dk / 4, offset[bh], scale[bh]};
  }
};

/// Largest |q16|: 256 * 127 + 127, so that hi = (q16 - lo) / 256 fits a signed byte.
inline constexpr float int8_query_max = 32639.0f;

inline void quantise_queries(const score_buffers& s, int8_queries& out) {
  out.carve(s.scorer, s.batch, s.heads_q, s.dk);
  for (index_t bh = 0; bh < s.batch * s.heads_q; ++bh) {
    const float* q = s.qf + bh * s.dk;
    float amax = 0.0f;
    for (index_t d = 0; d < s.dk; ++d) amax = std::max(amax, std::abs(q[d]));
    const float inv = amax > 0.0f ? int8_query_max / amax : 0.0f;
    out.scale[bh] = amax / int8_query_max * s.scale;
    std::int16_t* q16 = out.q16 + bh * s.dk;
    std::uint32_t sum = 0;
    for (index_t d = 0; d < s.dk; ++d) {
      q16[d] = static_cast<std::int16_t>(std::nearbyint(q[d] * inv));
      sum += static_cast<std::uint32_t>(std::int32_t{q16[d]});
    }
    out.offset[bh] = static_cast<std::int32_t>(sum * 128u);
    for (index_t p = 0; p < s.dk / 4; ++p) {
      std::uint32_t hi = 0, lo = 0;
      for (int e = 0; e < 4; ++e) {
        const int v = q16[4 * p + e];
        const int low = static_cast<std::int8_t>(static_cast<std::uint8_t>(v & 0xFF));
        const int high = (v - low) / 256;  // exact, in [-128, 127]
        lo |= std::uint32_t{static_cast<std::uint8_t>(low)} << (8 * e);
        hi |= std::uint32_t{static_cast<std::uint8_t>(high)} << (8 * e);
      }
      out.hi[bh * s.dk / 4 + p] = static_cast<std::int32_t>(hi);
      out.lo[bh * s.dk / 4 + p] = static_cast<std::int32_t>(lo);
    }
  }
}

/// Scores the candidates of every (batch, KV head, key chunk) from the int8 copy: into the head
/// rows, or, when the pipeline asks (s.scorer_takes_group_max), their maximum over the KV group
/// straight into the group's aggregate row.
template <class Arch>
void score_with_int8(const int8_keys& keys, const score_buffers& s, bool need_partials,
                     int8_queries& qq) {
  quantise_queries(s, qq);
  const index_t quads = s.dk / 4;
  const index_t items = s.batch * s.heads_kv * s.chunks;
  constexpr index_t ahead = 2;  // blocks prefetched ahead (4 KiB at dim 128)
  attend::detail::parallel_for(items, attend::detail::max_threads(), [&](index_t item, int) {
    const index_t c = item % s.chunks, hk = (item / s.chunks) % s.heads_kv;
    const index_t b = item / (s.chunks * s.heads_kv);
    const index_t j0 = std::max(s.lo[b], c * s.chunk);
    const index_t j1 = std::min(s.hi[b], (c + 1) * s.chunk);
    if (j1 > j0) {
      const float* ks = keys.scales(b, hk);
      const index_t last = (j1 - 1) / int8_keys::block;
      for (index_t g0 = 0; g0 < s.group; g0 += 4) {
        const int gn = static_cast<int>(std::min<index_t>(4, s.group - g0));
        int8_query qr[4];
        float* rows[4];
        for (int g = 0; g < gn; ++g) {
          const index_t h = hk * s.group + g0 + g;
          qr[g] = qq.row(b * s.heads_q + h);
          rows[g] = s.row(b, h);
        }
        float* group_max = s.scorer_takes_group_max ? s.agg_row(b, hk) : nullptr;
        alignas(64) float tmp[4][16];
        for (index_t blk = j0 / int8_keys::block; blk <= last; ++blk) {
          const index_t t0 = blk * int8_keys::block;
          const std::uint8_t* data = keys.block_data(b, hk, blk);
          const std::uint8_t* next = keys.block_data(b, hk, std::min(blk + ahead, last));
          switch (gn) {
            case 1: int8_block_scores<Arch, 1>(data, qr, ks + t0, quads, next, tmp); break;
            case 2: int8_block_scores<Arch, 2>(data, qr, ks + t0, quads, next, tmp); break;
            case 3: int8_block_scores<Arch, 3>(data, qr, ks + t0, quads, next, tmp); break;
            default: int8_block_scores<Arch, 4>(data, qr, ks + t0, quads, next, tmp); break;
          }
          const index_t a = std::max(t0, j0), e = std::min(t0 + int8_keys::block, j1);
          if (group_max != nullptr) {
            for (index_t t = a; t < e; ++t) {
              float m = g0 == 0 ? tmp[0][t - t0] : std::max(group_max[t], tmp[0][t - t0]);
              for (int g = 1; g < gn; ++g) m = std::max(m, tmp[g][t - t0]);
              group_max[t] = m;
            }
          } else {
            for (int g = 0; g < gn; ++g)
              for (index_t t = a; t < e; ++t) rows[g][t] = tmp[g][t - t0];
          }
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
      nullptr, query_floats, /*group_max_scorer=*/true);
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
  detail::validate_topk_params(op, p);
  detail::validate_int8_copy(op, qc, keys, p.kv_lens);
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
