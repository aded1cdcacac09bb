// Kernels of linear attention for one (batch, head): the chunked causal algorithm (Lightning
// Attention-2 / fla "chunk" form), the non-causal passes and the recurrent decode step. The
// drivers in linear_attention.hpp and state.hpp schedule them over (batch, head, segment).
//
// Causal chunk of m <= C tokens starting at t0, with state S [dk][dv] (and z [dk], Σv [dv])
// carried from the previous chunk, a_r = log λ_h + g_{t0+r} <= 0 and the LOCAL cumsum
// b_r = a_0 + ... + a_r (double; every exponent below is <= 0, the upper triangle is masked
// before exp, nothing is cumulated over the sequence):
//   inter  O   = diag(exp(b_r)) φ(Q) S                    [m x dk] . [dk x dv]
//   state  S   = exp(b_{m-1}) S + (diag(exp(b_{m-1} - b_c)) φ(K))ᵀ V      [dk x m] . [m x dv]
//   intra  A   = (φ(Q) φ(K)ᵀ) ⊙ D,  D_rc = exp(b_r - b_c) for c <= r, 0 above
//          O  += A V                                      masked [m x m] . [m x dv]
// and the denominators d_r = exp(b_r) φ(q_r)·z + Σ_c A_rc, z likewise. The inter product and
// the state update run together, one column block of S at a time (the block stays in L1).
// With only a per-head λ (or none) D is Toeplitz, λ^(r-c), read from one table per head. All
// products run on the register-blocked micro-kernel simd::gemm_micro; q, k and v rows are
// packed into contiguous tiles (the rows of one head are a power-of-two stride apart in a
// [batch, seq, heads, dim] tensor, which maps a chunk onto a few cache sets) unless they are
// already contiguous.
#ifndef ATTEND_LINEAR_KERNEL_HPP_
#define ATTEND_LINEAR_KERNEL_HPP_

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../core/workspace.hpp"
#include "../simd/exp.hpp"
#include "../simd/tile.hpp"
#include "feature_maps.hpp"
#include "params.hpp"

namespace attend::linear::detail {

using ::attend::detail::bump;

/// One linear-attention problem after validation (sizes, mode, resolved scale).
struct problem {
  index_t batch = 0, seq = 0, heads = 0, dk = 0, dv = 0;
  index_t dvp = 0;    // dv rounded up to the SIMD width: row stride of S, V and O tiles
  index_t chunk = 0;  // C
  index_t cp = 0;     // C rounded up to the SIMD width: row stride of the score tile
  linear_norm norm = linear_norm::denominator;
  float scale = 1.0f, eps = 0.0f;
  const float* decay = nullptr;  // [heads] λ_h, or null
  const float* gates = nullptr;  // log gates [batch, seq, heads] with strides gs*, or null
  index_t gs0 = 0, gs1 = 0, gs2 = 0;

  bool needs_z() const noexcept { return norm != linear_norm::none; }
  bool needs_sv() const noexcept { return norm == linear_norm::mala; }
};

template <class Arch>
inline problem make_problem(index_t batch, index_t seq, index_t heads, index_t dk, index_t dv,
                            const linear_params& p) {
  constexpr index_t w = simd::lanes<Arch>;
  problem pb;
  pb.batch = batch;
  pb.seq = seq;
  pb.heads = heads;
  pb.dk = dk;
  pb.dv = dv;
  pb.dvp = (dv + w - 1) / w * w;
  pb.chunk = p.chunk;
  pb.cp = (p.chunk + w - 1) / w * w;
  pb.norm = p.norm;
  pb.scale = p.scale
                 ? *p.scale
                 : (p.norm == linear_norm::mala ? 1.0f / std::sqrt(static_cast<float>(dk)) : 1.0f);
  pb.eps = p.eps;
  pb.decay = p.decay.has_value() ? p.decay.data() : nullptr;
  if (p.log_gates.has_value()) {
    pb.gates = p.log_gates.data();
    pb.gs0 = p.log_gates.stride(0);
    pb.gs1 = p.log_gates.stride(1);
    pb.gs2 = p.log_gates.stride(2);
  }
  return pb;
}

/// The state of one (batch, head): S [dk][dvp] (padding columns stay 0), z [dk], Σv [dvp].
struct state_ptrs {
  float* s = nullptr;
  float* z = nullptr;
  float* sv = nullptr;
};

/// Floats of one (batch, head) state block (S, z, Σv back to back, each 64-byte aligned).
inline index_t state_floats(const problem& pb) noexcept {
  bump b(nullptr);
  b.take<float>(pb.dk * pb.dvp);
  b.take<float>(pb.dk);
  b.take<float>(pb.dvp);
  return b.used();
}

inline state_ptrs state_at(const problem& pb, float* base) noexcept {
  bump b(base);
  state_ptrs s;
  s.s = b.take<float>(pb.dk * pb.dvp);
  s.z = b.take<float>(pb.dk);
  s.sv = b.take<float>(pb.dvp);
  return s;
}

inline void zero_state(const problem& pb, const state_ptrs& st) noexcept {
  std::fill(st.s, st.s + pb.dk * pb.dvp, 0.0f);
  std::fill(st.z, st.z + pb.dk, 0.0f);
  std::fill(st.sv, st.sv + pb.dvp, 0.0f);
}

inline void copy_state(const problem& pb, const state_ptrs& from, const state_ptrs& to) noexcept {
  std::copy(from.s, from.s + pb.dk * pb.dvp, to.s);
  std::copy(from.z, from.z + pb.dk, to.z);
  std::copy(from.sv, from.sv + pb.dvp, to.sv);
}

/// cur = decay * prev + cur: a segment's contribution (cur) after the state carried into it.
template <class Arch>
void combine_state(const problem& pb, float decay, const state_ptrs& prev,
                   const state_ptrs& cur) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const V dv(decay);
  auto axpy = [&](const float* x, float* y, index_t n) {
    index_t i = 0;
    for (; i + w <= n; i += w)
      simd::fmadd<Arch>(dv, V::load_unaligned(x + i), V::load_unaligned(y + i))
          .store_unaligned(y + i);
    for (; i < n; ++i) y[i] = decay * x[i] + y[i];
  };
  axpy(prev.s, cur.s, pb.dk * pb.dvp);
  axpy(prev.z, cur.z, pb.dk);
  axpy(prev.sv, cur.sv, pb.dvp);
}

