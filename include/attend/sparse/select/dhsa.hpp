// DHSA: dynamic hierarchical sparse attention (Xiong et al.). Keys are cut into variable-length
// chunks (boundaries from DHSA's learned predictor, passed in; fixed-length chunks otherwise);
// chunks and query blocks are represented by head-averaged means scaled by sqrt(length)
// ("avgpool_norm"), so a dot product behaves like a length-normalised sum; every key inherits
// its chunk's score; per query block the most recent `local` keys are forced and the rest of the
// token budget goes to the best-scoring keys (ties: the earlier key). One list per query block
// is shared by all heads; attention is exact and causal over it.
// Defaults from the reference scripts: budget 2048, block 128, local 64, chunk_beta 8 (chunks of
// 128 / 8 = 16 tokens on average).
#ifndef ATTEND_SPARSE_SELECT_DHSA_HPP_
#define ATTEND_SPARSE_SELECT_DHSA_HPP_

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"
#include "../gather.hpp"
#include "topk.hpp"

namespace attend::sparse {

/// Parameters of DHSA selection and attention.
struct dhsa_params {
  index_t budget = 2048;  ///< tokens per query block, the forced local ones included
  index_t block_q = 128;  ///< queries sharing a selection
  index_t chunk = 16;     ///< chunk length when no boundaries are given
  index_t local = 64;     ///< most recent keys (up to the block's last query) always kept
  /// Optional ascending chunk starts shared by the batch (boundary predictor output); the
  /// first must be 0. Empty = chunks of `chunk` tokens.
  view1<const index_t> boundaries{};
  /// Multiplies q . k in attention; default 1/sqrt(dim).
  std::optional<float> scale{};
  /// [batch]: valid keys per sequence. Empty = seq_k.
  view1<const index_t> kv_lens{};

