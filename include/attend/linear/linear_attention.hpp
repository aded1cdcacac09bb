// Linear attention: o_i = finish(Σ_j w_ij v_j, Σ_j w_ij) with w_ij = decay(i, j) φ(q_i)·φ(k_j)
// (linear_norm says how the numerator and denominator are finished).
//
//   non-causal  S = Σ_j φ(k_j) v_jᵀ, z = Σ_j φ(k_j) over the valid keys, then every query reads
//               o_i from φ(q_i)ᵀ S and φ(q_i)·z
//   causal      the chunked Lightning-2 / fla algorithm of kernel.hpp: intra-chunk masked
//               products plus one [dk x dv] state carried from chunk to chunk, with per-head
//               decay λ_h and per-token log gates g_t
//
// Scheduling: OpenMP over (batch, head). When there are few (batch, head) pairs, each sequence is
// also cut into segments (parallel chunk passes, Lightning-2's parallel variant): pass 1 computes
// every segment's state contribution from a zero state in parallel, a short serial pass carries
// the states across segments, pass 2 runs the segments' outputs in parallel. The segment count
// depends on the shapes only, never on the thread count, so results do not depend on threads.
#ifndef ATTEND_LINEAR_LINEAR_ATTENTION_HPP_
#define ATTEND_LINEAR_LINEAR_ATTENTION_HPP_

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/validate.hpp"
#include "feature_maps.hpp"
#include "kernel.hpp"
#include "params.hpp"

namespace attend {
namespace linear::detail {

using ::attend::detail::check_extents;
using ::attend::detail::check_tensor;
using ::attend::detail::max_threads;
using ::attend::detail::parallel_for;

/// Segments per sequence for the parallel chunk passes: 1 when there are >= 8 (batch, head)
/// pairs, else enough for about 8 work items, each at least 4 chunks long.
inline index_t segments_for(index_t pairs, index_t len, index_t chunk) noexcept {
  constexpr index_t target = 8;
  if (pairs >= target || len <= 0) return 1;
  const index_t chunks = (len + chunk - 1) / chunk;
  return std::max<index_t>(1, std::min((target + pairs - 1) / pairs, chunks / 4));
}

/// Token range of segment p of P over a sequence of len tokens (chunk-aligned).
inline std::pair<index_t, index_t> segment_range(index_t len, index_t chunk, index_t p,
                                                 index_t parts) noexcept {
  const index_t chunks = (len + chunk - 1) / chunk;
  const index_t c0 = p * chunks / parts, c1 = (p + 1) * chunks / parts;
  return {std::min(len, c0 * chunk), std::min(len, c1 * chunk)};
}

/// A linear_state's storage as the drivers see it: one state block per (batch, head) at
/// base + (b * heads + h) * stride, and the tokens each sequence has absorbed.
struct state_store {
  float* base = nullptr;
  index_t stride = 0;
  index_t* tokens = nullptr;  // [batch]

