// The oracle: readable double-precision dense attention with every option of the dense kernel,
// written straight from the definition (full score row, max, exp, sum) with O(seq_k) memory per
// row and no tiling, SIMD or threads. Every operator of the library is tested against it or
// against an exact identity built on it. Slow by design.
#ifndef ATTEND_REFERENCE_NAIVE_HPP_
#define ATTEND_REFERENCE_NAIVE_HPP_

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../core/dtype.hpp"
#include "../core/params.hpp"
#include "../core/validate.hpp"

namespace attend::reference {

/// True when key j (a cache index, which is also its position) may be attended by query i of
/// batch b, head h at position qpos, under the masks of attention_params.
inline bool visible(const attention_params& p, index_t b, index_t h, index_t i, index_t qpos,
                    index_t j, index_t kv_len) {
  if (j >= kv_len) return false;
  if (p.causal && j > qpos) return false;
  if (p.window_left >= 0 && j < qpos - p.window_left) return false;
  if (p.window_right >= 0 && j > qpos + p.window_right) return false;
  if (p.mask.has_value()) {
    const index_t mb = p.mask.extent(0) == 1 ? 0 : b, mh = p.mask.extent(1) == 1 ? 0 : h;
    if (!p.mask(mb, mh, i, j)) return false;
  }
  return true;
}

/// The score of a visible (query, key) pair: softcap, then ALiBi, then bias.
inline double modified_score(const attention_params& p, double dot, double scale, index_t b,
                             index_t h, index_t i, index_t qpos, index_t j) {
  double s = scale * dot;
  if (p.softcap > 0.0f) s = p.softcap * std::tanh(s / p.softcap);
  if (p.alibi_slopes.has_value())
    s -= static_cast<double>(p.alibi_slopes(h)) * std::abs(static_cast<double>(qpos - j));
  if (p.bias.has_value()) {
    const index_t bb = p.bias.extent(0) == 1 ? 0 : b, bh = p.bias.extent(1) == 1 ? 0 : h;
    s += p.bias(bb, bh, i, j);
  }
  return s;
}

/// Dense attention in double precision.
/// \param q [batch, seq_q, heads_q, dk], k [batch, seq_k, heads_kv, dk], v [batch, seq_k,
///        heads_kv, dv]; element types float, bf16 or fp16 (converted exactly to double)
/// \param o [batch, seq_q, heads_q, dv] output
/// \param lse optional [batch, heads_q, seq_q] output, natural log, sink included
/// A row with no visible key and no sink (or only -inf scores) gets o = 0 and lse = -inf; a
/// row with a NaN or +inf score (or a NaN sink) gets NaN o and lse. Rejects the arguments
/// attend::attention rejects (except those about its float outputs) with
/// attend::invalid_argument, before reading anything. p.lse and p.scratch are ignored.
template <class TQ, class TK, class TV>
void attention(const tensor_view<const TQ, 4>& q, const tensor_view<const TK, 4>& k,
               const tensor_view<const TV, 4>& v, const attention_params& p,
               const tensor_view<double, 4>& o, const tensor_view<double, 3>& lse = {}) {
  constexpr const char* op = "attend::reference::attention";
  detail::check_tensor(op, "q", q);
  detail::check_tensor(op, "k", k);
  detail::check_tensor(op, "v", v);
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t dk = q.extent(3), seq_k = k.extent(1), heads_kv = k.extent(2), dv = v.extent(3);
  ATTEND_CHECK(k.extent(0) == batch && v.extent(0) == batch, op, ": batch of q (", batch,
               "), k (", k.extent(0), ") and v (", v.extent(0), ") differ");
  ATTEND_CHECK(v.extent(1) == seq_k && v.extent(2) == heads_kv, op, ": v ",
               detail::shape_string(v), " must match k ", detail::shape_string(k),
               " in seq_k and heads_kv");
  ATTEND_CHECK(heads_q % heads_kv == 0, op, ": q heads (", heads_q,
               ") must be a multiple of kv heads (", heads_kv, ")");
  ATTEND_CHECK(k.extent(3) == dk, op, ": head dim of k (", k.extent(3),
               ") must equal that of q (", dk, ")");
  detail::check_extents(op, "o", o, {batch, seq_q, heads_q, dv});
  if (p.scale) ATTEND_CHECK(std::isfinite(*p.scale), op, ": scale must be finite (", *p.scale, ")");
  ATTEND_CHECK(p.window_left >= -1 && p.window_right >= -1, op, ": window (", p.window_left, ", ",
               p.window_right, ") must be >= 0, or -1 for unbounded");
  ATTEND_CHECK(std::isfinite(p.softcap) && p.softcap >= 0.0f &&
                   (p.softcap == 0.0f || std::isfinite(1.0f / p.softcap)),
               op, ": softcap (", p.softcap, ") must be 0 (off) or finite, > 0 and >= 1 / FLT_MAX");
  if (p.alibi_slopes.has_value()) {
    detail::check_tensor(op, "alibi_slopes", p.alibi_slopes);
    detail::check_extents(op, "alibi_slopes", p.alibi_slopes, {heads_q});
  }
  if (p.sinks.has_value()) {
    detail::check_tensor(op, "sinks", p.sinks);
    detail::check_extents(op, "sinks", p.sinks, {heads_q});
  }
  if (p.bias.has_value()) detail::check_broadcast4(op, "bias", p.bias, batch, heads_q, seq_q, seq_k);
  if (p.mask.has_value()) detail::check_broadcast4(op, "mask", p.mask, batch, heads_q, seq_q, seq_k);
  if (p.kv_lens.has_value()) {
    detail::check_tensor(op, "kv_lens", p.kv_lens);
    detail::check_extents(op, "kv_lens", p.kv_lens, {batch});
    for (index_t b = 0; b < batch; ++b)
      ATTEND_CHECK(p.kv_lens(b) >= 0 && p.kv_lens(b) <= seq_k, op, ": kv_lens[", b, "] = ",
                   p.kv_lens(b), " is outside [0, seq_k = ", seq_k, "]");
  }
  const index_t group = heads_q / heads_kv;
  const double scale = p.scale ? static_cast<double>(*p.scale) : 1.0 / std::sqrt(double(dk));
  const double ninf = -std::numeric_limits<double>::infinity();

  std::vector<double> s(static_cast<std::size_t>(seq_k));
  std::vector<char> seen(static_cast<std::size_t>(seq_k));
  for (index_t b = 0; b < batch; ++b) {
    const index_t kv_len = p.kv_lens.has_value() ? p.kv_lens(b) : seq_k;
    for (index_t h = 0; h < heads_q; ++h) {
      const index_t hk = h / group;
      for (index_t i = 0; i < seq_q; ++i) {
        const index_t qpos = kv_len - seq_q + i;
        double mx = ninf;
        bool nan_score = false;
        for (index_t j = 0; j < seq_k; ++j) {
          seen[j] = visible(p, b, h, i, qpos, j, kv_len);
          if (!seen[j]) continue;
          double dot = 0.0;
          for (index_t d = 0; d < dk; ++d)
            dot += double(to_float(q(b, i, h, d))) * double(to_float(k(b, j, hk, d)));
          s[j] = modified_score(p, dot, scale, b, h, i, qpos, j);
          nan_score = nan_score || std::isnan(s[j]);
          mx = std::max(mx, s[j]);
        }
        const double sink = p.sinks.has_value() ? double(p.sinks(h)) : ninf;
        nan_score = nan_score || std::isnan(sink);
        mx = std::max(mx, sink);
        // Normalised by the sum, not by exp(s - lse): with |lse| ~ 1e30 the log of the sum
        // vanishes in lse and the weights would not add up to 1.
        double row_lse = ninf, inv_sum = 0.0;
        if (nan_score || mx == -ninf) {  // softmax of NaN or +inf is undefined
          row_lse = inv_sum = std::numeric_limits<double>::quiet_NaN();
        } else if (mx != ninf) {  // else: no key, or only -inf scores: the empty row
          double sum = sink == ninf ? 0.0 : std::exp(sink - mx);
          for (index_t j = 0; j < seq_k; ++j)
            if (seen[j]) sum += std::exp(s[j] - mx);
          row_lse = mx + std::log(sum);
          inv_sum = 1.0 / sum;
        }
        for (index_t c = 0; c < dv; ++c) {
          double acc = 0.0;
          if (mx != ninf)
            for (index_t j = 0; j < seq_k; ++j)
              if (seen[j]) acc += std::exp(s[j] - mx) * double(to_float(v(b, j, hk, c)));
          o(b, i, h, c) = acc * inv_sum;
        }
        if (lse.has_value()) lse(b, h, i) = row_lse;
      }
    }
  }
}

}  // namespace attend::reference

#endif  // ATTEND_REFERENCE_NAIVE_HPP_
