// Found in the Middle (Hsieh et al., ACL Findings 2024; card 12 of LINEAR_SINK.md): calibrate
// the positional attention bias over the documents of a RAG prompt [query, doc_1..doc_K, query].
//
// The intervention is a class-wise mass re-allocation: the keys of document k get a factor
// f_k = alpha_k / A_k (alpha_k = softmax_k(rel_k / t), rel_k = Attn(x_k, k) - Attn(x_dum, k)),
// each row's total document mass is restored to its original value and the other keys (query,
// instructions, a learnable sink) are untouched:
//   P'_ij = C_i f_k(j) P_ij (j in a document),  P'_ij = P_ij (otherwise),
//   C_i = D_i / sum_{j in docs} f_k(j) P_ij,    D_i = sum_{j in docs} P_ij.
//
// How it maps on the engine (card 12 offers a score-mod with two accumulators sharing m, or an
// epilogue): o'_i = (1 - D_i) o_N,i + D_i o_B,i, where o_N is attention over the non-document
// keys (and the sink) and o_B attention over the document keys with log f_k added to their
// scores (the score hook). D_i needs the UNBIASED document log-sum-exp, which the document pass
// gets from the row-statistics hook: a second accumulator sum_j p_j / f_k(j) rescaled with the
// pass's own running max (so "two accumulators sharing m", exactly), while l gives the biased
// normaliser. The non-document and document passes are class masks whose key tiles are
// classified empty for the other class, so every key tile is read once (boundary tiles twice),
// and the two states combine like a split-K merge. An epilogue (card 7 style) would need the
// per-document masses of every row, O(N K d); this costs one forward pass.
#ifndef ATTEND_SINK_FITM_HPP_
#define ATTEND_SINK_FITM_HPP_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "forward.hpp"
#include "masks.hpp"

namespace attend::sink {

/// Inputs of fitm_attention.
struct fitm_params {
  /// [batch, docs, 2]: document k of sequence b covers key positions
  /// [spans(b, k, 0), spans(b, k, 1)); spans ascending and disjoint, within [0, kv_len).
  view3<const index_t> spans{};
  /// [batch or 1, heads_q or 1, docs]: log f_k added to the scores of document k's keys
  /// (only differences between documents matter; -inf = the document gets no mass).
  view3<const float> log_bias{};
};

/// Document-level attention Attn(x, k) = (1 / N_k) sum_{t in doc k} attn(t) from column sums of
/// the last `rows` query rows (column_stats on q and lse narrowed to those rows): attn(t) is
/// the attention key t receives, averaged over the rows.
/// \param col_sum [batch, heads, seq_k]; spans [batch, docs, 2]; out [batch, heads, docs]
/// (pass heads = 1 views, e.g. head-averaged sums, for the paper's head-averaged statistic).
inline void document_attention(const view3<const float>& col_sum, index_t rows,
                               const view3<const index_t>& spans, const view3<float>& out) {
  constexpr const char* op = "attend::sink::document_attention";
  attend::detail::check_tensor(op, "col_sum", col_sum);
  attend::detail::check_tensor(op, "spans", spans);
  attend::detail::check_output(op, "out", out);
  const index_t batch = col_sum.extent(0), heads = col_sum.extent(1), docs = spans.extent(1);
  ATTEND_CHECK(rows > 0, op, ": rows (", rows, ") must be > 0");
  attend::detail::check_extents(op, "spans", spans, {batch, docs, 2});
  attend::detail::check_extents(op, "out", out, {batch, heads, docs});
  for (index_t b = 0; b < batch; ++b)
    for (index_t d = 0; d < docs; ++d) {
      const index_t lo = spans(b, d, 0), hi = spans(b, d, 1);
      ATTEND_CHECK(0 <= lo && lo <= hi && hi <= col_sum.extent(2), op, ": span ", d, " of batch ",
                   b, " [", lo, ", ", hi, ") is outside [0, ", col_sum.extent(2), ")");
      for (index_t h = 0; h < heads; ++h) {
        double s = 0.0;
        for (index_t j = lo; j < hi; ++j) s += col_sum(b, h, j);
        out(b, h, d) = hi > lo ? static_cast<float>(s / double(rows) / double(hi - lo)) : 0.0f;
      }
    }
}

/// FitM's per-document log factor: rel_k = attn_k - dummy_k, alpha = softmax_k(rel / t),
/// log f_k = log alpha_k - log attn_k, per (batch, head) row.
/// \param attn Attn(x_k, k) [batch, heads, docs]; dummy Attn(x_dum, k) (the same prompt with a
///        content-free document at position k) [batch, heads, docs]; out [batch, heads, docs]
/// \param temperature t (the paper's 5e-5; the raw values are around 1e-4)
inline void fitm_log_bias(const view3<const float>& attn, const view3<const float>& dummy,
                          const view3<float>& out, double temperature = 5e-5) {
  constexpr const char* op = "attend::sink::fitm_log_bias";
  attend::detail::check_tensor(op, "attn", attn);
  attend::detail::check_extents(op, "dummy", dummy, attn.extents());
  attend::detail::check_output(op, "out", out);
  attend::detail::check_extents(op, "out", out, attn.extents());
  ATTEND_CHECK(temperature > 0.0 && std::isfinite(temperature), op, ": temperature (", temperature,
               ") must be finite and > 0");
  const index_t docs = attn.extent(2);
  std::vector<double> z(static_cast<std::size_t>(docs));
  for (index_t b = 0; b < attn.extent(0); ++b)
    for (index_t h = 0; h < attn.extent(1); ++h) {
      double mx = -INFINITY;
      for (index_t d = 0; d < docs; ++d) {
        z[d] = (double(attn(b, h, d)) - double(dummy(b, h, d))) / temperature;
        mx = std::max(mx, z[d]);
      }
      double sum = 0.0;
      for (index_t d = 0; d < docs; ++d) sum += std::exp(z[d] - mx);
      for (index_t d = 0; d < docs; ++d) {
        const double log_alpha = z[d] - mx - std::log(sum);
        const double a = attn(b, h, d);
        out(b, h, d) = a > 0.0 ? static_cast<float>(log_alpha - std::log(a))
                               : -std::numeric_limits<float>::infinity();
      }
    }
}

namespace detail {

/// Lowest relative log factor kept: factors below e^-30 of the largest act as e^-30 (their
/// mass share is below 1e-13), so the unbiased mass can be recovered as p / f.
inline constexpr float fitm_log_floor = -30.0f;

/// Score hook of the document pass: the standard score mod, then + log f_k(j) on document keys.
/// cls / log_f are those of the (single) batch element and head of the call.
template <class Base>
struct document_bias {
  static constexpr bool is_identity = false;
  Base base{};
  const std::int32_t* cls = nullptr;
  const float* log_f = nullptr;  // [docs], normalised (max 0, floor fitm_log_floor)

