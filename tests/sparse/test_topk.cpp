// Exact top-k selection: equals brute force (per head, per KV group with either reduction, per
// layer, mean-query tiles, implicit ranges, ragged lengths); k = all keys equals dense attention;
// topk_attention's reuse of the selection scores equals select + gather; paged selection equals
// contiguous selection. (top_k_long: test_top_k_long.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <utility>

#include "attend/sparse/select/topk.hpp"
#include "selection_oracle.hpp"
#include "token_oracle.hpp"

namespace attend::testing {
namespace {

using sparse::head_reduce;
using sparse::list_owner;

struct topk_case {
  index_t batch, seq_q, seq_k, heads_q, heads_kv, dim;
  list_owner owner;
  head_reduce reduce;
  index_t query_block, k, sinks, window;
  bool causal, ragged;
};

/// Double scores of the mean query of tile t against every key, for the brute force.
template <class KV>
struct tile_scorer {
  const view4<float>& q;
  const view4<KV>& k;
  index_t b, t0, t1, group;
  double scale;
  std::vector<std::vector<double>> qf;  // [heads_q][dim]
  tile_scorer(const view4<float>& qv, const view4<KV>& kv, index_t b_, index_t t0_, index_t t1_,
              index_t g, double s)
      : q(qv), k(kv), b(b_), t0(t0_), t1(t1_), group(g), scale(s) {
    qf.assign(static_cast<std::size_t>(q.extent(2)),
              std::vector<double>(static_cast<std::size_t>(q.extent(3)), 0.0));
    for (index_t h = 0; h < q.extent(2); ++h)
      for (index_t d = 0; d < q.extent(3); ++d) {
        for (index_t i = t0; i < t1; ++i) qf[h][d] += q(b, i, h, d);
        qf[h][d] /= double(t1 - t0);
      }
  }
  double operator()(index_t h, index_t j) const {
    double s = 0;
    for (index_t d = 0; d < q.extent(3); ++d) s += qf[h][d] * double(to_float(k(b, j, h / group, d)));
    return scale * s;
  }
};

template <class KV>
void check_selection(const topk_case& c, unsigned seed) {
  std::mt19937 rng(seed);
  auto q = tensor<float, 4>::make({c.batch, c.seq_q, c.heads_q, c.dim});
  auto k = tensor<KV, 4>::make({c.batch, c.seq_k, c.heads_kv, c.dim});
  fill_uniform(q.view, rng, -1.5f, 1.5f);
  fill_uniform(k.view, rng, -1.5f, 1.5f);
  std::vector<index_t> lens;
  if (c.ragged)
    for (index_t b = 0; b < c.batch; ++b) lens.push_back(c.seq_k - 13 * b - 1);
  sparse::topk_params p;
  p.k = c.k;
  p.owner = c.owner;
  p.reduce = c.reduce;
  p.query_block = c.query_block;
  p.sinks = c.sinks;
  p.window = c.window;
  p.causal = c.causal;
  if (c.ragged) p.kv_lens = make_view<const index_t>(lens.data(), c.batch);
  sparse::token_list_buffer lists;
  sparse::topk_select(q.view, k.view, lists, p);
  ASSERT_EQ(lists.tiles(), (c.seq_q + c.query_block - 1) / c.query_block);
  const index_t group = c.heads_q / c.heads_kv;
  const double scale = 1.0 / std::sqrt(double(c.dim));
  const brute_reduce red = c.owner == list_owner::q_head ? brute_reduce::own
                           : c.reduce == head_reduce::softmax_sum ? brute_reduce::softmax_sum
                                                                  : brute_reduce::max_score;
  for (index_t b = 0; b < c.batch; ++b) {
    const index_t len = c.ragged ? lens[b] : c.seq_k;
    for (index_t t = 0; t < lists.tiles(); ++t) {
      const index_t t0 = t * c.query_block, t1 = std::min(c.seq_q, t0 + c.query_block);
      const index_t first = len - c.seq_q + t0, last = len - c.seq_q + t1 - 1;
      const index_t lo = std::min(c.sinks, len);
      index_t hi = c.causal ? std::min(len, last + 1) : len;
      if (c.window > 0) hi = std::min(hi, std::max<index_t>(0, first - c.window + 1));
      hi = std::max(hi, lo);
      tile_scorer<KV> sc(q.view, k.view, b, t0, t1, group, scale);
      for (index_t o = 0; o < lists.owners(); ++o) {
        index_t h0 = o, h1 = o + 1;
        if (c.owner == list_owner::kv_head) h0 = o * group, h1 = h0 + group;
        if (c.owner == list_owner::layer) h0 = 0, h1 = c.heads_q;
        const brute_list want = brute_select(c.seq_k, lo, hi, h0, h1, red, c.k, sc);
        EXPECT_TRUE(same_selection(lists.list(b, o, t), lists.count(b, o, t), want, 1e-5))
            << "batch " << b << " owner " << o << " tile " << t;
      }
    }
  }
}

TEST(TopkSelect, EqualsBruteForce) {
  const topk_case cases[] = {
      // batch, sq, sk, hq, hkv, d, owner, reduce, qb, k, sinks, window, causal, ragged
      {2, 1, 700, 8, 2, 64, list_owner::q_head, head_reduce::softmax_sum, 1, 50, 0, 0, true, false},
      {2, 1, 700, 8, 2, 64, list_owner::kv_head, head_reduce::softmax_sum, 1, 64, 4, 32, true, true},
      {1, 1, 900, 8, 2, 128, list_owner::kv_head, head_reduce::max_score, 1, 100, 0, 16, true, false},
      {1, 3, 500, 6, 3, 40, list_owner::layer, head_reduce::softmax_sum, 3, 40, 2, 8, true, false},
      {1, 24, 300, 4, 2, 64, list_owner::q_head, head_reduce::softmax_sum, 1, 20, 1, 4, true, true},
      {1, 24, 300, 4, 1, 64, list_owner::kv_head, head_reduce::softmax_sum, 8, 30, 0, 0, false, false},
      {1, 1, 20000, 4, 1, 64, list_owner::kv_head, head_reduce::softmax_sum, 1, 300, 4, 64, true, false},
      // Own lists long enough for top_k_long's group-maxima bound (k below the group count).
      {2, 1, 5000, 8, 2, 64, list_owner::q_head, head_reduce::softmax_sum, 1, 60, 3, 20, true, true},
  };
  unsigned seed = 700;
  for (const auto& c : cases) {
    SCOPED_TRACE(seed);
    check_selection<float>(c, seed++);
  }
}

TEST(TopkSelect, NarrowKeysEqualBruteForce) {
  const topk_case c{1, 1, 1000, 8, 2, 64, list_owner::q_head, head_reduce::softmax_sum, 1, 80, 0, 0, true, false};
  check_selection<bf16>(c, 800);
  check_selection<fp16>(c, 801);
}

/// With k at least the number of keys, top-k attention is dense attention.
template <class KV>
void all_keys_equal_dense(index_t sq, index_t sk, list_owner owner, bool causal, unsigned seed) {
  const index_t hq = 8, hkv = 2, d = 64;
  std::mt19937 rng(seed);
  auto q = tensor<float, 4>::make({1, sq, hq, d});
  auto k = tensor<KV, 4>::make({1, sk, hkv, d}), v = tensor<KV, 4>::make({1, sk, hkv, d});
  auto o = tensor<float, 4>::make({1, sq, hq, d});
  auto lse = tensor<float, 3>::make({1, hq, sq});
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  fill_uniform(v.view, rng);
  sparse::topk_params p;
  p.k = sk;
  p.owner = owner;
  p.causal = causal;
  sparse::token_list_buffer lists;
  sparse::topk_attention(q.view, k.view, v.view, o.view, lists, p, lse.view);
  attention_params rp;
  rp.causal = causal;
  auto ro = tensor<double, 4>::make({1, sq, hq, d});
  auto rl = tensor<double, 3>::make({1, hq, sq});
  reference::attention(q.cview(), k.cview(), v.cview(), rp, ro.view, rl.view);
  EXPECT_TRUE(all_close(o.cview(), ro.cview(), tolerance<KV>::atol, tolerance<KV>::rtol));
  EXPECT_TRUE(all_close(lse.cview(), rl.cview(), tolerance<KV>::atol, tolerance<KV>::rtol));
}

TEST(TopkAttention, AllKeysEqualsDense) {
  all_keys_equal_dense<float>(1, 3000, list_owner::q_head, true, 900);
  all_keys_equal_dense<float>(1, 3000, list_owner::kv_head, true, 901);
  all_keys_equal_dense<float>(33, 130, list_owner::q_head, true, 902);
  all_keys_equal_dense<float>(20, 90, list_owner::layer, false, 903);
  all_keys_equal_dense<bf16>(1, 2500, list_owner::kv_head, true, 904);
}

/// Per-head lists of one KV group: the sum of their lengths and the length of their union
/// (batch 0, tile 0), to tell which path of the attend stage a case takes.
inline std::pair<index_t, index_t> group_entries_and_union(const sparse::token_list_buffer& lists,
                                                           index_t group) {
  std::vector<index_t> all;
  for (index_t h = 0; h < group; ++h)
    all.insert(all.end(), lists.list(0, h, 0), lists.list(0, h, 0) + lists.count(0, h, 0));
  const index_t entries = static_cast<index_t>(all.size());
  std::sort(all.begin(), all.end());
  return {entries, static_cast<index_t>(std::unique(all.begin(), all.end()) - all.begin())};
}

/// With one query per tile, topk_attention reuses the selection's scores as the logits of the
/// listed keys and reads only their V rows; it must equal topk_select followed by
/// gather_attention, which scores every key again. lens: valid keys per batch entry (a length
/// below seq_q leaves causal rows with no key at all).
template <class KV>
std::pair<index_t, index_t> reused_scores_equal_gather(
    index_t sq, index_t hq, index_t hkv, index_t d, list_owner owner, index_t kk, index_t sinks,
    index_t window, bool causal, std::vector<index_t> lens, unsigned seed,
    std::optional<float> selection_scale = {}, float head_spread = -1.0f) {
  SCOPED_TRACE(seed);
  const index_t batch = static_cast<index_t>(lens.size());
  const index_t sk = *std::max_element(lens.begin(), lens.end());
  std::mt19937 rng(seed);
  auto q = tensor<float, 4>::make({batch, sq, hq, d});
  auto k = tensor<KV, 4>::make({batch, sk, hkv, d}), v = tensor<KV, 4>::make({batch, sk, hkv, d});
  fill_uniform(q.view, rng, -1.5f, 1.5f);
  if (head_spread >= 0.0f) {  // the heads of a KV group query nearly alike: overlapping lists
    std::uniform_real_distribution<float> jitter(-head_spread, head_spread);
    const index_t g = hq / hkv;
    for (index_t b = 0; b < batch; ++b)
      for (index_t i = 0; i < sq; ++i)
        for (index_t h = 0; h < hq; ++h)
          for (index_t c = 0; c < d; ++c)
            q.view(b, i, h, c) = q.view(b, i, h / g * g, c) + (h % g ? jitter(rng) : 0.0f);
  }
  fill_uniform(k.view, rng, -1.5f, 1.5f);
  fill_uniform(v.view, rng);
  sparse::topk_params p;
  p.k = kk;
  p.owner = owner;
  p.sinks = sinks;
  p.window = window;
  p.causal = causal;
  p.kv_lens = make_view<const index_t>(lens.data(), batch);
  p.scale = selection_scale;
  auto o = tensor<float, 4>::make({batch, sq, hq, d}), og = tensor<float, 4>::make({batch, sq, hq, d});
  auto lse = tensor<float, 3>::make({batch, hq, sq}), lg = tensor<float, 3>::make({batch, hq, sq});
  sparse::token_list_buffer lists, lists_g;
  workspace sel, att;
  p.scratch = &sel;
  sparse::topk_attention(q.view, k.view, v.view, o.view, lists, p, lse.view, &att);
  sparse::topk_select(q.view, k.view, lists_g, p);
  sparse::gather_attention(q.view, k.view, v.view, og.view, lists_g.view(), p.gather(lg.view));
  EXPECT_TRUE(all_close(o.cview(), og.cview(), 2e-6, 2e-5));
  EXPECT_TRUE(all_close(lse.cview(), lg.cview(), 2e-6, 2e-6));
  for (index_t i = 0; i < o.view.size(); ++i) EXPECT_FALSE(std::isnan(o.view.data()[i]));
  return owner == list_owner::q_head ? group_entries_and_union(lists_g, hq / hkv)
                                     : std::pair<index_t, index_t>{0, 0};
}

TEST(TopkAttention, ReusedScoresEqualSelectThenGather) {
  // sq, hq, hkv, d, owner, k, sinks, window, causal, lens
  reused_scores_equal_gather<float>(1, 8, 2, 64, list_owner::q_head, 50, 4, 32, true, {700, 650}, 1100);
  reused_scores_equal_gather<float>(1, 8, 2, 128, list_owner::kv_head, 64, 0, 0, true, {3000}, 1101);
  reused_scores_equal_gather<float>(24, 4, 2, 64, list_owner::q_head, 20, 1, 4, true, {300, 10}, 1102);
  reused_scores_equal_gather<float>(5, 6, 3, 36, list_owner::layer, 30, 2, 8, false, {200}, 1103);
  reused_scores_equal_gather<bf16>(1, 8, 2, 64, list_owner::q_head, 80, 4, 16, true, {1000}, 1104);
  reused_scores_equal_gather<fp16>(3, 8, 2, 40, list_owner::kv_head, 40, 0, 8, true, {500}, 1105);
  // k above the candidates: every key is listed.
  reused_scores_equal_gather<float>(2, 4, 1, 64, list_owner::q_head, 500, 2, 2, true, {90}, 1106);
  // Selection scores raw q . k (TokenSelect's vote): logits are rescaled to attention's scale.
  reused_scores_equal_gather<float>(1, 8, 2, 64, list_owner::layer, 60, 8, 16, true, {900}, 1107, 1.0f);
}

/// Per-head lists at decode: a KV group whose heads chose mostly the same keys runs once over
/// the union of their lists (-inf logits on the keys a head did not choose); one whose heads
/// chose apart runs head by head. Both must equal select + gather.
TEST(TopkAttention, GroupUnionOfPerHeadListsEqualsSelectThenGather) {
  for (const float spread : {0.05f, 0.3f, -1.0f})  // -1: independent queries
    for (const index_t group : {4, 8}) {
      SCOPED_TRACE(spread);
      const auto [entries, merged] = reused_scores_equal_gather<float>(
          1, 2 * group, 2, 64, list_owner::q_head, 64, 2, 8, true, {1500, 1200}, 1110 + group, {},
          spread);
      reused_scores_equal_gather<bf16>(1, 2 * group, 2, 64, list_owner::q_head, 64, 0, 0, true,
                                       {1500}, 1120 + group, {}, spread);
      // Both paths are covered: the union is taken at most three quarters of the entries.
      if (spread == 0.05f) {
        EXPECT_LE(4 * merged, 3 * entries);
      } else if (spread < 0.0f) {
        EXPECT_GT(4 * merged, 3 * entries);
      }
    }
}

/// topk_attention over a paged cache (pages in reversed order, ragged lengths) must list the
/// keys the contiguous call lists and equal topk_select + gather_attention on the same pages,
/// which score every listed key again.
template <class KV>
void paged_reused_scores_equal_gather(list_owner owner, index_t kk, index_t sinks, index_t window,
                                      std::vector<index_t> lens, unsigned seed) {
  SCOPED_TRACE(seed);
  const index_t batch = static_cast<index_t>(lens.size()), hq = 8, hkv = 2, d = 64, page = 16;
  const index_t sk = *std::max_element(lens.begin(), lens.end());
  const index_t per_seq = (sk + page - 1) / page, pages = batch * per_seq;
  std::mt19937 rng(seed);
  auto q = tensor<float, 4>::make({batch, 1, hq, d});
  auto k = tensor<KV, 4>::make({batch, sk, hkv, d}), v = tensor<KV, 4>::make({batch, sk, hkv, d});
  fill_uniform(q.view, rng, -1.5f, 1.5f);
  fill_uniform(k.view, rng, -1.5f, 1.5f);
  fill_uniform(v.view, rng);
  auto kp = tensor<KV, 4>::make({pages, page, hkv, d}), vp = tensor<KV, 4>::make({pages, page, hkv, d});
  auto table = tensor<index_t, 2>::make({batch, per_seq});
  std::vector<index_t> reversed(static_cast<std::size_t>(pages));
  std::iota(reversed.rbegin(), reversed.rend(), 0);
  copy_into_pages(k.view, v.view, reversed, kp.view, vp.view, table.view);
  const sparse::paged_kv<KV> cache{kp.cview(), vp.cview(), table.cview(),
                                   make_view<const index_t>(lens.data(), batch)};
  sparse::topk_params p;
  p.k = kk;
  p.owner = owner;
  p.sinks = sinks;
  p.window = window;
  auto o = tensor<float, 4>::make({batch, 1, hq, d}), og = tensor<float, 4>::make({batch, 1, hq, d});
  auto oc = tensor<float, 4>::make({batch, 1, hq, d});
  auto lse = tensor<float, 3>::make({batch, hq, 1}), lg = tensor<float, 3>::make({batch, hq, 1});
  sparse::token_list_buffer lists, lists_g, lists_c;
  sparse::topk_attention(q.view, cache, o.view, lists, p, lse.view);
  sparse::topk_select(q.view, cache, lists_g, p);
  sparse::gather_attention(q.view, cache, og.view, lists_g.view(), p.gather(lg.view));
  EXPECT_TRUE(all_close(o.cview(), og.cview(), 2e-6, 2e-5));
  EXPECT_TRUE(all_close(lse.cview(), lg.cview(), 2e-6, 2e-6));
  p.kv_lens = make_view<const index_t>(lens.data(), batch);
  sparse::topk_attention(q.view, k.view, v.view, oc.view, lists_c, p);
  const index_t owners = owner == list_owner::q_head ? hq : hkv;
  for (index_t b = 0; b < batch; ++b)
    for (index_t w = 0; w < owners; ++w) {
      ASSERT_EQ(lists.count(b, w, 0), lists_c.count(b, w, 0));
      for (index_t e = 0; e < lists.count(b, w, 0); ++e)
        EXPECT_EQ(lists.list(b, w, 0)[e], lists_c.list(b, w, 0)[e]);
    }
}

TEST(TopkAttention, PagedEqualsSelectThenGather) {
  // owner, k, sinks, window, lengths per sequence
  paged_reused_scores_equal_gather<float>(list_owner::q_head, 40, 3, 20, {500, 333, 90}, 1200);
  paged_reused_scores_equal_gather<float>(list_owner::kv_head, 64, 0, 0, {1000}, 1201);
  paged_reused_scores_equal_gather<bf16>(list_owner::q_head, 30, 4, 8, {260, 17}, 1202);
}

TEST(TopkAttention, PagedRejectsMalformedCaches) {
  page_table_case c;
  const auto cache = c.cache();
  sparse::topk_params p;
  p.k = 4;
  sparse::token_list_buffer lists;
  EXPECT_THROW(sparse::topk_select(c.q.view, cache, lists, p), invalid_argument);
  EXPECT_THROW(sparse::topk_attention(c.q.view, cache, c.o.view, lists, p), invalid_argument);
  c.len = 16;  // only pages 0 and 1 are used
  EXPECT_NO_THROW(sparse::topk_select(c.q.view, cache, lists, p));
  EXPECT_NO_THROW(sparse::topk_attention(c.q.view, cache, c.o.view, lists, p));
  c.len = 25;  // longer than the table covers
  EXPECT_THROW(sparse::topk_select(c.q.view, cache, lists, p), invalid_argument);
  EXPECT_THROW(sparse::topk_attention(c.q.view, cache, c.o.view, lists, p), invalid_argument);
  c.len = 16;
  const index_t lens = 16;
  p.kv_lens = make_view(&lens, 1);  // a paged cache brings its own lengths
  EXPECT_THROW(sparse::topk_select(c.q.view, cache, lists, p), invalid_argument);
  EXPECT_THROW(sparse::topk_attention(c.q.view, cache, c.o.view, lists, p), invalid_argument);
  p.kv_lens = {};
  auto o_bad = tensor<float, 4>::make({1, 1, 2, 16});  // wrong head dim of o
  EXPECT_THROW(sparse::topk_attention(c.q.view, cache, o_bad.view, lists, p), invalid_argument);
}

TEST(TopkSelect, PagedEqualsContiguous) {
  const index_t sk = 777, hkv = 2, hq = 4, d = 64, page = 32, pages = (sk + page - 1) / page;
  std::mt19937 rng(1100);
  auto q = tensor<float, 4>::make({1, 1, hq, d});
  auto k = tensor<float, 4>::make({1, sk, hkv, d});
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  auto kp = tensor<float, 4>::make({pages, page, hkv, d});
  auto table = tensor<index_t, 2>::make({1, pages});
  std::vector<index_t> reversed(static_cast<std::size_t>(pages));  // reversed page order
  std::iota(reversed.rbegin(), reversed.rend(), 0);
  copy_into_pages(k.view, k.view, reversed, kp.view, kp.view, table.view);  // keys only
  const index_t len = sk;
  sparse::paged_kv<float> cache{kp.cview(), kp.cview(), table.cview(), make_view(&len, 1)};
  // Lists per KV group, and per query head with k below top_k_long's group count.
  for (const auto& [owner, kk] : {std::pair{list_owner::kv_head, index_t{60}},
                                  std::pair{list_owner::q_head, index_t{30}}}) {
    sparse::topk_params p;
    p.k = kk;
    p.owner = owner;
    p.sinks = 2;
    p.window = 10;
    sparse::token_list_buffer a, b;
    sparse::topk_select(q.view, k.view, a, p);
    sparse::topk_select(q.view, cache, b, p);
    for (index_t o = 0; o < (owner == list_owner::q_head ? hq : hkv); ++o) {
      ASSERT_EQ(a.count(0, o, 0), b.count(0, o, 0));
      for (index_t e = 0; e < a.count(0, o, 0); ++e)
        EXPECT_EQ(a.list(0, o, 0)[e], b.list(0, o, 0)[e]);
    }
  }
}

TEST(TopkSelect, RejectsBadParameters) {
  auto q = tensor<float, 4>::make({1, 1, 4, 32});
  auto k = tensor<float, 4>::make({1, 50, 2, 32});
  sparse::token_list_buffer lists;
  sparse::topk_params p;
  p.k = 0;
  EXPECT_THROW(sparse::topk_select(q.view, k.view, lists, p), invalid_argument);
  p.k = 4;
  p.query_block = 0;
  EXPECT_THROW(sparse::topk_select(q.view, k.view, lists, p), invalid_argument);
  p.query_block = 1;
  const index_t len = 60;
  p.kv_lens = make_view(&len, 1);
  EXPECT_THROW(sparse::topk_select(q.view, k.view, lists, p), invalid_argument);
  auto k3 = tensor<float, 4>::make({1, 50, 3, 32});
  p.kv_lens = {};
  EXPECT_THROW(sparse::topk_select(q.view, k3.view, lists, p), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
