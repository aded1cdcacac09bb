// Score kernels the selectors share:
//   gemm_rows       small dense products of query rows with pooled / representative keys (MoBA
//                   gates, FlexPrefill block estimates, ProxyAttn budgets, low-bit estimates),
//                   on the register-blocked micro-kernel of simd/tile.hpp;
//   engine_scores   exact scaled scores of a block of query rows against a range of cached keys,
//                   through the engine's score pass (any K layout and storage type, any mask);
//   probe_last_queries  the "last-q probe" of MInference and FlexPrefill: softmax of the last
//                   queries against all keys, reduced to per-key column sums and per-offset
//                   diagonal sums.
#ifndef ATTEND_SPARSE_SELECT_SCORES_HPP_
#define ATTEND_SPARSE_SELECT_SCORES_HPP_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../../engine/flash.hpp"
#include "../../engine/key_sources.hpp"
#include "../../engine/masks.hpp"
#include "../../simd/exp.hpp"
#include "../../simd/tile.hpp"

namespace attend::sparse::select {

/// Columns rounded up to whole registers: the row pitch of gemm_rows' packed operand and
/// output.
template <class Arch = xsimd::default_arch>
constexpr index_t padded_cols(index_t cols) noexcept {
  constexpr index_t w = simd::lanes<Arch>;
  return (cols + w - 1) / w * w;
}

/// Packs b [cols][dim] (row pitch ldb) transposed into bt [dim][padded_cols(cols)], zeros in
/// the padding columns.
inline void pack_transposed(const float* b, index_t ldb, index_t cols, index_t dim, float* bt,
                            index_t ldbt) noexcept {
  for (index_t d = 0; d < dim; ++d) {
    float* row = bt + d * ldbt;
    for (index_t c = 0; c < cols; ++c) row[c] = b[c * ldb + d];
    std::fill(row + cols, row + ldbt, 0.0f);
  }
}

/// out[r * ldo + c] = scale * sum_d a[r * lda + d] * bt[d * ldbt + c] for r < rows and
/// c < cols, where cols is a multiple of the register width (padded columns of bt hold zeros
/// and give 0) and ldbt >= cols is bt's row pitch.
template <class Arch = xsimd::default_arch>
void gemm_rows(const float* a, index_t lda, index_t rows, const float* bt, index_t ldbt,
               index_t cols, index_t dim, float scale, float* out, index_t ldo) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  constexpr int MR = 4, NR = 2;
  const index_t nvec = cols / w;
  auto block = [&](auto kmr, auto knr, index_t r0, index_t v0) {
    constexpr int mr = decltype(kmr)::value, nr = decltype(knr)::value;
    const float* ap = a + r0 * lda;
    const float* bp = bt + v0 * w;
    simd::gemm_micro<Arch, mr, nr>(
        dim, [&](int m, index_t d) { return ap[m * lda + d]; },
        [&](index_t d, int n) { return V::load_unaligned(bp + d * ldbt + n * w); },
        out + r0 * ldo + v0 * w, ldo, false);
  };
  using one = std::integral_constant<int, 1>;
  using mr_t = std::integral_constant<int, MR>;
  using nr_t = std::integral_constant<int, NR>;
  const index_t whole_r = rows - rows % MR, whole_v = nvec - nvec % NR;
  for (index_t v0 = 0; v0 < nvec; v0 += (v0 < whole_v ? NR : 1)) {
    const bool full_v = v0 < whole_v;
    for (index_t r0 = 0; r0 < rows; r0 += (r0 < whole_r ? MR : 1)) {
      const bool full_r = r0 < whole_r;
      if (full_r && full_v) block(mr_t{}, nr_t{}, r0, v0);
      else if (full_r) block(mr_t{}, one{}, r0, v0);
      else if (full_v) block(one{}, nr_t{}, r0, v0);
      else block(one{}, one{}, r0, v0);
    }
  }
  if (scale != 1.0f)
    for (index_t r = 0; r < rows; ++r)
      for (index_t c = 0; c < cols; ++c) out[r * ldo + c] *= scale;
}

