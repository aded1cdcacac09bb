// Quest (Tang et al., ICML 2024; card 1): query-aware page selection for decode. Per page of P
// cached keys (16 by default) and KV head, the channel-wise maximum and minimum of the keys are
// kept up to date as tokens are appended (page_metadata). For a decode query q the page score
//   U_p = sum_c max(q_c kmax_{p,c}, q_c kmin_{p,c})   >=   max_{j in page p} q . k_j
// bounds every key of the page; the top (K - 1) pages by U_p among all but the last page, plus
// the last (partial) page, form the page list (K = token_budget / P), and attention over those
// pages is exact (block_sparse_attention with 1-query blocks and P-key blocks).
//
// GQA: Quest scores per query head (the paper's models are MHA). With share_kv_heads the group's
// query heads share one list per KV head, ranked by the largest bound over the group (a page
// that may hold a heavy key of any head of the group is kept), so each selected page is read
// once per group instead of once per query head.
//
// Metadata can be stored as bf16 to halve its traffic; it is rounded outward (max up, min
// down), so U_p stays an upper bound.
#ifndef ATTEND_SPARSE_SELECT_QUEST_HPP_
#define ATTEND_SPARSE_SELECT_QUEST_HPP_

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"
#include "../../simd/convert.hpp"
#include "../block_mask.hpp"
#include "../block_sparse.hpp"
#include "common.hpp"

namespace attend::sparse {

namespace detail {

/// bf16 rounding toward +inf / -inf (truncation rounds toward zero), NaN kept.
inline bf16 bf16_round_up(float x) noexcept {
  std::uint32_t u = attend::detail::float_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  const bool lost = (u & 0xFFFFu) != 0;
  std::uint16_t h = static_cast<std::uint16_t>(u >> 16);
  if (lost && !(u >> 31)) ++h;  // positive: step away from zero; negative: truncation is up
  return bf16{h};
}
inline bf16 bf16_round_down(float x) noexcept {
  std::uint32_t u = attend::detail::float_bits(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  const bool lost = (u & 0xFFFFu) != 0;
  std::uint16_t h = static_cast<std::uint16_t>(u >> 16);
  if (lost && (u >> 31)) ++h;  // negative: away from zero is down
  return bf16{h};
}

template <class M>
inline M store_up(float x) noexcept {
  if constexpr (std::is_same_v<M, bf16>) return bf16_round_up(x);
  else return x;
}
template <class M>
inline M store_down(float x) noexcept {
  if constexpr (std::is_same_v<M, bf16>) return bf16_round_down(x);
  else return x;
}

}  // namespace detail

/// Quest's per-page key metadata for a KV cache: for batch b, KV head h and page p (tokens
/// [p P, (p + 1) P)), the channel-wise max and min of the keys folded so far. Storage M is
/// float or bf16 (bf16 rounded outward). Layout [batch][heads_kv][pages][2][dim] (max, min).
template <class M = float>
class page_metadata {
  static_assert(std::is_same_v<M, float> || std::is_same_v<M, bf16>,
                "page metadata is stored as float or bf16");

 public:
  /// \param capacity the most tokens a sequence will hold; \param page_size P (Quest: 16)
  page_metadata(index_t batch, index_t heads_kv, index_t dim, index_t capacity,
                index_t page_size = 16)
      : batch_(batch), heads_(heads_kv), dim_(dim), page_(page_size),
        pages_((capacity + page_size - 1) / std::max<index_t>(1, page_size)),
        lengths_(static_cast<std::size_t>(std::max<index_t>(0, batch)), 0) {
    ATTEND_CHECK(batch > 0 && heads_kv > 0 && dim > 0 && capacity > 0 && page_size > 0,
                 "attend::sparse::page_metadata: batch (", batch, "), heads_kv (", heads_kv,
                 "), dim (", dim, "), capacity (", capacity, ") and page_size (", page_size,
                 ") must be > 0");
    data_.resize(static_cast<std::size_t>(batch * heads_kv * pages_ * 2 * dim));
  }

  index_t batch() const noexcept { return batch_; }
  index_t heads_kv() const noexcept { return heads_; }
  index_t dim() const noexcept { return dim_; }
  index_t page_size() const noexcept { return page_; }
  index_t capacity_pages() const noexcept { return pages_; }
  /// Tokens of sequence b folded into the metadata.
  index_t length(index_t b) const noexcept { return lengths_[b]; }
  /// Pages of sequence b (the last one may be partial).
  index_t pages(index_t b) const noexcept { return (lengths_[b] + page_ - 1) / page_; }
  /// [dim] max (then min, dim further) of page p of (b, h).
  const M* page(index_t b, index_t h, index_t p) const noexcept {
    return data_.data() + (((b * heads_) + h) * pages_ + p) * 2 * dim_;
  }

