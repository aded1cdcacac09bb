// Straightforward full-matrix attention in double precision for the sink family's tests: the
// whole probability matrix P [batch, heads_q, seq_q, seq_k] is materialised, so every statistic
// and calibration is written from its definition (column sums, entropy, ACT's redistribution,
// FitM's class re-weighting, per-head masks). Scores and visibility come from the reference
// oracle's helpers (reference::visible / modified_score), plus an optional extra mask.
#ifndef ATTEND_TESTS_SINK_SINK_ORACLE_HPP_
#define ATTEND_TESTS_SINK_SINK_ORACLE_HPP_

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "attend/reference/naive.hpp"
#include "common/tensors.hpp"

namespace attend::testing {

/// Extra visibility on top of attention_params: keep(b, h, i, qpos, j).
using extra_mask = std::function<bool(index_t, index_t, index_t, index_t, index_t)>;

struct full_attention {
  index_t batch = 0, heads = 0, seq_q = 0, seq_k = 0, dv = 0;
  std::vector<double> s;     // scores, -inf where not visible
  std::vector<double> p;     // probabilities over keys (the sink takes the rest)
  std::vector<double> sink;  // [b][h][i] mass of the sink logit
  std::vector<double> lse;   // [b][h][i] with the sink, -inf for a row that sees nothing

