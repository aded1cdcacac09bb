// Linear-attention test cases: random q/k/v (any layout, float or bf16), gates and decays, and
// the independent oracle: the explicit masked weight matrix W[i][j] of the operator, in double,
// written from the definitions (products of per-token decays, no cumsum, no factorisation).
#ifndef ATTEND_TESTS_LINEAR_LINEAR_CASE_HPP_
#define ATTEND_TESTS_LINEAR_LINEAR_CASE_HPP_

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "attend/linear/linear.hpp"
#include "common/tensors.hpp"

namespace attend::testing {

/// Double versions of the library's feature maps (and of the tests' own user maps).
enum class fmap { identity, elu1, relu, silu, squareplus, square };

inline double phi_ref(fmap f, double x) {
  switch (f) {
    case fmap::identity: return x;
    case fmap::elu1: return x > 0 ? x + 1 : std::exp(x);
    case fmap::relu: return x > 0 ? x : 0;
    case fmap::silu: return x / (1 + std::exp(-x));
    case fmap::squareplus: return (x + std::sqrt(x * x + 4)) / 2;
    case fmap::square: return x * x;
  }
  return x;
}

/// A user feature map with one template operator() (vectorised through xsimd's ADL sqrt).
struct squareplus {
  template <class V>
  V operator()(V x) const {
    using std::sqrt;
    return (x + sqrt(x * x + V(4.0f))) / V(2.0f);
  }
};

/// A user feature map callable on float only (applied lane by lane).
struct square_scalar {
  float operator()(float x) const { return x * x; }
};

/// Everything the oracle needs to know about the operator.
struct ref_config {
  fmap map = fmap::elu1;
  linear_norm norm = linear_norm::denominator;
  double scale = 1.0;
  double eps = 1e-6;
  bool causal = true;
  std::vector<double> decay;  // [heads] λ_h, empty = none
};

/// o[b, i, h, :] for every query of one (b, h) from the explicit weights. q, k, v read through
/// the views (rounded bf16 values included). len = valid keys (causal: also valid queries).
/// gates: [batch, seq_k, heads] log gates or empty.
template <class TQ, class TK, class TV>
void reference_head(const view4<const TQ>& q, const view4<const TK>& k, const view4<const TV>& v,
                    const std::vector<float>& gates, const ref_config& c, index_t b, index_t h,
                    index_t len, const view4<double>& out) {
  const index_t seq_q = q.extent(1), seq_k = k.extent(1), heads = q.extent(2);
  const index_t dk = q.extent(3), dv = v.extent(3);
  std::vector<double> fk(static_cast<std::size_t>(seq_k * dk)), fq(static_cast<std::size_t>(dk));
  for (index_t j = 0; j < seq_k; ++j)
    for (index_t d = 0; d < dk; ++d)
      fk[j * dk + d] = phi_ref(c.map, static_cast<double>(to_float(k(b, j, h, d))));
  std::vector<double> step_decay(static_cast<std::size_t>(seq_k));  // factor when t arrives
  for (index_t t = 0; t < seq_k; ++t) {
    double a = c.decay.empty() ? 0.0 : std::log(c.decay[static_cast<std::size_t>(h)]);
    if (!gates.empty()) a += gates[static_cast<std::size_t>((b * seq_k + t) * heads + h)];
    step_decay[static_cast<std::size_t>(t)] = std::exp(a);
  }
  std::vector<double> w(static_cast<std::size_t>(seq_k));
  for (index_t i = 0; i < seq_q; ++i) {
    for (index_t e = 0; e < dv; ++e) out(b, i, h, e) = 0.0;
    if (c.causal && i >= len) continue;
    for (index_t d = 0; d < dk; ++d)
      fq[d] = phi_ref(c.map, static_cast<double>(to_float(q(b, i, h, d))));
    const index_t last = c.causal ? i : len - 1;  // visible keys j <= last
    const double n = static_cast<double>(last + 1);
    double sum_w = 0.0, decay = 1.0;  // decay = Π_{j < t <= i} exp(a_t), walking j down from i
    for (index_t j = last; j >= 0; --j) {
      if (c.causal && j < last) decay *= step_decay[static_cast<std::size_t>(j + 1)];
      double dot = 0.0;
      for (index_t d = 0; d < dk; ++d) dot += fq[d] * fk[j * dk + d];
      w[j] = decay * dot;
      sum_w += w[j];
    }
    std::vector<double> coef(static_cast<std::size_t>(last + 1));
    if (c.norm == linear_norm::mala) {
      // a_ij = (s/n) φ(q_i)·φ(k_j), z_i = Σ a_ij, weight = (1 + 1/(z+eps)) a_ij - z/n
      const double z = c.scale * sum_w / n;
      for (index_t j = 0; j <= last; ++j)
        coef[j] = (1.0 + 1.0 / (z + c.eps)) * (c.scale / n) * w[j] - z / n;
    } else if (c.norm == linear_norm::denominator) {
      for (index_t j = 0; j <= last; ++j) coef[j] = c.scale * w[j] / (c.scale * sum_w + c.eps);
    } else {
      for (index_t j = 0; j <= last; ++j) coef[j] = c.scale * w[j];
    }
    for (index_t j = 0; j <= last; ++j)
      for (index_t e = 0; e < dv; ++e)
        out(b, i, h, e) += coef[j] * static_cast<double>(to_float(v(b, j, h, e)));
  }
}

template <class TQ, class TK, class TV>
void reference_all(const view4<const TQ>& q, const view4<const TK>& k, const view4<const TV>& v,
                   const std::vector<float>& gates, const std::vector<index_t>& lengths,
                   const ref_config& c, const view4<double>& out) {
  for (index_t b = 0; b < q.extent(0); ++b)
    for (index_t h = 0; h < q.extent(2); ++h)
      reference_head(q, k, v, gates, c, b, h,
                     lengths.empty() ? k.extent(1) : lengths[static_cast<std::size_t>(b)], out);
}

/// max |a - e| / max(1, max |e|): error relative to the output's scale (unnormalised outputs
/// grow with the sequence), NaN/inf counted as failures.
template <class A, class E>
::testing::AssertionResult close_scaled(const view4<A>& a, const view4<E>& e, double tol) {
  double scale = 1.0, worst = 0.0;
  index_t at = -1;
  const index_t n0 = a.extent(0), n1 = a.extent(1), n2 = a.extent(2), n3 = a.extent(3);
  for (index_t i = 0; i < n0; ++i)
    for (index_t j = 0; j < n1; ++j)
      for (index_t l = 0; l < n2; ++l)
        for (index_t m = 0; m < n3; ++m) scale = std::max(scale, std::abs(double(e(i, j, l, m))));
  for (index_t i = 0; i < n0; ++i)
    for (index_t j = 0; j < n1; ++j)
      for (index_t l = 0; l < n2; ++l)
        for (index_t m = 0; m < n3; ++m) {
          const double x = double(a(i, j, l, m)), y = double(e(i, j, l, m));
          const double err = std::isfinite(x) ? std::abs(x - y) / scale : INFINITY;
          if (!(err <= worst)) {
            worst = err;
            at = ((i * n1 + j) * n2 + l) * n3 + m;
          }
        }
  if (worst <= tol) return ::testing::AssertionSuccess() << "max scaled error " << worst;
  return ::testing::AssertionFailure() << "max scaled error " << worst << " > " << tol
                                       << " at flat index " << at << " (scale " << scale << ")";
}

/// Storage layouts of the test tensors.
enum class layout { bshd, bhsd, padded };

template <class T>
tensor<T, 4> make4(const std::array<index_t, 4>& e, layout l) {
  switch (l) {
    case layout::bhsd: return tensor<T, 4>::make_permuted(e, {0, 2, 1, 3}, 0);
    case layout::padded: return tensor<T, 4>::make_permuted(e, {0, 2, 1, 3}, 3);
    default: return tensor<T, 4>::make(e);
  }
}

/// Random q/k/v/o of one shape; k has seq_k tokens (= seq_q for self-attention).
template <class T = float>
struct linear_io {
  tensor<T, 4> q, k, v;
  tensor<float, 4> o;
  tensor<double, 4> ref;

