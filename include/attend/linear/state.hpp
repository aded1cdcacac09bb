// linear_state: the recurrent state of linear attention for every (batch, head), fp32:
//   S  [batch, heads, head_dim, value_dim]   Σ_j decay(t, j) φ(k_j) v_jᵀ
//   z  [batch, heads, head_dim]              Σ_j decay(t, j) φ(k_j)   (denominator, mala)
//   Σv [batch, heads, value_dim]             Σ_j v_j                   (mala)
//   n  [batch]                               tokens absorbed per sequence
// prefill() runs the chunked causal algorithm from the current state and leaves the final state
// behind; step() is the recurrent form, one token in and one out per sequence, O(head_dim *
// value_dim) per (batch, head) whatever the context length. Sequences of a batch may have
// different lengths (prefill lengths, reset(b) for one slot); save()/load() hand the state to
// and from user tensors (fla's initial_state / final_state layout [batch, heads, dk, dv]).
#ifndef ATTEND_LINEAR_STATE_HPP_
#define ATTEND_LINEAR_STATE_HPP_

#include <algorithm>
#include <cmath>
#include <vector>

#include "linear_attention.hpp"

namespace attend {

/// Recurrent linear-attention state of `batch` sequences x `heads` heads (see the file comment).
/// FeatureMap is φ (as for linear_attention); Arch the SIMD target of its kernels.
/// Copyable (a copy is a snapshot); a state must not be used by two calls at the same time.
template <class FeatureMap = linear::elu_plus_one, class Arch = xsimd::default_arch>
class linear_state {
  static_assert(linear::detail::is_feature_map_v<FeatureMap>,
                "a feature map must be callable on float");

 public:
  /// \param config the operator: norm, scale, eps, decay [heads] (copied), chunk. Must be
  ///        causal; log_gates and lengths are per call (prefill/step arguments) and must be
  ///        empty here. Throws attend::invalid_argument on bad sizes or parameters.
  linear_state(index_t batch, index_t heads, index_t head_dim, index_t value_dim,
               const linear_params& config = {}, FeatureMap phi = {})
      : config_(config), phi_(phi) {
    constexpr const char* op = "attend::linear_state";
    ATTEND_CHECK(batch > 0 && heads > 0 && head_dim > 0 && value_dim > 0, op,
                 ": batch (", batch, "), heads (", heads, "), head_dim (", head_dim,
                 ") and value_dim (", value_dim, ") must be > 0");
    ATTEND_CHECK(config.causal, op, ": a recurrent state is causal (config.causal = false)");
    ATTEND_CHECK(!config.log_gates.has_value() && !config.lengths.has_value(), op,
                 ": log_gates and lengths are arguments of prefill()/step(), not of the state");
    linear::detail::validate_config(op, config, heads);
    if (config.decay.has_value())
      for (index_t h = 0; h < heads; ++h) decay_.push_back(config.decay(h));
    config_.decay = {};
    config_.scratch = nullptr;
    pb_ = linear::detail::make_problem<Arch>(batch, 0, heads, head_dim, value_dim, config_);
    stride_ = linear::detail::state_floats(pb_);
    data_.assign(static_cast<std::size_t>(batch * heads * stride_), 0.0f);
    tokens_.assign(static_cast<std::size_t>(batch), 0);
  }

  index_t batch() const noexcept { return pb_.batch; }
  index_t heads() const noexcept { return pb_.heads; }
  index_t head_dim() const noexcept { return pb_.dk; }
  index_t value_dim() const noexcept { return pb_.dv; }
  /// Tokens sequence b has absorbed since its last reset.
  index_t tokens(index_t b) const noexcept { return tokens_[static_cast<std::size_t>(b)]; }

