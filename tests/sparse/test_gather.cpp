// gather_attention against the double oracle (dense reference with the list's visibility mask),
// paged == contiguous, thread-count independence, and rejection of malformed lists.
#include <gtest/gtest.h>

#include <omp.h>

#include <numeric>

#include "token_oracle.hpp"

namespace attend::testing {
namespace {

using sparse::list_owner;

struct gather_case {
  index_t batch, seq_q, seq_k, heads_q, heads_kv, dk, dv;
  list_owner owner;
  index_t query_block, sinks, window;
  bool causal;
  bool ragged;
  double fraction;
};

template <class KV>
void run_case(const gather_case& c, unsigned seed, workspace* scratch = nullptr) {
  std::mt19937 rng(seed);
  auto q = tensor<float, 4>::make({c.batch, c.seq_q, c.heads_q, c.dk});
  auto k = tensor<KV, 4>::make_permuted({c.batch, c.seq_k, c.heads_kv, c.dk}, {0, 2, 1, 3}, 0);
  auto v = tensor<KV, 4>::make({c.batch, c.seq_k, c.heads_kv, c.dv});
  auto o = tensor<float, 4>::make({c.batch, c.seq_q, c.heads_q, c.dv});
  auto lse = tensor<float, 3>::make({c.batch, c.heads_q, c.seq_q});
  fill_uniform(q.view, rng, -2.0f, 2.0f);
  fill_uniform(k.view, rng, -2.0f, 2.0f);
  fill_uniform(v.view, rng);
  std::vector<index_t> lens;
  if (c.ragged)
    for (index_t b = 0; b < c.batch; ++b)
      lens.push_back(std::max<index_t>(1, c.seq_k - 7 * b - (b % 2) * (c.seq_k / 3)));
  sparse::token_list_buffer lists(c.owner, c.query_block, c.batch, c.heads_q, c.heads_kv,
                                  c.seq_q, std::max<index_t>(1, c.seq_k / 2));
  fill_random_lists(lists, rng, lens, c.seq_k, c.fraction);

  sparse::gather_params p;
  p.causal = c.causal;
  p.sinks = c.sinks;
  p.window = c.window;
  p.lse = lse.view;
  if (c.ragged) p.kv_lens = make_view<const index_t>(lens.data(), c.batch);
  p.scratch = scratch;
  sparse::gather_attention(q.view, k.view, v.view, o.view, lists.view(), p);

  auto mask = gather_visibility(lists.view(), c.batch, c.heads_q, c.heads_kv, c.seq_q, c.seq_k,
                                lens, c.sinks, c.window, c.causal);
  attention_params rp;
  rp.mask = mask.view;
  if (c.ragged) rp.kv_lens = make_view<const index_t>(lens.data(), c.batch);
  auto ro = tensor<double, 4>::make({c.batch, c.seq_q, c.heads_q, c.dv});
  auto rl = tensor<double, 3>::make({c.batch, c.heads_q, c.seq_q});
  reference::attention(q.cview(), k.cview(), v.cview(), rp, ro.view, rl.view);
  EXPECT_TRUE(all_close(o.cview(), ro.cview(), tolerance<KV>::atol, tolerance<KV>::rtol));
  EXPECT_TRUE(all_close(lse.cview(), rl.cview(), tolerance<KV>::atol, tolerance<KV>::rtol));
}

TEST(Gather, MatchesOracleAcrossOwnersTilesAndMasks) {
  const gather_case cases[] = {
      // batch, sq, sk, hq, hkv, dk, dv, owner, qb, sinks, window, causal, ragged, fraction
      {2, 1, 300, 8, 2, 64, 64, list_owner::q_head, 1, 0, 0, true, false, 0.2},
      {2, 1, 300, 8, 2, 64, 64, list_owner::kv_head, 1, 4, 16, true, true, 0.1},
      {1, 5, 200, 6, 3, 40, 24, list_owner::layer, 2, 3, 0, true, false, 0.3},
      {2, 37, 150, 4, 1, 64, 64, list_owner::kv_head, 8, 2, 10, true, true, 0.2},
      {1, 33, 120, 4, 2, 64, 64, list_owner::q_head, 1, 0, 5, true, false, 0.3},
      {1, 20, 90, 4, 4, 64, 64, list_owner::layer, 20, 0, 0, false, false, 0.5},
      {1, 150, 150, 2, 1, 64, 64, list_owner::kv_head, 150, 1, 8, true, false, 0.4},
      {1, 9, 64, 12, 4, 32, 32, list_owner::q_head, 4, 0, 0, false, false, 0.6},
  };
  unsigned seed = 100;
  for (const auto& c : cases) {
    SCOPED_TRACE(seed);
    run_case<float>(c, seed++);
  }
}

TEST(Gather, NarrowKvTypes) {
  const gather_case c{2, 3, 257, 8, 2, 64, 64, list_owner::kv_head, 3, 2, 7, true, true, 0.3};
  run_case<bf16>(c, 200);
  run_case<fp16>(c, 201);
}

TEST(Gather, DecodeSplitsLongListsAndMerges) {
  // One KV head and one sequence: few row blocks, long lists -> split-K over the list.
  const gather_case a{1, 1, 9000, 4, 1, 64, 64, list_owner::kv_head, 1, 4, 64, true, false, 0.5};
  run_case<float>(a, 300);
  const gather_case b{1, 2, 5000, 2, 1, 128, 128, list_owner::q_head, 2, 0, 0, true, false, 0.9};
  run_case<bf16>(b, 301);
}

TEST(Gather, OverlappingHeadListsShareOneGroupPass) {
  // Per-query-head lists that overlap heavily run over the union of the group's lists (one pass
  // per KV group); every row must still see exactly its own list plus sinks and window.
  const gather_case a{2, 1, 3000, 8, 2, 64, 64, list_owner::q_head, 1, 3, 40, true, true, 0.6};
  run_case<float>(a, 310);
  const gather_case b{1, 1, 700, 4, 2, 32, 32, list_owner::q_head, 1, 0, 9, false, false, 0.7};
  run_case<float>(b, 311);
}

TEST(Gather, GroupUnionListsLiveInTheCallersWorkspace) {
  // The merged group lists (indices, lengths, owner bits) are carved from gather_params::scratch
  // with the engine scratch: a reused workspace holds them and does not grow on the next call.
  // Long lists, so that the merged lists outweigh the engine scratch.
  const gather_case a{2, 1, 20000, 8, 2, 64, 64, list_owner::q_head, 1, 3, 40, true, true, 0.6};
  workspace ws;
  run_case<float>(a, 312, &ws);
  const index_t capacity = ws.capacity();
  const index_t units = a.batch * a.heads_kv;
  const index_t merged = units * (a.heads_q / a.heads_kv) * (a.seq_k / 2);
  EXPECT_GE(capacity, merged * index_t{5} / 2);  // 2 floats per index, 1 per owner mask
  run_case<float>(a, 313, &ws);
  EXPECT_EQ(ws.capacity(), capacity);
}

TEST(Gather, EmptyListsGiveZeroAndMinusInfinity) {
  auto q = tensor<float, 4>::make({1, 2, 4, 32});
  auto k = tensor<float, 4>::make({1, 50, 2, 32}), v = tensor<float, 4>::make({1, 50, 2, 32});
  auto o = tensor<float, 4>::make({1, 2, 4, 32});
  auto lse = tensor<float, 3>::make({1, 4, 2});
  std::mt19937 rng(5);
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  fill_uniform(v.view, rng);
  std::fill(o.storage.begin(), o.storage.end(), 7.0f);
  sparse::token_list_buffer lists(list_owner::kv_head, 1, 1, 4, 2, 2, 8);  // all counts 0
  sparse::gather_params p;
  p.lse = lse.view;
  sparse::gather_attention(q.view, k.view, v.view, o.view, lists.view(), p);
  for (float x : o.storage) EXPECT_EQ(x, 0.0f);
  for (float x : lse.storage) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
}

/// The same keys in a paged cache (pages shuffled, a page shared) give bitwise the same result.
template <class KV>
void paged_equals_contiguous() {
  const index_t batch = 2, seq_k = 300, hkv = 2, hq = 8, d = 64, page = 16, sq = 3;
  std::mt19937 rng(400);
  auto q = tensor<float, 4>::make({batch, sq, hq, d});
  auto k = tensor<KV, 4>::make({batch, seq_k, hkv, d}), v = tensor<KV, 4>::make({batch, seq_k, hkv, d});
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  fill_uniform(v.view, rng);
  const index_t lens[batch] = {300, 211};
  const index_t per_seq = (seq_k + page - 1) / page;
  const index_t pages = batch * per_seq + 3;
  auto kp = tensor<KV, 4>::make({pages, page, hkv, d}), vp = tensor<KV, 4>::make({pages, page, hkv, d});
  std::vector<index_t> order(static_cast<std::size_t>(pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  auto table = tensor<index_t, 2>::make({batch, per_seq});
  copy_into_pages(k.view, v.view, order, kp.view, vp.view, table.view);
  sparse::token_list_buffer lists(list_owner::q_head, 2, batch, hq, hkv, sq, 200);
  std::vector<index_t> lv(lens, lens + batch);
  fill_random_lists(lists, rng, lv, seq_k, 0.3);

  auto o1 = tensor<float, 4>::make({batch, sq, hq, d}), o2 = tensor<float, 4>::make({batch, sq, hq, d});
  auto l1 = tensor<float, 3>::make({batch, hq, sq}), l2 = tensor<float, 3>::make({batch, hq, sq});
  sparse::gather_params p;
  p.sinks = 3;
  p.window = 20;
  p.lse = l1.view;
  p.kv_lens = make_view<const index_t>(lens, batch);
  sparse::gather_attention(q.view, k.view, v.view, o1.view, lists.view(), p);
  sparse::paged_kv<KV> cache{kp.cview(), vp.cview(), table.cview(), make_view<const index_t>(lens, batch)};
  p.kv_lens = {};
  p.lse = l2.view;
  sparse::gather_attention(q.view, cache, o2.view, lists.view(), p);
  EXPECT_TRUE(bitwise_equal(o1.cview(), o2.cview()));
  EXPECT_TRUE(bitwise_equal(l1.cview(), l2.cview()));
}

TEST(Gather, PagedCacheEqualsContiguousCache) {
  paged_equals_contiguous<float>();
  paged_equals_contiguous<bf16>();
}

TEST(Gather, ResultsDoNotDependOnTheThreadCount) {
  const index_t sq = 1, sk = 6000, hq = 8, hkv = 2, d = 64;
  std::mt19937 rng(500);
  auto q = tensor<float, 4>::make({1, sq, hq, d});
  auto k = tensor<float, 4>::make({1, sk, hkv, d}), v = tensor<float, 4>::make({1, sk, hkv, d});
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  fill_uniform(v.view, rng);
  sparse::token_list_buffer lists(list_owner::kv_head, 1, 1, hq, hkv, sq, sk);
  fill_random_lists(lists, rng, {}, sk, 0.6);
  auto o1 = tensor<float, 4>::make({1, sq, hq, d}), o2 = tensor<float, 4>::make({1, sq, hq, d});
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  sparse::gather_attention(q.view, k.view, v.view, o1.view, lists.view());
  omp_set_num_threads(std::max(2, saved));
  sparse::gather_attention(q.view, k.view, v.view, o2.view, lists.view());
  omp_set_num_threads(saved);
  EXPECT_TRUE(bitwise_equal(o1.cview(), o2.cview()));
}

TEST(Gather, MalformedListsAreRejected) {
  auto q = tensor<float, 4>::make({1, 1, 4, 32});
  auto k = tensor<float, 4>::make({1, 40, 2, 32}), v = tensor<float, 4>::make({1, 40, 2, 32});
  auto o = tensor<float, 4>::make({1, 1, 4, 32});
  sparse::token_list_buffer lists(list_owner::kv_head, 1, 1, 4, 2, 1, 4);
  auto set = [&](std::initializer_list<index_t> e) {
    index_t* l = lists.list(0, 1, 0);
    index_t n = 0;
    for (index_t x : e) l[n++] = x;
    lists.count(0, 1, 0) = n;
  };
  auto call = [&] { sparse::gather_attention(q.view, k.view, v.view, o.view, lists.view()); };
  set({1, 5, 39});
  EXPECT_NO_THROW(call());
  set({1, 5, 40});  // out of range
  EXPECT_THROW(call(), invalid_argument);
  set({-1, 5});  // negative
  EXPECT_THROW(call(), invalid_argument);
  set({1, 9, 5});  // unsorted
  EXPECT_THROW(call(), invalid_argument);
  set({1, 5, 5});  // duplicate
  EXPECT_THROW(call(), invalid_argument);
  set({1});
  lists.count(0, 0, 0) = 5;  // count above capacity
  EXPECT_THROW(call(), invalid_argument);
  lists.count(0, 0, 0) = 0;
  // Out of range for a shorter sequence given by kv_lens.
  const index_t len = 20;
  sparse::gather_params p;
  p.kv_lens = make_view(&len, 1);
  set({1, 25});
  EXPECT_THROW(sparse::gather_attention(q.view, k.view, v.view, o.view, lists.view(), p),
               invalid_argument);
  // Lists shaped for another owner kind.
  sparse::token_list_buffer per_head(list_owner::q_head, 1, 1, 4, 2, 1, 4);
  sparse::token_lists wrong = per_head.view();
  wrong.owner = list_owner::kv_head;
  EXPECT_THROW(sparse::gather_attention(q.view, k.view, v.view, o.view, wrong), invalid_argument);
  try {
    set({3, 2});
    call();
    ADD_FAILURE() << "no throw";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not sorted"), std::string::npos) << e.what();
  }
}

TEST(Gather, MalformedPageTablesAreRejected) {
  page_table_case c;
  const auto cache = c.cache();
  sparse::token_list_buffer lists(list_owner::layer, 1, 1, 2, 1, 1, 4);
  EXPECT_THROW(sparse::gather_attention(c.q.view, cache, c.o.view, lists.view()), invalid_argument);
  c.len = 16;  // only pages 0 and 1 are used
  EXPECT_NO_THROW(sparse::gather_attention(c.q.view, cache, c.o.view, lists.view()));
  c.len = 25;  // longer than the table covers
  EXPECT_THROW(sparse::gather_attention(c.q.view, cache, c.o.view, lists.view()), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