  linear_io(index_t batch, index_t seq_q, index_t seq_k, index_t heads, index_t dk, index_t dv,
            layout l, unsigned seed, float range = 1.0f)
      : q(make4<T>({batch, seq_q, heads, dk}, l)),
        k(make4<T>({batch, seq_k, heads, dk}, l)),
        v(make4<T>({batch, seq_k, heads, dv}, l)),
        o(make4<float>({batch, seq_q, heads, dv}, l)),
        ref(tensor<double, 4>::make({batch, seq_q, heads, dv})) {
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng, -range, range);
    fill_uniform(k.view, rng, -range, range);
    fill_uniform(v.view, rng);
  }
};

/// Uniform log gates in [lo, 0] as [batch, seq, heads].
inline std::vector<float> random_gates(index_t batch, index_t seq, index_t heads, float lo,
                                       unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, 0.0f);
  std::vector<float> g(static_cast<std::size_t>(batch * seq * heads));
  for (auto& x : g) x = d(rng);
  return g;
}

inline view3<const float> gates_view(const std::vector<float>& g, index_t batch, index_t seq,
                                     index_t heads) {
  return g.empty() ? view3<const float>{}
                   : view3<const float>::contiguous(g.data(), {batch, seq, heads});
}

}  // namespace attend::testing

#endif  // ATTEND_TESTS_LINEAR_LINEAR_CASE_HPP_
