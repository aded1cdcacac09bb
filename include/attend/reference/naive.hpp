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
/// A row with no visible key and no sink gets o = 0 and lse = -inf. p.lse and p.scratch are
/// ignored.
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
  ATTEND_CHECK(heads_q % heads_kv == 0, op, ": q heads (", heads_q,
               ") must be a multiple of kv heads (", heads_kv, ")");
  detail::check_extents(op, "o", o, {batch, seq_q, heads_q, dv});
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
        for (index_t j = 0; j < seq_k; ++j) {
          seen[j] = visible(p, b, h, i, qpos, j, kv_len);
          if (!seen[j]) continue;
          double dot = 0.0;
          for (index_t d = 0; d < dk; ++d)
            dot += double(to_float(q(b, i, h, d))) * double(to_float(k(b, j, hk, d)));
          s[j] = modified_score(p, dot, scale, b, h, i, qpos, j);
          mx = std::max(mx, s[j]);
        }
        const double sink = p.sinks.has_value() ? double(p.sinks(h)) : ninf;
        mx = std::max(mx, sink);
        double sum = sink == ninf ? 0.0 : std::exp(sink - mx);
        for (index_t j = 0; j < seq_k; ++j)
          if (seen[j]) sum += std::exp(s[j] - mx);
        const double row_lse = sum > 0.0 ? mx + std::log(sum) : ninf;
        for (index_t c = 0; c < dv; ++c) {
          double acc = 0.0;
          if (sum > 0.0)
            for (index_t j = 0; j < seq_k; ++j)
              if (seen[j]) acc += std::exp(s[j] - row_lse) * double(to_float(v(b, j, hk, c)));
          o(b, i, h, c) = acc;
        }
        if (lse.has_value()) lse(b, h, i) = row_lse;
      }
    }
  }
}

}  // namespace attend::reference

#endif  // ATTEND_REFERENCE_NAIVE_HPP_
