// Low-bit top-k (int8 keys), TokenSelect (soft vote + selection cache) and Recycled attention:
// selections equal brute force, the cache is reused for similar queries and invalidated when
// they change, full / recycled steps equal their oracles.
#include <gtest/gtest.h>

#include <limits>
#include <type_traits>

#include "attend/sparse/select/recycled.hpp"
#include "attend/sparse/select/tokenselect.hpp"
#include "attend/sparse/select/topk_int8.hpp"
#include "selection_oracle.hpp"
#include "token_oracle.hpp"

namespace attend::testing {
namespace {

using sparse::head_reduce;
using sparse::list_owner;

struct qkv {
  tensor<float, 4> q, k, v;
  qkv(index_t batch, index_t sq, index_t sk, index_t hq, index_t hkv, index_t d, unsigned seed)
      : q(tensor<float, 4>::make({batch, sq, hq, d})),
        k(tensor<float, 4>::make({batch, sk, hkv, d})),
        v(tensor<float, 4>::make({batch, sk, hkv, d})) {
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng, -1.5f, 1.5f);
    fill_uniform(k.view, rng, -1.5f, 1.5f);
    fill_uniform(v.view, rng);
  }
};

/// Oracle of gather_attention for given lists (double reference with the visibility mask).
::testing::AssertionResult matches_gather_oracle(const qkv& t, const view4<float>& o,
                                                 const sparse::token_lists& lists, index_t sinks,
                                                 index_t window) {
  const index_t b = t.q.view.extent(0), sq = t.q.view.extent(1), hq = t.q.view.extent(2);
  const index_t sk = t.k.view.extent(1), hkv = t.k.view.extent(2), d = t.v.view.extent(3);
  auto mask = gather_visibility(lists, b, hq, hkv, sq, sk, {}, sinks, window, true);
  attention_params rp;
  rp.mask = mask.view;
  auto ro = tensor<double, 4>::make({b, sq, hq, d});
  reference::attention(t.q.cview(), t.k.cview(), t.v.cview(), rp, ro.view);
  return all_close(view4<const float>(o), ro.cview(), 2e-5, 2e-4);
}

// ---- int8 keys ----------------------------------------------------------------------------

TEST(Int8Keys, QuantisationErrorIsHalfAStep) {
  qkv t(2, 1, 77, 4, 3, 64, 10);
  sparse::int8_keys keys(2, 100, 3, 64);
  keys.store(t.k.view.narrow(1, 0, 40));
  keys.store(t.k.view.narrow(1, 40, 37), 40);  // append
  for (index_t b = 0; b < 2; ++b) {
    EXPECT_EQ(keys.length(b), 77);
    for (index_t j = 0; j < 77; ++j)
      for (index_t h = 0; h < 3; ++h) {
        float amax = 0;
        for (index_t c = 0; c < 64; ++c) amax = std::max(amax, std::abs(t.k.view(b, j, h, c)));
        for (index_t c = 0; c < 64; ++c)
          EXPECT_LE(std::abs(keys.dequantised(b, j, h, c) - t.k.view(b, j, h, c)),
                    amax / 127.0f * 0.5f + 1e-6f);
      }
  }
}

static_assert(!std::is_copy_constructible_v<sparse::int8_keys> &&
              std::is_nothrow_move_constructible_v<sparse::int8_keys>);

TEST(Int8Keys, RejectsDimensionsItCannotScore) {
  EXPECT_THROW(sparse::int8_keys(1, 16, 1, 3), attend::invalid_argument);  // odd
  EXPECT_THROW(sparse::int8_keys(1, 16, 1, 6), attend::invalid_argument);  // not 4 per line
  EXPECT_THROW(sparse::int8_keys(1, 16, 1, sparse::int8_keys::max_dim + 2),
               attend::invalid_argument);  // int32 sums could overflow
  EXPECT_NO_THROW(sparse::int8_keys(1, 16, 1, sparse::int8_keys::max_dim));
}

TEST(Int8RowKeys, RepresentTheSameValuesAsInt8Keys) {
  qkv t(2, 1, 77, 4, 3, 64, 11);
  t.k.view(1, 5, 2, 7) = 40.0f;  // an outlier: that token's other codes become small
  for (index_t c = 0; c < 64; ++c) t.k.view(0, 9, 1, c) = 0.0f;  // a zero row: scale 0
  t.k.view(1, 3, 0, 5) = std::numeric_limits<float>::quiet_NaN();  // ignored, code 0
  sparse::int8_keys blocked(2, 100, 3, 64);
  blocked.store(t.k.view);
  sparse::int8_row_keys rows(2, 90, 3, 64);
  rows.store(t.k.view.narrow(1, 0, 30));
  rows.store(t.k.view.narrow(1, 30, 47), 30);  // append
  EXPECT_EQ(rows.length(0), 77);
  EXPECT_EQ(rows.length(1), 77);
  for (index_t b = 0; b < 2; ++b)
    for (index_t j = 0; j < 77; ++j)
      for (index_t h = 0; h < 3; ++h)
        for (index_t c = 0; c < 64; ++c) {
          ASSERT_EQ(rows.dequantised(b, j, h, c), blocked.dequantised(b, j, h, c))
              << b << " " << j << " " << h << " " << c;
          const float k = t.k.view(b, j, h, c);
          if (k == k) {  // within half a step of the key
            EXPECT_LE(std::abs(rows.dequantised(b, j, h, c) - k),
                      *rows.scale(b, j, h) * 0.5f + 1e-6f);
          }
        }
  EXPECT_EQ(*rows.scale(0, 9, 1), 0.0f);
  EXPECT_EQ(rows.row(1, 3, 0)[5], 0);
  float amax = 0.0f;  // of the NaN row's other elements
  for (index_t c = 0; c < 64; ++c)
    if (c != 5) amax = std::max(amax, std::abs(t.k.view(1, 3, 0, c)));
  EXPECT_EQ(*rows.scale(1, 3, 0), amax / 127.0f);
  EXPECT_EQ(rows.row(1, 5, 2)[7], 127);
  EXPECT_THROW(rows.store(t.k.view.narrow(1, 0, 20), 71), attend::invalid_argument);  // > capacity
  EXPECT_THROW(rows.store(t.q.view), attend::invalid_argument);                      // 4 heads
  EXPECT_THROW(sparse::int8_row_keys(1, 0, 1, 8), attend::invalid_argument);
}

static_assert(!std::is_copy_constructible_v<sparse::int8_row_keys> &&
              std::is_nothrow_move_constructible_v<sparse::int8_row_keys>);

/// The int8 selection is the top-k of q . dequantised(k) (up to the int16 query rounding).
void int8_case(index_t sq, index_t sk, index_t hq, index_t hkv, list_owner owner, index_t kk,
               index_t qb, index_t sinks, index_t window, unsigned seed,
               sparse::head_reduce reduce = sparse::head_reduce::softmax_sum) {
  const index_t d = 64;
  qkv t(1, sq, sk, hq, hkv, d, seed);
  sparse::int8_keys keys(1, sk, hkv, d);
  keys.store(t.k.view);
  sparse::topk_params p;
  p.k = kk;
  p.owner = owner;
  p.query_block = qb;
  p.sinks = sinks;
  p.window = window;
  p.reduce = reduce;
  sparse::token_list_buffer lists;
  sparse::topk_int8_select(t.q.view, keys, lists, p);
  const index_t group = hq / hkv;
  const double scale = 1.0 / std::sqrt(double(d));
  for (index_t tile = 0; tile < lists.tiles(); ++tile) {
    const index_t t0 = tile * qb, t1 = std::min(sq, t0 + qb);
    std::vector<std::vector<double>> qf(hq, std::vector<double>(d, 0.0));
    for (index_t h = 0; h < hq; ++h)
      for (index_t c = 0; c < d; ++c) {
        for (index_t i = t0; i < t1; ++i) qf[h][c] += t.q.view(0, i, h, c);
        qf[h][c] /= double(t1 - t0);
      }
    auto dot = [&](index_t h, index_t j) {
      double s = 0;
      for (index_t c = 0; c < d; ++c) s += qf[h][c] * keys.dequantised(0, j, h / group, c);
      return scale * s;
    };
    const index_t first = sk - sq + t0, last = sk - sq + t1 - 1;
    const index_t lo = sinks, hi = std::min(last + 1, window > 0 ? first - window + 1 : sk);
    for (index_t o = 0; o < lists.owners(); ++o) {
      index_t h0 = o, h1 = o + 1;
      if (owner == list_owner::kv_head) h0 = o * group, h1 = h0 + group;
      if (owner == list_owner::layer) h0 = 0, h1 = hq;
      const auto red = owner == list_owner::q_head             ? brute_reduce::own
                       : reduce == sparse::head_reduce::max_score ? brute_reduce::max_score
                                                                  : brute_reduce::softmax_sum;
      const brute_list want = brute_select(sk, lo, std::max(lo, hi), h0, h1, red, kk, dot);
      EXPECT_TRUE(same_selection(lists.list(0, o, tile), lists.count(0, o, tile), want, 2e-4))
          << "owner " << o << " tile " << tile;
    }
  }
}

TEST(Int8Topk, EqualsBruteForceOnDequantisedKeys) {
  int8_case(1, 1000, 8, 2, list_owner::q_head, 64, 1, 0, 0, 20);
  int8_case(1, 777, 8, 2, list_owner::kv_head, 50, 1, 4, 32, 21);
  int8_case(6, 500, 6, 1, list_owner::layer, 40, 3, 2, 0, 22);
  int8_case(1, 300, 12, 4, list_owner::q_head, 30, 1, 0, 8, 23);  // groups of 3 heads
  int8_case(1, 400, 3, 3, list_owner::q_head, 30, 1, 0, 0, 24);   // one head per KV head
  // A KV group's maximum, written by the scorer itself (no head rows): groups of 2, 4 and 6
  // heads (the scorer takes four heads at a time, so 6 merges two passes).
  int8_case(1, 1000, 8, 4, list_owner::kv_head, 64, 1, 0, 0, 25, sparse::head_reduce::max_score);
  int8_case(1, 777, 8, 2, list_owner::kv_head, 50, 1, 4, 32, 26, sparse::head_reduce::max_score);
  int8_case(2, 500, 12, 2, list_owner::kv_head, 40, 1, 0, 0, 27, sparse::head_reduce::max_score);
  int8_case(1, 300, 8, 2, list_owner::layer, 30, 1, 0, 0, 28, sparse::head_reduce::max_score);
}

/// On keys with a planted set of relevant tokens, int8 selection keeps >= 95% of the attention
/// mass exact selection keeps.
TEST(Int8Topk, KeepsTheMassOfExactTopk) {
  const index_t sk = 6000, hq = 8, hkv = 2, d = 64, kk = 128;
  qkv t(1, 1, sk, hq, hkv, d, 30);
  std::mt19937 rng(31);
  std::uniform_int_distribution<index_t> where(0, sk - 1);
  for (int n = 0; n < 60; ++n) {  // relevant keys: aligned with the group's queries
    const index_t j = where(rng);
    const float a = 0.5f + 0.01f * n;
    for (index_t hk = 0; hk < hkv; ++hk)
      for (index_t c = 0; c < d; ++c)
        t.k.view(0, j, hk, c) += a * (t.q.view(0, 0, 2 * hk, c) + t.q.view(0, 0, 2 * hk + 1, c));
  }
  sparse::int8_keys keys(1, sk, hkv, d);
  keys.store(t.k.view);
  sparse::topk_params p;
  p.k = kk;
  auto o = tensor<float, 4>::make({1, 1, hq, d});
  auto le = tensor<float, 3>::make({1, hq, 1}), li = tensor<float, 3>::make({1, hq, 1});
  sparse::token_list_buffer lists;
  sparse::topk_attention(t.q.view, t.k.view, t.v.view, o.view, lists, p, le.view);
  sparse::topk_int8_attention(t.q.view, keys, t.k.view, t.v.view, o.view, lists, p, li.view);
  for (index_t h = 0; h < hq; ++h) {
    const double mass_ratio = std::exp(double(li.view(0, h, 0)) - double(le.view(0, h, 0)));
    EXPECT_GE(mass_ratio, 0.95) << "head " << h;
    EXPECT_LE(mass_ratio, 1.0 + 1e-5) << "head " << h;
  }
}

// ---- TokenSelect --------------------------------------------------------------------------

/// Brute-force TokenSelect list: top-k of sum over heads of softmax(raw q . k) over the
/// candidates [n_init, T - n_local).
brute_list tokenselect_brute(const qkv& t, index_t h0, index_t h1, index_t kk, index_t n_init,
                             index_t n_local) {
  const index_t sk = t.k.view.extent(1), d = t.q.view.extent(3);
  const index_t group = t.q.view.extent(2) / t.k.view.extent(2);
  auto dot = [&](index_t h, index_t j) {
    double s = 0;
    for (index_t c = 0; c < d; ++c) s += double(t.q.view(0, 0, h, c)) * t.k.view(0, j, h / group, c);
    return s;
  };
  return brute_select(sk, n_init, sk - n_local, h0, h1, brute_reduce::softmax_sum, kk, dot);
}

TEST(TokenSelect, SelectionEqualsBruteForceAndAttentionItsOracle) {
  const index_t sk = 1500, hq = 8, hkv = 2, d = 64;
  qkv t(1, 1, sk, hq, hkv, d, 40);
  for (list_owner owner : {list_owner::layer, list_owner::kv_head}) {
    sparse::tokenselect_params p;
    p.top_k = 100;
    p.n_init = 16;
    p.n_local = 64;
    p.owner = owner;
    sparse::tokenselect ts(p);
    auto o = tensor<float, 4>::make({1, 1, hq, d});
    ts.attend(t.q.view, t.k.view, t.v.view, o.view);
    EXPECT_FALSE(ts.last_reused());
    const auto& lists = ts.lists();
    for (index_t w = 0; w < lists.owners(); ++w) {
      const index_t h0 = owner == list_owner::layer ? 0 : w * (hq / hkv);
      const index_t h1 = owner == list_owner::layer ? hq : h0 + hq / hkv;
      EXPECT_TRUE(same_selection(lists.list(0, w, 0), lists.count(0, w, 0),
                                 tokenselect_brute(t, h0, h1, 100, 16, 64), 1e-5));
    }
    EXPECT_TRUE(matches_gather_oracle(t, o.view, lists.view(), 16, 64));
  }
}

TEST(TokenSelect, CacheIsReusedForSimilarQueriesAndInvalidatedWhenTheyChange) {
  const index_t sk = 1200, hq = 4, hkv = 2, d = 64;
  qkv t(1, 1, sk, hq, hkv, d, 50);
  sparse::tokenselect_params p;
  p.top_k = 64;
  p.n_init = 8;
  p.n_local = 32;
  sparse::tokenselect ts(p);
  auto o = tensor<float, 4>::make({1, 1, hq, d});
  ts.attend(t.q.view, t.k.view, t.v.view, o.view);
  const std::vector<index_t> first(ts.lists().list(0, 0, 0),
                                   ts.lists().list(0, 0, 0) + ts.lists().count(0, 0, 0));
  // A slightly perturbed query (cosine ~ 0.999): the cached selection is reused as is.
  qkv similar = t;
  std::mt19937 rng(51);
  std::uniform_real_distribution<float> eps(-0.02f, 0.02f);
  for (auto& x : similar.q.storage) x += eps(rng);
  similar.q.view = bshd(similar.q.storage.data(), 1, 1, hq, d);
  ts.attend(similar.q.view, t.k.view, t.v.view, o.view);
  EXPECT_TRUE(ts.last_reused());
  const std::vector<index_t> second(ts.lists().list(0, 0, 0),
                                    ts.lists().list(0, 0, 0) + ts.lists().count(0, 0, 0));
  EXPECT_EQ(first, second);
  EXPECT_TRUE(matches_gather_oracle(similar, o.view, ts.lists().view(), 8, 32));
  // A new query (independent direction): the cache misses and the selection is recomputed.
  qkv other(1, 1, sk, hq, hkv, d, 52);
  other.k = t.k;
  other.k.view = bshd(other.k.storage.data(), 1, sk, hkv, d);
  other.v = t.v;
  other.v.view = bshd(other.v.storage.data(), 1, sk, hkv, d);
  ts.attend(other.q.view, other.k.view, other.v.view, o.view);
  EXPECT_FALSE(ts.last_reused());
  EXPECT_TRUE(same_selection(ts.lists().list(0, 0, 0), ts.lists().count(0, 0, 0),
                             tokenselect_brute(other, 0, hq, 64, 8, 32), 1e-5));
  EXPECT_EQ(ts.cache().hits(), 1);
  EXPECT_EQ(ts.cache().misses(), 2);
  // Without the cache every call selects.
  p.use_cache = false;
  sparse::tokenselect nocache(p);
  nocache.attend(t.q.view, t.k.view, t.v.view, o.view);
  nocache.attend(t.q.view, t.k.view, t.v.view, o.view);
  EXPECT_FALSE(nocache.last_reused());
}

TEST(TokenSelect, ShortCachesAreDense) {
  const index_t sk = 300, hq = 4, hkv = 1, d = 32;
  qkv t(1, 1, sk, hq, hkv, d, 60);
  sparse::tokenselect ts;  // defaults: 128 + 2048 + 512 > 300 keys
  auto o = tensor<float, 4>::make({1, 1, hq, d});
  ts.attend(t.q.view, t.k.view, t.v.view, o.view);
  attention_params rp;
  auto ro = tensor<double, 4>::make({1, 1, hq, d});
  reference::attention(t.q.cview(), t.k.cview(), t.v.cview(), rp, ro.view);
  EXPECT_TRUE(all_close(o.cview(), ro.cview(), 2e-5, 2e-4));
}

// ---- Recycled attention -------------------------------------------------------------------

TEST(Recycled, FullStepIsDenseAndKeepsTheTopKOfTheGroupMass) {
  const index_t sk = 2000, hq = 8, hkv = 2, d = 64, kk = 100;
  qkv t(1, 1, sk, hq, hkv, d, 70);
  sparse::recycled_params p;
  p.k = kk;
  p.stride = 4;
  sparse::recycled_attention ra(p);
  auto o = tensor<float, 4>::make({1, 1, hq, d});
  auto lse = tensor<float, 3>::make({1, hq, 1});
  ra.step(t.q.view, t.k.view, t.v.view, o.view, lse.view);
  EXPECT_TRUE(ra.last_full());
  attention_params rp;
  auto ro = tensor<double, 4>::make({1, 1, hq, d});
  auto rl = tensor<double, 3>::make({1, hq, 1});
  reference::attention(t.q.cview(), t.k.cview(), t.v.cview(), rp, ro.view, rl.view);
  EXPECT_TRUE(all_close(o.cview(), ro.cview(), 2e-5, 2e-4));
  EXPECT_TRUE(all_close(lse.cview(), rl.cview(), 2e-5, 2e-4));
  const double scale = 1.0 / std::sqrt(double(d));
  auto dot = [&](index_t h, index_t j) {
    double s = 0;
    for (index_t c = 0; c < d; ++c) s += double(t.q.view(0, 0, h, c)) * t.k.view(0, j, h / 4, c);
    return scale * s;
  };
  for (index_t hk = 0; hk < hkv; ++hk)
    EXPECT_TRUE(same_selection(ra.lists().list(0, hk, 0), ra.lists().count(0, hk, 0),
                               brute_select(sk, 0, sk, hk * 4, hk * 4 + 4,
                                            brute_reduce::softmax_sum, kk, dot),
                               1e-5));
}

TEST(Recycled, RecycledStepsAttendToTheKeptKeysAndNewTokens) {
  const index_t cap = 1000, hq = 4, hkv = 2, d = 64;
  qkv t(1, 1, cap, hq, hkv, d, 80);
  std::mt19937 rng(81);
  sparse::recycled_params p;
  p.k = 60;
  p.stride = 3;
  sparse::recycled_attention ra(p);
  auto o = tensor<float, 4>::make({1, 1, hq, d});
  std::vector<index_t> kept;
  for (index_t step = 0; step < 7; ++step) {
    const index_t len = 900 + step;  // one token appended per step
    fill_uniform(t.q.view, rng, -1.5f, 1.5f);
    const index_t lens[1] = {len};
    ra.step(t.q.view, t.k.view, t.v.view, o.view, {}, make_view<const index_t>(lens, 1));
    EXPECT_EQ(ra.last_full(), step % 3 == 0) << step;
    // Oracle: the kept keys of the last full step plus [full_len, len) (dense on full steps).
    const index_t full_len = 900 + step / 3 * 3;
    auto mask = gather_visibility(ra.lists().view(), 1, hq, hkv, 1, cap, {len}, 0,
                                  ra.last_full() ? 0 : len - full_len, true);
    attention_params rp;
    rp.kv_lens = make_view<const index_t>(lens, 1);
    if (!ra.last_full()) rp.mask = mask.view;
    auto ro = tensor<double, 4>::make({1, 1, hq, d});
    reference::attention(t.q.cview(), t.k.cview(), t.v.cview(), rp, ro.view);
    EXPECT_TRUE(all_close(o.cview(), ro.cview(), 2e-5, 2e-4)) << step;
  }
}

TEST(Recycled, DynamicVariantRunsAFullStepWhenTheQueryChanges) {
  const index_t sk = 800, hq = 4, hkv = 1, d = 32;
  qkv t(1, 1, sk, hq, hkv, d, 90);
  sparse::recycled_params p;
  p.k = 50;
  p.stride = 100;
  p.theta = 0.8f;
  sparse::recycled_attention ra(p);
  auto o = tensor<float, 4>::make({1, 1, hq, d});
  ra.step(t.q.view, t.k.view, t.v.view, o.view);
  EXPECT_TRUE(ra.last_full());
  ra.step(t.q.view, t.k.view, t.v.view, o.view);  // same query: recycled
  EXPECT_FALSE(ra.last_full());
  qkv other(1, 1, sk, hq, hkv, d, 91);
  ra.step(other.q.view, t.k.view, t.v.view, o.view);  // dissimilar query: full step
  EXPECT_TRUE(ra.last_full());
}

}  // namespace
}  // namespace attend::testing
