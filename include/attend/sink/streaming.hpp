// StreamingLLM (Xiao et al., ICLR 2024; card 8 of LINEAR_SINK.md): keep the first `sink` tokens
// (attention sinks) and the `recent` most recent ones; positions are cache indices, so keys are
// stored WITHOUT rotary embedding and rotated on load at their cache position, and the query at
// its own cache position (relative distances stay inside the trained window).
//
//   streaming_cache      the cache policy (StartRecentKVCache): evict_for_space before appending
//                        keeps [0, sink) and [len - recent + incoming, len); eviction bookkeeping
//                        (tokens seen / evicted, which token each slot holds) and row moves
//   rope_table, rope_keys  rotary embedding tables and the engine's key hook applying them on
//                        load (keys are rotated in the packed tile, never in the cache)
//   streaming_attention  attention over such a cache with in-cache positions: plain causal
//                        (the cache is already sinks + window) or, for a one-shot long prefill
//                        with the same semantics, the sink + window mask (gap never loaded)
#ifndef ATTEND_SINK_STREAMING_HPP_
#define ATTEND_SINK_STREAMING_HPP_

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "forward.hpp"
#include "masks.hpp"

namespace attend::sink {

/// Rotary embedding tables: cos and sin of pos * theta^(-2i / rotary_dim) for positions
/// [0, max_positions) and i < rotary_dim / 2, computed in double. neox = true rotates the
/// halves (x_i, x_{i + rotary_dim/2}) as HF Llama's rotate_half (the StreamingLLM reference);
/// false rotates adjacent pairs (x_2i, x_2i+1) as GPT-J. Dims >= rotary_dim are unchanged.
class rope_table {
 public:
  rope_table(index_t rotary_dim, index_t max_positions, double theta = 10000.0, bool neox = true)
      : rot_(rotary_dim), max_pos_(max_positions), neox_(neox) {
    ATTEND_CHECK(rotary_dim > 0 && rotary_dim % 2 == 0, "attend::sink::rope_table: rotary_dim (",
                 rotary_dim, ") must be even and > 0");
    ATTEND_CHECK(max_positions > 0, "attend::sink::rope_table: max_positions (", max_positions,
                 ") must be > 0");
    ATTEND_CHECK(theta > 0.0 && std::isfinite(theta), "attend::sink::rope_table: theta (", theta,
                 ") must be finite and > 0");
    const index_t half = rot_ / 2;
    cos_.resize(static_cast<std::size_t>(max_pos_ * half));
    sin_.resize(cos_.size());
    for (index_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(theta, -2.0 * double(i) / double(rot_));
      for (index_t p = 0; p < max_pos_; ++p) {
        cos_[p * half + i] = static_cast<float>(std::cos(double(p) * inv_freq));
        sin_[p * half + i] = static_cast<float>(std::sin(double(p) * inv_freq));
      }
    }
  }

  index_t rotary_dim() const noexcept { return rot_; }
  index_t max_positions() const noexcept { return max_pos_; }
  bool neox() const noexcept { return neox_; }
  const float* cos(index_t pos) const noexcept { return cos_.data() + pos * (rot_ / 2); }
  const float* sin(index_t pos) const noexcept { return sin_.data() + pos * (rot_ / 2); }

