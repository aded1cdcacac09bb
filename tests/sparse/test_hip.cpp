// HiP: the tree search equals a straightforward re-implementation of the card's algorithm
// (integer-valued inputs, so float scores are exact and ties are decided the same way; on an
// int8 copy, scale * an exact integer), finds planted needles, and hip_attention equals the
// oracle over its lists.
#include <gtest/gtest.h>

#include <functional>

#include "attend/sparse/hierarchical.hpp"
#include "token_oracle.hpp"

namespace attend::testing {
namespace {

using sparse::list_owner;

/// The card's search, written plainly: nodes split in halves, each half scored by its first
/// block (max over the owner's heads, the block's selected queries and the block's keys), the
/// m best halves kept (ties: the earlier), until every node is one block.
/// With key_scale (an int8 copy: k holds its codes), a key's score is key_scale(b, t, kv) * q . k.
using key_scale_fn = std::function<double(index_t, index_t, index_t)>;
std::vector<index_t> brute_hip(const view4<float>& q, const view4<float>& k, index_t b,
                               index_t h0, index_t h1, const std::vector<index_t>& queries,
                               index_t s0, index_t s1, index_t kk, index_t bk,
                               const key_scale_fn& key_scale = {}) {
  const index_t n = s1 - s0, m = (kk + bk - 1) / bk, blocks = (n + bk - 1) / bk;
  const index_t group = q.extent(2) / k.extent(2), d = q.extent(3);
  std::vector<index_t> out;
  if (n <= 0) return out;
  if (n <= kk || blocks <= m) {
    for (index_t t = s0; t < s1; ++t) out.push_back(t);
    return out;
  }
  auto score = [&](index_t start) {
    double best = -std::numeric_limits<double>::infinity();
    for (index_t h = h0; h < h1; ++h)
      for (index_t i : queries)
        for (index_t t = s0 + start * bk; t < std::min(s1, s0 + (start + 1) * bk); ++t) {
          double s = 0;
          for (index_t c = 0; c < d; ++c) s += double(q(b, i, h, c)) * double(k(b, t, h / group, c));
          if (key_scale) s *= key_scale(b, t, h / group);
          best = std::max(best, s);
        }
    return best;
  };
  std::vector<std::pair<index_t, index_t>> nodes;  // (start, size) in blocks
  for (index_t i = 0; i < m; ++i) nodes.push_back({blocks * i / m, blocks * (i + 1) / m - blocks * i / m});
  auto widest = [&] {
    index_t w = 0;
    for (auto& nd : nodes) w = std::max(w, nd.second);
    return w;
  };
  while (widest() > 1) {
    std::vector<std::pair<index_t, index_t>> ch;
    std::vector<double> sc;
    for (auto& nd : nodes) {
      const index_t half = nd.second / 2;
      ch.push_back({nd.first, half});
      sc.push_back(half >= 1 ? score(nd.first) : -std::numeric_limits<double>::infinity());
      ch.push_back({nd.first + half, nd.second - half});
      sc.push_back(score(nd.first + half));
    }
    std::vector<index_t> idx(ch.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](index_t a, index_t c) { return sc[a] > sc[c]; });
    idx.resize(m);
    std::sort(idx.begin(), idx.end());
    nodes.clear();
    for (index_t i : idx) nodes.push_back(ch[i]);
  }
  for (auto& nd : nodes)
    for (index_t t = s0 + nd.first * bk; t < std::min(s1, s0 + (nd.first + 1) * bk); ++t)
      out.push_back(t);
  return out;
}

/// What the search reads. bf16: small integers are exact, so the brute force on the float keys
/// still rules. int8 copy: an int8_row_keys copy; the brute force scores its codes times its
/// scales.
enum hip_keys { keys_f32, keys_bf16, keys_int8_copy };

struct hip_case {
  index_t batch, seq_q, seq_k, heads_q, heads_kv;
  list_owner owner;
  index_t k, block_q, block_k, sinks, window, stride;
  bool ragged;
  index_t d = 16;
  hip_keys keys = keys_f32;
};

void check_search(const hip_case& c, unsigned seed) {
  const index_t d = c.d;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> small(-2, 2);
  auto q = tensor<float, 4>::make({c.batch, c.seq_q, c.heads_q, d});
  auto k = tensor<float, 4>::make({c.batch, c.seq_k, c.heads_kv, d});
  for (auto& x : q.storage) x = float(small(rng));
  for (auto& x : k.storage) x = float(small(rng));
  std::vector<index_t> lens;
  for (index_t b = 0; b < c.batch; ++b) lens.push_back(c.ragged ? c.seq_k - 37 * b : c.seq_k);
  sparse::hip_params p;
  p.k = c.k;
  p.block_q = c.block_q;
  p.block_k = c.block_k;
  p.sinks = c.sinks;
  p.window = c.window;
  p.reduce_stride = c.stride;
  p.owner = c.owner;
  if (c.ragged) p.kv_lens = make_view<const index_t>(lens.data(), c.batch);
  sparse::token_list_buffer lists;
  sparse::int8_row_keys copy;
  key_scale_fn key_scale;
  if (c.keys == keys_bf16) {
    auto kb = tensor<bf16, 4>::make({c.batch, c.seq_k, c.heads_kv, d});
    for (std::size_t i = 0; i < k.storage.size(); ++i)
      kb.storage[i] = from_float<bf16>(k.storage[i]);
    sparse::hip_select(q.view, kb.view, lists, p);
  } else if (c.keys == keys_int8_copy) {
    // Rows times 1, 2, 4 or 8: scales differ by token. They are fl(1 / 127) times powers of two
    // and the codes' dot products small integers, so distinct exact scores stay distinct after
    // the kernel rounds score * scale to float, and the double brute force ranks them alike.
    std::uniform_int_distribution<int> octave(0, 3);
    for (index_t b = 0; b < c.batch; ++b)
      for (index_t t = 0; t < c.seq_k; ++t)
        for (index_t h = 0; h < c.heads_kv; ++h) {
          const float f = float(1 << octave(rng));
          for (index_t e = 0; e < d; ++e) k.view(b, t, h, e) *= f;
        }
    copy.reshape(c.batch, c.seq_k, c.heads_kv, d);
    copy.store(k.view);
    for (index_t b = 0; b < c.batch; ++b)  // the brute force scores the codes
      for (index_t t = 0; t < c.seq_k; ++t)
        for (index_t h = 0; h < c.heads_kv; ++h)
          for (index_t e = 0; e < d; ++e) k.view(b, t, h, e) = float(copy.row(b, t, h)[e]);
    key_scale = [&](index_t b, index_t t, index_t h) { return double(*copy.scale(b, t, h)); };
    sparse::hip_select(q.view, copy, lists, p);
  } else {
    sparse::hip_select(q.view, k.view, lists, p);
  }
  const index_t group = c.heads_q / c.heads_kv;
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t t = 0; t < lists.tiles(); ++t) {
      const index_t t0 = t * c.block_q, t1 = std::min(c.seq_q, t0 + c.block_q);
      std::vector<index_t> sel;
      for (index_t i = t0 + c.stride - 1; i < t1; i += c.stride) sel.push_back(i);
      if (sel.empty()) sel.push_back(t1 - 1);
      const index_t t_end = std::clamp<index_t>(lens[b] - c.seq_q + t1, 0, lens[b]);
      const index_t s0 = std::min(c.sinks, t_end), s1 = std::max(s0, t_end - c.window);
      for (index_t o = 0; o < lists.owners(); ++o) {
        const index_t h0 = c.owner == list_owner::q_head ? o : o * group;
        const index_t h1 = c.owner == list_owner::q_head ? o + 1
                           : c.owner == list_owner::layer ? c.heads_q
                                                          : h0 + group;
        const auto want =
            brute_hip(q.view, k.view, b, h0, h1, sel, s0, s1, c.k, c.block_k, key_scale);
        const std::vector<index_t> got(lists.list(b, o, t), lists.list(b, o, t) + lists.count(b, o, t));
        EXPECT_EQ(got, want) << "batch " << b << " owner " << o << " tile " << t;
      }
    }
}