  state_ptrs at(const problem& pb, index_t b, index_t h) const noexcept {
    return state_at(pb, base + (b * pb.heads + h) * stride);
  }
};

template <class TQ, class TK, class TV>
head_io<TQ, TK, TV> io_of(const problem& pb, const view4<const TQ>& q, const view4<const TK>& k,
                          const view4<const TV>& v, const view4<float>& o, index_t b,
                          index_t h) noexcept {
  head_io<TQ, TK, TV> io;
  io.q = q.data() + b * q.stride(0) + h * q.stride(2);
  io.k = k.data() + b * k.stride(0) + h * k.stride(2);
  io.v = v.data() + b * v.stride(0) + h * v.stride(2);
  io.o = o.data() + b * o.stride(0) + h * o.stride(2);
  io.qs = q.stride(1);
  io.ks = k.stride(1);
  io.vs = v.stride(1);
  io.os = o.stride(1);
  if (pb.gates) {
    io.g = pb.gates + b * pb.gs0 + h * pb.gs2;
    io.gs = pb.gs1;
  }
  io.log_lambda = pb.decay ? std::log(pb.decay[h]) : 0.0f;
  return io;
}

/// Heads per work item: up to max_group, fewer when that would leave threads without work
/// (results do not depend on it: each head's arithmetic is the same in any group).
inline index_t group_size(index_t pairs, int threads) noexcept {
  return std::max<index_t>(1, std::min<index_t>(max_group, pairs / (2 * threads)));
}

/// Work item: heads [h, h + count) of sequence b, segment p, with its cost (tokens).
struct item {
  index_t b, h, count, p, cost;
};

inline void heaviest_first(std::vector<item>& items) {
  std::stable_sort(items.begin(), items.end(),
                   [](const item& x, const item& y) { return x.cost > y.cost; });
}

/// The causal driver: q, k, v [batch, seq, heads, dk/dv], o [batch, seq, heads, dv], validated.
/// With a store, the states start from it and end in it (prefill); without, from zero.
template <class Arch, class FM, class TQ, class TK, class TV>
void causal_forward(const problem& pb, const FM& phi, const view4<const TQ>& q,
                    const view4<const TK>& k, const view4<const TV>& v, const view4<float>& o,
                    const index_t* lengths, const state_store* store, workspace* user_ws) {
  using run_t = head_run<TQ, TK, TV>;
  const index_t B = pb.batch, H = pb.heads, T = pb.seq, C = pb.chunk;
  auto len_of = [&](index_t b) { return lengths ? lengths[b] : T; };
  std::vector<index_t> parts(static_cast<std::size_t>(B)), first(static_cast<std::size_t>(B));
  index_t buffers = 0;
  for (index_t b = 0; b < B; ++b) {
    parts[b] = segments_for(B * H, len_of(b), C);
    first[b] = buffers;
    if (parts[b] > 1) buffers += H * parts[b];
  }
  const int threads = max_threads();
  const index_t group = group_size(B * H, threads);
  const index_t per_thread = scratch<Arch>::floats(pb);
  const index_t per_state = state_floats(pb);
  workspace local;
  workspace& ws = user_ws ? *user_ws : local;
  float* const base = ws.reserve(per_thread * threads + per_state * buffers);
  float* const segbase = base + per_thread * threads;
  std::vector<double> seg_decay(static_cast<std::size_t>(buffers), 0.0);
  auto scratch_of = [&](int t) {
    bump bm(base + t * per_thread);
    return scratch<Arch>::carve(bm, pb);
  };
  auto buffer = [&](index_t b, index_t h, index_t p) { return first[b] + h * parts[b] + p; };
  auto seg_state = [&](index_t b, index_t h, index_t p) {
    return state_at(pb, segbase + buffer(b, h, p) * per_state);
  };
  auto tokens0 = [&](index_t b) { return store ? store->tokens[b] : index_t{0}; };
  // Items (b, head group, segment p) for p in [0, last), heaviest first.
  auto make_items = [&](bool all_segments) {
    std::vector<item> items;
    for (index_t b = 0; b < B; ++b)
      for (index_t h = 0; h < H; h += group)
        for (index_t p = 0; p < parts[b] - (all_segments ? 0 : 1); ++p) {
          const auto r = segment_range(len_of(b), C, p, parts[b]);
          if (r.second > r.first) items.push_back({b, h, std::min(group, H - h), p, r.second - r.first});
        }
    heaviest_first(items);
    return items;
  };

  if (buffers > 0) {
    // Pass 1: each segment's contribution (all but the last), from a zero state, into the
    // buffer of the next segment.
    const std::vector<item> items = make_items(false);
    parallel_for(static_cast<index_t>(items.size()), threads, [&](index_t i, int t) {
      const item& it = items[static_cast<std::size_t>(i)];
      const auto r = segment_range(len_of(it.b), C, it.p, parts[it.b]);
      run_t runs[max_group];
      for (index_t g = 0; g < it.count; ++g) {
        runs[g].io = io_of(pb, q, k, v, o, it.b, it.h + g);
        runs[g].st = seg_state(it.b, it.h + g, it.p + 1);
        zero_state(pb, runs[g].st);
      }
      run_causal<Arch>(pb, phi, runs, it.count, r.first, r.second, false, scratch_of(t));
      for (index_t g = 0; g < it.count; ++g)
        seg_decay[static_cast<std::size_t>(buffer(it.b, it.h + g, it.p))] = runs[g].total;
    });
    // Carry: buffer p becomes the state at the start of segment p.
    parallel_for(B * H, threads, [&](index_t i, int) {
      const index_t b = i / H, h = i % H;
      if (parts[b] <= 1) return;
      const state_ptrs s0 = seg_state(b, h, 0);
      if (store)
        copy_state(pb, store->at(pb, b, h), s0);
      else
        zero_state(pb, s0);
      for (index_t p = 1; p < parts[b]; ++p) {
        const double g = seg_decay[static_cast<std::size_t>(buffer(b, h, p - 1))];
        combine_state<Arch>(pb, static_cast<float>(std::exp(g)), seg_state(b, h, p - 1),
                            seg_state(b, h, p));
      }
    });
  }

  // Pass 2: outputs, every segment from its carried state.
  const std::vector<item> items = make_items(true);
  parallel_for(static_cast<index_t>(items.size()), threads, [&](index_t i, int t) {
    const item& it = items[static_cast<std::size_t>(i)];
    const auto r = segment_range(len_of(it.b), C, it.p, parts[it.b]);
    const scratch<Arch> sc = scratch_of(t);
    const bool in_place = parts[it.b] == 1 && store;
    run_t runs[max_group];
    for (index_t g = 0; g < it.count; ++g) {
      const index_t h = it.h + g;
      runs[g].io = io_of(pb, q, k, v, o, it.b, h);
      runs[g].n0 = tokens0(it.b) + r.first;
      if (in_place) {
        runs[g].st = store->at(pb, it.b, h);
        continue;
      }
      runs[g].st = state_at(pb, sc.run + g * per_state);
      if (parts[it.b] == 1)
        zero_state(pb, runs[g].st);
      else
        copy_state(pb, seg_state(it.b, h, it.p), runs[g].st);
    }
    run_causal<Arch>(pb, phi, runs, it.count, r.first, r.second, true, sc);
    if (store && !in_place && it.p == parts[it.b] - 1)
      for (index_t g = 0; g < it.count; ++g)
        copy_state(pb, runs[g].st, store->at(pb, it.b, it.h + g));
  });

  // Rows past a sequence's length: o = 0.
  for (index_t b = 0; b < B; ++b)
    for (index_t t = len_of(b); t < T; ++t)
      for (index_t h = 0; h < H; ++h) {
        float* row = o.data() + b * o.stride(0) + t * o.stride(1) + h * o.stride(2);
        std::fill(row, row + pb.dv, 0.0f);
      }
  if (store)
    for (index_t b = 0; b < B; ++b) store->tokens[b] += len_of(b);
}

/// The non-causal driver: q [batch, seq_q, heads, dk], k/v [batch, seq_k, heads, dk/dv],
/// o [batch, seq_q, heads, dv], validated. Keys are summed per segment, then in segment order.
template <class Arch, class FM, class TQ, class TK, class TV>
void noncausal_forward(const problem& pb, const FM& phi, const view4<const TQ>& q,
                       const view4<const TK>& k, const view4<const TV>& v,
                       const view4<float>& o, const index_t* lengths, workspace* user_ws) {
  using run_t = head_run<TQ, TK, TV>;
  const index_t B = pb.batch, H = pb.heads, C = pb.chunk;
  const index_t seq_q = q.extent(1), seq_k = k.extent(1);
  auto len_of = [&](index_t b) { return lengths ? lengths[b] : seq_k; };
  std::vector<index_t> parts(static_cast<std::size_t>(B)), first(static_cast<std::size_t>(B));
  index_t buffers = 0;
  for (index_t b = 0; b < B; ++b) {
    parts[b] = segments_for(B * H, len_of(b), C);
    first[b] = buffers;
    buffers += H * parts[b];
  }
  const index_t qparts = segments_for(B * H, seq_q, C);
  const int threads = max_threads();
  const index_t group = group_size(B * H, threads);
  const index_t groups = (H + group - 1) / group;
  const index_t per_thread = scratch<Arch>::floats(pb);
  const index_t per_state = state_floats(pb);
  workspace local;
  workspace& ws = user_ws ? *user_ws : local;
  float* const base = ws.reserve(per_thread * threads + per_state * buffers);
  float* const segbase = base + per_thread * threads;
  auto scratch_of = [&](int t) {
    bump bm(base + t * per_thread);
    return scratch<Arch>::carve(bm, pb);
  };
  auto seg_state = [&](index_t b, index_t h, index_t p) {
    return state_at(pb, segbase + (first[b] + h * parts[b] + p) * per_state);
  };

  std::vector<item> items;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; h += group)
      for (index_t p = 0; p < parts[b]; ++p) {
        const auto r = segment_range(len_of(b), C, p, parts[b]);
        items.push_back({b, h, std::min(group, H - h), p, r.second - r.first});
      }
  heaviest_first(items);
  parallel_for(static_cast<index_t>(items.size()), threads, [&](index_t i, int t) {
    const item& it = items[static_cast<std::size_t>(i)];
    const auto r = segment_range(len_of(it.b), C, it.p, parts[it.b]);
    run_t runs[max_group];
    for (index_t g = 0; g < it.count; ++g) {
      runs[g].io = io_of(pb, q, k, v, o, it.b, it.h + g);
      runs[g].st = seg_state(it.b, it.h + g, it.p);
      zero_state(pb, runs[g].st);
    }
    absorb_keys<Arch>(pb, phi, runs, it.count, r.first, r.second, scratch_of(t));
  });
  // Sum the segments in order; the total ends in the last segment's buffer.
  parallel_for(B * H, threads, [&](index_t i, int) {
    const index_t b = i / H, h = i % H;
    for (index_t p = 1; p < parts[b]; ++p)
      combine_state<Arch>(pb, 1.0f, seg_state(b, h, p - 1), seg_state(b, h, p));
  });
  parallel_for(B * groups * qparts, threads, [&](index_t i, int t) {
    const index_t b = i / (groups * qparts), h0 = (i / qparts) % groups * group, p = i % qparts;
    const index_t count = std::min(group, H - h0);
    const auto r = segment_range(seq_q, C, p, qparts);
    run_t runs[max_group];
    for (index_t g = 0; g < count; ++g) {
      runs[g].io = io_of(pb, q, k, v, o, b, h0 + g);
      runs[g].st = seg_state(b, h0 + g, parts[b] - 1);
      runs[g].n0 = len_of(b);
    }
    read_queries<Arch>(pb, phi, runs, count, r.first, r.second, scratch_of(t));
  });
}

/// Checks the configuration part of linear_params (shared with linear_state).
inline void validate_config(const char* op, const linear_params& p, index_t heads) {
  if (p.scale) ATTEND_CHECK(std::isfinite(*p.scale), op, ": scale must be finite (", *p.scale, ")");
  ATTEND_CHECK(std::isfinite(p.eps) && p.eps >= 0.0f, op, ": eps (", p.eps,
               ") must be finite and >= 0");
  ATTEND_CHECK(p.chunk >= 1 && p.chunk <= 1024, op, ": chunk (", p.chunk,
               ") must be in [1, 1024]");
  ATTEND_CHECK(p.norm == linear_norm::none || p.norm == linear_norm::denominator ||
                   p.norm == linear_norm::mala,
               op, ": unknown linear_norm value");
  if (p.decay.has_value()) {
    ATTEND_CHECK(p.causal, op, ": decay needs causal attention");
    ATTEND_CHECK(p.norm != linear_norm::mala, op, ": mala has no decay");
    check_tensor(op, "decay", p.decay);
    check_extents(op, "decay", p.decay, {heads});
    for (index_t h = 0; h < heads; ++h)
      ATTEND_CHECK(p.decay(h) > 0.0f && p.decay(h) <= 1.0f, op, ": decay[", h, "] = ", p.decay(h),
                   " is outside (0, 1]");
  }
}

/// Checks per-call log gates [batch, seq, heads] (finite, <= 0) and lengths [batch].
inline void validate_gates(const char* op, const view3<const float>& g, index_t batch, index_t seq,
                           index_t heads, linear_norm norm, bool causal) {
  if (!g.has_value()) return;
  ATTEND_CHECK(causal, op, ": log_gates need causal attention");
  ATTEND_CHECK(norm != linear_norm::mala, op, ": mala has no gates");
  check_extents(op, "log_gates", g, {batch, seq, heads});
  for (std::size_t r = 0; r < 3; ++r)
    ATTEND_CHECK(g.stride(r) >= 0, op, ": log_gates has a negative stride on axis ", r);
  for (index_t b = 0; b < batch; ++b)
    for (index_t t = 0; t < seq; ++t)
      for (index_t h = 0; h < heads; ++h)
        ATTEND_CHECK(std::isfinite(g(b, t, h)) && g(b, t, h) <= 0.0f, op, ": log_gates[", b, ", ",
                     t, ", ", h, "] = ", g(b, t, h), " must be finite and <= 0");
}

inline void validate_lengths(const char* op, const view1<const index_t>& lens, index_t batch,
                             index_t seq) {
  if (!lens.has_value()) return;
  check_tensor(op, "lengths", lens);
  check_extents(op, "lengths", lens, {batch});
  for (index_t b = 0; b < batch; ++b)
    ATTEND_CHECK(lens(b) >= 0 && lens(b) <= seq, op, ": lengths[", b, "] = ", lens(b),
                 " is outside [0, ", seq, "]");
}

/// Every check of linear_attention(), before any work; throws attend::invalid_argument.
template <class TQ, class TK, class TV>
void validate_linear(const char* op, const view4<const TQ>& q, const view4<const TK>& k,
                     const view4<const TV>& v, const view4<float>& o, const linear_params& p) {
  check_tensor(op, "q", q);
  check_tensor(op, "k", k);
  check_tensor(op, "v", v);
  attend::detail::check_output(op, "o", o);
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads = q.extent(2);
  const index_t seq_k = k.extent(1);
  ATTEND_CHECK(k.extent(0) == batch && v.extent(0) == batch, op, ": batch of q (", batch,
               "), k (", k.extent(0), ") and v (", v.extent(0), ") differ");
  ATTEND_CHECK(k.extent(2) == heads && v.extent(2) == heads, op, ": heads of q (", heads,
               "), k (", k.extent(2), ") and v (", v.extent(2), ") must be equal");
  ATTEND_CHECK(k.extent(3) == q.extent(3), op, ": head dim of k (", k.extent(3),
               ") must equal that of q (", q.extent(3), ")");
  ATTEND_CHECK(v.extent(1) == seq_k, op, ": v ", attend::detail::shape_string(v),
               " and k ", attend::detail::shape_string(k), " differ in seq");
  ATTEND_CHECK(!p.causal || seq_q == seq_k, op, ": causal linear attention needs seq of q (",
               seq_q, ") equal to seq of k (", seq_k, ")");
  check_extents(op, "o", o, {batch, seq_q, heads, v.extent(3)});
  attend::detail::check_disjoint(op, "o", o, "q", q);
  attend::detail::check_disjoint(op, "o", o, "k", k);
  attend::detail::check_disjoint(op, "o", o, "v", v);
  validate_config(op, p, heads);
  validate_gates(op, p.log_gates, batch, seq_k, heads, p.norm, p.causal);
  validate_lengths(op, p.lengths, batch, seq_k);
}

template <class Arch, class FM, class TQ, class TK, class TV>
void linear_dispatch(const view4<const TQ>& q, const view4<const TK>& k, const view4<const TV>& v,
                     const view4<float>& o, const linear_params& p, const FM& phi) {
  const problem pb =
      make_problem<Arch>(q.extent(0), k.extent(1), q.extent(2), q.extent(3), v.extent(3), p);
  const index_t* lens = p.lengths.has_value() ? p.lengths.data() : nullptr;
  if (p.causal)
    causal_forward<Arch>(pb, phi, q, k, v, o, lens, nullptr, p.scratch);
  else
    noncausal_forward<Arch>(pb, phi, q, k, v, o, lens, p.scratch);
}

}  // namespace linear::detail