/// Rows of one (batch, head): token t of q is q + t * qs, and so on; g = log gates (or null).
template <class TQ, class TK, class TV>
struct head_io {
  const TQ* q = nullptr;
  const TK* k = nullptr;
  const TV* v = nullptr;
  float* o = nullptr;
  const float* g = nullptr;
  index_t qs = 0, ks = 0, vs = 0, os = 0, gs = 0;
  float log_lambda = 0.0f;  // log λ_h (0 = no per-head decay)
};

/// Heads one work item processes together, chunk by chunk and head by head: the rows of
/// neighbouring heads share pages in a [batch, seq, heads, dim] tensor, so one page walk serves
/// several heads (one head alone touches a new page on every token).
inline constexpr index_t max_group = 4;

/// Per-thread scratch of the chunk pipeline.
template <class Arch>
struct scratch {
  float* qp = nullptr;   // [C][dk]   φ(q) rows
  float* kr = nullptr;   // [w][dk]   a few φ(k) rows before the transpose
  float* kt = nullptr;   // [dk][cp]  φ(k) transposed, columns past m zero
  float* kw = nullptr;   // [dk][cp]  φ(k)ᵀ weighted by exp(b_last - b_c) (decay only)
  float* vp = nullptr;   // [C][dvp]  v rows, padding columns zero
  float* at = nullptr;   // [C][cp]   intra-chunk weights
  float* ot = nullptr;   // [C][dvp]  output numerators
  float* den = nullptr;  // [cp]      denominators
  float* ef = nullptr;   // [cp]      exp(b_r)
  float* wf = nullptr;   // [cp]      exp(b_last - b_c)
  float* fac = nullptr;  // [cp]      one row of the gated decay mask
  float* rev = nullptr;  // [group][C + cp]  λ^(C-1-j) for j < C, 0 beyond (Toeplitz mask)
  double* b = nullptr;   // [C]       local cumsum of the log decays
  float* run = nullptr;  // [group] running state copies (segments, calls without a state)

  static scratch carve(bump& bm, const problem& pb) {
    constexpr index_t w = simd::lanes<Arch>;
    scratch s;
    const index_t c = pb.chunk, cp = pb.cp;
    s.qp = bm.take<float>(c * pb.dk);
    s.kr = bm.take<float>(std::max<index_t>(w, 8) * pb.dk);
    s.kt = bm.take<float>(pb.dk * cp);
    s.kw = bm.take<float>(pb.dk * cp);
    s.vp = bm.take<float>(c * pb.dvp);
    s.at = bm.take<float>(c * cp);
    s.ot = bm.take<float>(c * pb.dvp);
    s.den = bm.take<float>(cp);
    s.ef = bm.take<float>(cp);
    s.wf = bm.take<float>(cp);
    s.fac = bm.take<float>(cp);
    s.rev = bm.take<float>(max_group * (c + cp));
    s.b = bm.take<double>(c);
    s.run = bm.take<float>(max_group * state_floats(pb));
    return s;
  }
  static index_t floats(const problem& pb) {
    bump bm(nullptr);
    carve(bm, pb);
    return bm.used();
  }
};

/// Calls body(integral_constant<int, n>) for a run-time n in [1, Max].
template <int Max, class Body>
ATTEND_INLINE void with_int(int n, const Body& body) noexcept {
  if constexpr (Max >= 1) {
    if (n == Max) return body(std::integral_constant<int, Max>{});
    return with_int<Max - 1>(n, body);
  }
}

