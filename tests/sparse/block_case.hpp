// Helpers of the block-sparse tests: random q/k/v, the element mask a block_mask (and an element
// predicate) stands for, expanded to query heads, and the double oracle run with that mask.
#ifndef ATTEND_TESTS_SPARSE_BLOCK_CASE_HPP_
#define ATTEND_TESTS_SPARSE_BLOCK_CASE_HPP_

#include <memory>
#include <random>
#include <vector>

#include "attend/reference/naive.hpp"
#include "attend/sparse/block_sparse.hpp"
#include "common/tensors.hpp"

namespace attend::testing {

/// A contiguous boolean tensor (std::vector<bool> has no data()).
struct bool_tensor {
  std::unique_ptr<bool[]> storage;
  view4<bool> view;
  static bool_tensor make(const std::array<index_t, 4>& e) {
    bool_tensor t;
    t.storage.reset(new bool[static_cast<std::size_t>(e[0] * e[1] * e[2] * e[3])]());
    t.view = view4<bool>::contiguous(t.storage.get(), e);
    return t;
  }
  view4<const bool> cview() const { return view; }
};

/// The element mask [batch, heads_q, seq_q, seq_k] a block mask selects for a call with
/// heads_q query heads and heads_kv KV heads (no causal / window: the oracle applies those).
template <class Mod = sparse::no_mask_mod>
bool_tensor expand_mask(const sparse::block_mask& m, index_t heads_q, index_t heads_kv,
                        const Mod& mod = {}) {
  const sparse::mask_geometry& g = m.geometry();
  const std::vector<std::uint8_t> el = m.to_dense_elements(mod);
  auto t = bool_tensor::make({g.batch, heads_q, g.seq_q, g.seq_k});
  const index_t group = heads_q / heads_kv;
  for (index_t b = 0; b < g.batch; ++b)
    for (index_t h = 0; h < heads_q; ++h) {
      const index_t owner = g.heads == heads_q ? h : g.heads == 1 ? 0 : h / group;
      for (index_t i = 0; i < g.seq_q; ++i)
        for (index_t j = 0; j < g.seq_k; ++j)
          t.view(b, h, i, j) = el[((b * g.heads + owner) * g.seq_q + i) * g.seq_k + j] != 0;
    }
  return t;
}

/// q [B, Lq, Hq, D], k / v [B, Lk, Hkv, D] filled uniformly, plus outputs and the oracle's.
template <class KV>
struct sparse_case {
  index_t batch, seq_q, seq_k, heads_q, heads_kv, dim;
  tensor<float, 4> q;
  tensor<KV, 4> k, v;
  tensor<float, 4> o;
  tensor<float, 3> lse;
  tensor<double, 4> ref_o;
  tensor<double, 3> ref_lse;

  sparse_case(index_t b, index_t lq, index_t lk, index_t hq, index_t hkv, index_t d,
              unsigned seed, float qk_range = 1.0f)
      : batch(b), seq_q(lq), seq_k(lk), heads_q(hq), heads_kv(hkv), dim(d),
        q(tensor<float, 4>::make({b, lq, hq, d})),
        k(tensor<KV, 4>::make({b, lk, hkv, d})),
        v(tensor<KV, 4>::make({b, lk, hkv, d})),
        o(tensor<float, 4>::make({b, lq, hq, d})),
        lse(tensor<float, 3>::make({b, hq, lq})),
        ref_o(tensor<double, 4>::make({b, lq, hq, d})),
        ref_lse(tensor<double, 3>::make({b, hq, lq})) {
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng, -qk_range, qk_range);
    fill_uniform(k.view, rng, -qk_range, qk_range);
    fill_uniform(v.view, rng);
  }

  /// Runs block_sparse_attention (o, lse) and the oracle restricted to the mask's elements.
  template <class Mod = sparse::no_mask_mod>
  void run(const sparse::block_mask& m, attention_params p = {}, const Mod& mod = {}) {
    p.lse = lse.view;
    sparse::block_sparse_attention(q.view, k.view, v.view, o.view, m, p, mod);
    const bool_tensor el = expand_mask(m, heads_q, heads_kv, mod);
    p.lse = {};
    p.mask = el.cview();
    reference::attention(q.cview(), k.cview(), v.cview(), p, ref_o.view, ref_lse.view);
  }

  /// Runs block_sparse_attention with (m, p, mod) and the oracle with the element mask
  /// oracle(b, query head, i, j) written independently by the test.
  template <class Mod, class Oracle>
  void run_against(const sparse::block_mask& m, attention_params p, const Mod& mod,
                   const Oracle& oracle) {
    p.lse = lse.view;
    sparse::block_sparse_attention(q.view, k.view, v.view, o.view, m, p, mod);
    auto el = bool_tensor::make({batch, heads_q, seq_q, seq_k});
    for (index_t b = 0; b < batch; ++b)
      for (index_t h = 0; h < heads_q; ++h)
        for (index_t i = 0; i < seq_q; ++i)
          for (index_t j = 0; j < seq_k; ++j) el.view(b, h, i, j) = oracle(b, h, i, j);
    p.lse = {};
    p.mask = el.cview();
    reference::attention(q.cview(), k.cview(), v.cview(), p, ref_o.view, ref_lse.view);
  }

  ::testing::AssertionResult matches() const {
    auto r = all_close(o.cview(), ref_o.cview(), tolerance<KV>::atol, tolerance<KV>::rtol);
    if (!r) return r << " (o)";
    r = all_close(lse.cview(), ref_lse.cview(), tolerance<KV>::atol, tolerance<KV>::rtol);
    if (!r) return r << " (lse)";
    return r;
  }
};

/// A random block mask: each block listed with probability `p_list`, listed blocks partial with
/// probability `p_partial`; optional random columns per row.
inline sparse::block_mask random_mask(const sparse::mask_geometry& g, std::mt19937& rng,
                                      double p_list, double p_partial = 0.0,
                                      index_t columns_per_row = 0) {
  std::bernoulli_distribution list(p_list), partial(p_partial);
  std::uniform_int_distribution<index_t> col(0, g.seq_k - 1);
  sparse::block_mask_builder bld(g);
  for (index_t r = 0; r < g.rows(); ++r) {
    for (index_t kb = 0; kb < g.k_blocks(); ++kb)
      if (list(rng)) bld.add(r, kb, !partial(rng));
    for (index_t c = 0; c < columns_per_row; ++c) bld.add_column(r, col(rng));
  }
  return bld.build();
}

}  // namespace attend::testing

#endif  // ATTEND_TESTS_SPARSE_BLOCK_CASE_HPP_
