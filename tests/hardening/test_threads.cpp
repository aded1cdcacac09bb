// Thread safety of the dense family: attend::attention and attend::merge_states called at the
// same time from several std::threads, and from inside an outer OpenMP parallel region (nested
// parallelism off and on), on shared read-only inputs, give bitwise the results of serial
// calls. No hidden global state: the OpenMP settings and the floating-point environment are the
// same after the calls, and a call's result does not depend on what ran before (a workspace
// reused across shapes included). Each caller owns its outputs and its workspace; sharing one
// workspace between concurrent calls is not supported (core/workspace.hpp).
#include <gtest/gtest.h>
#include <omp.h>
#include <xmmintrin.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include "attend/dense/merge.hpp"
#include "dense/dense_case.hpp"

namespace attend::testing {
namespace {

/// One shared read-only problem with every option on, and its serial answer.
template <class KV>
struct shared_problem {
  dense_case<KV> c;
  std::vector<float> bias;
  std::vector<float> slopes, sinks;
  std::vector<index_t> lens;
  attention_params p;
  std::vector<float> serial_o, serial_lse;

  shared_problem(const dense_shape& s, unsigned seed) : c(s, layout::bshd, seed) {
    std::mt19937 rng(seed + 1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    bias.resize(static_cast<std::size_t>(s.seq_q * s.seq_k));
    for (float& x : bias) x = u(rng);
    for (index_t h = 0; h < s.heads_q; ++h) {
      slopes.push_back(0.01f * static_cast<float>(h + 1));
      sinks.push_back(u(rng));
    }
    for (index_t b = 0; b < s.batch; ++b) lens.push_back(s.seq_k - 3 * b);
    p.causal = true;
    p.softcap = 20.0f;
    p.bias = view4<const float>(bias.data(), {1, 1, s.seq_q, s.seq_k}, {0, 0, s.seq_k, 1});
    p.alibi_slopes = make_view<const float>(slopes.data(), s.heads_q);
    p.sinks = make_view<const float>(sinks.data(), s.heads_q);
    p.kv_lens = make_view<const index_t>(lens.data(), s.batch);
    run(serial_o, serial_lse, nullptr);
  }

  /// Runs the problem into fresh outputs (o, lse), optionally with a workspace.
  void run(std::vector<float>& o, std::vector<float>& lse, workspace* ws) const {
    const auto& s = c.shape;
    o.assign(static_cast<std::size_t>(s.batch * s.seq_q * s.heads_q * s.dv), -1.0f);
    lse.assign(static_cast<std::size_t>(s.batch * s.heads_q * s.seq_q), -1.0f);
    attention_params pp = p;
    pp.lse = view3<float>::contiguous(lse.data(), {s.batch, s.heads_q, s.seq_q});
    pp.scratch = ws;
    attention(c.q.view, c.k.view, c.v.view, bshd(o.data(), s.batch, s.seq_q, s.heads_q, s.dv), pp);
  }

  bool same_as_serial(const std::vector<float>& o, const std::vector<float>& lse) const {
    return o.size() == serial_o.size() &&
           std::memcmp(o.data(), serial_o.data(), o.size() * sizeof(float)) == 0 &&
           std::memcmp(lse.data(), serial_lse.data(), lse.size() * sizeof(float)) == 0;
  }
};

// Prefill (several row blocks per call) and split-K decode.
const dense_shape kPrefill{2, 90, 130, 8, 2, 64, 64};
const dense_shape kDecode{3, 1, 3000, 8, 2, 128, 128};

template <class KV>
class Threads : public ::testing::Test {};
using storage_types = ::testing::Types<float, bf16>;
TYPED_TEST_SUITE(Threads, storage_types);

TYPED_TEST(Threads, ConcurrentStdThreadsMatchSerialBitwise) {
  for (const auto& s : {kPrefill, kDecode}) {
    const shared_problem<TypeParam> pb(s, 200);
    constexpr int kThreads = 4, kIterations = 3;
    std::atomic<int> mismatches{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < kThreads; ++t)
      pool.emplace_back([&, t] {
        workspace ws;  // each caller its own (or none)
        std::vector<float> o, lse;
        for (int it = 0; it < kIterations; ++it) {
          pb.run(o, lse, t % 2 ? &ws : nullptr);
          if (!pb.same_as_serial(o, lse)) ++mismatches;
        }
      });
    for (auto& th : pool) th.join();
    EXPECT_EQ(mismatches.load(), 0) << to_string(s);
  }
}

TYPED_TEST(Threads, InsideAnOuterOpenMPRegionMatchSerialBitwise) {
  const int levels = omp_get_max_active_levels();
  for (int nested : {1, 2}) {  // 1: calls inside the region run on one thread; 2: they fork
    omp_set_max_active_levels(nested);
    for (const auto& s : {kPrefill, kDecode}) {
      const shared_problem<TypeParam> pb(s, 201);
      int mismatches = 0;
#pragma omp parallel num_threads(3) reduction(+ : mismatches)
      {
        workspace ws;
        std::vector<float> o, lse;
        for (int it = 0; it < 2; ++it) {
          pb.run(o, lse, &ws);
          if (!pb.same_as_serial(o, lse)) ++mismatches;
        }
      }
      EXPECT_EQ(mismatches, 0) << to_string(s) << " max_active_levels " << nested;
    }
  }
  omp_set_max_active_levels(levels);
}

/// Results do not depend on the thread count (1, 2, 3 threads), prefill and split-K decode.
TYPED_TEST(Threads, ThreadCountDoesNotChangeResults) {
  const int threads = omp_get_max_threads();
  for (const auto& s : {kPrefill, kDecode}) {
    const shared_problem<TypeParam> pb(s, 202);
    for (int n : {1, 3}) {
      omp_set_num_threads(n);
      std::vector<float> o, lse;
      pb.run(o, lse, nullptr);
      EXPECT_TRUE(pb.same_as_serial(o, lse)) << to_string(s) << " threads " << n;
    }
    omp_set_num_threads(threads);
  }
}

/// No hidden global state: OpenMP settings and MXCSR unchanged by calls; a workspace grown by
/// a large call and reused for a small one (and the other way round) changes nothing.
TEST(ThreadsState, NoHiddenGlobalState) {
  const int threads = omp_get_max_threads(), levels = omp_get_max_active_levels();
  const int dynamic = omp_get_dynamic();
  const unsigned csr = _mm_getcsr();
  const shared_problem<float> small(kPrefill, 203);
  const shared_problem<float> big(kDecode, 204);
  workspace ws;
  std::vector<float> o, lse;
  big.run(o, lse, &ws);
  EXPECT_TRUE(big.same_as_serial(o, lse));
  small.run(o, lse, &ws);
  EXPECT_TRUE(small.same_as_serial(o, lse));
  big.run(o, lse, &ws);
  EXPECT_TRUE(big.same_as_serial(o, lse));
  EXPECT_EQ(omp_get_max_threads(), threads);
  EXPECT_EQ(omp_get_max_active_levels(), levels);
  EXPECT_EQ(omp_get_dynamic(), dynamic);
  EXPECT_EQ(_mm_getcsr(), csr);
}

TEST(ThreadsState, ConcurrentMergeStatesMatchSerialBitwise) {
  // Large enough for merge_states to use its own OpenMP loop (rows * dv >= 2^16).
  const index_t B = 2, L = 64, H = 8, D = 128;
  auto oa = tensor<float, 4>::make({B, L, H, D}), ob = tensor<float, 4>::make({B, L, H, D});
  auto la = tensor<float, 3>::make({B, H, L}), lb = tensor<float, 3>::make({B, H, L});
  std::mt19937 rng(205);
  fill_uniform(oa.view, rng);
  fill_uniform(ob.view, rng);
  fill_uniform(la.view, rng, -20.0f, 20.0f);
  fill_uniform(lb.view, rng, -20.0f, 20.0f);
  la.storage[3] = -std::numeric_limits<float>::infinity();
  auto serial_o = tensor<float, 4>::make({B, L, H, D});
  auto serial_l = tensor<float, 3>::make({B, H, L});
  merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), serial_o.view, serial_l.view);
  std::atomic<int> mismatches{0};
  auto body = [&] {
    auto o = tensor<float, 4>::make({B, L, H, D});
    auto l = tensor<float, 3>::make({B, H, L});
    merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), o.view, l.view);
    if (!bitwise_equal(o.cview(), serial_o.cview()) || !bitwise_equal(l.cview(), serial_l.cview()))
      ++mismatches;
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t) pool.emplace_back(body);
  for (auto& th : pool) th.join();
#pragma omp parallel num_threads(2)
  body();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace attend::testing
