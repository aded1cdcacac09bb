// Quest: incremental page metadata, the page bound, the selection against a re-implementation
// written here, planted needles, the attention over the selected pages and argument errors.
#include <cmath>
#include <random>

#include "attend/sparse/select/quest.hpp"
#include "block_case.hpp"

namespace attend::testing {
namespace {

using sparse::page_metadata;
using sparse::quest_params;

template <class M>
void check_metadata_against_scan(const page_metadata<M>& meta, const tensor<float, 4>& k,
                                 const std::vector<index_t>& lens) {
  const index_t P = meta.page_size(), dim = meta.dim();
  for (index_t b = 0; b < meta.batch(); ++b)
    for (index_t h = 0; h < meta.heads_kv(); ++h)
      for (index_t p = 0; p < meta.pages(b); ++p)
        for (index_t c = 0; c < dim; ++c) {
          float mx = -1e30f, mn = 1e30f;
          for (index_t t = p * P; t < std::min(lens[b], (p + 1) * P); ++t) {
            mx = std::max(mx, k.view(b, t, h, c));
            mn = std::min(mn, k.view(b, t, h, c));
          }
          const float gmx = to_float(meta.page(b, h, p)[c]);
          const float gmn = to_float(meta.page(b, h, p)[dim + c]);
          if (std::is_same_v<M, float>) {
            ASSERT_EQ(gmx, mx);
            ASSERT_EQ(gmn, mn);
          } else {  // outward-rounded bf16: a bound within one bf16 step
            ASSERT_GE(gmx, mx);
            ASSERT_LE(gmn, mn);
            ASSERT_LE(gmx - mx, std::abs(mx) / 128 + 1e-30f);
            ASSERT_LE(mn - gmn, std::abs(mn) / 128 + 1e-30f);
          }
        }
}

TEST(Quest, MetadataIncrementalEqualsScan) {
  std::mt19937 rng(1);
  auto k = tensor<float, 4>::make({2, 100, 3, 24});
  fill_uniform(k.view, rng, -3.0f, 3.0f);
  page_metadata<float> inc(2, 3, 24, 100, 16);
  page_metadata<bf16> inc16(2, 3, 24, 100, 16);
  std::vector<index_t> lens(2);
  for (auto step : {std::pair<index_t, index_t>{5, 1}, {17, 16}, {40, 40}, {100, 77}}) {
    lens = {step.first, step.second};
    inc.update(k.cview(), lens.data());
    inc16.update(k.cview(), lens.data());
    EXPECT_EQ(inc.length(0), step.first);
    check_metadata_against_scan(inc, k, lens);
    check_metadata_against_scan(inc16, k, lens);
  }
  page_metadata<float> once(2, 3, 24, 100, 16);
  once.update(k.cview(), lens.data());
  for (index_t b = 0; b < 2; ++b)
    for (index_t p = 0; p < once.pages(b); ++p)
      for (index_t c = 0; c < 48; ++c) EXPECT_EQ(once.page(b, 1, p)[c], inc.page(b, 1, p)[c]);
  // Shrinking, overrunning the cache or a mismatched cache are errors.
  std::vector<index_t> bad = {50, 77};
  EXPECT_THROW(inc.update(k.cview(), bad.data()), invalid_argument);
  bad = {101, 100};
  EXPECT_THROW(once.update(k.cview(), bad.data()), invalid_argument);
  auto k2 = tensor<float, 4>::make({2, 100, 2, 24});
  EXPECT_THROW(once.update(k2.cview(), index_t{100}), invalid_argument);
  inc.reset();
  EXPECT_EQ(inc.length(1), 0);
}

TEST(Quest, PageScoreBoundsEveryKey) {
  std::mt19937 rng(2);
  auto k = tensor<float, 4>::make({1, 64, 1, 16});
  auto q = tensor<float, 4>::make({1, 1, 1, 16});
  fill_uniform(k.view, rng);
  fill_uniform(q.view, rng);
  for (bool use_bf16 : {false, true}) {
    std::vector<float> scores(4);
    if (use_bf16) {
      page_metadata<bf16> meta(1, 1, 16, 64);
      meta.update(k.cview(), index_t{64});
      sparse::detail::quest_page_scores<xsimd::default_arch>(q.view.data(), 1, meta, 0, 0, 0, 4,
                                                             scores.data(), 4);
    } else {
      page_metadata<float> meta(1, 1, 16, 64);
      meta.update(k.cview(), index_t{64});
      sparse::detail::quest_page_scores<xsimd::default_arch>(q.view.data(), 1, meta, 0, 0, 0, 4,
                                                             scores.data(), 4);
    }
    for (index_t p = 0; p < 4; ++p)
      for (index_t j = p * 16; j < p * 16 + 16; ++j) {
        double dot = 0;
        for (index_t c = 0; c < 16; ++c) dot += double(q.view(0, 0, 0, c)) * k.view(0, j, 0, c);
        EXPECT_GE(scores[p], dot - 1e-5) << "page " << p << " key " << j;
      }
  }
}

// Quest from the card, in double: U_p = sum_c max(q_c kmax, q_c kmin); top (K - 1) of all but
// the last page, plus the last page; shared lists rank by the group's largest U_p.
std::vector<std::vector<index_t>> ref_quest(const tensor<float, 4>& q, const tensor<float, 4>& k,
                                            const std::vector<index_t>& lens, index_t P,
                                            index_t budget, bool shared) {
  const index_t batch = q.view.extent(0), hq = q.view.extent(2), hkv = k.view.extent(2);
  const index_t dim = q.view.extent(3), group = hq / hkv, K = std::max<index_t>(1, budget / P);
  std::vector<std::vector<index_t>> lists;
  for (index_t b = 0; b < batch; ++b)
    for (index_t o = 0; o < (shared ? hkv : hq); ++o) {
      const index_t n = (lens[b] + P - 1) / P;
      std::vector<double> u(n > 0 ? n - 1 : 0, -1e300);
      for (index_t h = (shared ? o * group : o); h < (shared ? (o + 1) * group : o + 1); ++h)
        for (index_t p = 0; p + 1 < n; ++p) {
          double s = 0;
          for (index_t c = 0; c < dim; ++c) {
            double mx = -1e300, mn = 1e300;
            for (index_t t = p * P; t < (p + 1) * P; ++t) {
              mx = std::max<double>(mx, k.view(b, t, h / group, c));
              mn = std::min<double>(mn, k.view(b, t, h / group, c));
            }
            const double qc = q.view(b, 0, h, c);
            s += std::max(qc * mx, qc * mn);
          }
          u[p] = std::max(u[p], s);
        }
      std::vector<index_t> pages;
      if (n <= K) {
        for (index_t p = 0; p < n; ++p) pages.push_back(p);
      } else {
        std::vector<index_t> idx(n - 1);
        std::iota(idx.begin(), idx.end(), 0);
        std::stable_sort(idx.begin(), idx.end(), [&](index_t a, index_t c) { return u[a] > u[c]; });
        pages.assign(idx.begin(), idx.begin() + (K - 1));
        pages.push_back(n - 1);
        std::sort(pages.begin(), pages.end());
      }
      lists.push_back(pages);
    }
  return lists;
}

TEST(Quest, SelectionMatchesReimplementation) {
  std::mt19937 rng(3);
  const index_t batch = 2, cap = 300, hq = 8, hkv = 2, dim = 32;
  auto k = tensor<float, 4>::make({batch, cap, hkv, dim});
  auto q = tensor<float, 4>::make({batch, 1, hq, dim});
  fill_uniform(k.view, rng);
  fill_uniform(q.view, rng);
  const std::vector<index_t> lens = {300, 150};
  for (index_t P : {16, 8})
    for (index_t budget : {64, 128, 1000})
      for (bool shared : {false, true}) {
        page_metadata<float> meta(batch, hkv, dim, cap, P);
        meta.update(k.cview(), lens.data());
        const auto m = sparse::quest_select(q.cview(), cap, meta, quest_params{budget, shared});
        const auto want = ref_quest(q, k, lens, P, budget, shared);
        ASSERT_EQ(m.geometry().heads, shared ? hkv : hq);
        ASSERT_EQ(m.geometry().block_k, P);
        for (index_t r = 0; r < m.geometry().rows(); ++r) {
          const auto row = m.row(r);
          EXPECT_EQ(std::vector<index_t>(row.blocks, row.blocks + row.count), want[r])
              << "P " << P << " budget " << budget << " shared " << shared << " row " << r;
        }
      }
}

TEST(Quest, FindsPlantedNeedlesAndAttendsExactly) {
  std::mt19937 rng(4);
  const index_t cap = 512, hq = 4, hkv = 2, dim = 64;
  sparse_case<float> t(1, 1, cap, hq, hkv, dim, 5, 0.3f);
  // A key aligned with each head's query, far from the end.
  const index_t needle[hq] = {37, 200, 111, 300};
  for (index_t h = 0; h < hq; ++h)
    for (index_t c = 0; c < dim; ++c) t.k.view(0, needle[h], h / 2, c) = 4.0f * t.q.view(0, 0, h, c);
  for (bool use_bf16 : {false, true})
    for (bool shared : {false, true}) {
      sparse::block_mask m;
      if (use_bf16) {
        page_metadata<bf16> meta(1, hkv, dim, cap);
        meta.update(t.k.cview(), cap);
        m = sparse::quest_select(t.q.cview(), cap, meta, quest_params{64, shared});
      } else {
        page_metadata<float> meta(1, hkv, dim, cap);
        meta.update(t.k.cview(), cap);
        m = sparse::quest_select(t.q.cview(), cap, meta, quest_params{64, shared});
      }
      for (index_t h = 0; h < hq; ++h) {
        const auto row = m.row(0, shared ? h / 2 : h, 0);
        EXPECT_EQ(row.count, 4);
        EXPECT_TRUE(std::binary_search(row.blocks, row.blocks + row.count, needle[h] / 16))
            << "head " << h << " shared " << shared << " bf16 " << use_bf16;
        EXPECT_EQ(row.blocks[row.count - 1], cap / 16 - 1);  // the last page
      }
      attention_params p;
      t.run(m, p);
      EXPECT_TRUE(t.matches());
    }
  // quest_attention = select + block_sparse_attention.
  page_metadata<float> meta(1, hkv, dim, cap);
  meta.update(t.k.cview(), cap);
  auto o2 = tensor<float, 4>::make({1, 1, hq, dim});
  const auto m = sparse::quest_attention(t.q.cview(), t.k.cview(), t.v.cview(), o2.view, meta);
  sparse::block_sparse_attention(t.q.view, t.k.view, t.v.view, t.o.view, m);
  EXPECT_TRUE(bitwise_equal(o2.cview(), t.o.cview()));
}

TEST(Quest, ErrorsAndSmallCaches) {
  page_metadata<float> meta(1, 2, 16, 100);
  auto q = tensor<float, 4>::make({1, 2, 4, 16});
  EXPECT_THROW(sparse::quest_select(q.cview(), 100, meta), invalid_argument);  // 2 queries
  auto q1 = tensor<float, 4>::make({1, 1, 3, 16});
  EXPECT_THROW(sparse::quest_select(q1.cview(), 100, meta), invalid_argument);  // 3 % 2 heads
  auto q2 = tensor<float, 4>::make({1, 1, 4, 16});
  EXPECT_THROW(sparse::quest_select(q2.cview(), 100, meta, quest_params{0}), invalid_argument);
  EXPECT_THROW(page_metadata<float>(1, 2, 16, 0), invalid_argument);
  // An empty cache selects nothing; a short one everything.
  auto m = sparse::quest_select(q2.cview(), 100, meta);
  EXPECT_EQ(m.nnz(), 0);
  auto k = tensor<float, 4>::make({1, 100, 2, 16});
  meta.update(k.cview(), index_t{40});
  m = sparse::quest_select(q2.cview(), 100, meta);
  EXPECT_EQ(m.nnz(), 4 * 3);
  meta.update(k.cview(), index_t{100});
  EXPECT_THROW(sparse::quest_select(q2.cview(), 99, meta), invalid_argument);  // seq_k too small
}

}  // namespace
}  // namespace attend::testing
