// Linear attention as an RNN: a chunked causal prefill over the prompt hands its final state to
// a recurrent decoder, which then takes one token at a time in constant time per token. The
// decoded outputs equal those of one long prefill over prompt + generated tokens.
// Lightning-2 / RetNet style: identity feature map, per-head decay λ_h = 1 - 2^(-5-h), no
// normaliser (a model would normalise afterwards).
//
//   linear_rnn [prompt=512] [decode=128] [heads=4] [dim=64]
#include <attend/attend.hpp>
#include <attend/linear/linear.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  using namespace attend;
  const index_t prompt = argc > 1 ? std::atol(argv[1]) : 512;
  const index_t decode = argc > 2 ? std::atol(argv[2]) : 128;
  const index_t heads = argc > 3 ? std::atol(argv[3]) : 4;
  const index_t dim = argc > 4 ? std::atol(argv[4]) : 64;
  const index_t total = prompt + decode;
  if (prompt < 1 || decode < 1 || heads < 1 || dim < 1) {
    std::fprintf(stderr, "usage: linear_rnn [prompt>=1] [decode>=1] [heads>=1] [dim>=1]\n");
    return 2;
  }

  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const std::size_t n = static_cast<std::size_t>(total * heads * dim);
  std::vector<float> q(n), k(n), v(n), whole(n), out(n);
  for (auto* buf : {&q, &k, &v})
    for (auto& x : *buf) x = u(rng);
  const auto qv = bshd(q.data(), 1, total, heads, dim);
  const auto kv = bshd(k.data(), 1, total, heads, dim);
  const auto vv = bshd(v.data(), 1, total, heads, dim);
  const auto ov = bshd(out.data(), 1, total, heads, dim);

  std::vector<float> decay(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h) decay[h] = 1.0f - std::pow(2.0f, -5.0f - float(h % 8));
  linear_params p;
  p.norm = linear_norm::none;
  p.decay = make_view<const float>(decay.data(), heads);

  // One long causal prefill over every token: the reference.
  linear_attention(qv, kv, vv, bshd(whole.data(), 1, total, heads, dim), p, linear::identity{});

  // RNN: prefill the prompt into a state, then decode one token at a time.
  linear_state<linear::identity> state(1, heads, dim, dim, p);
  const auto t0 = std::chrono::steady_clock::now();
  state.prefill(qv.narrow(1, 0, prompt), kv.narrow(1, 0, prompt), vv.narrow(1, 0, prompt),
                ov.narrow(1, 0, prompt));
  const auto t1 = std::chrono::steady_clock::now();
  for (index_t t = prompt; t < total; ++t)
    state.step(qv.narrow(1, t, 1), kv.narrow(1, t, 1), vv.narrow(1, t, 1), ov.narrow(1, t, 1));
  const auto t2 = std::chrono::steady_clock::now();

  double worst = 0.0, scale = 1.0;
  for (std::size_t i = 0; i < n; ++i) {
    worst = std::max(worst, double(std::abs(out[i] - whole[i])));
    scale = std::max(scale, double(std::abs(whole[i])));
  }
  const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
  const double decode_s = std::chrono::duration<double>(t2 - t1).count();
  std::printf("linear attention RNN: %ld prompt + %ld decoded tokens, %ld heads x %ld dims\n",
              long(prompt), long(decode), long(heads), long(dim));
  std::printf("prefill: %.0f tokens/s; decode: %.0f tokens/s (%.1f us per token)\n",
              double(prompt) / prefill_s, double(decode) / decode_s, decode_s * 1e6 / double(decode));
  std::printf("prefill + decode vs one long prefill: max |diff| = %.2e (output scale %.2f) -> %s\n",
              worst, scale, worst <= 1e-4 * scale ? "equal" : "DIFFERENT");
  return worst <= 1e-4 * scale ? 0 : 1;
}