  /// gather_params of the attention step (causal; the lists hold every key, no implicit ones).
  gather_params gather(const view3<float>& lse = {}, workspace* ws = nullptr) const {
    gather_params g;
    g.scale = scale;
    g.causal = true;
    g.kv_lens = kv_lens;
    g.lse = lse;
    g.scratch = ws;
    return g;
  }
};

namespace detail {

/// Chunk starts [0, ..., seq_k) plus the end sentinel seq_k.
inline std::vector<index_t> dhsa_chunk_starts(const dhsa_params& p, index_t seq_k) {
  std::vector<index_t> st;
  if (p.boundaries.has_value()) {
    for (index_t i = 0; i < p.boundaries.extent(0) && p.boundaries(i) < seq_k; ++i)
      st.push_back(p.boundaries(i));
  } else {
    for (index_t t = 0; t < seq_k; t += p.chunk) st.push_back(t);
  }
  st.push_back(seq_k);
  return st;
}

template <class KV>
void dhsa_select_impl(const view4<const float>& q, const view4<const KV>& k,
                      token_list_buffer& out, const dhsa_params& p) {
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t d = q.extent(3), seq_k = k.extent(1), heads_kv = k.extent(2);
  out.reshape(list_owner::layer, p.block_q, batch, heads_q, heads_kv, seq_q, p.budget);
  const std::vector<index_t> st = dhsa_chunk_starts(p, seq_k);
  const index_t chunks = static_cast<index_t>(st.size()) - 1;
  auto len_of = [&](index_t b) { return p.kv_lens.has_value() ? p.kv_lens(b) : seq_k; };
  const int threads = attend::detail::max_threads();

  // Chunk representations: sqrt(len) * mean over the chunk's valid keys and all KV heads.
  std::vector<float> reps(static_cast<std::size_t>(batch * chunks * d), 0.0f);
  attend::detail::parallel_for(batch * chunks, threads, [&](index_t item, int) {
    const index_t b = item / chunks, c = item % chunks;
    const index_t t0 = st[c], t1 = std::min(st[c + 1], len_of(b));
    float* r = reps.data() + item * d;
    if (t1 <= t0) return;
    for (index_t t = t0; t < t1; ++t)
      for (index_t h = 0; h < heads_kv; ++h) {
        const KV* row = k.data() + k.offset(b, t, h, 0);
        for (index_t c2 = 0; c2 < d; ++c2) r[c2] += to_float(row[c2]);
      }
    const float f = std::sqrt(float(t1 - t0)) / float((t1 - t0) * heads_kv);
    for (index_t c2 = 0; c2 < d; ++c2) r[c2] *= f;
  });

  // Per (batch, query block): score chunks, rank them, fill the budget.
  const index_t tiles = out.tiles();
  std::vector<float> score_buf(static_cast<std::size_t>(threads * chunks));
  std::vector<index_t> order_buf(static_cast<std::size_t>(threads * chunks));
  std::vector<float> qbar_buf(static_cast<std::size_t>(threads * d));
  attend::detail::parallel_for(batch * tiles, threads, [&](index_t item, int t) {
    const index_t b = item / tiles, tile = item % tiles;
    index_t* list = out.list(b, 0, tile);
    const index_t len = len_of(b);
    const index_t q0 = tile * p.block_q, q1 = std::min(seq_q, q0 + p.block_q);
    const index_t t_end = std::clamp<index_t>(len - seq_q + q1, 0, len);  // causal end
    if (t_end <= p.budget) {
      for (index_t j = 0; j < t_end; ++j) list[j] = j;
      out.count(b, 0, tile) = t_end;
      return;
    }
    float* qbar = qbar_buf.data() + t * d;
    std::fill(qbar, qbar + d, 0.0f);
    for (index_t i = q0; i < q1; ++i)
      for (index_t h = 0; h < heads_q; ++h) {
        const float* row = q.data() + q.offset(b, i, h, 0);
        for (index_t c = 0; c < d; ++c) qbar[c] += row[c];
      }
    const float f = std::sqrt(float(q1 - q0)) / float((q1 - q0) * heads_q);
    for (index_t c = 0; c < d; ++c) qbar[c] *= f;
    const index_t cand_end = t_end - p.local;  // candidates [0, cand_end); then the local keys
    float* score = score_buf.data() + t * chunks;
    index_t* order = order_buf.data() + t * chunks;
    index_t n = 0;
    for (index_t c = 0; c < chunks && st[c] < cand_end; ++c) {
      const float* r = reps.data() + (b * chunks + c) * d;
      float s = 0.0f;
      for (index_t c2 = 0; c2 < d; ++c2) s += qbar[c2] * r[c2];
      score[c] = s == s ? s : -std::numeric_limits<float>::infinity();
      order[n++] = c;
    }
    std::sort(order, order + n, [&](index_t a, index_t b2) {
      return score[a] != score[b2] ? score[a] > score[b2] : a < b2;
    });
    // Whole chunks in rank order; the last one partly (its earliest keys).
    index_t rest = p.budget - p.local;
    index_t taken = 0;
    for (index_t e = 0; e < n && rest > 0; ++e) {
      const index_t c = order[e];
      const index_t a = st[c], z = std::min(st[c + 1], cand_end);
      const index_t take = std::min(rest, z - a);
      order[taken++] = c;  // reuse the prefix of `order` for the chosen chunks
      score[c] = static_cast<float>(take);  // and `score` for how many of their keys
      rest -= take;
    }
    std::sort(order, order + taken);
    index_t count = 0;
    for (index_t e = 0; e < taken; ++e) {
      const index_t c = order[e];
      const index_t take = static_cast<index_t>(score[c]);
      for (index_t j = st[c]; j < st[c] + take; ++j) list[count++] = j;
    }
    for (index_t j = cand_end; j < t_end; ++j) list[count++] = j;
    out.count(b, 0, tile) = count;
  });
}

}  // namespace detail

/// DHSA selection: one list per (batch, query block of p.block_q), shared by all heads.
///
/// \param q [batch, seq_q, heads_q, dim] float (causal, bottom-right aligned)
/// \param k [batch, seq_k, heads_kv, dim] float, bf16 or fp16
/// \param out reshaped to (layer, p.block_q, capacity p.budget)
/// Throws attend::invalid_argument on bad shapes, parameters or boundaries.
template <class TQ, class TK>
void dhsa_select(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k, token_list_buffer& out,
                 const dhsa_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  constexpr const char* op = "attend::sparse::dhsa_select";
  const view4<const float> qc = q;
  const view4<const KV> kc = k;
  detail::validate_select_keys(op, qc, kc, p.kv_lens);
  ATTEND_CHECK(p.budget >= 1 && p.block_q >= 1 && p.chunk >= 1 && p.local >= 0 &&
                   p.local <= p.budget,
               op, ": need budget >= 1, block_q >= 1, chunk >= 1, 0 <= local <= budget (got ",
               p.budget, ", ", p.block_q, ", ", p.chunk, ", ", p.local, ")");
  if (p.boundaries.has_value()) {
    detail::check_tensor(op, "boundaries", p.boundaries);
    ATTEND_CHECK(p.boundaries(0) == 0, op, ": the first chunk boundary must be 0 (got ",
                 p.boundaries(0), ")");
    for (index_t i = 1; i < p.boundaries.extent(0); ++i)
      ATTEND_CHECK(p.boundaries(i) > p.boundaries(i - 1), op, ": chunk boundaries must ascend ",
                   "(entry ", i - 1, " = ", p.boundaries(i - 1), ", entry ", i, " = ",
                   p.boundaries(i), ")");
  }
  detail::dhsa_select_impl(qc, kc, out, p);
}

/// DHSA attention: dhsa_select, then exact causal gather_attention over the lists.
template <class TQ, class TK, class TV>
void dhsa_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                    const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                    token_list_buffer& lists, const dhsa_params& p = {},
                    const view3<float>& lse = {}, workspace* gather_scratch = nullptr) {
  dhsa_select(q, k, lists, p);
  gather_attention(q, k, v, o, lists.view(), p.gather(lse, gather_scratch));
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_DHSA_HPP_