TEST(HipSelect, EqualsTheCardsAlgorithm) {
  const hip_case cases[] = {
      // batch, sq, sk, hq, hkv, owner, k, bq, bk, sinks, window, stride, ragged
      {1, 1, 3000, 4, 2, list_owner::q_head, 64, 1, 2, 4, 16, 2, false},
      {1, 1, 3000, 4, 2, list_owner::kv_head, 64, 1, 2, 0, 16, 2, false},
      {2, 1, 2500, 2, 1, list_owner::q_head, 100, 1, 4, 3, 0, 2, true},
      {1, 300, 300, 4, 2, list_owner::q_head, 32, 32, 2, 0, 20, 2, false},
      {2, 200, 260, 6, 3, list_owner::kv_head, 30, 5, 3, 2, 7, 3, true},
      {1, 64, 1000, 2, 2, list_owner::q_head, 256, 16, 1, 0, 128, 1, false},
      // Broadcast and dot kernels over a head dim with a partial cache line, bf16 keys, and
      // one list per layer (rows of two KV heads).
      {1, 70, 900, 4, 2, list_owner::kv_head, 64, 14, 2, 0, 16, 1, false, 40, keys_bf16},
      {1, 1, 1200, 4, 2, list_owner::kv_head, 64, 1, 2, 0, 16, 1, false, 40, keys_bf16},
      {1, 64, 700, 4, 2, list_owner::layer, 48, 16, 2, 1, 8, 2, false},
      {1, 1, 900, 4, 2, list_owner::layer, 48, 1, 2, 0, 8, 2, false},
      // An int8 search copy: both kernels, a partial line, ragged lengths, one list per layer.
      {1, 70, 900, 4, 2, list_owner::kv_head, 64, 14, 2, 0, 16, 1, false, 40, keys_int8_copy},
      {2, 1, 1500, 4, 2, list_owner::q_head, 64, 1, 2, 3, 16, 1, true, 40, keys_int8_copy},
      {1, 1, 1200, 8, 2, list_owner::kv_head, 100, 1, 4, 0, 0, 1, false, 128, keys_int8_copy},
      {1, 64, 700, 4, 2, list_owner::layer, 48, 16, 2, 1, 8, 2, false, 16, keys_int8_copy},
  };
  unsigned seed = 1200;
  for (const auto& c : cases) {
    SCOPED_TRACE(seed);
    check_search(c, seed++);
  }
}

