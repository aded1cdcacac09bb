// Exact top-k token selection: each list keeps the k keys with the largest q . k (per query
// head), or, for a list shared by a KV group or the layer, the k keys with the largest combined
// score (head_reduce: the sum of each head's softmax probability, or the maximum score). The
// selection reads all of K once per KV group and computes exact scores; attention then reads
// only the selected K/V rows (gather_attention). Decode-time top-k attention of RetrievalAttention
// (exact fallback of its ANN search), Recycled attention's full step and TokenSelect all select
// this way.
#ifndef ATTEND_SPARSE_SELECT_TOPK_HPP_
#define ATTEND_SPARSE_SELECT_TOPK_HPP_

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>

#include "../../core/validate.hpp"
#include "../gather.hpp"
#include "token_scores.hpp"

namespace attend::sparse {

/// Parameters of topk_select / topk_attention.
struct topk_params {
  /// Keys selected per list (on top of the implicit sinks and window).
  index_t k = 2048;
  /// One list per query head (default), per KV head or per layer.
  list_owner owner = list_owner::q_head;
  /// Combination of head scores for shared lists.
  head_reduce reduce = head_reduce::softmax_sum;
  /// Queries sharing one list, scored by their mean query (1 = a list per query).
  index_t query_block = 1;
  /// Implicit keys [0, sinks) and recent window (see gather_params); never candidates.
  index_t sinks = 0;
  index_t window = 0;
  /// Candidates are the keys a causal query of the tile may see.
  bool causal = true;
  /// Multiplies q . k in the selection scores (matters for softmax_sum); default 1/sqrt(dim).
  std::optional<float> scale{};
  /// [batch]: valid keys per sequence (contiguous caches). Empty = seq_k.
  view1<const index_t> kv_lens{};
  /// Optional reusable scratch for the selection ([batch, heads_q, seq_k] scores and more).
  workspace* scratch = nullptr;

