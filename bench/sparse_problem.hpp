// Synthetic long-context Q/K/V with the structure sparse methods exploit, so that their recall
// means something (uniform random data spreads attention evenly over all keys, where no sparse
// method can reach a useful recall). Per KV head h, with a unit direction u_h:
//   - a local band: 16 rotary frequency pairs in dims [0, 32), the same rotation of a fixed
//     vector for q at its position and k at its position, so q_i . k_j peaks at |i - j| small;
//   - heavy keys ("verticals", needles, sinks): the first 4 keys and runs of 1..16 keys at
//     random positions (about 0.5 % of all keys) carry + B u_h;
//   - every query carries + C_g u_h (C_g varies a little across the group's query heads);
//   - uniform noise in [-1, 1] on every coordinate.
// With B C / sqrt(D) ~ 7.5 most of each row's mass lies on the heavy keys before it and on its
// local band, as in the attention maps of long-context LLMs (sinks + verticals + slashes).
#ifndef ATTEND_BENCH_SPARSE_PROBLEM_HPP_
#define ATTEND_BENCH_SPARSE_PROBLEM_HPP_

#include <cmath>
#include <random>
#include <vector>

#include "bench_common.hpp"

namespace attend::bench {

template <class KV>
struct sparse_problem {
  shape s;
  std::vector<float> qbuf, obuf;
  cache_vector<KV> kbuf, vbuf;  // huge-page backed, as an engine allocates its cache
  std::vector<char> heavy;  // [seq_k]: 1 where a key carries the heavy direction
  view4<float> q, o;
  view4<KV> k, v;

  explicit sparse_problem(const shape& sh, unsigned seed = 7) : s(sh) {
    const index_t d = s.dim, lq = s.seq_q, lk = s.seq_k;
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> noise(-1.0f, 1.0f);
    // Heavy keys: sinks + runs.
    heavy.assign(static_cast<std::size_t>(lk), 0);
    for (index_t j = 0; j < std::min<index_t>(4, lk); ++j) heavy[j] = 1;
    std::uniform_int_distribution<index_t> at(0, lk - 1), run(1, 16);
    for (index_t placed = 0; placed < lk / 200;) {
      const index_t j0 = at(rng), n = run(rng);
      for (index_t j = j0; j < std::min(lk, j0 + n); ++j, ++placed) heavy[j] = 1;
    }
    // Directions u_h (unit, in dims [32, d)) and the rotary band.
    std::vector<float> u(static_cast<std::size_t>(s.heads_kv * d), 0.0f);
    std::normal_distribution<float> gauss;
    for (index_t h = 0; h < s.heads_kv; ++h) {
      double n2 = 0;
      for (index_t c = 32; c < d; ++c) {
        u[h * d + c] = gauss(rng);
        n2 += double(u[h * d + c]) * u[h * d + c];
      }
      for (index_t c = 32; c < d; ++c) u[h * d + c] /= static_cast<float>(std::sqrt(n2));
    }
    const float band = 1.6f;          // rotary amplitude per pair
    const float heavy_b = 9.5f;       // B
    auto rope = [&](float* x, index_t pos) {
      for (index_t f = 0; f < 16 && 2 * f + 1 < d; ++f) {
        const double theta = std::pow(500.0, -double(f) / 16.0);
        x[2 * f] += band * static_cast<float>(std::cos(theta * pos));
        x[2 * f + 1] += band * static_cast<float>(std::sin(theta * pos));
      }
    };
    qbuf.resize(std::size_t(s.batch * lq * s.heads_q * d));
    kbuf.resize(std::size_t(s.batch * lk * s.heads_kv * d));
    vbuf.resize(kbuf.size());
    obuf.assign(qbuf.size(), 0.0f);
    const index_t group = s.heads_q / s.heads_kv;
    std::vector<float> row(static_cast<std::size_t>(d));
    for (index_t b = 0; b < s.batch; ++b) {
      for (index_t i = 0; i < lq; ++i)
        for (index_t h = 0; h < s.heads_q; ++h) {
          const index_t hk = h / group;
          const float c = 9.5f * (0.85f + 0.1f * float(h % group));
          float* x = qbuf.data() + ((b * lq + i) * s.heads_q + h) * d;
          for (index_t e = 0; e < d; ++e) x[e] = noise(rng) + c * u[hk * d + e];
          rope(x, lk - lq + i);
        }
      for (index_t j = 0; j < lk; ++j)
        for (index_t h = 0; h < s.heads_kv; ++h) {
          for (index_t e = 0; e < d; ++e)
            row[e] = noise(rng) + (heavy[j] ? heavy_b * u[h * d + e] : 0.0f);
          rope(row.data(), j);
          KV* kx = kbuf.data() + ((b * lk + j) * s.heads_kv + h) * d;
          KV* vx = vbuf.data() + ((b * lk + j) * s.heads_kv + h) * d;
          for (index_t e = 0; e < d; ++e) {
            kx[e] = from_float<KV>(row[e]);
            vx[e] = from_float<KV>(noise(rng));
          }
        }
    }
    q = bshd(qbuf.data(), s.batch, lq, s.heads_q, d);
    o = bshd(obuf.data(), s.batch, lq, s.heads_q, d);
    k = bshd(kbuf.data(), s.batch, lk, s.heads_kv, d);
    v = bshd(vbuf.data(), s.batch, lk, s.heads_kv, d);
  }
};

}  // namespace attend::bench

#endif  // ATTEND_BENCH_SPARSE_PROBLEM_HPP_