  /// Rotates one row x (at least rotary_dim floats) in place at position pos (< max_positions).
  template <class Arch = xsimd::default_arch>
  void rotate(float* x, index_t pos) const noexcept {
    using V = simd::vfloat<Arch>;
    constexpr index_t w = simd::lanes<Arch>;
    const index_t half = rot_ / 2;
    const float* c = cos(pos);
    const float* s = sin(pos);
    if (neox_) {
      index_t i = 0;
      for (; i + w <= half; i += w) {
        const V x1 = V::load_unaligned(x + i), x2 = V::load_unaligned(x + half + i);
        const V cv = V::load_unaligned(c + i), sv = V::load_unaligned(s + i);
        simd::fnmadd<Arch>(x2, sv, x1 * cv).store_unaligned(x + i);
        simd::fmadd<Arch>(x1, sv, x2 * cv).store_unaligned(x + half + i);
      }
      for (; i < half; ++i) {
        const float x1 = x[i], x2 = x[half + i];
        x[i] = x1 * c[i] - x2 * s[i];
        x[half + i] = x2 * c[i] + x1 * s[i];
      }
    } else {
      for (index_t i = 0; i < half; ++i) {
        const float x1 = x[2 * i], x2 = x[2 * i + 1];
        x[2 * i] = x1 * c[i] - x2 * s[i];
        x[2 * i + 1] = x2 * c[i] + x1 * s[i];
      }
    }
  }

 private:
  index_t rot_, max_pos_;
  bool neox_;
  std::vector<float> cos_, sin_;
};

/// The engine's key hook for rotary embedding on load: each key row is rotated at its cache
/// position as the tile is packed (the cache keeps un-rotated keys).
template <class Arch>
struct rope_keys {
  static constexpr bool is_identity = false;
  const rope_table* table = nullptr;
  void apply(float* k, index_t, index_t pos, index_t) const noexcept {
    table->template rotate<Arch>(k, pos);
  }
};

/// StreamingLLM's cache policy (StartRecentKVCache) and its bookkeeping. The cache itself is
/// the caller's [batch, capacity, heads, dim] buffers (K and V, any storage type); this object
/// tracks how many slots are used, which token each slot holds, and moves rows on eviction.
/// Defaults are the reference class's start_size = 4, recent_size = 512.
class streaming_cache {
 public:
  /// What evict_for_space did: slots [from, to) moved down to `dest` (nothing when from == to)
  /// and `dropped` tokens evicted.
  struct eviction {
    index_t from = 0, to = 0, dest = 0, dropped = 0;
  };

  explicit streaming_cache(index_t sink = 4, index_t recent = 512) : sink_(sink), recent_(recent) {
    ATTEND_CHECK(sink >= 0 && recent > 0, "attend::sink::streaming_cache: sink (", sink,
                 ") must be >= 0 and recent (", recent, ") > 0");
  }

  index_t sink_size() const noexcept { return sink_; }
  index_t recent_size() const noexcept { return recent_; }
  /// Slots the cache needs: sink + recent.
  index_t capacity() const noexcept { return sink_ + recent_; }
  /// Tokens currently held (slots [0, length) are valid).
  index_t length() const noexcept { return length_; }
  /// Tokens appended since construction / reset.
  index_t seen() const noexcept { return seen_; }
  /// Tokens evicted so far.
  index_t evicted() const noexcept { return seen_ - length_; }
  /// The index (in the original stream) of the token held in slot `slot` < length().
  index_t token_at(index_t slot) const noexcept {
    return slot < sink_ ? slot : seen_ - length_ + slot;
  }
  void reset() noexcept { length_ = seen_ = 0; }

  /// Makes room for `incoming` tokens (call before appending them): if length + incoming
  /// exceeds the capacity, keeps slots [0, sink) and [length - recent + incoming, length),
  /// moving the latter down to slot `sink`. Apply the result to every cache buffer with move().
  /// incoming must be <= recent when an eviction is needed.
  eviction evict_for_space(index_t incoming) {
    ATTEND_CHECK(incoming >= 0, "attend::sink::streaming_cache::evict_for_space: incoming (",
                 incoming, ") must be >= 0");
    eviction e;
    if (length_ + incoming <= capacity()) return e;
    ATTEND_CHECK(incoming <= recent_, "attend::sink::streaming_cache::evict_for_space: ", incoming,
                 " incoming tokens do not fit a recent window of ", recent_);
    e.from = length_ - recent_ + incoming;
    e.to = length_;
    e.dest = sink_;
    e.dropped = e.from - sink_;
    length_ = sink_ + (e.to - e.from);
    return e;
  }

