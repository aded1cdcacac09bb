// Recycled attention (Xu et al., 2024), decode: alternate full steps and recycled steps.
//   full step      dense attention over all keys; the engine's score hook records every score,
//                  so with the row LSEs the probabilities p_h(j) = exp(s_h(j) - lse_h) come for
//                  free; each KV head keeps the top-K keys by sum over its query heads of p_h(j)
//   recycled step  exact attention over those K keys plus the tokens generated since the full
//                  step (gather_attention with the new tokens as the implicit window)
// A full step runs every `stride` steps, and, in the dynamic variant (theta > 0), whenever the
// query's cosine similarity to the query of the last full step drops below theta.
// Defaults (K = 4096, stride 10) follow our reading of the paper; the card marks them unverified.
#ifndef ATTEND_SPARSE_SELECT_RECYCLED_HPP_
#define ATTEND_SPARSE_SELECT_RECYCLED_HPP_

#include <cmath>
#include <optional>
#include <vector>

#include "../../dense/attention.hpp"
#include "selection_cache.hpp"
#include "token_scores.hpp"
#include "topk.hpp"

namespace attend::sparse {

/// Parameters of Recycled attention.
struct recycled_params {
  index_t k = 4096;        ///< keys kept per KV head after a full step
  index_t stride = 10;     ///< steps per full step (1 full + stride - 1 recycled)
  float theta = 0.0f;      ///< > 0: also run a full step when cos(q, q_full) < theta
  std::optional<float> scale{};  ///< multiplies q . k; default 1/sqrt(dim)
};

namespace detail {

/// Score hook that records every scaled score s[b, h, j] into [batch][heads_q][ld] and leaves
/// the tile unchanged (the full step's attention is plain dense attention).
struct score_recorder {
  static constexpr bool is_identity = false;
  float* scores = nullptr;
  index_t ld = 0, heads_q = 0;

  template <class Arch>
  void apply(const engine::row_block& rb, const engine::row_info& ri, const index_t* kpos,
             index_t count, float* st, index_t ld_st) const noexcept {
    const index_t rows = rb.rows();
    for (index_t r = 0; r < rows; ++r) {
      float* dst = scores + (rb.batch * heads_q + ri.head[r]) * ld;
      for (index_t j = 0; j < count; ++j) dst[kpos[j]] = st[j * ld_st + r];
    }
  }
};

}  // namespace detail

/// One Recycled-attention layer (keep one object per layer and sequence batch).
class recycled_attention {
 public:
  explicit recycled_attention(const recycled_params& p = {}) : p_(p), cache_(p.theta) {
    ATTEND_CHECK(p.k >= 1 && p.stride >= 1 && p.theta <= 1.0f,
                 "attend::sparse::recycled_attention: need k >= 1, stride >= 1, theta <= 1 "
                 "(got ", p.k, ", ", p.stride, ", ", p.theta, ")");
  }

  /// One decode step: q [batch, 1, heads_q, dim], the whole cache k / v [batch, seq_k,
  /// heads_kv, dim] (kv_lens optional; each step appends the same number of tokens to every
  /// sequence), o [batch, 1, heads_q, dv], lse optional [batch, heads_q, 1].
  template <class TQ, class TK, class TV>
  void step(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
            const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
            const view3<float>& lse = {}, const view1<const index_t>& kv_lens = {}) {
    using KV = std::remove_const_t<TK>;
    constexpr const char* op = "attend::sparse::recycled_attention::step";
    const view4<const float> qc = q;
    const view4<const KV> kc = k, vc = v;
    attention_params ap;
    ap.scale = p_.scale;
    ap.kv_lens = kv_lens;
    ap.lse = lse;
    attend::detail::validate_attention(op, qc, kc, vc, o, ap);
    ATTEND_CHECK(qc.extent(1) == 1, op, ": decode steps take one query (seq_q = ", qc.extent(1),
                 ")");
    const index_t batch = qc.extent(0), n = qc.extent(2) * qc.extent(3);
    auto len = [&](index_t b) { return kv_lens.has_value() ? kv_lens(b) : kc.extent(1); };
    bool full = !have_lists_ || steps_since_full_ + 1 >= p_.stride || lists_.batch() != batch;
    if (!full)
      for (index_t b = 0; b < batch; ++b) full = full || len(b) < full_len_[b];
    if (!full && p_.theta > 0.0f) {
      flat_query(qc);
      full = !cache_.similar(flat_.data(), batch, n);
    }
    last_full_ = full;
    if (full) {
      full_step<KV>(qc, kc, vc, o, lse, kv_lens);
      return;
    }
    ++steps_since_full_;
    index_t window = 0;
    for (index_t b = 0; b < batch; ++b) window = std::max(window, len(b) - full_len_[b]);
    gather_params gp;
    gp.scale = p_.scale;
    gp.window = window;  // [full_len, len): the tokens appended since the full step
    gp.kv_lens = kv_lens;
    gp.lse = lse;
    gp.scratch = &gather_ws_;
    gather_attention(q, k, v, o, lists_.view(), gp);
  }

