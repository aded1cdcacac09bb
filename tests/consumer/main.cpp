// Consumer of the installed package: calls the public operators on a small problem and checks
// them against the reference oracle, so a broken install (missing header, bad config) fails.
// One entry point of each family (dense, sparse, linear, sink) is called through the umbrella
// header; their outputs must be finite.
#include <attend/attend.hpp>
#include <attend/reference/naive.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  using namespace attend;
  const index_t b = 1, lq = 5, lk = 37, hq = 4, hkv = 2, d = 16;
  std::vector<float> q(b * lq * hq * d), k(b * lk * hkv * d), v(b * lk * hkv * d);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.37f * float(i));
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.11f * float(i));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.05f * float(i) + 1.0f);
  std::vector<float> o(b * lq * hq * d);
  std::vector<double> ref(o.size());
  attention_params p;
  p.causal = true;
  attention(bshd(q.data(), b, lq, hq, d), bshd(k.data(), b, lk, hkv, d),
            bshd(v.data(), b, lk, hkv, d), bshd(o.data(), b, lq, hq, d), p);
  reference::attention(view4<const float>(bshd(q.data(), b, lq, hq, d)),
                       view4<const float>(bshd(k.data(), b, lk, hkv, d)),
                       view4<const float>(bshd(v.data(), b, lk, hkv, d)), p,
                       bshd(ref.data(), b, lq, hq, d));
  double worst = 0;
  for (std::size_t i = 0; i < o.size(); ++i) worst = std::fmax(worst, std::abs(o[i] - ref[i]));
  std::printf("attend consumer: max |attention - reference| = %.3g\n", worst);

  // One entry point per family, each writing over NaN: its output must come back finite.
  const auto qv = bshd<const float>(q.data(), b, lq, hq, d);
  const auto kv = bshd<const float>(k.data(), b, lk, hkv, d);
  const auto vv = bshd<const float>(v.data(), b, lk, hkv, d);
  const auto ov = bshd(o.data(), b, lq, hq, d);
  bool finite = true;
  auto check = [&](const char* what, const std::vector<float>& out) {
    const bool ok = std::all_of(out.begin(), out.end(), [](float x) { return std::isfinite(x); });
    std::printf("attend consumer: %s %s\n", what, ok ? "finite" : "NOT FINITE");
    finite = finite && ok;
    std::fill(o.begin(), o.end(), NAN);
  };
  std::fill(o.begin(), o.end(), NAN);
  const sparse::mask_geometry g{b, 1, lq, lk, 16, 16};
  const sparse::a_shape_pattern shape(g, 4, 16);
  sparse::block_sparse_attention(qv, kv, vv, ov, shape.mask(), p, shape);
  check("sparse::block_sparse_attention", o);
  sparse::topk_params tp;
  tp.k = 8;
  sparse::token_list_buffer lists;
  sparse::topk_attention(qv, kv, vv, ov, lists, tp);
  check("sparse::topk_attention", o);
  std::vector<float> ol(k.size(), NAN);
  linear_attention(kv, kv, vv, bshd(ol.data(), b, lk, hkv, d));
  check("linear_attention", ol);
  std::vector<float> gate(b * lq * hq, 0.5f);
  sink::gated_attention(qv, kv, vv, ov, bshd<const float>(gate.data(), b, lq, hq, 1), p);
  check("sink::gated_attention", o);
  return worst < 1e-4 && finite ? 0 : 1;
}
