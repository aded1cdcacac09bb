// Consumer of the installed package: calls the public operators on a small problem and checks
// them against the reference oracle, so a broken install (missing header, bad config) fails.
#include <attend/attend.hpp>
#include <attend/reference/naive.hpp>

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
  return worst < 1e-4 ? 0 : 1;
}