  template <class Arch>
  void apply(const engine::row_block& rb, const engine::row_info& ri, const index_t* kpos,
             index_t count, float* st, index_t ld) const noexcept {
    using V = simd::vfloat<Arch>;
    constexpr index_t w = simd::lanes<Arch>;
    if constexpr (!Base::is_identity) base.template apply<Arch>(rb, ri, kpos, count, st, ld);
    for (index_t j = 0; j < count; ++j) {
      const std::int32_t c = cls[kpos[j]];
      if (c < 0) continue;  // masked by the class mask anyway
      const V add(log_f[c]);
      for (index_t r = 0; r < ld; r += w)
        (V::load_aligned(st + j * ld + r) + add).store_aligned(st + j * ld + r);
    }
  }
};

/// Row statistics of the document pass: accumulator 0 = sum_j p_j / f_k(j) (rescaled with the
/// pass's running max like l), so that the unbiased document LSE is lse + log(mean[0]).
struct unbiased_mass {
  static constexpr bool is_identity = false;
  static constexpr int accumulators = 1;
  const std::int32_t* cls = nullptr;
  const float* inv_f = nullptr;  // [docs] 1 / f_k (normalised factors)
  view3<float> lse_unbiased{};   // [1, heads, seq_q] of the call

  template <class Arch>
  ATTEND_INLINE void visit(float* acc, index_t, const index_t* kpos, index_t j, index_t r,
                           simd::vfloat<Arch>, simd::vfloat<Arch> p) const noexcept {
    using V = simd::vfloat<Arch>;
    const std::int32_t c = cls[kpos[j]];
    if (c < 0) return;
    simd::fmadd<Arch>(p, V(inv_f[c]), V::load_aligned(acc + r)).store_aligned(acc + r);
  }