  /// True when the last step was a full step.
  bool last_full() const noexcept { return last_full_; }
  /// Lists of the last full step (per KV head).
  const token_list_buffer& lists() const noexcept { return lists_; }
  /// Forces a full step next time.
  void reset() noexcept {
    have_lists_ = false;
    cache_.clear();
  }
  const recycled_params& params() const noexcept { return p_; }

 private:
  /// Copies q [batch, 1, heads, dim] into flat_ ([batch][heads * dim]).
  void flat_query(const view4<const float>& q) {
    const index_t batch = q.extent(0), heads = q.extent(2), d = q.extent(3);
    flat_.resize(static_cast<std::size_t>(batch * heads * d));
    for (index_t b = 0; b < batch; ++b)
      for (index_t h = 0; h < heads; ++h)
        for (index_t c = 0; c < d; ++c) flat_[(b * heads + h) * d + c] = q(b, 0, h, c);
  }

  template <class KV>
  void full_step(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                 const view4<float>& o, const view3<float>& lse_out,
                 const view1<const index_t>& kv_lens) {
    using Arch = xsimd::default_arch;
    const index_t batch = q.extent(0), heads_q = q.extent(2), heads_kv = k.extent(2);
    const index_t dk = q.extent(3), seq_k = k.extent(1);
    const float scale = p_.scale ? *p_.scale : 1.0f / std::sqrt(static_cast<float>(dk));
    detail::score_buffers s = detail::carve_scores<Arch, KV>(select_ws_, batch, heads_q, heads_kv,
                                                            dk, seq_k, list_owner::kv_head);
    // Dense attention that records its scores; its LSE makes them probabilities.
    lse_.resize(static_cast<std::size_t>(batch * heads_q));
    const auto lse = view3<float>::contiguous(lse_.data(), {batch, heads_q, 1});
    const detail::score_recorder rec{s.scores, s.ld, heads_q};
    const auto var = engine::make_variant(rec, engine::no_mask{});
    const index_t* lens = kv_lens.has_value() ? kv_lens.data() : nullptr;
    attend::detail::dispatch_head_dims(dk, v.extent(3), [&](auto kdk, auto kdv) {
      constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
      attend::detail::dense_forward<Arch, DK, DV>(q, k, v, o, lse, lens, scale, var, &dense_ws_);
    });
    full_len_.resize(static_cast<std::size_t>(batch));
    for (index_t b = 0; b < batch; ++b) {
      const index_t len = lens ? lens[b] : seq_k;
      full_len_[b] = len;
      s.lo[b] = 0;
      s.hi[b] = len;
      for (index_t h = 0; h < heads_q; ++h) {
        s.lse[b * heads_q + h] = lse_[b * heads_q + h];
        if (lse_out.has_value()) lse_out(b, h, 0) = lse_[b * heads_q + h];
      }
    }
    lists_.reshape(list_owner::kv_head, 1, batch, heads_q, heads_kv, 1, p_.k);
    detail::reduce_heads<Arch>(s, list_owner::kv_head, head_reduce::softmax_sum);
    detail::selection_spec spec;
    spec.k = p_.k;
    spec.owner = list_owner::kv_head;
    detail::select_top(s, spec, 0, lists_);
    flat_query(q);
    cache_.store(flat_.data(), batch, heads_q * dk);
    have_lists_ = true;
    steps_since_full_ = 0;
  }

  recycled_params p_;
  selection_cache cache_;
  token_list_buffer lists_;
  workspace select_ws_, dense_ws_, gather_ws_;
  std::vector<float> lse_, flat_;
  std::vector<index_t> full_len_;
  index_t steps_since_full_ = 0;
  bool have_lists_ = false, last_full_ = false;
};

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_RECYCLED_HPP_
