// ACT (attention calibration) end to end on a synthetic prompt with attention sinks: attention
// statistics without the N x N matrix (entropy, mass on the first tokens, mean attention each
// key receives) -> sink detection (mean above tau, the first sink kept) -> calibrated output
// (sinks keep beta of their mass, the rest is redistributed) -> decode steps that reuse the
// sinks found at prefill.
//
//   act_calibration [tokens=512] [heads=4] [beta=0.4] [tau=0.1]
#include <attend/attend.hpp>
#include <attend/sink/sink.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  using namespace attend;
  const index_t n = argc > 1 ? std::atol(argv[1]) : 512;
  const index_t hq = argc > 2 ? std::atol(argv[2]) : 4;
  sink::act_params act;
  act.beta = argc > 3 ? std::strtof(argv[3], nullptr) : 0.4f;
  act.tau = argc > 4 ? std::strtof(argv[4], nullptr) : 0.1f;
  const index_t hkv = 1, d = 64, steps = 3, cap = n + steps;

  // Random tokens, except that every query shares a direction u and a few keys (the first
  // token and two "hidden" sinks) point along it: those keys soak up attention.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::vector<float> q(cap * hq * d), k(cap * hkv * d), v(cap * hkv * d), u(d);
  for (auto* buf : {&q, &k, &v, &u})
    for (auto& x : *buf) x = uni(rng);
  double norm = 0.0;
  for (float x : u) norm += double(x) * x;
  for (auto& x : u) x = float(x / std::sqrt(norm));
  for (index_t i = 0; i < cap * hq; ++i)
    for (index_t c = 0; c < d; ++c) q[i * d + c] = 0.3f * q[i * d + c] + 4.0f * u[c];
  const index_t planted[] = {0, n / 5, n / 2};
  for (index_t j : planted)
    for (index_t c = 0; c < d; ++c) k[j * d + c] = 10.0f * u[c] + 0.1f * k[j * d + c];
  const auto qv = bshd(q.data(), 1, cap, hq, d);
  const auto kv = bshd(k.data(), 1, cap, hkv, d);
  const auto vv = bshd(v.data(), 1, cap, hkv, d);

  // 1. Statistics of the prompt's attention (two passes, no N x N matrix).
  std::vector<float> o(n * hq * d), lse(hq * n), entropy(hq * n), first(hq * n), mean(hq * n);
  attention_params p;
  p.causal = true;
  p.lse = view3<float>::contiguous(lse.data(), {1, hq, n});
  sink::stats_outputs s;
  s.entropy = view3<float>::contiguous(entropy.data(), {1, hq, n});
  s.sink_token_mass = view3<float>::contiguous(first.data(), {1, hq, n});
  s.col_mean = view3<float>::contiguous(mean.data(), {1, hq, n});
  const auto o_view = bshd(o.data(), 1, n, hq, d);
  sink::attention_stats(qv.narrow(1, 0, n), kv.narrow(1, 0, n), vv.narrow(1, 0, n), o_view, p, s);
  std::vector<float> mean_entropy(hq), mean_first(hq);
  sink::head_means(s.entropy, p.lse, make_view(mean_entropy.data(), hq));
  sink::head_means(s.sink_token_mass, p.lse, make_view(mean_first.data(), hq));
  std::printf("prompt of %ld tokens, %ld heads (planted sinks at %ld, %ld, %ld)\n", long(n),
              long(hq), long(planted[0]), long(planted[1]), long(planted[2]));
  for (index_t h = 0; h < hq; ++h)
    std::printf(
        "  head %ld: mean entropy %.3f nats (uniform over the prefix ~ %.3f), mass on the "
        "first 4 tokens %.3f\n",
        long(h), mean_entropy[h], std::log(double(n)) - 1.0, mean_first[h]);

  // 2. Detection: mean attention received above tau; the first sink (the BOS) is kept.
  const sink::sink_sets sets = sink::detect_sinks(s.col_mean, {}, act.tau, act.drop_first);
  for (index_t h = 0; h < hq; ++h) {
    std::printf("  head %ld: sinks to calibrate:", long(h));
    for (index_t j : sets.of(0, h))
      std::printf(" %ld (mean attention %.3f)", long(j), mean[h * n + j]);
    std::printf("\n");
  }

  // 3. Calibrated prefill and decode: sets found at prefill are reused at every step.
  sink::act_calibrator cal(act, 1, hq, cap);
  attention_params causal;
  causal.causal = true;
  const sink::act_result pre =
      cal.prefill(qv.narrow(1, 0, n), kv.narrow(1, 0, n), vv.narrow(1, 0, n), o_view, causal);
  std::printf(
      "prefill (beta %.2f, tau %.2f): %ld of %ld rows calibrated, mass moved off the "
      "sinks %.2f (%.4f per calibrated row)\n",
      act.beta, act.tau, long(pre.rows_calibrated), long(n * hq), pre.moved_mass,
      pre.rows_calibrated ? pre.moved_mass / double(pre.rows_calibrated) : 0.0);
  std::vector<float> od(hq * d);
  for (index_t t = 0; t < steps; ++t) {
    const index_t len = n + t + 1;
    const sink::act_result r =
        cal.decode(qv.narrow(1, len - 1, 1), kv.narrow(1, 0, len), vv.narrow(1, 0, len),
                   bshd(od.data(), 1, 1, hq, d), causal);
    std::printf("decode step %ld (cache %ld): mass moved %.4f over %ld heads\n", long(t), long(len),
                r.moved_mass, long(r.rows_calibrated));
  }
  return pre.rows_calibrated > 0 ? 0 : 1;
}