  /// Folds the tokens [length(b), lengths[b]) of every sequence b of the cache
  /// k [batch, seq, heads_kv, dim] into the metadata (lengths[b] >= length(b), <= seq and the
  /// capacity). Cost O(new tokens * heads * dim): call it after appending tokens to the cache.
  template <class KV>
  void update(const view4<const KV>& k, const index_t* lengths) {
    constexpr const char* op = "attend::sparse::page_metadata::update";
    attend::detail::check_tensor(op, "k", k);
    ATTEND_CHECK(k.extent(0) == batch_ && k.extent(2) == heads_ && k.extent(3) == dim_, op,
                 ": k ", attend::detail::shape_string(k), " does not match the metadata [",
                 batch_, ", seq, ", heads_, ", ", dim_, "]");
    for (index_t b = 0; b < batch_; ++b)
      ATTEND_CHECK(lengths[b] >= lengths_[b] && lengths[b] <= k.extent(1) &&
                       lengths[b] <= pages_ * page_,
                   op, ": length of sequence ", b, " goes from ", lengths_[b], " to ", lengths[b],
                   " (k holds ", k.extent(1), " tokens, capacity ", pages_ * page_, ")");
    for (index_t b = 0; b < batch_; ++b) {
      for (index_t h = 0; h < heads_; ++h)
        for (index_t t = lengths_[b]; t < lengths[b]; ++t) {
          M* mx = data_.data() + (((b * heads_) + h) * pages_ + t / page_) * 2 * dim_;
          M* mn = mx + dim_;
          const KV* row = k.data() + k.offset(b, t, h, 0);
          const bool first = t % page_ == 0;
          for (index_t c = 0; c < dim_; ++c) {
            const float x = to_float(row[c]);
            mx[c] = detail::store_up<M>(first ? x : std::max(to_float(mx[c]), x));
            mn[c] = detail::store_down<M>(first ? x : std::min(to_float(mn[c]), x));
          }
        }
      lengths_[b] = lengths[b];
    }
  }
  /// update() with one length for every sequence.
  template <class KV>
  void update(const view4<const KV>& k, index_t length) {
    std::vector<index_t> l(static_cast<std::size_t>(batch_), length);
    update(k, l.data());
  }

  /// Forgets every token (the cache is reused for new sequences).
  void reset() noexcept { std::fill(lengths_.begin(), lengths_.end(), 0); }

