// Low-bit block estimate in the style of SALE (Ji et al., 2025; card 8), unfused: per query
// block of 64 rows and key block of 32 keys, decide from quantised Q K^T whether the block is
// worth computing exactly.
//  1. Quantise: K is smoothed (the per-channel mean over the sequence is subtracted, which
//     shifts each row's scores by a constant q . mean and changes no softmax) and quantised per
//     token to int8 (|x| <= 127) or int4 (|x| <= 7) with a symmetric scale; Q likewise.
//  2. Exact sink + local pass: the first sink block and the last local_window keys of every
//     query give its running LSE (m + log l), as SALE's kernel computes them first.
//  3. Relative attention score: element (i, j) of the remaining blocks is important when its
//     estimate s~_ij = scale (sq_i sk_j <qint_i, kint_j> + q_i . mean_k) reaches
//     lse_i + log(tau), i.e. exp(s~_ij - m_i) / l_i >= tau (SALE's test, written without exp);
//     a key block with any important element is listed.
// The mask is the sink blocks, the local blocks and the important blocks (the "two-pass"
// variant: thresholds from the sink + local pass only). Defaults: int4, blocks 64 x 32, local
// window 128, one sink block, tau 0.004 for every head (the README's example; SALE calibrates
// per-head thresholds offline: pass them in tau_per_head).
// The integer dot products are computed exactly (integer-valued floats: every partial sum is
// below 2^24 for head dims up to 1024 at int8) with the fp32 micro-kernel: on AVX2 without VNNI
// an int8 dot product is no cheaper than an fp32 FMA, so the estimate costs about one fp32
// Q K^T pass; SALE's ~11 % of attention time relies on int4 tensor cores.
#ifndef ATTEND_SPARSE_SELECT_LOWBIT_HPP_
#define ATTEND_SPARSE_SELECT_LOWBIT_HPP_

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"
#include "../block_mask.hpp"
#include "../block_sparse.hpp"
#include "../patterns.hpp"
#include "common.hpp"
#include "scores.hpp"