  index_t at(index_t b, index_t h, index_t i, index_t j) const {
    return ((b * heads + h) * seq_q + i) * seq_k + j;
  }
  index_t row(index_t b, index_t h, index_t i) const { return (b * heads + h) * seq_q + i; }
  double P(index_t b, index_t h, index_t i, index_t j) const { return p[at(b, h, i, j)]; }
  bool visible(index_t b, index_t h, index_t i, index_t j) const {
    return s[at(b, h, i, j)] != -std::numeric_limits<double>::infinity();
  }
  index_t kv_len(const attention_params& prm, index_t b) const {
    return prm.kv_lens.has_value() ? prm.kv_lens(b) : seq_k;
  }
};

/// P = softmax over the visible keys (plus the sink logit of p.sinks), in double.
template <class KV>
full_attention full_probs(const view4<const float>& q, const view4<const KV>& k,
                          const attention_params& prm, const extra_mask& extra = {}) {
  full_attention f;
  f.batch = q.extent(0);
  f.seq_q = q.extent(1);
  f.heads = q.extent(2);
  f.seq_k = k.extent(1);
  const index_t dk = q.extent(3), group = f.heads / k.extent(2);
  const double scale = prm.scale ? double(*prm.scale) : 1.0 / std::sqrt(double(dk));
  const double ninf = -std::numeric_limits<double>::infinity();
  f.s.assign(static_cast<std::size_t>(f.batch * f.heads * f.seq_q * f.seq_k), ninf);
  f.p.assign(f.s.size(), 0.0);
  f.sink.assign(static_cast<std::size_t>(f.batch * f.heads * f.seq_q), 0.0);
  f.lse.assign(f.sink.size(), ninf);
  for (index_t b = 0; b < f.batch; ++b) {
    const index_t len = f.kv_len(prm, b);
    for (index_t h = 0; h < f.heads; ++h)
      for (index_t i = 0; i < f.seq_q; ++i) {
        const index_t qpos = len - f.seq_q + i;
        double mx = ninf;
        for (index_t j = 0; j < f.seq_k; ++j) {
          if (!reference::visible(prm, b, h, i, qpos, j, len)) continue;
          if (extra && !extra(b, h, i, qpos, j)) continue;
          double dot = 0.0;
          for (index_t d = 0; d < dk; ++d)
            dot += double(q(b, i, h, d)) * double(to_float(k(b, j, h / group, d)));
          const double sc = reference::modified_score(prm, dot, scale, b, h, i, qpos, j);
          f.s[f.at(b, h, i, j)] = sc;
          mx = std::max(mx, sc);
        }
        const double sg = prm.sinks.has_value() ? double(prm.sinks(h)) : ninf;
        mx = std::max(mx, sg);
        if (mx == ninf) continue;
        double sum = sg == ninf ? 0.0 : std::exp(sg - mx);
        for (index_t j = 0; j < f.seq_k; ++j) sum += std::exp(f.s[f.at(b, h, i, j)] - mx);
        const double l = mx + std::log(sum);
        f.lse[f.row(b, h, i)] = l;
        for (index_t j = 0; j < f.seq_k; ++j)
          f.p[f.at(b, h, i, j)] = std::exp(f.s[f.at(b, h, i, j)] - l);
        f.sink[f.row(b, h, i)] = sg == ninf ? 0.0 : std::exp(sg - l);
      }
  }
  return f;
}

/// o[b, i, h, :] = sum_j W[b, h, i, j] v[b, j, h / group, :] for a weight matrix laid out as P.
template <class KV>
tensor<double, 4> weighted_values(const full_attention& f, const std::vector<double>& weights,
                                  const view4<const KV>& v) {
  const index_t dv = v.extent(3), group = f.heads / v.extent(2);
  auto o = tensor<double, 4>::make({f.batch, f.seq_q, f.heads, dv});
  for (index_t b = 0; b < f.batch; ++b)
    for (index_t h = 0; h < f.heads; ++h)
      for (index_t i = 0; i < f.seq_q; ++i)
        for (index_t c = 0; c < dv; ++c) {
          double acc = 0.0;
          for (index_t j = 0; j < f.seq_k; ++j) {
            const double w = weights[f.at(b, h, i, j)];
            if (w != 0.0) acc += w * double(to_float(v(b, j, h / group, c)));
          }
          o.view(b, i, h, c) = acc;
        }
  return o;
}

/// A [rows...] double tensor view of a std::vector laid out [b][h][i].
inline tensor<double, 3> rows_of(const full_attention& f, const std::vector<double>& x) {
  auto t = tensor<double, 3>::make({f.batch, f.heads, f.seq_q});
  std::copy(x.begin(), x.end(), t.storage.begin());
  return t;
}

/// Random q / k / v with a few "sink" keys: every query shares a direction u, and the keys at
/// `sink_keys` point along u, so they draw a large share of every row's attention (as BOS and
/// hidden sinks do in trained models).
template <class KV>
struct sink_data {
  tensor<float, 4> q;
  tensor<KV, 4> k, v;
  sink_data(index_t batch, index_t seq_q, index_t seq_k, index_t heads_q, index_t heads_kv,
            index_t d, index_t dv, const std::vector<index_t>& sink_keys, unsigned seed,
            float strength = 6.0f)
      : q(tensor<float, 4>::make({batch, seq_q, heads_q, d})),
        k(tensor<KV, 4>::make({batch, seq_k, heads_kv, d})),
        v(tensor<KV, 4>::make({batch, seq_k, heads_kv, dv})) {
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng);
    fill_uniform(k.view, rng);
    fill_uniform(v.view, rng);
    std::vector<float> u(static_cast<std::size_t>(d));
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    double norm = 0.0;
    for (auto& x : u) {
      x = dist(rng);
      norm += double(x) * x;
    }
    for (auto& x : u) x = static_cast<float>(x / std::sqrt(norm));
    const float qs = std::sqrt(float(d)) * 0.5f;
    for (index_t b = 0; b < batch; ++b)
      for (index_t i = 0; i < seq_q; ++i)
        for (index_t h = 0; h < heads_q; ++h)
          for (index_t c = 0; c < d; ++c)
            q.view(b, i, h, c) = 0.3f * q.view(b, i, h, c) + qs * u[c];
    for (index_t b = 0; b < batch; ++b)
      for (index_t j : sink_keys)
        if (j < seq_k)
          for (index_t h = 0; h < heads_kv; ++h)
            for (index_t c = 0; c < d; ++c)
              k.view(b, j, h, c) =
                  from_float<KV>(strength * u[c] + 0.1f * to_float(k.view(b, j, h, c)));
  }
};

}  // namespace attend::testing

#endif  // ATTEND_TESTS_SINK_SINK_ORACLE_HPP_