  void store(const engine::row_ctx& ctx, const float* mean, float lse_keys, float,
             float) const noexcept {
    lse_unbiased(ctx.batch, ctx.head, ctx.query) = lse_keys == engine::neg_inf || !(mean[0] > 0.0f)
                                                       ? engine::neg_inf
                                                       : lse_keys + std::log(mean[0]);
  }
};

template <class Arch, class KV>
void fitm_dispatch(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                   const view4<float>& o, const attention_params& p, const fitm_params& f) {
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t seq_k = k.extent(1), heads_kv = k.extent(2), dv = v.extent(3);
  const index_t group = heads_q / heads_kv, docs = f.spans.extent(1);
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = attend::detail::resolve_scale(p, q.extent(3));
  const engine::standard_mask base_mask = attend::detail::make_mask(p);
  const engine::sink_logits sink{p.sinks.has_value() ? p.sinks.data() : nullptr};

  // Key classes: cls[b][j] = document index or -1; in_docs[b][j] = document keys in [0, j).
  std::vector<std::int32_t> cls(static_cast<std::size_t>(batch * seq_k), -1),
      in_docs(static_cast<std::size_t>(batch * (seq_k + 1)), 0);
  for (index_t b = 0; b < batch; ++b) {
    for (index_t d = 0; d < docs; ++d)
      for (index_t j = f.spans(b, d, 0); j < f.spans(b, d, 1); ++j)
        cls[b * seq_k + j] = static_cast<std::int32_t>(d);
    for (index_t j = 0; j < seq_k; ++j)
      in_docs[b * (seq_k + 1) + j + 1] = in_docs[b * (seq_k + 1) + j] + (cls[b * seq_k + j] >= 0);
  }
  key_class_mask other{cls.data(), in_docs.data(), seq_k, seq_k + 1, false};
  key_class_mask in_doc = other;
  in_doc.want_docs = true;

  // Document pass outputs: biased o_B, its LSE, and the unbiased document LSE.
  const index_t rows = batch * heads_q * seq_q;
  std::vector<float> o_doc(static_cast<std::size_t>(batch * seq_q * heads_q * dv)),
      lse_other(static_cast<std::size_t>(rows)), lse_doc(lse_other.size()),
      lse_unb(lse_other.size());
  const auto od = bshd(o_doc.data(), batch, seq_q, heads_q, dv);
  const auto lo_v = view3<float>::contiguous(lse_other.data(), {batch, heads_q, seq_q});
  const auto ld_v = view3<float>::contiguous(lse_doc.data(), {batch, heads_q, seq_q});
  const auto lu_v = view3<float>::contiguous(lse_unb.data(), {batch, heads_q, seq_q});

  // Per (batch, head) factors, normalised so that the largest is 1 (log 0).
  const bool per_head = f.log_bias.extent(1) != 1 && heads_q > 1;
  const index_t fh = per_head ? heads_q : 1;
  std::vector<float> log_f(static_cast<std::size_t>(batch * fh * docs)), inv_f(log_f.size());
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < fh; ++h) {
      const index_t bb = f.log_bias.extent(0) == 1 ? 0 : b;
      float mx = engine::neg_inf;
      for (index_t d = 0; d < docs; ++d) mx = std::max(mx, f.log_bias(bb, h, d));
      for (index_t d = 0; d < docs; ++d) {
        const float lf =
            mx == engine::neg_inf ? 0.0f : std::max(f.log_bias(bb, h, d) - mx, fitm_log_floor);
        log_f[(b * fh + h) * docs + d] = lf;
        inv_f[(b * fh + h) * docs + d] = std::exp(-lf);
      }
    }

  attend::detail::dispatch_head_dims(q.extent(3), dv, [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    // Non-document keys (and the sink): o_N into o.
    with_score_mod(p, [&](auto score) {
      attend::detail::dense_forward<Arch, DK, DV>(
          q, k, v, o, lo_v, lens, scale,
          engine::make_variant(score, intersect(other, base_mask), sink), p.scratch);
    });
    // Document keys with log f: one call per batch element (and per head when the factors
    // differ by head), since the statistics hook sees key positions only.
    for (index_t b = 0; b < batch; ++b)
      for (index_t h = 0; h < fh; ++h) {
        const index_t h0 = per_head ? h : 0, nh = per_head ? 1 : heads_q;
        const index_t kvh0 = per_head ? h / group : 0, nkv = per_head ? 1 : heads_kv;
        attention_params pp = p;
        if (p.alibi_slopes.has_value()) pp.alibi_slopes = p.alibi_slopes.narrow(0, h0, nh);
        if (p.bias.has_value()) {
          pp.bias = p.bias.extent(0) == 1 ? p.bias : p.bias.narrow(0, b, 1);
          if (p.bias.extent(1) != 1) pp.bias = pp.bias.narrow(1, h0, nh);
        }
        if (p.mask.has_value()) {
          pp.mask = p.mask.extent(0) == 1 ? p.mask : p.mask.narrow(0, b, 1);
          if (p.mask.extent(1) != 1) pp.mask = pp.mask.narrow(1, h0, nh);
        }
        key_class_mask docs_b = in_doc;
        docs_b.cls = cls.data() + b * seq_k;
        docs_b.in_docs = in_docs.data() + b * (seq_k + 1);
        const float* lf = log_f.data() + (b * fh + h) * docs;
        const unbiased_mass st{docs_b.cls, inv_f.data() + (b * fh + h) * docs,
                               lu_v.narrow(0, b, 1).narrow(1, h0, nh)};
        const auto qb = q.narrow(0, b, 1).narrow(2, h0, nh);
        const auto kb = k.narrow(0, b, 1).narrow(2, kvh0, nkv);
        const auto vb = v.narrow(0, b, 1).narrow(2, kvh0, nkv);
        const auto ob = od.narrow(0, b, 1).narrow(2, h0, nh);
        const auto lb = ld_v.narrow(0, b, 1).narrow(1, h0, nh);
        const auto mask_b = intersect(docs_b, attend::detail::make_mask(pp));
        const index_t* lens_b = lens ? lens + b : nullptr;
        with_score_mod(pp, [&](auto score) {
          const document_bias<decltype(score)> mod{score, docs_b.cls, lf};
          row_stats_forward<Arch, DK, DV>(qb, kb, vb, ob, lb, lens_b, scale, mod, mask_b,
                                          engine::no_sink{}, engine::no_key_transform{}, st,
                                          p.scratch);
        });
      }
  });