  /// Registers `n` appended tokens; returns the first slot they go to (write them there with
  /// write()). length() + n must not exceed capacity() (call evict_for_space first).
  index_t append(index_t n) {
    ATTEND_CHECK(n >= 0 && length_ + n <= capacity(), "attend::sink::streaming_cache::append: ", n,
                 " tokens do not fit (length ", length_, ", capacity ", capacity(), ")");
    const index_t slot = length_;
    length_ += n;
    seen_ += n;
    return slot;
  }

  /// Applies an eviction to one cache buffer [batch, capacity, heads, dim] (K or V).
  template <class T>
  static void move(const eviction& e, const view4<T>& cache) {
    check_cache("move", cache, e.dest + (e.to - e.from));
    if (e.from == e.to || e.from == e.dest) return;
    const std::size_t row = static_cast<std::size_t>(cache.extent(3)) * sizeof(T);
    for (index_t b = 0; b < cache.extent(0); ++b)
      for (index_t s = 0; s < e.to - e.from; ++s)  // dest < from: ascending order is safe
        for (index_t h = 0; h < cache.extent(2); ++h)
          std::memmove(&cache(b, e.dest + s, h, 0), &cache(b, e.from + s, h, 0), row);
  }

  /// Copies rows src [batch, n, heads, dim] into cache slots [slot, slot + n).
  template <class T>
  static void write(const view4<const T>& src, const view4<T>& cache, index_t slot) {
    check_cache("write", cache, slot + src.extent(1));
    attend::detail::check_tensor("attend::sink::streaming_cache::write", "src", src);
    ATTEND_CHECK(src.extent(0) == cache.extent(0) && src.extent(2) == cache.extent(2) &&
                     src.extent(3) == cache.extent(3),
                 "attend::sink::streaming_cache::write: src ", attend::detail::shape_string(src),
                 " does not match cache ", attend::detail::shape_string(cache));
    const std::size_t row = static_cast<std::size_t>(src.extent(3)) * sizeof(T);
    for (index_t b = 0; b < src.extent(0); ++b)
      for (index_t s = 0; s < src.extent(1); ++s)
        for (index_t h = 0; h < src.extent(2); ++h)
          std::memcpy(&cache(b, slot + s, h, 0), &src(b, s, h, 0), row);
  }

 private:
  template <class T>
  static void check_cache(const char* what, const view4<T>& cache, index_t slots) {
    attend::detail::check_output("attend::sink::streaming_cache", "cache", cache);
    ATTEND_CHECK(slots <= cache.extent(1), "attend::sink::streaming_cache::", what, ": needs ",
                 slots, " slots, the cache view has ", cache.extent(1));
  }