/// C[rows][nvec lanes] (+)= A[rows][kdim] B[kdim][nvec lanes], all float, row-major with
/// leading dimensions lda, ldb, ldc; register-blocked by simd::gemm_micro. Whole blocks are the
/// target's MR x NR; the last rows % MR rows take more column registers per block so that a
/// short remainder still keeps enough independent FMA chains in flight.
template <class Arch>
void gemm_rm(index_t rows, index_t nvec, index_t kdim, const float* ATTEND_RESTRICT a, index_t lda,
             const float* ATTEND_RESTRICT b, index_t ldb, float* ATTEND_RESTRICT c, index_t ldc,
             bool accumulate) noexcept {
  using cfg = simd::tile_config<Arch>;
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  constexpr int mr = cfg::mr, nr = cfg::nr;
  if (kdim == 0 && accumulate) return;
  auto block = [&](auto kmr, auto knr, index_t r0, index_t c0) {
    constexpr int MR = decltype(kmr)::value, NR = decltype(knr)::value;
    const float* ap = a + r0 * lda;
    const float* bp = b + c0 * w;
    simd::gemm_micro<Arch, MR, NR>(
        kdim, [&](int m, index_t k) { return ap[m * lda + k]; },
        [&](index_t k, int n) { return V::load_unaligned(bp + k * ldb + n * w); },
        c + r0 * ldc + c0 * w, ldc, accumulate);
  };
  const index_t whole = rows - rows % mr;
  for (index_t c0 = 0; c0 < nvec; c0 += nr)
    with_int<nr>(static_cast<int>(std::min<index_t>(nr, nvec - c0)), [&](auto knr) {
      for (index_t r0 = 0; r0 < whole; r0 += mr)
        block(std::integral_constant<int, mr>{}, knr, r0, c0);
    });
  const int rest = static_cast<int>(rows - whole);
  if (rest == 0) return;
  with_int<mr - 1>(rest, [&](auto kmr) {
    constexpr int wide = std::min(mr * nr / decltype(kmr)::value, 6);
    for (index_t c0 = 0; c0 < nvec; c0 += wide)
      with_int<wide>(static_cast<int>(std::min<index_t>(wide, nvec - c0)),
                     [&](auto knr) { block(kmr, knr, whole, c0); });
  });
}

/// x[i] = exp(x[i]) for i < n (n a multiple of the SIMD width).
template <class Arch>
ATTEND_INLINE void exp_inplace(float* x, index_t n) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  for (index_t i = 0; i < n; i += w)
    simd::exp<Arch>(V::load_unaligned(x + i)).store_unaligned(x + i);
}

template <class Arch>
ATTEND_INLINE float dot(const float* a, const float* b, index_t n) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  V acc(0.0f);
  index_t i = 0;
  for (; i + w <= n; i += w)
    acc = simd::fmadd<Arch>(V::load_unaligned(a + i), V::load_unaligned(b + i), acc);
  float s = simd::reduce_sum<Arch>(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

/// Writes one output row from its numerator u [dvp], denominator d, visible-key count n and
/// (mala) Σv [dvp]: the formulas of linear_norm.
template <class Arch>
ATTEND_INLINE void finish_row(const problem& pb, const float* ATTEND_RESTRICT u, float d, double n,
                              const float* ATTEND_RESTRICT sv, float* ATTEND_RESTRICT o) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t dv = pb.dv;
  float a = pb.scale, c = 0.0f;
  if (n <= 0 && pb.norm != linear_norm::none) {  // no visible key: 0, not 0 / (0 + eps = 0)
    std::fill(o, o + dv, 0.0f);
    return;
  }
  if (pb.norm == linear_norm::denominator) {
    const float den = pb.scale * d + pb.eps;
    a = den != 0.0f ? pb.scale / den : 0.0f;  // eps = 0 and no key mass: o = 0, as with eps > 0
  } else if (pb.norm == linear_norm::mala) {
    const float inv_n = static_cast<float>(1.0 / n);
    const float z = pb.scale * d * inv_n;
    a = (1.0f + 1.0f / (z + pb.eps)) * pb.scale * inv_n;
    c = z * inv_n;
  }
  index_t e = 0;
  if (pb.norm == linear_norm::mala) {
    for (; e + w <= dv; e += w)
      simd::fnmadd<Arch>(V(c), V::load_unaligned(sv + e), V(a) * V::load_unaligned(u + e))
          .store_unaligned(o + e);
    for (; e < dv; ++e) o[e] = a * u[e] - c * sv[e];
  } else {
    for (; e + w <= dv; e += w) (V(a) * V::load_unaligned(u + e)).store_unaligned(o + e);
    for (; e < dv; ++e) o[e] = a * u[e];
  }
}