  /// gather_params with the same implicit ranges, causality and lengths.
  gather_params gather(const view3<float>& lse = {}, workspace* ws = nullptr) const {
    gather_params g;
    g.causal = causal;
    g.sinks = sinks;
    g.window = window;
    g.kv_lens = kv_lens;
    g.lse = lse;
    g.scratch = ws;
    return g;
  }
};

namespace detail {

inline void validate_topk_params(const char* op, const topk_params& p) {
  ATTEND_CHECK(p.k >= 1, op, ": k (", p.k, ") must be >= 1");
  ATTEND_CHECK(p.query_block >= 1, op, ": query_block (", p.query_block, ") must be >= 1");
  ATTEND_CHECK(p.sinks >= 0 && p.window >= 0, op, ": sinks (", p.sinks, ") and window (",
               p.window, ") must be >= 0");
  if (p.scale) ATTEND_CHECK(std::isfinite(*p.scale), op, ": scale must be finite (", *p.scale, ")");
}

/// Checks q [batch, seq_q, heads_q, dk] against keys k [batch, seq_k, heads_kv, dk] and lengths.
template <class KV>
void validate_select_keys(const char* op, const view4<const float>& q, const view4<const KV>& k,
                          const view1<const index_t>& kv_lens) {
  check_tensor(op, "q", q);
  check_tensor(op, "k", k);
  ATTEND_CHECK(k.extent(0) == q.extent(0), op, ": batch of q (", q.extent(0), ") and k (",
               k.extent(0), ") differ");
  ATTEND_CHECK(q.extent(2) % k.extent(2) == 0, op, ": q heads (", q.extent(2),
               ") must be a multiple of kv heads (", k.extent(2), ")");
  ATTEND_CHECK(k.extent(3) == q.extent(3), op, ": head dim of k (", k.extent(3),
               ") must equal that of q (", q.extent(3), ")");
  if (kv_lens.has_value()) {
    check_tensor(op, "kv_lens", kv_lens);
    check_extents(op, "kv_lens", kv_lens, {q.extent(0)});
    for (index_t b = 0; b < q.extent(0); ++b)
      ATTEND_CHECK(kv_lens(b) >= 0 && kv_lens(b) <= k.extent(1), op, ": kv_lens[", b, "] = ",
                   kv_lens(b), " is outside [0, seq_k = ", k.extent(1), "]");
  }
}

inline selection_spec spec_of(const topk_params& p, index_t dk) {
  selection_spec s;
  s.k = p.k;
  s.owner = p.owner;
  s.reduce = p.reduce;
  s.query_block = p.query_block;
  s.sinks = p.sinks;
  s.window = p.window;
  s.causal = p.causal;
  s.scale = p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(dk));
  return s;
}

/// Exact-score selection over any key rows (contiguous or paged), with an optional attend stage.
template <class Arch, class KV, class Rows, class Attend = std::nullptr_t>
void select_exact(const view4<const float>& q, const Rows& rows, index_t seq_k,
                  token_list_buffer& out, const selection_spec& spec, workspace* scratch,
                  const Attend& attend_stage = nullptr) {
  attend::detail::dispatch_head_dims(q.extent(3), q.extent(3), [&](auto kdk, auto) {
    constexpr index_t DK = decltype(kdk)::value;
    select_tokens<Arch, KV>(
        q, rows, seq_k, out, spec, scratch,
        [&](const score_buffers& s, bool partials) {
          score_with_engine<Arch, DK, KV>(rows, s, partials);
        },
        attend_stage);
  });
}

/// The longest sequence of a paged cache (at least 1: the score rows' length).
template <class KV>
index_t longest_sequence(const paged_kv<KV>& cache) noexcept {
  index_t longest = 1;
  for (index_t b = 0; b < cache.lengths.extent(0); ++b)
    longest = std::max(longest, cache.lengths(b));
  return longest;
}

/// topk_attention at one query per tile (inputs validated): the selection's attend stage
/// (scored_attention) reuses its scores as logits and reads only the chosen V rows.
template <class Arch, class KV, class Rows>
void topk_attention_scored(const view4<const float>& q, const Rows& rows, index_t seq_k,
                           index_t dv, const view4<float>& o, token_list_buffer& lists,
                           const topk_params& p, const view3<float>& lse,
                           workspace* gather_scratch) {
  const selection_spec spec = spec_of(p, q.extent(3));
  const float attention_scale = 1.0f / std::sqrt(static_cast<float>(q.extent(3)));
  scored_attention<Arch, KV, Rows> stage{q,        rows,     o,       lse,
                                         attention_scale, attention_scale / spec.scale,
                                         p.sinks,  p.window, p.causal, seq_k};
  const index_t group = q.extent(2) / rows.heads();
  const index_t keys =
      stage.max_keys(p.owner, group, std::max<index_t>(1, p.k), seq_k, p.sinks, p.window);
  stage.stride = stage.floats_per_thread(p.owner, group, keys, q.extent(3), dv);
  workspace local;
  workspace& ws = gather_scratch ? *gather_scratch : local;
  stage.scratch = ws.reserve(attend::detail::max_threads() * stage.stride);
  select_exact<Arch, KV>(q, rows, seq_k, lists, spec, p.scratch, stage);
}

}  // namespace detail

/// Exact top-k selection into token lists.
///
/// \param q [batch, seq_q, heads_q, dim] float; each tile of p.query_block queries is scored by
///        its mean query
/// \param k [batch, seq_k, heads_kv, dim] float, bf16 or fp16
/// \param out reshaped to (p.owner, p.query_block, capacity p.k); list (b, o, t) receives the
///        (at most) k best candidates of tile t, ascending. Candidates: the keys a query of the
///        tile may see (p.causal), minus [0, sinks) and the tile's window.
/// Throws attend::invalid_argument on bad shapes or parameters.
template <class TQ, class TK>
void topk_select(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k, token_list_buffer& out,
                 const topk_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(is_storage_type_v<KV>, "k must be float, bf16 or fp16");
  constexpr const char* op = "attend::sparse::topk_select";
  const view4<const float> qc = q;
  const view4<const KV> kc = k;
  detail::validate_select_keys(op, qc, kc, p.kv_lens);
  detail::validate_topk_params(op, p);
  const detail::contiguous_rows<KV> rows{kc, kc, p.kv_lens.has_value() ? p.kv_lens.data() : nullptr};
  detail::select_exact<xsimd::default_arch, KV>(qc, rows, kc.extent(1), out,
                                                detail::spec_of(p, qc.extent(3)), p.scratch);
}