/// Exact scores of one engine row block against the keys [0, kend) of a cache: for row r of rb
/// (r < rb.rows()) and key j < kend, s[r * lds + j] = scale * q_r . k_j where the mask keeps
/// (j, r), -inf elsewhere. q is any [batch, seq, heads, dk] view the row block indexes; the
/// scratch comes from engine::scratch::carve with max_rows >= rb.rows().
template <class Arch, index_t DK, class KV, class Mask>
void engine_scores(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                   const engine::row_block& rb, const Mask& mask, index_t kend, float scale,
                   const engine::scratch<Arch, KV>& ws, float* s, index_t lds) noexcept {
  const engine::problem<KV> pb{q, scale, q.extent(3), v.extent(3)};
  const engine::dense_keys<KV> keys{k, v, nullptr, 0, kend};
  const auto var = engine::make_variant(engine::no_score_mod{}, mask);
  const index_t rows = rb.rows();
  for (index_t r = 0; r < rows; ++r)
    std::fill(s + r * lds, s + r * lds + kend, -std::numeric_limits<float>::infinity());
  engine::score_tiles<Arch, DK>(pb, rb, keys, var, ws,
                                [&](const engine::kv_tile<KV>& t, const float* st, index_t ld) {
                                  for (index_t j = 0; j < t.count; ++j) {
                                    const float* col = st + j * ld;
                                    const index_t pos = t.pos[j];
                                    for (index_t r = 0; r < rows; ++r) s[r * lds + pos] = col[r];
                                  }
                                });
}

/// In-place softmax of each of `rows` score rows s[r * lds + j], j < n (vectorised; -inf
/// entries become 0; an all -inf row becomes all 0).
template <class Arch = xsimd::default_arch>
void softmax_rows(float* s, index_t rows, index_t n, index_t lds) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  for (index_t r = 0; r < rows; ++r) {
    float* x = s + r * lds;
    V mv(-std::numeric_limits<float>::infinity());
    index_t j = 0;
    for (; j + w <= n; j += w) mv = xsimd::max(mv, V::load_unaligned(x + j));
    float m = simd::reduce_max<Arch>(mv);
    for (; j < n; ++j) m = std::max(m, x[j]);
    if (m == -std::numeric_limits<float>::infinity()) {
      std::fill(x, x + n, 0.0f);
      continue;
    }
    V sv(0.0f);
    const V mm(m);
    for (j = 0; j + w <= n; j += w) {
      const V e = simd::exp<Arch>(V::load_unaligned(x + j) - mm);
      e.store_unaligned(x + j);
      sv += e;
    }
    float sum = simd::reduce_sum<Arch>(sv);
    for (; j < n; ++j) {
      x[j] = std::exp(x[j] - m);
      sum += x[j];
    }
    const V inv(1.0f / sum);
    for (j = 0; j + w <= n; j += w) (V::load_unaligned(x + j) * inv).store_unaligned(x + j);
    for (; j < n; ++j) x[j] *= 1.0f / sum;
  }
}

/// Scores of one engine row block in the engine's key-major layout: S[j * ld + r] = scale
/// q_r . k_j for keys j < kend the mask keeps, -inf elsewhere and on the padding rows
/// (r in [rb.rows(), ld), ld = rb.rows() rounded up to the register width, returned). The key
/// source is dense_keys, so each tile is one contiguous copy. S holds kend * ld floats, 64-byte
/// aligned.
template <class Arch, index_t DK, class KV, class Mask>
index_t keymajor_scores(const view4<const float>& q, const view4<const KV>& k,
                        const view4<const KV>& v, const engine::row_block& rb, const Mask& mask,
                        index_t kend, float scale, const engine::scratch<Arch, KV>& ws,
                        float* S) noexcept {
  constexpr index_t w = simd::lanes<Arch>;
  const index_t rows = rb.rows(), ld = (rows + w - 1) / w * w;
  const engine::problem<KV> pb{q, scale, q.extent(3), v.extent(3)};
  const engine::dense_keys<KV> keys{k, v, nullptr, 0, kend};
  const auto var = engine::make_variant(engine::no_score_mod{}, mask);
  std::fill(S, S + kend * ld, -std::numeric_limits<float>::infinity());
  engine::score_tiles<Arch, DK>(pb, rb, keys, var, ws,
                                [&](const engine::kv_tile<KV>& t, const float* st, index_t) {
                                  std::copy(st, st + t.count * ld, S + t.pos[0] * ld);
                                });
  for (index_t j = 0; j < kend; ++j)  // padding rows: scores of zero queries, masked out
    std::fill(S + j * ld + rows, S + (j + 1) * ld, -std::numeric_limits<float>::infinity());
  return ld;
}