  index_t sink_, recent_;
  index_t length_ = 0, seen_ = 0;
};

/// Options of streaming_attention.
struct streaming_params {
  /// Sink tokens of the sink + window mask (used when window >= 0).
  index_t sink = 4;
  /// -1: plain causal attention within the cache (what StreamingLLM runs at every step, the
  /// cache already being sinks + recent). >= 0: the mask j <= i and (j < sink or i - j < window)
  /// in cache positions, for a one-shot long prefill with the same semantics.
  index_t window = -1;
  /// Rotary table: keys are rotated on load at their cache positions and queries (copied, not
  /// in place) at theirs, kv_len - seq_q + i. Null = no rotary embedding.
  const rope_table* rope = nullptr;
};

namespace detail {

template <class Arch, class KV, class Mask>
void streaming_run(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                   const view4<float>& o, const attention_params& p, const Mask& mask,
                   const rope_table* rope) {
  const engine::sink_logits sink{p.sinks.has_value() ? p.sinks.data() : nullptr};
  const index_t* lens = p.kv_lens.has_value() ? p.kv_lens.data() : nullptr;
  const float scale = attend::detail::resolve_scale(p, q.extent(3));
  attend::detail::dispatch_head_dims(q.extent(3), v.extent(3), [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    with_score_mod(p, [&](auto score) {
      if (rope != nullptr) {
        const auto var =
            engine::make_variant(score, mask, sink, engine::no_output_mod{}, rope_keys<Arch>{rope});
        attend::detail::dense_forward<Arch, DK, DV>(q, k, v, o, p.lse, lens, scale, var, p.scratch);
      } else {
        attend::detail::dense_forward<Arch, DK, DV>(
            q, k, v, o, p.lse, lens, scale, engine::make_variant(score, mask, sink), p.scratch);
      }
    });
  });
}

}  // namespace detail

/// Attention over a StreamingLLM cache with in-cache positions.
///
/// \param q [batch, seq_q, heads_q, dk] float, NOT rotated (rotated internally when s.rope)
/// \param k, v [batch, seq_k, heads_kv, dk / dv] the cache's valid slots (float, bf16, fp16);
///        keys NOT rotated when s.rope is set
/// \param o [batch, seq_q, heads_q, dv] float output
/// \param s sink / window / rope options (see streaming_params)
/// \param p attention options (causal: set it for StreamingLLM; window, softcap, sinks,
///        kv_lens, lse, ...). Query i sits at cache position kv_len - seq_q + i.
/// Throws attend::invalid_argument on bad shapes, a rope table too short for the cache
/// (max_positions < seq_k) or rotary_dim > dk.
template <class TQ, class TK, class TV>
void streaming_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                         const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                         const streaming_params& s, const attention_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  using Arch = xsimd::default_arch;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  static_assert(is_storage_type_v<KV>, "k and v must be float, bf16 or fp16");
  constexpr const char* op = "attend::sink::streaming_attention";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attend::detail::validate_attention(op, qc, kc, vc, o, p);
  ATTEND_CHECK(s.sink >= 0 && s.window >= -1, op, ": sink (", s.sink, ") must be >= 0 and window (",
               s.window, ") >= -1");
  view4<const float> qr = qc;
  std::vector<float> rotated;
  if (s.rope != nullptr) {
    ATTEND_CHECK(s.rope->max_positions() >= k.extent(1) && s.rope->rotary_dim() <= q.extent(3), op,
                 ": rope table covers ", s.rope->max_positions(), " positions and ",
                 s.rope->rotary_dim(), " dims; the cache has ", k.extent(1), " slots of head dim ",
                 q.extent(3));
    const index_t batch = q.extent(0), seq_q = q.extent(1), heads = q.extent(2), d = q.extent(3);
    rotated.resize(static_cast<std::size_t>(batch * seq_q * heads * d));
    const auto rv = bshd(rotated.data(), batch, seq_q, heads, d);
    for (index_t b = 0; b < batch; ++b) {
      const index_t len = p.kv_lens.has_value() ? p.kv_lens(b) : k.extent(1);
      for (index_t i = 0; i < seq_q; ++i)
        for (index_t h = 0; h < heads; ++h) {
          std::memcpy(&rv(b, i, h, 0), &qc(b, i, h, 0),
                      static_cast<std::size_t>(d) * sizeof(float));
          const index_t pos = len - seq_q + i;
          if (pos >= 0) s.rope->template rotate<Arch>(&rv(b, i, h, 0), pos);
        }
    }
    qr = rv;
  }
  const engine::standard_mask base = attend::detail::make_mask(p);
  if (s.window >= 0)
    detail::streaming_run<Arch>(qr, kc, vc, o, p,
                                intersect(sink_window_mask{s.sink, s.window}, base), s.rope);
  else
    detail::streaming_run<Arch>(qr, kc, vc, o, p, base, s.rope);
}

}  // namespace attend::sink

#endif  // ATTEND_SINK_STREAMING_HPP_