  /// S as [batch, heads, head_dim, value_dim] (a view into the state; rows are padded).
  view4<const float> kv() const noexcept {
    const index_t hs = stride_;
    return view4<const float>(data_.data(), {pb_.batch, pb_.heads, pb_.dk, pb_.dv},
                              {pb_.heads * hs, hs, pb_.dvp, 1});
  }
  /// z as [batch, heads, head_dim] (zero unless norm is denominator or mala).
  view3<const float> z() const noexcept {
    const auto p = part(0, 0);
    return view3<const float>(p.z, {pb_.batch, pb_.heads, pb_.dk},
                              {pb_.heads * stride_, stride_, 1});
  }
  /// Σv as [batch, heads, value_dim] (zero unless norm is mala).
  view3<const float> sv() const noexcept {
    const auto p = part(0, 0);
    return view3<const float>(p.sv, {pb_.batch, pb_.heads, pb_.dv},
                              {pb_.heads * stride_, stride_, 1});
  }

  /// Empties every sequence (S = z = Σv = 0, n = 0).
  void reset() noexcept {
    std::fill(data_.begin(), data_.end(), 0.0f);
    std::fill(tokens_.begin(), tokens_.end(), 0);
  }
  /// Empties sequence b only (a new sequence in that batch slot). Throws if b is out of range.
  void reset(index_t b) {
    ATTEND_CHECK(b >= 0 && b < pb_.batch, "attend::linear_state::reset: b (", b,
                 ") is outside [0, ", pb_.batch, ")");
    std::fill(data_.begin() + b * pb_.heads * stride_, data_.begin() + (b + 1) * pb_.heads * stride_,
              0.0f);
    tokens_[static_cast<std::size_t>(b)] = 0;
  }

  /// Causal prefill continuing from the current state: o_t for every token t < lengths[b] of
  /// each sequence, then the state holds everything absorbed (prefill then step() equals one
  /// long prefill).
  /// \param q [batch, seq, heads, head_dim], k the same, v [batch, seq, heads, value_dim]
  ///        (float, bf16 or fp16), o [batch, seq, heads, value_dim] float
  /// \param log_gates optional [batch, seq, heads] log forget gates (finite, <= 0)
  /// \param lengths optional [batch] tokens of each sequence (<= seq); rows past it get o = 0
  template <class TQ, class TK, class TV>
  void prefill(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
               const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
               const view3<const float>& log_gates = {}, const view1<const index_t>& lengths = {}) {
    using Q = std::remove_const_t<TQ>;
    using K = std::remove_const_t<TK>;
    using Vt = std::remove_const_t<TV>;
    const view4<const Q> qc = q;
    const view4<const K> kc = k;
    const view4<const Vt> vc = v;
    constexpr const char* op = "attend::linear_state::prefill";
    linear_params p = call_params(log_gates, lengths);
    linear::detail::validate_linear(op, qc, kc, vc, o, p);
    check_dims(op, qc, vc);
    linear::detail::problem pb = call_problem(qc.extent(1), log_gates);
    const linear::detail::state_store store{data_.data(), stride_, tokens_.data()};
    linear::detail::causal_forward<Arch>(pb, phi_, qc, kc, vc, o,
                                         lengths.has_value() ? lengths.data() : nullptr, &store,
                                         &ws_.ws);
  }