/// Fills the Toeplitz decay table of a head: rev[j] = λ^(C-1-j) for j < C, 0 for j >= C, so
/// that rev + (C-1-r) is row r of the masked decay matrix (λ^(r-c) for c <= r, 0 above).
inline void toeplitz_table(const problem& pb, float log_lambda, float* rev) noexcept {
  const index_t c = pb.chunk;
  for (index_t j = 0; j < c; ++j)
    rev[j] = log_lambda == 0.0f ? 1.0f
                                : static_cast<float>(std::exp(static_cast<double>(c - 1 - j) *
                                                              static_cast<double>(log_lambda)));
  std::fill(rev + c, rev + c + pb.cp, 0.0f);
}

/// Rows read ahead while packing: the rows of one head in a [batch, seq, heads, dim] tensor are
/// heads * dim elements apart, a power-of-two stride that the hardware prefetchers do not follow
/// and that maps a chunk's rows onto a few cache sets, so rows are requested a short distance
/// ahead of their use (far enough to cover the miss, near enough not to be evicted first).
inline constexpr index_t prefetch_rows_ahead = 8;

template <int Write = 0, class T>
ATTEND_INLINE void prefetch_row(const T* p, index_t n) noexcept {
  const char* c = reinterpret_cast<const char*>(p);
  const index_t bytes = n * static_cast<index_t>(sizeof(T));
  for (index_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, Write, 2);
}

/// Requests the first rows of the next chunk of one head (issued at the end of a chunk).
template <class TQ, class TK, class TV>
ATTEND_INLINE void prefetch_chunk_start(const problem& pb, const head_io<TQ, TK, TV>& io,
                                        index_t t0, index_t t_end, bool outputs) noexcept {
  for (index_t t = t0; t < std::min(t_end, t0 + prefetch_rows_ahead); ++t) {
    prefetch_row(io.k + t * io.ks, pb.dk);
    prefetch_row(io.v + t * io.vs, pb.dv);
    if (outputs) prefetch_row(io.q + t * io.qs, pb.dk);
  }
}

/// kt[d * cp + c] = φ(k_{t0+c})[d] for c < m (columns m..cp zero), through w x w register
/// transposes of a few mapped rows at a time.
template <class Arch, class FM, class TK>
ATTEND_INLINE void pack_kt(const problem& pb, const FM& phi, const TK* k, index_t ks, index_t t0,
                           index_t m, const scratch<Arch>& ws) noexcept {
  const index_t dk = pb.dk, cp = pb.cp;
  constexpr index_t tb = 8;  // rows per transpose block
  for (index_t c0 = 0; c0 < m; c0 += tb) {
    const index_t rows = std::min(tb, m - c0);
    for (index_t c = 0; c < rows; ++c) {
      if (c0 + c + prefetch_rows_ahead < m)
        prefetch_row(k + (t0 + c0 + c + prefetch_rows_ahead) * ks, dk);
      map_row<Arch>(phi, k + (t0 + c0 + c) * ks, ws.kr + c * dk, dk);
    }
    index_t d0 = 0;
#if defined(__AVX__)
    if (rows == tb)
      for (; d0 + 8 <= dk; d0 += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(ws.kr + i * dk + d0);
        simd::transpose8x8(r);
        for (int i = 0; i < 8; ++i) _mm256_storeu_ps(ws.kt + (d0 + i) * cp + c0, r[i]);
      }
#endif
    for (index_t d = d0; d < dk; ++d)
      for (index_t c = 0; c < rows; ++c) ws.kt[d * cp + c0 + c] = ws.kr[c * dk + d];
  }
  if (m < cp)
    for (index_t d = 0; d < dk; ++d) std::fill(ws.kt + d * cp + m, ws.kt + (d + 1) * cp, 0.0f);
}

/// vp[c * dvp + e] = v_{t0+c}[e] for c < m (padding columns zero).
template <class Arch, class TV>
ATTEND_INLINE void pack_v(const problem& pb, const TV* v, index_t vs, index_t t0, index_t m,
                          const scratch<Arch>& ws) noexcept {
  constexpr index_t w = simd::lanes<Arch>;
  const index_t dv = pb.dv, dvp = pb.dvp;
  for (index_t c = 0; c < m; ++c) {
    if (c + prefetch_rows_ahead < m) prefetch_row(v + (t0 + c + prefetch_rows_ahead) * vs, dv);
    const TV* src = v + (t0 + c) * vs;
    float* dst = ws.vp + c * dvp;
    index_t e = 0;
    for (; e + w <= dv; e += w) simd::load<Arch>(src + e).store_unaligned(dst + e);
    for (; e < dv; ++e) dst[e] = to_float(src[e]);
    for (; e < dvp; ++e) dst[e] = 0.0f;
  }
}

