// Test helpers for token-level sparse attention: random sorted lists, and the oracle of
// gather_attention, which is the double-precision dense reference run with a boolean mask that
// keeps exactly the keys a query may see (its list, the implicit sinks and window, causality).
#ifndef ATTEND_TESTS_SPARSE_TOKEN_ORACLE_HPP_
#define ATTEND_TESTS_SPARSE_TOKEN_ORACLE_HPP_

#include <algorithm>
#include <memory>
#include <random>
#include <vector>

#include "attend/reference/naive.hpp"
#include "attend/sparse/gather.hpp"
#include "common/tensors.hpp"

namespace attend::testing {

/// Copies the contiguous caches k, v [batch, seq_k, heads, dim] into pages kp, vp [pages, page,
/// heads, dim]: page g of sequence b is pages[b * per_seq + g], recorded in table(b, g).
template <class KV>
void copy_into_pages(const view4<KV>& k, const view4<KV>& v, const std::vector<index_t>& pages,
                     const view4<KV>& kp, const view4<KV>& vp, const view2<index_t>& table) {
  const index_t page = kp.extent(1), seq_k = k.extent(1), per_seq = table.extent(1);
  for (index_t b = 0; b < k.extent(0); ++b)
    for (index_t g = 0; g < per_seq; ++g) {
      const index_t id = pages[static_cast<std::size_t>(b * per_seq + g)];
      table(b, g) = id;
      for (index_t t = 0; t < page && g * page + t < seq_k; ++t)
        for (index_t h = 0; h < k.extent(2); ++h)
          for (index_t c = 0; c < k.extent(3); ++c) {
            kp(id, t, h, c) = k(b, g * page + t, h, c);
            vp(id, t, h, c) = v(b, g * page + t, h, c);
          }
    }
}

/// A one-sequence paged cache (3 pages of 8 keys, 1 KV head, dim 32) whose page table names
/// a page that does not exist in its last column: valid for len <= 16 only, and q/o for 2 heads.
struct page_table_case {
  tensor<float, 4> q = tensor<float, 4>::make({1, 1, 2, 32}), o = tensor<float, 4>::make({1, 1, 2, 32});
  tensor<float, 4> kp = tensor<float, 4>::make({3, 8, 1, 32}), vp = tensor<float, 4>::make({3, 8, 1, 32});
  tensor<index_t, 2> table = tensor<index_t, 2>::make({1, 3});
  index_t len = 20;
  page_table_case() { table.storage = {2, 0, 5}; }  // page 5 does not exist
  sparse::paged_kv<float> cache() const {
    return {kp.cview(), vp.cview(), table.cview(), make_view<const index_t>(&len, 1)};
  }
};

/// A [batch, heads, seq_q, seq_k] boolean mask (std::vector<bool> has no data()).
struct bool_mask {
  std::unique_ptr<bool[]> data;
  view4<bool> view;
  bool_mask(index_t b, index_t h, index_t sq, index_t sk)
      : data(new bool[static_cast<std::size_t>(b * h * sq * sk)]()) {
    view = view4<bool>::contiguous(data.get(), {b, h, sq, sk});
  }
};

/// Keys query i of head h (batch b) may see under gather_attention's rules.
inline bool_mask gather_visibility(const sparse::token_lists& lists, index_t batch,
                                   index_t heads_q, index_t heads_kv, index_t seq_q,
                                   index_t seq_k, const std::vector<index_t>& lens, index_t sinks,
                                   index_t window, bool causal) {
  bool_mask m(batch, heads_q, seq_q, seq_k);
  const index_t group = heads_q / heads_kv;
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = lens.empty() ? seq_k : lens[b];
    for (index_t h = 0; h < heads_q; ++h)
      for (index_t i = 0; i < seq_q; ++i) {
        const index_t t = i / lists.query_block;
        const index_t first = len - seq_q + t * lists.query_block;
        const index_t last = len - seq_q + std::min(seq_q, (t + 1) * lists.query_block) - 1;
        const index_t pos = len - seq_q + i;
        const index_t own = sparse::owner_of(lists.owner, h, group);
        auto keep = [&](index_t j) {
          if (j < 0 || j >= len) return;
          if (causal && j > pos) return;
          m.view(b, h, i, j) = true;
        };
        for (index_t j = 0; j < std::min(sinks, len); ++j) keep(j);
        if (window > 0)
          for (index_t j = std::max<index_t>(0, first - window + 1); j <= last; ++j) keep(j);
        const index_t* l = lists.list(b, own, t);
        for (index_t e = 0; e < lists.count(b, own, t); ++e) keep(l[e]);
      }
  }
  return m;
}

/// A random strictly ascending subset of [0, len) with about `fraction` of the keys.
inline std::vector<index_t> random_subset(std::mt19937& rng, index_t len, double fraction) {
  std::vector<index_t> out;
  std::bernoulli_distribution keep(fraction);
  for (index_t j = 0; j < len; ++j)
    if (keep(rng)) out.push_back(j);
  return out;
}

/// Fills every list of `buf` with a random subset (capacity-limited) of [0, len_b).
inline void fill_random_lists(sparse::token_list_buffer& buf, std::mt19937& rng,
                              const std::vector<index_t>& lens, index_t seq_k, double fraction) {
  for (index_t b = 0; b < buf.batch(); ++b)
    for (index_t o = 0; o < buf.owners(); ++o)
      for (index_t t = 0; t < buf.tiles(); ++t) {
        auto s = random_subset(rng, lens.empty() ? seq_k : lens[b], fraction);
        if (static_cast<index_t>(s.size()) > buf.capacity()) s.resize(buf.capacity());
        std::copy(s.begin(), s.end(), buf.list(b, o, t));
        buf.count(b, o, t) = static_cast<index_t>(s.size());
      }
}

}  // namespace attend::testing

#endif  // ATTEND_TESTS_SPARSE_TOKEN_ORACLE_HPP_
