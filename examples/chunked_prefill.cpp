// Chunked prefill against a KV cache: the prompt arrives in chunks; each chunk's queries attend
// to the cached prefix (every key visible) and to their own chunk (causal), the two partial
// results are merged with attend::merge_states, and the outcome equals one-shot causal prefill.
//
//   chunked_prefill [tokens=1024] [chunk=256]
#include <attend/attend.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  using namespace attend;
  const index_t tokens = argc > 1 ? std::atol(argv[1]) : 1024;
  const index_t chunk = argc > 2 ? std::atol(argv[2]) : 256;
  const index_t hq = 8, hkv = 2, d = 64;

  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(tokens * hq * d), k(tokens * hkv * d), v(tokens * hkv * d);
  for (auto* buf : {&q, &k, &v})
    for (auto& x : *buf) x = u(rng);
  const auto qv = bshd(q.data(), 1, tokens, hq, d);
  const auto kv = bshd(k.data(), 1, tokens, hkv, d);
  const auto vv = bshd(v.data(), 1, tokens, hkv, d);

  // One shot: causal attention over the whole prompt.
  std::vector<float> whole(tokens * hq * d);
  attention_params causal;
  causal.causal = true;
  attention(qv, kv, vv, bshd(whole.data(), 1, tokens, hq, d), causal);

  // Chunked: prefix part (non-causal over the cache) + own-chunk part (causal), merged.
  std::vector<float> out(tokens * hq * d), part(chunk * hq * d);
  std::vector<float> lse(hq * chunk), lse_part(hq * chunk);
  workspace ws;
  const auto t0 = std::chrono::steady_clock::now();
  for (index_t start = 0; start < tokens; start += chunk) {
    const index_t n = std::min(chunk, tokens - start);
    const auto qc = qv.narrow(1, start, n);
    const auto oc = bshd(out.data(), 1, tokens, hq, d).narrow(1, start, n);
    const auto lse_c = tensor_view<float, 3>::contiguous(lse.data(), {1, hq, n});
    const auto lse_p = tensor_view<float, 3>::contiguous(lse_part.data(), {1, hq, n});
    attention_params own = causal;
    own.lse = lse_c;
    own.scratch = &ws;
    attention(qc, kv.narrow(1, start, n), vv.narrow(1, start, n), oc, own);
    if (start == 0) continue;  // the first chunk has no cached prefix
    attention_params prefix;
    prefix.lse = lse_p;
    prefix.scratch = &ws;
    const auto pc = bshd(part.data(), 1, n, hq, d);
    attention(qc, kv.narrow(1, 0, start), vv.narrow(1, 0, start), pc, prefix);
    merge_states(oc, lse_c, pc, lse_p, oc, lse_c);
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

  double worst = 0;
  for (std::size_t i = 0; i < out.size(); ++i) worst = std::max(worst, double(std::abs(out[i] - whole[i])));
  std::printf("chunked prefill: %ld tokens in chunks of %ld, %d query / %d kv heads, dim %ld\n",
              long(tokens), long(chunk), int(hq), int(hkv), long(d));
  std::printf("  chunked time %.2f ms; max |chunked - one-shot| = %.3g\n", ms, worst);
  return worst < 1e-4 ? 0 : 1;
}