/// Local cumsum of the log decays of tokens [t0, t0 + m) into ws.b, exp(b_r) into ws.ef and
/// exp(b_last - b_c) into ws.wf. Returns b_last (the chunk's total log decay).
template <class Arch, class TQ, class TK, class TV>
ATTEND_INLINE double chunk_decay(const problem& pb, const head_io<TQ, TK, TV>& io, index_t t0,
                                 index_t m, const scratch<Arch>& ws) noexcept {
  double acc = 0.0;
  for (index_t r = 0; r < m; ++r) {
    acc += static_cast<double>(io.log_lambda) +
           (io.g ? static_cast<double>(io.g[(t0 + r) * io.gs]) : 0.0);
    ws.b[r] = acc;
  }
  for (index_t r = 0; r < pb.cp; ++r) {
    ws.ef[r] = r < m ? static_cast<float>(ws.b[r]) : 0.0f;
    ws.wf[r] = r < m ? static_cast<float>(acc - ws.b[r]) : 0.0f;
  }
  exp_inplace<Arch>(ws.ef, pb.cp);
  exp_inplace<Arch>(ws.wf, pb.cp);
  return acc;
}

/// kw = kt with column c scaled by exp(b_last - b_c) (the keys' decay to the chunk's end).
template <class Arch>
ATTEND_INLINE void weight_keys(const problem& pb, index_t m, const scratch<Arch>& ws) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t mv = (m + w - 1) / w * w;
  for (index_t d = 0; d < pb.dk; ++d)
    for (index_t c = 0; c < mv; c += w)
      (V::load_unaligned(ws.kt + d * pb.cp + c) * V::load_unaligned(ws.wf + c))
          .store_unaligned(ws.kw + d * pb.cp + c);
}

/// z = total z + Σ_c kw[:, c] (columns past m are zero).
template <class Arch>
ATTEND_INLINE void update_z(const problem& pb, index_t m, float total, const float* kw,
                            float* z) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t mv = (m + w - 1) / w * w;
  for (index_t d = 0; d < pb.dk; ++d) {
    V acc(0.0f);
    for (index_t c = 0; c < mv; c += w) acc += V::load_unaligned(kw + d * pb.cp + c);
    z[d] = total * z[d] + simd::reduce_sum<Arch>(acc);
  }
}

/// Adds Σ_c v_c (c < m) to Σv.
template <class Arch>
ATTEND_INLINE void add_values(const problem& pb, index_t m, float* sv, const float* vp) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  for (index_t e = 0; e < pb.dvp; e += w) {
    V acc = V::load_unaligned(sv + e);
    for (index_t c = 0; c < m; ++c) acc += V::load_unaligned(vp + c * pb.dvp + e);
    acc.store_unaligned(sv + e);
  }
}

/// Where a chunk's operands live: packed in scratch, or read in place from the caller's rows
/// when those are contiguous (a [batch, heads, seq, dim] layout) and need no conversion (float
/// q with the identity map, float v and o rows whose length is a SIMD multiple).
struct chunk_operands {
  const float* q = nullptr;  // φ(q) rows, stride lq
  const float* v = nullptr;  // v rows, stride lv
  float* o = nullptr;        // output numerators, stride lo
  index_t lq = 0, lv = 0, lo = 0;
};

/// The state pass, one block of NR value registers at a time so the block of S stays in L1:
/// with outputs (x.o set), O[:, blk] = diag(ef) φ(Q) S[:, blk] first (the inter-chunk product,
/// from the state before the chunk; ef = null: no decay); then S[:, blk] = total S[:, blk] +
/// kwᵀ V[:, blk].
template <class Arch>
ATTEND_INLINE void state_pass(const problem& pb, index_t m, const chunk_operands& x,
                              const float* ef, const float* kw, float total,
                              const state_ptrs& st) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  constexpr index_t nr = simd::tile_config<Arch>::nr;
  const index_t dk = pb.dk, dvp = pb.dvp, nvec = dvp / w;
  for (index_t c0 = 0; c0 < nvec; c0 += nr) {
    const index_t nb = std::min(nr, nvec - c0);
    float* sb = st.s + c0 * w;
    if (x.o != nullptr) {
      float* ob = x.o + c0 * w;
      gemm_rm<Arch>(m, nb, dk, x.q, x.lq, sb, dvp, ob, x.lo, false);
      if (ef != nullptr)
        for (index_t r = 0; r < m; ++r)
          for (index_t j = 0; j < nb; ++j)
            (V(ef[r]) * V::load_unaligned(ob + r * x.lo + j * w))
                .store_unaligned(ob + r * x.lo + j * w);
    }
    if (total != 1.0f) {
      const V tv(total);
      for (index_t d = 0; d < dk; ++d)
        for (index_t j = 0; j < nb; ++j)
          (tv * V::load_unaligned(sb + d * dvp + j * w)).store_unaligned(sb + d * dvp + j * w);
    }
    gemm_rm<Arch>(dk, nb, m, kw, pb.cp, x.v + c0 * w, x.lv, sb, dvp, true);
  }
}