 private:
  index_t batch_, heads_, dim_, page_, pages_;
  std::vector<index_t> lengths_;
  std::vector<M> data_;
};

/// Quest selection parameters.
struct quest_params {
  /// Tokens attended per head: K = max(1, token_budget / page_size) pages, the last page
  /// included. Quest's scripts use 512 / 1024 / 2048 / 4096.
  index_t token_budget = 2048;
  /// One list per KV head shared by its query heads (ranked by the group's largest bound)
  /// instead of Quest's one list per query head.
  bool share_kv_heads = false;
};

namespace detail {

/// U_p for the rows q[0, rows) (each dim floats, rows <= 8) against pages [p0, p1) of one
/// (batch, KV head): scores[r * ld + p]. Each page's max and min are loaded (and widened) once
/// for all rows; 8 rows' sums are reduced together.
template <class Arch, class M>
void quest_page_scores(const float* q, index_t rows, const page_metadata<M>& meta, index_t b,
                       index_t h, index_t p0, index_t p1, float* scores, index_t ld) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  constexpr index_t R = 8;
  const index_t dim = meta.dim(), full = dim - dim % w;
  alignas(64) float sums[w >= R ? w : R];
  for (index_t p = p0; p < p1; ++p) {
    const M* mx = meta.page(b, h, p);
    const M* mn = mx + dim;
    V acc[R];
    for (index_t r = 0; r < R; ++r) acc[r] = V(0.0f);
    for (index_t c = 0; c < full; c += w) {
      const V vmx = simd::load<Arch>(mx + c), vmn = simd::load<Arch>(mn + c);
      for (index_t r = 0; r < rows; ++r) {
        const V qv = V::load_unaligned(q + r * dim + c);
        acc[r] += xsimd::max(qv * vmx, qv * vmn);
      }
    }
    for (index_t r = 0; r < rows; ++r) {
      float s = simd::reduce_sum<Arch>(acc[r]);
      for (index_t c = full; c < dim; ++c)
        s += std::max(q[r * dim + c] * to_float(mx[c]), q[r * dim + c] * to_float(mn[c]));
      sums[r] = s;
    }
    for (index_t r = 0; r < rows; ++r) scores[r * ld + p] = sums[r];
  }
}

}  // namespace detail

/// Quest page selection for one decode step.
///
/// \param q [batch, 1, heads_q, dim] float queries
/// \param seq_k the key extent of the cache view the attention call will use (k.extent(1))
/// \param meta page metadata of that cache, updated to the current lengths
/// Returns a block mask {batch, heads_q (or heads_kv when shared), 1, seq_k, 1, page_size}:
/// per list, the top (K - 1) pages by U_p among pages [0, pages - 1) plus the last page, all
/// pages when there are at most K. Pass params.kv_lens to the attention call for ragged
/// lengths. Throws attend::invalid_argument on mismatched shapes.
template <class M, class Arch = xsimd::default_arch>
block_mask quest_select(const view4<const float>& q, index_t seq_k, const page_metadata<M>& meta,
                        const quest_params& qp = {}) {
  constexpr const char* op = "attend::sparse::quest_select";
  attend::detail::check_tensor(op, "q", q);
  const index_t batch = q.extent(0), hq = q.extent(2), hkv = meta.heads_kv(), dim = q.extent(3);
  ATTEND_CHECK(q.extent(1) == 1, op, ": Quest selects for one decode query (q seq ",
               q.extent(1), ")");
  ATTEND_CHECK(batch == meta.batch() && dim == meta.dim() && hq % hkv == 0, op, ": q ",
               attend::detail::shape_string(q), " does not match the metadata (batch ",
               meta.batch(), ", heads_kv ", hkv, ", dim ", meta.dim(), ")");
  ATTEND_CHECK(qp.token_budget > 0, op, ": token_budget (", qp.token_budget, ") must be > 0");
  for (index_t b = 0; b < batch; ++b)
    ATTEND_CHECK(meta.length(b) <= seq_k, op, ": sequence ", b, " has ", meta.length(b),
                 " tokens in the metadata but seq_k is ", seq_k);
  const index_t group = hq / hkv, P = meta.page_size();
  const index_t budget_pages = std::max<index_t>(1, qp.token_budget / P);
  const bool shared = qp.share_kv_heads && group > 1;
  const mask_geometry g{batch, shared ? hkv : hq, 1, seq_k, 1, P};
  block_mask_builder bld(g);

  index_t max_pages = 0;
  for (index_t b = 0; b < batch; ++b) max_pages = std::max(max_pages, meta.pages(b));
  const int threads = attend::detail::max_threads();
  // Scores [batch, heads_kv][group][max_pages]: pages in chunks across threads (decode has few
  // KV heads), then one top-k per list.
  const index_t ld = std::max<index_t>(1, max_pages);
  std::vector<float> scores(static_cast<std::size_t>(batch * hkv * group * ld));
  std::vector<float> qrows(static_cast<std::size_t>(batch * hq * dim));
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < hq; ++h) std::copy_n(&q(b, 0, h, 0), dim, &qrows[(b * hq + h) * dim]);
  constexpr index_t page_chunk = 256;
  const index_t chunks = (ld + page_chunk - 1) / page_chunk;
  attend::detail::parallel_for(batch * hkv * chunks, threads, [&](index_t item, int) {
    const index_t c = item % chunks, h = (item / chunks) % hkv, b = item / (chunks * hkv);
    const index_t n = meta.pages(b);
    if (n <= budget_pages) return;  // every page is kept: no scores needed
    const index_t p0 = c * page_chunk, p1 = std::min(n - 1, p0 + page_chunk);
    for (index_t r0 = 0; r0 < group; r0 += 8)
      detail::quest_page_scores<Arch>(&qrows[(b * hq + h * group + r0) * dim],
                                      std::min<index_t>(8, group - r0), meta, b, h, p0,
                                      std::max(p0, p1),
                                      &scores[((b * hkv + h) * group + r0) * ld], ld);
  });
  const index_t lists = batch * (shared ? hkv : hq);
  const int used = static_cast<int>(std::min<index_t>(threads, lists));
  std::vector<std::vector<index_t>> picks(static_cast<std::size_t>(used),
                                          std::vector<index_t>(budget_pages + 1 + ld));
  attend::detail::parallel_for(lists, used, [&](index_t item, int t) {
    const index_t b = item / (lists / batch), o = item % (lists / batch), n = meta.pages(b);
    if (n == 0) return;
    index_t* pick = picks[t].data();
    index_t c = 0;
    if (n <= budget_pages) {
      for (index_t p = 0; p < n; ++p) pick[c++] = p;
    } else {
      float* s = &scores[((b * hkv + (shared ? o : o / group)) * group + (shared ? 0 : o % group)) *
                         ld];
      if (shared)  // the group's largest bound, folded into the first row
        for (index_t r = 1; r < group; ++r)
          for (index_t p = 0; p < n - 1; ++p) s[p] = std::max(s[p], s[r * ld + p]);
      c = select::top_k(s, n - 1, budget_pages - 1, pick, pick + budget_pages + 1);
      pick[c++] = n - 1;
    }
    bld.add(g.row(b, o, 0), pick, c);
  });
  return bld.build();
}

/// One Quest decode step: quest_select on the metadata of the cache, then exact attention
/// over the selected pages. q [batch, 1, heads_q, dim]; k / v [batch, seq_k, heads_kv, dim]
/// cache views (pass params.kv_lens for ragged lengths); o [batch, 1, heads_q, dim_v].
/// Returns the mask it used.
template <class TK, class TV, class M>
block_mask quest_attention(const view4<const float>& q, const tensor_view<TK, 4>& k,
                           const tensor_view<TV, 4>& v, const view4<float>& o,
                           const page_metadata<M>& meta, const quest_params& qp = {},
                           const attention_params& params = {}) {
  block_mask mask = quest_select(q, k.extent(1), meta, qp);
  block_sparse_attention(q, k, v, o, mask, params);
  return mask;
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_QUEST_HPP_
