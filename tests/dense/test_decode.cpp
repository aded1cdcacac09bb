// Decode (split-K) against the oracle, merge_states identities and thread-count independence.
#include <gtest/gtest.h>

#include <omp.h>

#include <cstring>

#include "attend/dense/merge.hpp"
#include "dense_case.hpp"

namespace attend::testing {
namespace {

TEST(DenseDecode, SplitKMatchesReferenceAcrossLengthsAndGroups) {
  for (index_t lq : {1, 3, 16})
    for (index_t lk : {1024, 1500, 5000})
      for (index_t hkv : {8, 2}) {
        dense_case<float> c({1, lq, lk, 8, hkv, 64, 64}, layout::bshd, 30);
        attention_params p;
        p.causal = true;
        c.run(p);
        EXPECT_TRUE(c.matches_reference());
      }
}

TEST(DenseDecode, RaggedBatchOverCapacityCaches) {
  const index_t lens[4] = {1024, 3000, 1, 2049};
  dense_case<bf16> c({4, 1, 3100, 32, 8, 128, 128}, layout::bhsd, 31);
  attention_params p;
  p.kv_lens = make_view(lens, 4);
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
}

/// Attention over keys [0, a) and [a, Lk) separately, merged, equals attention over all keys.
TEST(MergeStates, MergeOfSplitsEqualsTheWhole) {
  for (index_t cut : {1, 64, 100, 199}) {
    dense_case<float> c({2, 9, 200, 4, 2, 32, 32}, layout::bshd, 32);
    attention_params whole;
    c.run(whole);
    auto o1 = tensor<float, 4>::make({2, 9, 4, 32}), o2 = tensor<float, 4>::make({2, 9, 4, 32});
    auto l1 = tensor<float, 3>::make({2, 4, 9}), l2 = tensor<float, 3>::make({2, 4, 9});
    attention_params p1, p2;
    p1.lse = l1.view;
    p2.lse = l2.view;
    attention(c.q.view, c.k.view.narrow(1, 0, cut), c.v.view.narrow(1, 0, cut), o1.view, p1);
    attention(c.q.view, c.k.view.narrow(1, cut, 200 - cut), c.v.view.narrow(1, cut, 200 - cut),
              o2.view, p2);
    merge_states(o1.cview(), l1.cview(), o2.cview(), l2.cview(), o1.view, l1.view);  // in place
    EXPECT_TRUE(all_close(o1.cview(), c.ref_o.cview(), 2e-5, 2e-4)) << cut;
    EXPECT_TRUE(all_close(l1.cview(), c.ref_lse.cview(), 2e-5, 2e-4)) << cut;
  }
}

TEST(MergeStates, EmptyStatesMergeToEmptyWithoutNan) {
  const float ninf = -std::numeric_limits<float>::infinity();
  auto o = tensor<float, 4>::make({1, 1, 1, 3}), e = tensor<float, 4>::make({1, 1, 1, 3});
  auto lo = tensor<float, 3>::make({1, 1, 1}), le = tensor<float, 3>::make({1, 1, 1});
  lo.storage[0] = ninf;
  le.storage[0] = ninf;
  merge_states(o.cview(), lo.cview(), e.cview(), le.cview(), o.view, lo.view);
  EXPECT_EQ(lo.storage[0], ninf);
  for (float x : o.storage) EXPECT_EQ(x, 0.0f);
  // an empty state is the identity of the merge
  o.storage = {1.0f, 2.0f, 3.0f};
  lo.storage[0] = 0.7f;
  merge_states(o.cview(), lo.cview(), e.cview(), le.cview(), o.view, lo.view);
  EXPECT_EQ(lo.storage[0], 0.7f);
  EXPECT_EQ(o.storage, (std::vector<float>{1.0f, 2.0f, 3.0f}));
}

TEST(MergeStates, RejectsMismatchedShapesAndAliasing) {
  auto a = tensor<float, 4>::make({1, 2, 2, 4}), b = tensor<float, 4>::make({1, 2, 2, 5});
  auto la = tensor<float, 3>::make({1, 2, 2});
  EXPECT_THROW(merge_states(a.cview(), la.cview(), b.cview(), la.cview(), a.view, la.view),
               invalid_argument);
  auto out = tensor<float, 4>::make({1, 2, 2, 4});
  const tensor_view<float, 4> shifted(a.storage.data() + 1, a.view.extents(), a.view.strides());
  EXPECT_THROW(merge_states(a.cview(), la.cview(), a.cview(), la.cview(), shifted, la.view),
               invalid_argument);
  (void)out;
}

template <class KV>
void expect_thread_count_independent(const dense_shape& s) {
  dense_case<KV> c(s, layout::bshd, 33);
  attention_params p;
  p.causal = true;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  attention(c.q.view, c.k.view, c.v.view, c.o.view, p);
  const auto one = c.o.storage;
  omp_set_num_threads(2);
  attention(c.q.view, c.k.view, c.v.view, c.o.view, p);
  omp_set_num_threads(saved);
  EXPECT_EQ(0, std::memcmp(one.data(), c.o.storage.data(), one.size() * sizeof(float)))
      << to_string(s);
}

TEST(DenseThreads, PrefillIsBitwiseIdenticalOnOneAndTwoThreads) {
  expect_thread_count_independent<float>({2, 300, 300, 8, 2, 64, 64});
  expect_thread_count_independent<bf16>({1, 129, 200, 4, 4, 128, 128});
}

TEST(DenseThreads, DecodeIsBitwiseIdenticalOnOneAndTwoThreads) {
  // Split points depend on the lengths only, so the merge order is fixed too.
  expect_thread_count_independent<float>({1, 1, 9000, 8, 2, 64, 64});
}

}  // namespace
}  // namespace attend::testing