TEST(HipSelect, ShortRangesAreTakenWhole) {
  auto q = tensor<float, 4>::make({1, 1, 2, 16});
  auto k = tensor<float, 4>::make({1, 600, 1, 16});
  std::mt19937 rng(3);
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  sparse::hip_params p;  // k 512, window 128: 600 - 128 = 472 <= 512 keys are searched
  sparse::token_list_buffer lists;
  sparse::hip_select(q.view, k.view, lists, p);
  ASSERT_EQ(lists.count(0, 0, 0), 472);
  for (index_t j = 0; j < 472; ++j) EXPECT_EQ(lists.list(0, 0, 0)[j], j);
}

/// Needles: passages of keys aligned with the queries, relevance decaying linearly over 96 keys
/// on each side of the centre (the locality HiP's search relies on: a needle must be wider than
/// the half-nodes of the first round, here 64 keys, or it can only be found by chance), in random
/// background. HiP must find every needle centre, in decode and in prefill blocks.
TEST(HipSelect, FindsPlantedNeedles) {
  const index_t sk = 16384, hq = 4, hkv = 2, d = 64;
  std::mt19937 rng(1300);
  for (index_t sq : {index_t{1}, index_t{64}}) {
    auto q = tensor<float, 4>::make({1, sq, hq, d});
    auto k = tensor<float, 4>::make({1, sk, hkv, d});
    auto v = tensor<float, 4>::make({1, sk, hkv, d});
    fill_uniform(k.view, rng);
    fill_uniform(v.view, rng);
    // Queries share one direction per head plus noise.
    std::vector<float> u(static_cast<std::size_t>(hq * d));
    std::normal_distribution<float> nrm(0.0f, 1.0f);
    for (auto& x : u) x = nrm(rng) / std::sqrt(float(d));
    std::uniform_real_distribution<float> noise(-0.5f, 0.5f);
    for (index_t i = 0; i < sq; ++i)
      for (index_t h = 0; h < hq; ++h)
        for (index_t c = 0; c < d; ++c) q.view(0, i, h, c) = 4.0f * u[h * d + c] + noise(rng);
    std::vector<index_t> centres;
    std::uniform_int_distribution<index_t> where(500, sk - 1000);
    for (int n = 0; n < 5; ++n) {
      const index_t c0 = where(rng);
      centres.push_back(c0);
      for (index_t j = c0 - 96; j <= c0 + 96; ++j) {
        const float prof = 6.0f * (1.0f - float(std::abs(j - c0)) / 97.0f);
        for (index_t hk = 0; hk < hkv; ++hk)
          for (index_t c = 0; c < d; ++c)
            k.view(0, j, hk, c) += prof * (u[(2 * hk) * d + c] + u[(2 * hk + 1) * d + c]) * 4.0f;
      }
    }
    // The search may read a bf16 or int8 copy of the keys kept beside the cache (fewer bytes
    // per scattered row); attention still reads the f32 keys.
    auto k_bf16 = tensor<bf16, 4>::make({1, sk, hkv, d});
    for (std::size_t i = 0; i < k.storage.size(); ++i)
      k_bf16.storage[i] = from_float<bf16>(k.storage[i]);
    sparse::int8_row_keys k_int8(1, sk, hkv, d);
    k_int8.store(k.view);
    enum search_keys { cache, bf16_copy, int8_copy };
    const char* const copy_name[] = {"", ", bf16 search copy", ", int8 search copy"};
    for (auto [owner, search_copy] : {std::pair{list_owner::q_head, cache},
                                      std::pair{list_owner::kv_head, cache},
                                      std::pair{list_owner::kv_head, bf16_copy},
                                      std::pair{list_owner::q_head, int8_copy},
                                      std::pair{list_owner::kv_head, int8_copy}}) {
      sparse::hip_params p;
      p.k = 256;
      p.block_q = sq == 1 ? 1 : 32;
      p.owner = owner;
      sparse::token_list_buffer lists;
      auto o = tensor<float, 4>::make({1, sq, hq, d});
      auto lse = tensor<float, 3>::make({1, hq, sq});
      if (search_copy == cache) {
        sparse::hip_attention(q.view, k.view, v.view, o.view, lists, p, lse.view);
      } else {
        if (search_copy == bf16_copy) sparse::hip_select(q.view, k_bf16.view, lists, p);
        else sparse::hip_select(q.view, k_int8, lists, p);
        sparse::gather_attention(q.view, k.view, v.view, o.view, lists.view(), p.gather(lse.view));
      }
      const index_t last = lists.tiles() - 1;
      for (index_t w = 0; w < lists.owners(); ++w) {
        const index_t* l = lists.list(0, w, last);
        const index_t n = lists.count(0, w, last);
        for (index_t c0 : centres)
          EXPECT_TRUE(std::binary_search(l, l + n, c0))
              << "needle at " << c0 << " missed (owner " << w << ", seq_q " << sq
              << copy_name[search_copy] << ")";
      }
      // The found keys hold (nearly) as much attention mass as the exact top-k of the same
      // budget: mass ratio = exp(lse_hip - lse_topk) for the last query.
      sparse::topk_params tp;
      tp.k = 256;
      tp.window = 128;
      tp.owner = owner;
      tp.reduce = sparse::head_reduce::max_score;
      auto q_last = q.view.narrow(1, sq - 1, 1);
      auto o1 = tensor<float, 4>::make({1, 1, hq, d});
      auto l1 = tensor<float, 3>::make({1, hq, 1});
      sparse::token_list_buffer exact;
      sparse::topk_select(q_last, k.view, exact, tp);
      sparse::gather_params gp = tp.gather(l1.view);
      sparse::gather_attention(q_last, k.view, v.view, o1.view, exact.view(), gp);
      for (index_t h = 0; h < hq; ++h)
        EXPECT_GE(std::exp(double(lse.view(0, h, sq - 1)) - double(l1.view(0, h, 0))), 0.95)
            << h << copy_name[search_copy];
    }
  }
}

