// TokenSelect (Wu et al.): dynamic token-level KV selection by per-head soft voting, with a
// selection cache. For a decode step (or a prefill chunk, scored by its mean query):
//   s_h(j) = q_h . k_j                      raw dot product (no 1/sqrt(d), as the reference)
//   c(j)   = sum_h softmax_j(s_h)(j)        softmax per head over the candidates, summed over the
//                                           heads of the layer (or of each KV group)
//   list   = first n_init + top_k by c over [n_init, T - n_local) + last n_local
// then exact attention over the list. When the query's fingerprint (the mean query of the call,
// all heads) has cosine similarity >= theta with the one the cached top-k was computed for, the
// cached top-k is reused and only attention runs (the recent window covers new tokens).
// Defaults from the reference configs: n_init 128, n_local 512, top_k 2048, chunk 512, theta 0.9.
#ifndef ATTEND_SPARSE_SELECT_TOKENSELECT_HPP_
#define ATTEND_SPARSE_SELECT_TOKENSELECT_HPP_

#include <vector>

#include "selection_cache.hpp"
#include "topk.hpp"

namespace attend::sparse {

/// Parameters of a TokenSelect layer.
struct tokenselect_params {
  index_t top_k = 2048;    ///< selected tokens besides the initial and local ones
  index_t n_init = 128;    ///< first tokens always attended
  index_t n_local = 512;   ///< most recent tokens always attended
  index_t chunk = 512;     ///< queries of a prefill call sharing one selection (their mean)
  float theta = 0.9f;      ///< selection-cache threshold on the fingerprint cosine similarity
  bool use_cache = true;   ///< false: select at every call
  /// One list per layer (the reference) or per KV group.
  list_owner owner = list_owner::layer;
  /// Multiplies q . k before the per-head softmax of the vote (1 = raw dot, as the reference).
  float vote_scale = 1.0f;
};

/// One TokenSelect attention layer with its selection cache (keep one object per layer).
class tokenselect {
 public:
  explicit tokenselect(const tokenselect_params& p = {}) : p_(p), cache_(p.theta) {
    ATTEND_CHECK(p.top_k >= 1 && p.n_init >= 0 && p.n_local >= 0 && p.chunk >= 1,
                 "attend::sparse::tokenselect: need top_k >= 1, n_init >= 0, n_local >= 0, "
                 "chunk >= 1 (got ", p.top_k, ", ", p.n_init, ", ", p.n_local, ", ", p.chunk, ")");
    ATTEND_CHECK(p.owner != list_owner::q_head,
                 "attend::sparse::tokenselect: lists are shared by a layer or a KV group");
  }

  /// Attention of q [batch, seq_q, heads_q, dim] over the cache k / v [batch, seq_k, heads_kv,
  /// dim] (valid lengths kv_lens, optional): selects and attends (topk_attention), or reuses the
  /// cached selection and runs gather_attention. o [batch, seq_q, heads_q, dv]; lse optional [batch, heads_q, seq_q].
  template <class TQ, class TK, class TV>
  void attend(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
              const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
              const view3<float>& lse = {}, const view1<const index_t>& kv_lens = {}) {
    const topk_params tp = selection_params(q.extent(1), kv_lens);
    const view4<const float> qc = q;
    fingerprint(qc);
    const index_t n = qc.extent(2) * qc.extent(3);
    const bool hit = p_.use_cache && cache_.similar(fp_.data(), qc.extent(0), n) &&
                     lists_.batch() == qc.extent(0) && lists_.tiles() == tile_count(qc.extent(1), tp.query_block);
    cache_.count_lookup(hit);
    reused_ = hit;
    if (hit) {
      gather_attention(q, k, v, o, lists_.view(), tp.gather(lse, &gather_ws_));
      return;
    }
    // A fresh selection: topk_attention reuses its scores as logits where it can (decode).
    topk_attention(q, k, v, o, lists_, tp, lse, &gather_ws_);
    cache_.store(fp_.data(), qc.extent(0), n);
  }

  /// The selection parameters this layer uses for a call with seq_q queries.
  topk_params selection_params(index_t seq_q, const view1<const index_t>& kv_lens = {}) {
    topk_params tp;
    tp.k = p_.top_k;
    tp.owner = p_.owner;
    tp.reduce = head_reduce::softmax_sum;
    tp.query_block = seq_q > 1 ? p_.chunk : 1;
    tp.sinks = p_.n_init;
    tp.window = p_.n_local;
    tp.causal = true;
    tp.scale = p_.vote_scale;
    tp.kv_lens = kv_lens;
    tp.scratch = &select_ws_;
    return tp;
  }

  /// Forgets the cached selection.
  void reset() noexcept { cache_.clear(); }
  /// True when the last call reused the cached selection.
  bool last_reused() const noexcept { return reused_; }
  const selection_cache& cache() const noexcept { return cache_; }
  /// The lists of the last call (per layer or KV head; implicit n_init / n_local not listed).
  const token_list_buffer& lists() const noexcept { return lists_; }
  const tokenselect_params& params() const noexcept { return p_; }

 private:
  /// Mean query of the call per sequence, all heads flattened: [batch][heads_q * dim].
  void fingerprint(const view4<const float>& q) {
    const index_t batch = q.extent(0), seq = q.extent(1), heads = q.extent(2), d = q.extent(3);
    fp_.assign(static_cast<std::size_t>(batch * heads * d), 0.0f);
    for (index_t b = 0; b < batch; ++b)
      for (index_t i = 0; i < seq; ++i)
        for (index_t h = 0; h < heads; ++h)
          for (index_t c = 0; c < d; ++c) fp_[(b * heads + h) * d + c] += q(b, i, h, c);
  }

  tokenselect_params p_;
  selection_cache cache_;
  token_list_buffer lists_;
  workspace select_ws_, gather_ws_;
  std::vector<float> fp_;
  bool reused_ = false;
};

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_TOKENSELECT_HPP_