/// One head of a work item: its rows, its state and (mala) the tokens the state has absorbed
/// before the range; `total` receives the range's log decay.
template <class TQ, class TK, class TV>
struct head_run {
  head_io<TQ, TK, TV> io;
  state_ptrs st;
  index_t n0 = 0;
  double total = 0.0;
};

/// The value rows of a chunk: in place when contiguous float rows, else packed into ws.vp.
template <class Arch, class TQ, class TK, class TV>
ATTEND_INLINE void value_operand(const problem& pb, const head_io<TQ, TK, TV>& io, index_t t0,
                                 index_t m, const scratch<Arch>& ws, chunk_operands& x) noexcept {
  if constexpr (std::is_same_v<TV, float>) {
    if (pb.dv == pb.dvp && io.vs == pb.dv) {
      x.v = io.v + t0 * io.vs;
      x.lv = io.vs;
      return;
    }
  }
  pack_v<Arch>(pb, io.v, io.vs, t0, m, ws);
  x.v = ws.vp;
  x.lv = pb.dvp;
}

/// One causal chunk of m tokens at t0 for one head (the algorithm of the file comment): the
/// state pass (inter-chunk outputs from the state before the chunk, then the state update),
/// then the intra-chunk outputs and the epilogue. n_before = tokens the state has absorbed
/// before t0; rev = the head's Toeplitz table (ungated). Returns the chunk's log decay.
template <class Arch, class FM, class TQ, class TK, class TV>
double chunk_step(const problem& pb, const FM& phi, const head_io<TQ, TK, TV>& io, index_t t0,
                  index_t m, const state_ptrs& st, index_t n_before, bool outputs, const float* rev,
                  const scratch<Arch>& ws) noexcept {
  using V = simd::vfloat<Arch>;
  using cfg = simd::tile_config<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const index_t C = pb.chunk, cp = pb.cp, dk = pb.dk, dvp = pb.dvp;
  const bool gated = io.g != nullptr;
  const bool decays = gated || io.log_lambda != 0.0f;
  const double total = decays ? chunk_decay<Arch>(pb, io, t0, m, ws) : 0.0;
  const float chunk_decay_f = decays ? ws.ef[m - 1] : 1.0f;

  chunk_operands x;
  pack_kt<Arch>(pb, phi, io.k, io.ks, t0, m, ws);
  value_operand<Arch>(pb, io, t0, m, ws, x);
  if (decays) weight_keys<Arch>(pb, m, ws);
  const float* kw = decays ? ws.kw : ws.kt;
  if (!outputs) {
    if (pb.needs_sv())
      for (index_t c = 0; c < m; ++c)
        for (index_t e = 0; e < dvp; e += w)
          (V::load_unaligned(st.sv + e) + V::load_unaligned(x.v + c * x.lv + e))
              .store_unaligned(st.sv + e);
    if (pb.needs_z()) update_z<Arch>(pb, m, chunk_decay_f, kw, st.z);
    state_pass<Arch>(pb, m, x, nullptr, kw, chunk_decay_f, st);
    return total;
  }
  bool q_in_place = false;
  if constexpr (std::is_same_v<TQ, float> && std::is_same_v<FM, identity>) q_in_place = io.qs == dk;
  if (q_in_place) {
    x.q = reinterpret_cast<const float*>(io.q) + t0 * io.qs;
    x.lq = io.qs;
  } else {
    for (index_t r = 0; r < m; ++r) {
      if (r + prefetch_rows_ahead < m)
        prefetch_row(io.q + (t0 + r + prefetch_rows_ahead) * io.qs, dk);
      map_row<Arch>(phi, io.q + (t0 + r) * io.qs, ws.qp + r * dk, dk);
    }
    x.q = ws.qp;
    x.lq = dk;
  }
  const bool o_in_place = pb.dv == dvp && io.os == pb.dv;
  x.o = o_in_place ? io.o + t0 * io.os : ws.ot;
  x.lo = o_in_place ? io.os : dvp;
  const float* ef = decays ? ws.ef : nullptr;
  if (pb.needs_z()) {
    for (index_t r = 0; r < m; ++r)
      ws.den[r] = (decays ? ws.ef[r] : 1.0f) * dot<Arch>(x.q + r * x.lq, st.z, dk);
    update_z<Arch>(pb, m, chunk_decay_f, kw, st.z);
  }
  state_pass<Arch>(pb, m, x, ef, kw, chunk_decay_f, st);
  // intra, one block of rows at a time: A = φ(Q) φ(K)ᵀ on the lower-triangular column blocks,
  // masked and decayed (before any exp, the upper triangle is -inf or a zero table entry),
  // then O += A V over the keys c < r0 + rows.
  for (index_t r0 = 0; r0 < m; r0 += cfg::mr) {
    const index_t rows = std::min<index_t>(cfg::mr, m - r0);
    const index_t ncols = std::min(m, r0 + rows);
    const index_t nv = (ncols + w - 1) / w;
    gemm_rm<Arch>(rows, nv, dk, x.q + r0 * x.lq, x.lq, ws.kt, cp, ws.at + r0 * cp, cp, false);
    for (index_t r = r0; r < r0 + rows; ++r) {
      float* arow = ws.at + r * cp;
      const float* fac;
      if (gated) {
        for (index_t c = 0; c <= r; ++c) ws.fac[c] = static_cast<float>(ws.b[r] - ws.b[c]);
        for (index_t c = r + 1; c < nv * w; ++c)
          ws.fac[c] = -std::numeric_limits<float>::infinity();
        exp_inplace<Arch>(ws.fac, nv * w);
        fac = ws.fac;
      } else {
        fac = rev + (C - 1 - r);
      }
      V sum(0.0f);
      for (index_t c = 0; c < nv * w; c += w) {
        const V a = V::load_unaligned(arow + c) * V::load_unaligned(fac + c);
        a.store_unaligned(arow + c);
        sum += a;
      }
      if (pb.needs_z()) ws.den[r] += simd::reduce_sum<Arch>(sum);
    }
    gemm_rm<Arch>(rows, dvp / w, ncols, ws.at + r0 * cp, cp, x.v, x.lv, x.o + r0 * x.lo, x.lo,
                  true);
  }
  // epilogue (mala: Σv runs through the chunk, inclusive of the current token)
  for (index_t r = 0; r < m; ++r) {
    if (!o_in_place && r + prefetch_rows_ahead < m)
      prefetch_row<1>(io.o + (t0 + r + prefetch_rows_ahead) * io.os, pb.dv);
    if (pb.needs_sv())
      for (index_t e = 0; e < dvp; e += w)
        (V::load_unaligned(st.sv + e) + V::load_unaligned(x.v + r * x.lv + e))
            .store_unaligned(st.sv + e);
    finish_row<Arch>(pb, x.o + r * x.lo, pb.needs_z() ? ws.den[r] : 0.0f,
                     static_cast<double>(n_before + r + 1), st.sv, io.o + (t0 + r) * io.os);
  }
  return total;
}