/// Softmax along keys of a key-major score block S[j * ld + r] (j < kend) in place, vectorised
/// along rows: S becomes probabilities; a row of only -inf becomes zeros. `tmp` holds 2 * ld
/// floats, 64-byte aligned.
template <class Arch>
void keymajor_softmax(float* S, index_t kend, index_t ld, float* tmp) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const V ninf(-std::numeric_limits<float>::infinity()), zero(0.0f);
  for (index_t r = 0; r < ld; r += w) {
    V mx = ninf;
    for (index_t j = 0; j < kend; ++j) mx = xsimd::max(mx, V::load_aligned(S + j * ld + r));
    const V mu = xsimd::select(mx == ninf, zero, mx);
    V sum = zero;
    for (index_t j = 0; j < kend; ++j) {
      float* p = S + j * ld + r;
      const V e = simd::exp<Arch>(V::load_aligned(p) - mu);
      e.store_aligned(p);
      sum += e;
    }
    xsimd::select(sum > zero, V(1.0f) / sum, zero).store_aligned(tmp + r);
  }
  for (index_t j = 0; j < kend; ++j)
    for (index_t r = 0; r < ld; r += w)
      (V::load_aligned(S + j * ld + r) * V::load_aligned(tmp + r)).store_aligned(S + j * ld + r);
}

/// Floats of workspace probe_last_queries needs for seq_k keys and chunks of max_rows rows.
template <class Arch = xsimd::default_arch>
constexpr index_t probe_floats(index_t seq_k, index_t max_rows) noexcept {
  constexpr index_t w = simd::lanes<Arch>;
  const index_t ld = (max_rows + w - 1) / w * w;
  return seq_k * ld + 3 * ld + (seq_k + 2 * ld) + 16;
}

/// The last-q probe of (batch b, query head h): A = softmax(scale q_i . k_j) over causally
/// visible keys (query i at position seq_k - seq_q + i) for the `last` queries i in
/// [seq_q - last, seq_q); then vertical[j] += sum_i A[i][j] (j < seq_k) and
/// slash[o] += sum_i A[i][pos_i - o] (o = pos_i - j >= 0). Rows go through the engine in
/// chunks of at most `max_rows` (the scratch's row capacity); the scores stay in the engine's
/// key-major layout (one copy per tile, no transpose), so every reduction runs along registers
/// of rows. `s` holds probe_floats(seq_k, max_rows) floats.
template <class Arch, index_t DK, class KV>
void probe_last_queries(const view4<const float>& q, const view4<const KV>& k,
                        const view4<const KV>& v, index_t b, index_t h, index_t last, float scale,
                        const engine::scratch<Arch, KV>& ws, index_t max_rows, float* s,
                        float* vertical, float* slash) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t seq_q = q.extent(1), seq_k = k.extent(1);
  const index_t group = q.extent(2) / k.extent(2);
  const index_t ldmax = (max_rows + w - 1) / w * w;
  float* const S = reinterpret_cast<float*>(  // [seq_k][ld] scores, then probabilities
      (reinterpret_cast<std::uintptr_t>(s) + 63) / 64 * 64);
  float* const tmp = S + seq_k * ldmax;       // [2 ld]
  float* const sl = tmp + 3 * ldmax;          // slash with ld entries of padding in front
  std::fill(sl, sl + seq_k + ldmax, 0.0f);
  engine::standard_mask causal;
  causal.right = 0;
  for (index_t c0 = 0; c0 < last; c0 += max_rows) {
    engine::row_block rb;
    rb.batch = b;
    rb.kv_head = h / group;
    rb.head0 = h;
    rb.group = group;
    rb.query0 = seq_q - last + c0;
    rb.queries = std::min(max_rows, last - c0);
    rb.pos0 = seq_k - seq_q + rb.query0;
    const index_t kend = rb.pos0 + rb.queries;  // keys any row sees
    const index_t ld = keymajor_scores<Arch, DK>(q, k, v, rb, causal, kend, scale, ws, S);
    keymajor_softmax<Arch>(S, kend, ld, tmp);
    for (index_t j = 0; j < kend; ++j) {
      const float* p = S + j * ld;
      V col(0.0f);
      float* dst = sl + ldmax + rb.pos0 - j;  // slash index of row r: pos0 + r - j
      for (index_t r = 0; r < ld; r += w) {
        const V a = V::load_aligned(p + r);
        col += a;
        (V::load_unaligned(dst + r) + a).store_unaligned(dst + r);
      }
      vertical[j] += simd::reduce_sum<Arch>(col);
    }
  }
  for (index_t o = 0; o < seq_k; ++o) slash[o] += sl[ldmax + o];
}

}  // namespace attend::sparse::select

#endif  // ATTEND_SPARSE_SELECT_SCORES_HPP_