  // o' = (1 - D) o_N + D o_B with D the unbiased document share of the row's mass.
  attend::detail::parallel_for(rows, attend::detail::max_threads(), [&](index_t row, int) {
    const index_t b = row / (heads_q * seq_q), h = (row / seq_q) % heads_q, i = row % seq_q;
    const engine::merge_weights mw = engine::weights_of(lo_v(b, h, i), lu_v(b, h, i));
    float* po = &o(b, i, h, 0);
    const float* pd = &od(b, i, h, 0);
    for (index_t c = 0; c < dv; ++c) po[c] = mw.wa * po[c] + mw.wb * pd[c];
    if (p.lse.has_value()) p.lse(b, h, i) = mw.lse;
  });
}

}  // namespace detail

/// Found-in-the-middle calibrated attention: documents' keys are re-weighted by f_k = exp(log
/// bias) within each row's document mass, which is preserved; other keys are unchanged.
///
/// \param q [batch, seq_q, heads_q, dk] float; k, v [batch, seq_k, heads_kv, dk / dv] float,
///        bf16 or fp16; o [batch, seq_q, heads_q, dv] float output
/// \param f document spans and per-document log factors (see fitm_params; fitm_log_bias builds
///        them from document attention as the paper does)
/// \param p every option of attention_params; p.lse receives the LSE of the uncalibrated
///        attention (FitM moves mass inside the documents, the row total is unchanged)
/// The paper applies it to the last 16 of 32 layers, all heads. Cost about one forward pass
/// (documents and other keys are separate tile sets). Throws attend::invalid_argument.
template <class TQ, class TK, class TV>
void fitm_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                    const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                    const fitm_params& f, const attention_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::fitm_attention";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attend::detail::validate_attention(op, qc, kc, vc, o, p);
  attend::detail::check_tensor(op, "spans", f.spans);
  attend::detail::check_tensor(op, "log_bias", f.log_bias);
  const index_t batch = q.extent(0), heads_q = q.extent(2), docs = f.spans.extent(1);
  attend::detail::check_extents(op, "spans", f.spans, {batch, docs, 2});
  ATTEND_CHECK((f.log_bias.extent(0) == batch || f.log_bias.extent(0) == 1) &&
                   (f.log_bias.extent(1) == heads_q || f.log_bias.extent(1) == 1) &&
                   f.log_bias.extent(2) == docs,
               op, ": log_bias has extents ", attend::detail::shape_string(f.log_bias),
               ", expected [", batch, " or 1, ", heads_q, " or 1, ", docs, "]");
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = p.kv_lens.has_value() ? p.kv_lens(b) : k.extent(1);
    index_t prev = 0;
    for (index_t d = 0; d < docs; ++d) {
      const index_t lo = f.spans(b, d, 0), hi = f.spans(b, d, 1);
      ATTEND_CHECK(prev <= lo && lo <= hi && hi <= len, op, ": span ", d, " of batch ", b, " [", lo,
                   ", ", hi, ") must be ascending, disjoint and within [0, kv_len = ", len, ")");
      prev = hi;
    }
    for (index_t h = 0; h < f.log_bias.extent(1); ++h)
      for (index_t d = 0; d < docs; ++d)
        ATTEND_CHECK(!std::isnan(f.log_bias(f.log_bias.extent(0) == 1 ? 0 : b, h, d)) &&
                         f.log_bias(f.log_bias.extent(0) == 1 ? 0 : b, h, d) !=
                             std::numeric_limits<float>::infinity(),
                     op, ": log_bias must be finite or -inf (batch ", b, ", head ", h, ", doc ", d,
                     ")");
  }
  detail::fitm_dispatch<xsimd::default_arch>(qc, kc, vc, o, p, f);
}

}  // namespace attend::sink

#endif  // ATTEND_SINK_FITM_HPP_