TEST(HipAttention, EqualsTheOracleOverItsLists) {
  const index_t sq = 100, sk = 900, hq = 4, hkv = 2, d = 64;
  std::mt19937 rng(1400);
  auto q = tensor<float, 4>::make({1, sq, hq, d});
  auto k = tensor<bf16, 4>::make({1, sk, hkv, d}), v = tensor<bf16, 4>::make({1, sk, hkv, d});
  fill_uniform(q.view, rng);
  fill_uniform(k.view, rng);
  fill_uniform(v.view, rng);
  sparse::hip_params p;
  p.k = 64;
  p.block_q = 16;
  p.window = 32;
  p.sinks = 4;
  sparse::token_list_buffer lists;
  auto o = tensor<float, 4>::make({1, sq, hq, d});
  sparse::hip_attention(q.view, k.view, v.view, o.view, lists, p);
  auto mask = gather_visibility(lists.view(), 1, hq, hkv, sq, sk, {}, 4, 32, true);
  attention_params rp;
  rp.mask = mask.view;
  auto ro = tensor<double, 4>::make({1, sq, hq, d});
  reference::attention(q.cview(), k.cview(), v.cview(), rp, ro.view);
  EXPECT_TRUE(all_close(o.cview(), ro.cview(), 2e-5, 2e-4));
}

TEST(HipSelect, RejectsBadParameters) {
  auto q = tensor<float, 4>::make({1, 1, 2, 16});
  auto k = tensor<float, 4>::make({1, 100, 1, 16});
  sparse::token_list_buffer lists;
  sparse::hip_params p;
  p.block_k = 0;
  EXPECT_THROW(sparse::hip_select(q.view, k.view, lists, p), invalid_argument);
  p.block_k = 2;
  p.window = -1;
  EXPECT_THROW(sparse::hip_select(q.view, k.view, lists, p), invalid_argument);
  // An int8 copy must fit q and hold the keys kv_lens asks for.
  p.window = 0;
  sparse::int8_row_keys copy(1, 100, 1, 16);
  copy.store(k.view.narrow(1, 0, 60));
  std::vector<index_t> lens{61};
  p.kv_lens = make_view<const index_t>(lens.data(), 1);
  EXPECT_THROW(sparse::hip_select(q.view, copy, lists, p), invalid_argument);
  lens[0] = 60;
  EXPECT_NO_THROW(sparse::hip_select(q.view, copy, lists, p));
  sparse::int8_row_keys wide(1, 100, 1, 32);
  EXPECT_THROW(sparse::hip_select(q.view, wide, lists, p), invalid_argument);
}

}  // namespace
}  // namespace attend::testing