/// topk_select over a paged cache (its lengths are used; p.kv_lens must be empty).
template <class TQ, class KV>
void topk_select(const tensor_view<TQ, 4>& q, const paged_kv<KV>& cache, token_list_buffer& out,
                 const topk_params& p = {}) {
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  constexpr const char* op = "attend::sparse::topk_select";
  const view4<const float> qc = q;
  detail::check_tensor(op, "q", qc);
  detail::validate_topk_params(op, p);
  ATTEND_CHECK(!p.kv_lens.has_value(), op, ": kv_lens must be empty for a paged cache");
  detail::validate_page_table(op, qc.extent(0), cache);
  ATTEND_CHECK(qc.extent(2) % cache.k_pages.extent(2) == 0 &&
                   cache.k_pages.extent(3) == qc.extent(3),
               op, ": paged cache ", detail::shape_string(cache.k_pages),
               " does not fit q ", detail::shape_string(qc));
  const detail::paged_rows<KV> rows{cache.k_pages, cache.k_pages, cache.page_table,
                                    cache.lengths.data()};
  detail::select_exact<xsimd::default_arch, KV>(qc, rows, detail::longest_sequence(cache), out,
                                                detail::spec_of(p, qc.extent(3)), p.scratch);
}

/// Exact top-k attention: topk_select, then attention over the lists with the same implicit
/// ranges (as gather_attention). o [batch, seq_q, heads_q, dv]; lse optional [batch, heads_q,
/// seq_q]. `lists` keeps the selection (reused storage across calls).
///
/// With p.query_block == 1 (and a nonzero p.scale), each query's selection scores are its
/// attention logits up to the ratio of the scales: they are reused, so attention reads only the
/// V rows of the selected keys (decode: all of K once, then 1/64 of V at k = 2048 of 128K)
/// instead of gathering their K rows again. Otherwise this is topk_select + gather_attention.
template <class TQ, class TK, class TV>
void topk_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                    const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                    token_list_buffer& lists, const topk_params& p = {},
                    const view3<float>& lse = {}, workspace* gather_scratch = nullptr) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  if (p.query_block != 1 || detail::spec_of(p, q.extent(3)).scale == 0.0f) {
    topk_select(q, k, lists, p);
    gather_attention(q, k, v, o, lists.view(), p.gather(lse, gather_scratch));
    return;
  }
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sparse::topk_attention";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  detail::validate_select_keys(op, qc, kc, p.kv_lens);
  detail::validate_topk_params(op, p);
  detail::validate_gather_inputs(op, qc, kc, vc, o, p.gather(lse));
  const detail::contiguous_rows<KV> rows{kc, vc, p.kv_lens.has_value() ? p.kv_lens.data() : nullptr};
  detail::topk_attention_scored<xsimd::default_arch, KV>(qc, rows, kc.extent(1), vc.extent(3), o,
                                                         lists, p, lse, gather_scratch);
}

/// topk_attention over a paged cache (its lengths are used; p.kv_lens must be empty).
template <class TQ, class KV>
void topk_attention(const tensor_view<TQ, 4>& q, const paged_kv<KV>& cache,
                    const tensor_view<float, 4>& o, token_list_buffer& lists,
                    const topk_params& p = {}, const view3<float>& lse = {},
                    workspace* gather_scratch = nullptr) {
  if (p.query_block != 1 || detail::spec_of(p, q.extent(3)).scale == 0.0f) {
    topk_select(q, cache, lists, p);
    gather_attention(q, cache, o, lists.view(), p.gather(lse, gather_scratch));
    return;
  }
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sparse::topk_attention";
  const view4<const float> qc = q;
  detail::check_tensor(op, "q", qc);
  detail::validate_topk_params(op, p);
  detail::validate_paged_inputs(op, qc, cache, o, p.gather(lse));
  const detail::paged_rows<KV> rows{cache.k_pages, cache.v_pages, cache.page_table,
                                    cache.lengths.data()};
  detail::topk_attention_scored<xsimd::default_arch, KV>(qc, rows, detail::longest_sequence(cache),
                                                         cache.v_pages.extent(3), o, lists, p, lse,
                                                         gather_scratch);
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_TOPK_HPP_