  /// One decode step: every sequence absorbs one token and returns its output (recurrent form).
  /// \param q [batch, 1, heads, head_dim], k the same, v [batch, 1, heads, value_dim] (float,
  ///        bf16 or fp16), o [batch, 1, heads, value_dim] float
  /// \param log_gates optional [batch, 1, heads] log forget gates of the new token (<= 0)
  template <class TQ, class TK, class TV>
  void step(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k, const tensor_view<TV, 4>& v,
            const tensor_view<float, 4>& o, const view3<const float>& log_gates = {}) {
    using Q = std::remove_const_t<TQ>;
    using K = std::remove_const_t<TK>;
    using Vt = std::remove_const_t<TV>;
    const view4<const Q> qc = q;
    const view4<const K> kc = k;
    const view4<const Vt> vc = v;
    constexpr const char* op = "attend::linear_state::step";
    linear::detail::validate_linear(op, qc, kc, vc, o, call_params(log_gates, {}));
    ATTEND_CHECK(qc.extent(1) == 1, op, ": one token per step (q has seq ", qc.extent(1), ")");
    check_dims(op, qc, vc);
    const linear::detail::problem pb = call_problem(1, log_gates);
    const index_t B = pb.batch, H = pb.heads;
    const int threads = linear::detail::max_threads();
    const index_t per_thread = linear::detail::step_floats(pb);
    float* const base = ws_.ws.reserve(per_thread * threads);
    // Tiny per-head work: threads only pay off when there are several heads per thread.
    const int use = B * H >= 4 * threads ? threads : 1;
    linear::detail::parallel_for(B * H, use, [&](index_t i, int t) {
      const index_t b = i / H, h = i % H;
      float g = pb.decay ? std::log(pb.decay[h]) : 0.0f;
      if (pb.gates) g += pb.gates[b * pb.gs0 + h * pb.gs2];
      linear::detail::recurrent_step<Arch>(
          pb, phi_, qc.data() + b * qc.stride(0) + h * qc.stride(2),
          kc.data() + b * kc.stride(0) + h * kc.stride(2),
          vc.data() + b * vc.stride(0) + h * vc.stride(2),
          o.data() + b * o.stride(0) + h * o.stride(2), g, part(b, h), tokens(b) + 1,
          base + t * per_thread);
    });
    for (auto& n : tokens_) ++n;
  }

  /// Copies the state into user tensors: kv [batch, heads, head_dim, value_dim], and when
  /// given z [batch, heads, head_dim], sv [batch, heads, value_dim], tokens [batch]. Throws on
  /// mismatched shapes.
  void save(const view4<float>& kv_out, const view3<float>& z_out = {},
            const view3<float>& sv_out = {}, const view1<index_t>& tokens_out = {}) const {
    constexpr const char* op = "attend::linear_state::save";
    check_handoff(op, view4<const float>(kv_out), view3<const float>(z_out),
                  view3<const float>(sv_out), tokens_out.has_value(), tokens_out.extents());
    for (index_t b = 0; b < pb_.batch; ++b) {
      for (index_t h = 0; h < pb_.heads; ++h) {
        const auto p = part(b, h);
        for (index_t d = 0; d < pb_.dk; ++d)
          for (index_t e = 0; e < pb_.dv; ++e) kv_out(b, h, d, e) = p.s[d * pb_.dvp + e];
        if (z_out.has_value())
          for (index_t d = 0; d < pb_.dk; ++d) z_out(b, h, d) = p.z[d];
        if (sv_out.has_value())
          for (index_t e = 0; e < pb_.dv; ++e) sv_out(b, h, e) = p.sv[e];
      }
      if (tokens_out.has_value()) tokens_out(b) = tokens(b);
    }
  }

  /// Replaces the state by user tensors (shapes as save()); z and Σv default to 0 and tokens
  /// to 0 when not given. Throws on mismatched shapes or negative tokens.
  void load(const view4<const float>& kv_in, const view3<const float>& z_in = {},
            const view3<const float>& sv_in = {}, const view1<const index_t>& tokens_in = {}) {
    constexpr const char* op = "attend::linear_state::load";
    check_handoff(op, kv_in, z_in, sv_in, tokens_in.has_value(), tokens_in.extents());
    if (tokens_in.has_value())
      for (index_t b = 0; b < pb_.batch; ++b)
        ATTEND_CHECK(tokens_in(b) >= 0, op, ": tokens[", b, "] = ", tokens_in(b), " is negative");
    reset();
    for (index_t b = 0; b < pb_.batch; ++b) {
      for (index_t h = 0; h < pb_.heads; ++h) {
        auto p = part(b, h);
        for (index_t d = 0; d < pb_.dk; ++d)
          for (index_t e = 0; e < pb_.dv; ++e) p.s[d * pb_.dvp + e] = kv_in(b, h, d, e);
        if (z_in.has_value())
          for (index_t d = 0; d < pb_.dk; ++d) p.z[d] = z_in(b, h, d);
        if (sv_in.has_value())
          for (index_t e = 0; e < pb_.dv; ++e) p.sv[e] = sv_in(b, h, e);
      }
      tokens_[static_cast<std::size_t>(b)] = tokens_in.has_value() ? tokens_in(b) : 0;
    }
  }