/// Runs the causal chunk pipeline over tokens [t_begin, t_end) for `count` <= max_group heads,
/// chunk by chunk, each head from its state (updated in place). With outputs = false only the
/// states advance (a segment's contribution). runs[g].total receives each head's log decay.
template <class Arch, class FM, class TQ, class TK, class TV>
void run_causal(const problem& pb, const FM& phi, head_run<TQ, TK, TV>* runs, index_t count,
                index_t t_begin, index_t t_end, bool outputs, const scratch<Arch>& ws) noexcept {
  const index_t C = pb.chunk, table = pb.chunk + pb.cp;
  for (index_t g = 0; g < count; ++g) {
    if (runs[g].io.g == nullptr) toeplitz_table(pb, runs[g].io.log_lambda, ws.rev + g * table);
    runs[g].total = 0.0;
  }
  prefetch_chunk_start(pb, runs[0].io, t_begin, t_end, outputs);
  for (index_t t0 = t_begin; t0 < t_end; t0 += C) {
    const index_t m = std::min(C, t_end - t0);
    for (index_t g = 0; g < count; ++g) {
      runs[g].total +=
          chunk_step<Arch>(pb, phi, runs[g].io, t0, m, runs[g].st, runs[g].n0 + (t0 - t_begin),
                           outputs, ws.rev + g * table, ws);
      if (g + 1 < count)
        prefetch_chunk_start(pb, runs[g + 1].io, t0, t_end, outputs);
      else
        prefetch_chunk_start(pb, runs[0].io, t0 + C, t_end, outputs);
    }
  }
}

/// Non-causal pass 1: adds the keys [t_begin, t_end) of `count` heads into their states
/// (S += φ(K)ᵀ V, z, Σv).
template <class Arch, class FM, class TQ, class TK, class TV>
void absorb_keys(const problem& pb, const FM& phi, const head_run<TQ, TK, TV>* runs, index_t count,
                 index_t t_begin, index_t t_end, const scratch<Arch>& ws) noexcept {
  for (index_t t0 = t_begin; t0 < t_end; t0 += pb.chunk) {
    const index_t m = std::min(pb.chunk, t_end - t0);
    for (index_t g = 0; g < count; ++g) {
      chunk_operands x;
      pack_kt<Arch>(pb, phi, runs[g].io.k, runs[g].io.ks, t0, m, ws);
      value_operand<Arch>(pb, runs[g].io, t0, m, ws, x);
      if (pb.needs_sv())
        for (index_t c = 0; c < m; ++c)
          for (index_t e = 0; e < pb.dvp; e += simd::lanes<Arch>)
            (simd::vfloat<Arch>::load_unaligned(runs[g].st.sv + e) +
             simd::vfloat<Arch>::load_unaligned(x.v + c * x.lv + e))
                .store_unaligned(runs[g].st.sv + e);
      if (pb.needs_z()) update_z<Arch>(pb, m, 1.0f, ws.kt, runs[g].st.z);
      state_pass<Arch>(pb, m, x, nullptr, ws.kt, 1.0f, runs[g].st);
    }
  }
}