/// Linear attention with feature map φ (default elu+1) and the options of linear_params.
///
/// \param q [batch, seq_q, heads, head_dim] float, bf16 or fp16
/// \param k [batch, seq_k, heads, head_dim], float, bf16 or fp16
/// \param v [batch, seq_k, heads, value_dim], float, bf16 or fp16
/// \param o [batch, seq_q, heads, value_dim] float output
/// \param phi feature map (linear::identity, elu_plus_one, relu, silu or any callable on float,
///        vectorised when also callable on xsimd::batch<float, Arch>)
/// Any layout with a contiguous last axis. Causal: seq_q == seq_k, computed in chunks of
/// params.chunk tokens with O(seq * head_dim * value_dim) work; non-causal: seq_q may differ.
/// Throws attend::invalid_argument on bad shapes or parameters (decay outside (0, 1], gates
/// > 0, decay or gates with non-causal or mala, ...) before writing anything.
template <class TQ, class TK, class TV, class FeatureMap = linear::elu_plus_one>
void linear_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                      const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                      const linear_params& params = {}, const FeatureMap& phi = {}) {
  using Q = std::remove_const_t<TQ>;
  using K = std::remove_const_t<TK>;
  using Vt = std::remove_const_t<TV>;
  static_assert(is_storage_type_v<Q> && is_storage_type_v<K> && is_storage_type_v<Vt>,
                "q, k and v must be float, bf16 or fp16");
  static_assert(linear::detail::is_feature_map_v<FeatureMap>,
                "a feature map must be callable on float");
  const view4<const Q> qc = q;
  const view4<const K> kc = k;
  const view4<const Vt> vc = v;
  linear::detail::validate_linear("attend::linear_attention", qc, kc, vc, o, params);
  linear::detail::linear_dispatch<xsimd::default_arch>(qc, kc, vc, o, params, phi);
}

}  // namespace attend

#endif  // ATTEND_LINEAR_LINEAR_ATTENTION_HPP_