 private:
  /// A workspace that copies as empty (scratch is not part of a snapshot).
  struct fresh_workspace {
    workspace ws;
    fresh_workspace() = default;
    fresh_workspace(const fresh_workspace&) {}
    fresh_workspace& operator=(const fresh_workspace&) { return *this; }
    fresh_workspace(fresh_workspace&&) noexcept = default;
    fresh_workspace& operator=(fresh_workspace&&) noexcept = default;
  };

  linear::detail::state_ptrs part(index_t b, index_t h) const noexcept {
    return linear::detail::state_at(
        pb_, const_cast<float*>(data_.data()) + (b * pb_.heads + h) * stride_);
  }

  linear_params call_params(const view3<const float>& log_gates,
                            const view1<const index_t>& lengths) const {
    linear_params p = config_;
    if (!decay_.empty()) p.decay = make_view(decay_.data(), pb_.heads);
    p.log_gates = log_gates;
    p.lengths = lengths;
    return p;
  }

  linear::detail::problem call_problem(index_t seq, const view3<const float>& log_gates) const {
    linear::detail::problem pb = pb_;
    pb.seq = seq;
    pb.decay = decay_.empty() ? nullptr : decay_.data();
    if (log_gates.has_value()) {
      pb.gates = log_gates.data();
      pb.gs0 = log_gates.stride(0);
      pb.gs1 = log_gates.stride(1);
      pb.gs2 = log_gates.stride(2);
    }
    return pb;
  }

  template <class Q, class Vt>
  void check_dims(const char* op, const view4<const Q>& q, const view4<const Vt>& v) const {
    ATTEND_CHECK(q.extent(0) == pb_.batch && q.extent(2) == pb_.heads && q.extent(3) == pb_.dk &&
                     v.extent(3) == pb_.dv,
                 op, ": q ", attend::detail::shape_string(q), " and v ",
                 attend::detail::shape_string(v), " do not match the state (batch ", pb_.batch,
                 ", heads ", pb_.heads, ", head_dim ", pb_.dk, ", value_dim ", pb_.dv, ")");
  }

  void check_handoff(const char* op, const view4<const float>& kv_t, const view3<const float>& z_t,
                     const view3<const float>& sv_t, bool has_tokens,
                     const std::array<index_t, 1>& tokens_extents) const {
    attend::detail::check_tensor(op, "kv", kv_t);
    attend::detail::check_extents(op, "kv", kv_t, {pb_.batch, pb_.heads, pb_.dk, pb_.dv});
    if (z_t.has_value()) {
      attend::detail::check_tensor(op, "z", z_t);
      attend::detail::check_extents(op, "z", z_t, {pb_.batch, pb_.heads, pb_.dk});
    }
    if (sv_t.has_value()) {
      attend::detail::check_tensor(op, "sv", sv_t);
      attend::detail::check_extents(op, "sv", sv_t, {pb_.batch, pb_.heads, pb_.dv});
    }
    if (has_tokens)
      ATTEND_CHECK(tokens_extents[0] == pb_.batch, op, ": tokens has ", tokens_extents[0],
                   " entries, expected batch = ", pb_.batch);
  }

  linear_params config_;
  FeatureMap phi_;
  std::vector<float> decay_;
  linear::detail::problem pb_;
  index_t stride_ = 0;
  std::vector<float, xsimd::aligned_allocator<float, 64>> data_;
  std::vector<index_t> tokens_;
  fresh_workspace ws_;
};

}  // namespace attend

#endif  // ATTEND_LINEAR_STATE_HPP_