/// Non-causal pass 2: outputs of queries [t_begin, t_end) of `count` heads against their full
/// states of runs[g].n0 keys.
template <class Arch, class FM, class TQ, class TK, class TV>
void read_queries(const problem& pb, const FM& phi, const head_run<TQ, TK, TV>* runs, index_t count,
                  index_t t_begin, index_t t_end, const scratch<Arch>& ws) noexcept {
  constexpr index_t w = simd::lanes<Arch>;
  const index_t dk = pb.dk, dvp = pb.dvp;
  for (index_t t0 = t_begin; t0 < t_end; t0 += pb.chunk) {
    const index_t m = std::min(pb.chunk, t_end - t0);
    for (index_t g = 0; g < count; ++g) {
      const auto& io = runs[g].io;
      const state_ptrs& st = runs[g].st;
      for (index_t r = 0; r < m; ++r) {
        if (r + prefetch_rows_ahead < m)
          prefetch_row(io.q + (t0 + r + prefetch_rows_ahead) * io.qs, dk);
        map_row<Arch>(phi, io.q + (t0 + r) * io.qs, ws.qp + r * dk, dk);
      }
      gemm_rm<Arch>(m, dvp / w, dk, ws.qp, dk, st.s, dvp, ws.ot, dvp, false);
      for (index_t r = 0; r < m; ++r) {
        const float d = pb.needs_z() ? dot<Arch>(ws.qp + r * dk, st.z, dk) : 0.0f;
        finish_row<Arch>(pb, ws.ot + r * dvp, d, static_cast<double>(runs[g].n0), st.sv,
                         io.o + (t0 + r) * io.os);
      }
    }
  }
}

/// One recurrent decode step of one (batch, head): S = exp(a) S + φ(k) vᵀ (z, Σv likewise),
/// then o = finish(φ(q)ᵀ S, φ(q)·z) with n = tokens absorbed including this one. `tmp` holds
/// 2 dk + dvp floats.
template <class Arch, class FM, class TQ, class TK, class TV>
void recurrent_step(const problem& pb, const FM& phi, const TQ* q, const TK* k, const TV* v,
                    float* o, float log_decay, const state_ptrs& st, index_t n,
                    float* tmp) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  constexpr index_t eb = 4;  // registers of columns per pass over the state rows
  const index_t dk = pb.dk, dv = pb.dv, dvp = pb.dvp;
  float* fq = tmp;
  float* fk = tmp + dk;
  float* vr = tmp + 2 * dk;
  map_row<Arch>(phi, q, fq, dk);
  map_row<Arch>(phi, k, fk, dk);
  {
    index_t e = 0;
    for (; e + w <= dv; e += w) simd::load<Arch>(v + e).store_unaligned(vr + e);
    for (; e < dv; ++e) vr[e] = to_float(v[e]);
    for (; e < dvp; ++e) vr[e] = 0.0f;
  }
  const float a = log_decay == 0.0f ? 1.0f : std::exp(log_decay);
  const V av(a);
  float* u = vr + dvp;  // numerator row after the values (tmp has room: see state scratch)
  for (index_t e0 = 0; e0 < dvp; e0 += eb * w) {
    const index_t nb = std::min<index_t>(eb, (dvp - e0) / w);
    V vv[eb], acc[eb];
    for (index_t j = 0; j < nb; ++j) {
      vv[j] = V::load_unaligned(vr + e0 + j * w);
      acc[j] = V(0.0f);
    }
    for (index_t d = 0; d < dk; ++d) {
      float* srow = st.s + d * dvp + e0;
      const V kd(fk[d]), qd(fq[d]);
      for (index_t j = 0; j < nb; ++j) {
        const V s = simd::fmadd<Arch>(kd, vv[j], av * V::load_unaligned(srow + j * w));
        s.store_unaligned(srow + j * w);
        acc[j] = simd::fmadd<Arch>(qd, s, acc[j]);
      }
    }
    for (index_t j = 0; j < nb; ++j) acc[j].store_unaligned(u + e0 + j * w);
  }
  float d = 0.0f;
  if (pb.needs_z()) {
    for (index_t i = 0; i < dk; ++i) st.z[i] = a * st.z[i] + fk[i];
    d = dot<Arch>(fq, st.z, dk);
  }
  if (pb.needs_sv())
    for (index_t e = 0; e < dvp; ++e) st.sv[e] += vr[e];
  finish_row<Arch>(pb, u, d, static_cast<double>(n), st.sv, o);
}

/// Floats of the recurrent step's per-thread scratch.
inline index_t step_floats(const problem& pb) noexcept { return 2 * pb.dk + 2 * pb.dvp + 16; }

}  // namespace attend::linear::detail

#endif  // ATTEND_LINEAR_KERNEL_HPP_