namespace attend::sparse {

enum class lowbit_format : std::uint8_t { int8, int4 };

/// Low-bit (SALE-style) estimate parameters.
struct lowbit_params {
  lowbit_format format = lowbit_format::int4;
  index_t block_q = 64;
  index_t block_k = 32;
  index_t sink_blocks = 1;      // first key blocks, always computed
  index_t local_window = 128;   // keys before (and including) each query, always computed
  float tau = 0.004f;           // relative attention score threshold (all heads)
  std::vector<float> tau_per_head{};  // [heads_q] thresholds overriding tau when given
};

namespace detail {

inline float quant_max(lowbit_format f) noexcept { return f == lowbit_format::int8 ? 127.0f : 7.0f; }

/// Symmetric per-row quantisation of x[0, n) to integers in [-qmax, qmax] (stored as float);
/// returns the scale (1 for an all-zero row).
inline float quantise_row(const float* x, index_t n, float qmax, float* out) noexcept {
  float amax = 0.0f;
  for (index_t c = 0; c < n; ++c) amax = std::max(amax, std::abs(x[c]));
  const float s = amax > 0.0f ? amax / qmax : 1.0f;
  for (index_t c = 0; c < n; ++c)
    out[c] = std::clamp(std::nearbyint(x[c] / s), -qmax, qmax);
  return s;
}

}  // namespace detail

/// Low-bit block selection. q [batch, seq_q, heads_q, dim] float; k, v [batch, seq_k,
/// heads_kv, dim]; causal, bottom-right aligned. Returns the mask {batch, heads_q, seq_q, seq_k,
/// block_q, block_k} (entries full; use params.causal). Runs one exact sink + window attention
/// pass (allocating its outputs) and the quantised estimate of every causal block.
template <class KV, class Arch = xsimd::default_arch>
block_mask lowbit_select(const view4<const float>& q, const view4<const KV>& k,
                         const view4<const KV>& v, const lowbit_params& lp = {}) {
  constexpr const char* op = "attend::sparse::lowbit_select";
  attend::detail::check_tensor(op, "q", q);
  attend::detail::check_tensor(op, "k", k);
  attend::detail::check_tensor(op, "v", v);
  const index_t batch = q.extent(0), seq_q = q.extent(1), hq = q.extent(2), dim = q.extent(3);
  const index_t seq_k = k.extent(1), hkv = k.extent(2), dv = v.extent(3);
  ATTEND_CHECK(k.extent(0) == batch && k.extent(3) == dim && hq % hkv == 0 && seq_k >= seq_q &&
                   v.extent(0) == batch && v.extent(1) == seq_k && v.extent(2) == hkv,
               op, ": q ", attend::detail::shape_string(q), ", k ",
               attend::detail::shape_string(k), " and v ", attend::detail::shape_string(v),
               " do not match");
  ATTEND_CHECK(lp.block_q > 0 && lp.block_k > 0 && lp.sink_blocks >= 0 && lp.local_window >= 1 &&
                   lp.tau > 0.0f,
               op, ": need block_q, block_k, local_window >= 1, sink_blocks >= 0, tau > 0");
  ATTEND_CHECK(lp.tau_per_head.empty() || static_cast<index_t>(lp.tau_per_head.size()) == hq, op,
               ": tau_per_head has ", lp.tau_per_head.size(), " entries, expected ", hq);
  for (float t : lp.tau_per_head) ATTEND_CHECK(t > 0.0f, op, ": thresholds must be > 0 (", t, ")");
  const index_t group = hq / hkv, off = seq_k - seq_q;
  const mask_geometry g{batch, hq, seq_q, seq_k, lp.block_q, lp.block_k};
  const index_t nq = g.q_blocks(), nk = g.k_blocks();
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const float qmax = detail::quant_max(lp.format);
  const index_t sink_tokens = std::min(seq_k, lp.sink_blocks * lp.block_k);

  // 1. The exact sink + local pass: LSE of every row over its sink and window keys.
  std::vector<float> lse(static_cast<std::size_t>(batch * hq * seq_q));
  {
    std::vector<float> o(static_cast<std::size_t>(batch * seq_q * hq * dv));
    const mask_geometry ga{batch, 1, seq_q, seq_k, lp.block_q, lp.block_k};
    const a_shape_pattern pat(ga, sink_tokens, lp.local_window);
    attention_params p;
    p.causal = true;
    p.lse = view3<float>::contiguous(lse.data(), {batch, hq, seq_q});
    block_sparse_attention(q, k, v, bshd(o.data(), batch, seq_q, hq, dv), pat.mask(), p, pat);
  }

  // 2. Smoothed, quantised keys per (batch, KV head), transposed in chunks of `chunk` keys
  // ([chunk][dim][chunk keys], so the micro-kernel's operand panel is contiguous), with their
  // scales and the channel means.
  constexpr index_t chunk = 256;
  const index_t nchunks = (seq_k + chunk - 1) / chunk;
  const index_t per_head = nchunks * dim * chunk;
  std::vector<float> kt(static_cast<std::size_t>(batch * hkv * per_head), 0.0f);
  std::vector<float> kscale(static_cast<std::size_t>(batch * hkv * (nchunks * chunk)), 0.0f);
  std::vector<float> kmean(static_cast<std::size_t>(batch * hkv * dim));
  const int kthreads =
      static_cast<int>(std::min<index_t>(attend::detail::max_threads(), batch * hkv));
  std::vector<std::vector<double>> kacc(static_cast<std::size_t>(kthreads),
                                        std::vector<double>(static_cast<std::size_t>(dim)));
  std::vector<std::vector<float>> krow(static_cast<std::size_t>(kthreads),
                                       std::vector<float>(static_cast<std::size_t>(2 * dim)));
  attend::detail::parallel_for(batch * hkv, kthreads, [&](index_t item, int th) {
    const index_t b = item / hkv, h = item % hkv;
    float* mean = kmean.data() + item * dim;
    std::vector<double>& acc = kacc[th];
    std::fill(acc.begin(), acc.end(), 0.0);
    for (index_t j = 0; j < seq_k; ++j)
      for (index_t d = 0; d < dim; ++d) acc[d] += to_float(k(b, j, h, d));
    for (index_t d = 0; d < dim; ++d) mean[d] = static_cast<float>(acc[d] / double(seq_k));
    float* row = krow[th].data();
    float* qrow = row + dim;
    float* t = kt.data() + item * per_head;
    for (index_t j = 0; j < seq_k; ++j) {
      for (index_t d = 0; d < dim; ++d) row[d] = to_float(k(b, j, h, d)) - mean[d];
      kscale[item * nchunks * chunk + j] = detail::quantise_row(row, dim, qmax, qrow);
      float* panel = t + (j / chunk) * dim * chunk + j % chunk;
      for (index_t d = 0; d < dim; ++d) panel[d * chunk] = qrow[d];
    }
  });

  // 3. Estimates per (batch, query head, query block), one key chunk at a time.
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  const bool vector_check = lp.block_k % w == 0 && chunk % lp.block_k == 0;
  block_mask_builder bld(g);
  const index_t items = batch * hq * nq;
  const int threads = static_cast<int>(std::min<index_t>(attend::detail::max_threads(), items));
  struct buffers {
    std::vector<float> qi, est;
    std::vector<float> sq, cst, thr;
    std::vector<std::uint8_t> marked;
  };
  std::vector<buffers> tb(static_cast<std::size_t>(threads));
  for (auto& t : tb) {
    t.qi.resize(static_cast<std::size_t>(lp.block_q * dim));
    t.est.resize(static_cast<std::size_t>(lp.block_q * chunk));
    t.sq.resize(static_cast<std::size_t>(lp.block_q));
    t.cst.resize(static_cast<std::size_t>(lp.block_q));
    t.thr.resize(static_cast<std::size_t>(lp.block_q));
    t.marked.resize(static_cast<std::size_t>(nk));
  }
  attend::detail::parallel_for(items, threads, [&](index_t item, int t) {
    buffers& B = tb[t];
    const index_t qb = nq - 1 - item % nq, h = (item / nq) % hq, b = item / (nq * hq);
    const index_t hk = h / group;
    const auto [i0, i1] = g.q_range(qb);
    const index_t rows = i1 - i0, p0 = off + i0, p1 = off + i1 - 1;
    const float log_tau = std::log(lp.tau_per_head.empty() ? lp.tau : lp.tau_per_head[h]);
    const float* mean = kmean.data() + (b * hkv + hk) * dim;
    for (index_t r = 0; r < rows; ++r) {
      const float* x = &q(b, i0 + r, h, 0);
      B.sq[r] = detail::quantise_row(x, dim, qmax, B.qi.data() + r * dim);
      float c = 0.0f;
      for (index_t d = 0; d < dim; ++d) c += x[d] * mean[d];
      B.cst[r] = scale * c;
      B.thr[r] = lse[(b * hq + h) * seq_q + i0 + r] + log_tau;
    }
    std::uint8_t* marked = B.marked.data();
    std::fill(marked, marked + nk, 0);
    const index_t lim = p1 / lp.block_k;
    // Always computed: sink blocks and the blocks of the local window.
    for (index_t kb = 0; kb < std::min(lp.sink_blocks, lim + 1); ++kb) marked[kb] = 1;
    for (index_t kb = std::max<index_t>(0, p0 - lp.local_window + 1) / lp.block_k; kb <= lim; ++kb)
      marked[kb] = 1;
    const float* ktb = kt.data() + (b * hkv + hk) * per_head;
    const float* ks = kscale.data() + (b * hkv + hk) * nchunks * chunk;
    for (index_t j0 = 0; j0 <= p1; j0 += chunk) {
      const index_t n = std::min(chunk, p1 + 1 - j0);
      bool open = false;  // a chunk whose blocks are all listed already is skipped
      for (index_t kb = j0 / lp.block_k; kb <= (j0 + n - 1) / lp.block_k && !open; ++kb)
        open = !marked[kb];
      if (!open) continue;
      select::gemm_rows<Arch>(B.qi.data(), dim, rows, ktb + (j0 / chunk) * dim * chunk, chunk,
                              select::padded_cols<Arch>(n), dim, 1.0f, B.est.data(), chunk);
      for (index_t r = 0; r < rows; ++r) {
        const float* e = B.est.data() + r * chunk;
        const float f = scale * B.sq[r], c = B.cst[r], thr = B.thr[r];
        const index_t jmax = std::min(n, off + i0 + r + 1 - j0);  // causal
        index_t j = 0;
        if (vector_check) {
          const V vf(f), vc(c), vt(thr);
          for (; j + w <= jmax; j += w) {
            const index_t kb = (j0 + j) / lp.block_k;
            if (marked[kb]) continue;
            const V est = simd::fmadd<Arch>(vf * V::load_unaligned(ks + j0 + j),
                                            V::load_unaligned(e + j), vc);
            if (xsimd::any(est >= vt)) marked[kb] = 1;
          }
        }
        for (; j < jmax; ++j)
          if (!marked[(j0 + j) / lp.block_k] && f * ks[j0 + j] * e[j] + c >= thr)
            marked[(j0 + j) / lp.block_k] = 1;
      }
    }
    const index_t row = g.row(b, h, qb);
    for (index_t kb = 0; kb <= lim; ++kb)
      if (marked[kb]) bld.add(row, kb);
  });
  return bld.build();
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_LOWBIT_HPP_
