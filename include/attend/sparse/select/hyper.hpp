// HyperAttention (Han et al., ICLR 2024): approximate attention in O(T log T) + O(T (b + m) d).
//
// Non-causal core (queries and keys of a rectangle):
//   sortLSH      angular LSH with r random hyperplanes; the r sign bits are ranked in Gray-code
//                order (adjacent buckets differ in one hyperplane) and queries / keys are sorted
//                by rank (stable)
//   diagonal     the sorted keys are cut into blocks of block_size, the sorted queries into as
//                many equal parts; each query part attends exactly to its key block
//   residual     sample_size keys drawn uniformly with replacement (per head); every query also
//                attends to the samples outside its own key block, each weighted by
//                log(multiplicity * T / m) (importance reweighting of the uniform sample)
//   merge        both parts are one softmax over their union with those additive log-weights,
//                i.e. the LSE merge of the two partial attentions
// Queries below min_seq_len use exact attention. Causal (self-attention, seq_q == seq_k):
// sequences of at most min_seq_len are exact and causal; longer ones split in halves, each half
// causal recursively, and the bottom-left rectangle (second-half queries, first-half keys) runs
// the non-causal core; the bottom rows merge both by LSE (merge_states).
// Defaults from the reference: 7 projections, block 256, sample 256, min_seq_len 4096.
// The diagonal/residual pass is gather_attention's engine with the sorted block (plus samples)
// as the key list and the log-weights as a score hook.
#ifndef ATTEND_SPARSE_SELECT_HYPER_HPP_
#define ATTEND_SPARSE_SELECT_HYPER_HPP_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "../../dense/attention.hpp"
#include "../../dense/merge.hpp"
#include "../gather.hpp"

namespace attend::sparse {

/// Parameters of hyper_attention.
struct hyper_params {
  index_t lsh_projections = 7;  ///< hyperplanes of the angular LSH (buckets: 2^r)
  index_t block_size = 256;     ///< keys per diagonal block
  index_t sample_size = 256;    ///< uniform key samples per head (0 = no residual part)
  index_t min_seq_len = 4096;   ///< shorter query ranges use exact attention
  bool causal = true;           ///< causal self-attention (seq_q == seq_k) by recursion
  std::uint64_t seed = 0;       ///< hyperplanes and samples (deterministic given the seed)
  std::optional<float> scale{}; ///< multiplies q . k; default 1/sqrt(dim)
  view3<float> lse{};           ///< optional output [batch, heads_q, seq_q]
};

namespace detail {

/// Position of Gray code g in the reflected Gray sequence (g ^ g >> 1 ^ g >> 2 ^ ...).
inline index_t inverse_gray(index_t g) noexcept {
  index_t b = 0;
  for (; g != 0; g >>= 1) b ^= g;
  return b;
}

/// Angular LSH: r Gaussian hyperplanes; bucket rank = inverse Gray code of the sign bits.
struct angular_lsh {
  index_t r = 0, d = 0;
  std::vector<float> planes;  // [r][d]

  angular_lsh(index_t projections, index_t dim, std::mt19937_64& rng) : r(projections), d(dim) {
    std::normal_distribution<float> n(0.0f, 1.0f);
    planes.resize(static_cast<std::size_t>(r * d));
    for (auto& x : planes) x = n(rng);
  }
  template <class T>
  index_t rank(const T* x) const noexcept {
    index_t bits = 0;
    for (index_t i = 0; i < r; ++i) {
      const float* w = planes.data() + i * d;
      float s = 0.0f;
      for (index_t c = 0; c < d; ++c) s += w[c] * to_float(x[c]);
      if (s > 0.0f) bits |= index_t{1} << i;
    }
    return inverse_gray(bits);
  }
};

/// Stable counting sort of n items by rank (< buckets): order[0, n) receives item indices.
inline void sort_by_rank(const index_t* rank, index_t n, index_t buckets, index_t* order,
                         std::vector<index_t>& count) {
  count.assign(static_cast<std::size_t>(buckets + 1), 0);
  for (index_t i = 0; i < n; ++i) ++count[static_cast<std::size_t>(rank[i] + 1)];
  for (index_t b = 0; b < buckets; ++b) count[b + 1] += count[b];
  for (index_t i = 0; i < n; ++i) order[count[static_cast<std::size_t>(rank[i])]++] = i;
}

/// Score hook of the diagonal + residual pass: key j (local index) gets log-weight 0 when it is
/// in the row block's own key block, else the log(multiplicity * T / m) of its samples (-inf for
/// keys that were not sampled; such keys are only listed for their own block).
struct hyper_weights {
  static constexpr bool is_identity = false;
  const float* sample_bias = nullptr;  // [batch][heads_q][nk]
  const index_t* key_block = nullptr;  // [batch][heads_kv][nk]
  index_t nk = 0, nq = 0, blocks = 1, heads_q = 0, heads_kv = 0;

  template <class Arch>
  void apply(const engine::row_block& rb, const engine::row_info& ri, const index_t* kpos,
             index_t count, float* st, index_t ld) const noexcept {
    using V = simd::vfloat<Arch>;
    constexpr index_t w = simd::lanes<Arch>;
    const index_t blk = ((ri.query[0] + 1) * blocks - 1) / nq;  // the rows' query block
    const float* bias = sample_bias + (rb.batch * heads_q + rb.head0) * nk;
    const index_t* kb = key_block + (rb.batch * heads_kv + rb.kv_head) * nk;
    for (index_t j = 0; j < count; ++j) {
      if (kb[kpos[j]] == blk) continue;
      const V add(bias[kpos[j]]);
      for (index_t r = 0; r < ld; r += w) (V::load_aligned(st + j * ld + r) + add).store_aligned(st + j * ld + r);
    }
  }
};

/// Buffers of the non-causal core, sized for the largest rectangle.
struct hyper_buffers {
  std::vector<float> qperm;          // [batch][nq][heads_q][dk] queries in sorted order
  std::vector<index_t> qorder;       // [batch][heads_q][nq] sorted -> local query
  std::vector<index_t> korder;       // [batch][heads_kv][nk] sorted -> local key
  std::vector<index_t> key_block;    // [batch][heads_kv][nk] local key -> block
  std::vector<float> sample_bias;    // [batch][heads_q][nk]
  std::vector<index_t> samples;      // [batch][heads_q][m] sorted unique sampled keys
  std::vector<index_t> sample_count; // [batch][heads_q] unique samples
  std::vector<index_t> rank, counts;
  std::vector<float> o_rect, lse_rect;
  workspace gather_ws;
};

/// The non-causal core on q [batch, nq, heads_q, dk] x k, v [batch, nk, heads_kv, d]: writes
/// o [batch, nq, heads_q, dv] and lse [batch, heads_q, nq].
template <class Arch, index_t DK, index_t DV, class KV>
void hyper_rect(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                const view4<float>& o, const view3<float>& lse, const hyper_params& p,
                float scale, const angular_lsh& lsh, std::mt19937_64& rng, hyper_buffers& hb) {
  const index_t batch = q.extent(0), nq = q.extent(1), heads_q = q.extent(2), dk = q.extent(3);
  const index_t nk = k.extent(1), heads_kv = k.extent(2), group = heads_q / heads_kv;
  const index_t dv = v.extent(3);
  if (nq < p.min_seq_len) {
    attention_params ap;
    ap.scale = scale;
    ap.lse = lse;
    attend::detail::attention_dispatch<Arch, KV>(q, k, v, o, ap);
    return;
  }
  const index_t bs = p.block_size, blocks = (nk + bs - 1) / bs;
  const index_t buckets = index_t{1} << lsh.r;
  const int threads = attend::detail::max_threads();
  // sortLSH of keys (per KV head) and queries (per query head).
  hb.korder.resize(static_cast<std::size_t>(batch * heads_kv * nk));
  hb.key_block.resize(hb.korder.size());
  hb.qorder.resize(static_cast<std::size_t>(batch * heads_q * nq));
  hb.rank.resize(static_cast<std::size_t>(std::max(nk, nq)));
  for (index_t b = 0; b < batch; ++b) {
    for (index_t h = 0; h < heads_kv; ++h) {
      for (index_t j = 0; j < nk; ++j) hb.rank[j] = lsh.rank(k.data() + k.offset(b, j, h, 0));
      index_t* order = hb.korder.data() + (b * heads_kv + h) * nk;
      sort_by_rank(hb.rank.data(), nk, buckets, order, hb.counts);
      index_t* kb = hb.key_block.data() + (b * heads_kv + h) * nk;
      for (index_t s = 0; s < nk; ++s) kb[order[s]] = s / bs;
    }
    for (index_t h = 0; h < heads_q; ++h) {
      for (index_t i = 0; i < nq; ++i) hb.rank[i] = lsh.rank(q.data() + q.offset(b, i, h, 0));
      sort_by_rank(hb.rank.data(), nq, buckets, hb.qorder.data() + (b * heads_q + h) * nq,
                   hb.counts);
    }
  }
  // Queries in sorted order, per head.
  hb.qperm.resize(static_cast<std::size_t>(batch * nq * heads_q * dk));
  const auto qp = view4<float>::contiguous(hb.qperm.data(), {batch, nq, heads_q, dk});
  for (index_t b = 0; b < batch; ++b)
    for (index_t h = 0; h < heads_q; ++h) {
      const index_t* order = hb.qorder.data() + (b * heads_q + h) * nq;
      for (index_t s = 0; s < nq; ++s)
        std::copy_n(q.data() + q.offset(b, order[s], h, 0), dk, &qp(b, s, h, 0));
    }
  // Uniform samples with replacement (in sorted-key order, as the reference), as unique keys
  // with log-weights log(multiplicity * nk / m).
  const index_t qblock_max = (nq + blocks - 1) / blocks;
  const index_t m = (p.sample_size > 0 && nq > qblock_max && nk > bs) ? p.sample_size : 0;
  hb.sample_bias.assign(static_cast<std::size_t>(batch * heads_q * nk),
                        -std::numeric_limits<float>::infinity());
  hb.samples.resize(static_cast<std::size_t>(batch * heads_q * std::max<index_t>(1, m)));
  hb.sample_count.assign(static_cast<std::size_t>(batch * heads_q), 0);
  std::uniform_int_distribution<index_t> pick(0, nk - 1);
  std::vector<index_t> mult(static_cast<std::size_t>(m > 0 ? nk : 0), 0);
  for (index_t b = 0; b < batch && m > 0; ++b)
    for (index_t h = 0; h < heads_q; ++h) {
      const index_t* korder = hb.korder.data() + (b * heads_kv + h / group) * nk;
      index_t* list = hb.samples.data() + (b * heads_q + h) * m;
      index_t n = 0;
      for (index_t s = 0; s < m; ++s) {
        const index_t key = korder[pick(rng)];
        if (mult[key]++ == 0) list[n++] = key;
      }
      std::sort(list, list + n);
      float* bias = hb.sample_bias.data() + (b * heads_q + h) * nk;
      for (index_t e = 0; e < n; ++e) {
        bias[list[e]] = std::log(float(mult[list[e]]) * float(nk) / float(m));
        mult[list[e]] = 0;
      }
      hb.sample_count[b * heads_q + h] = n;
    }

  // One engine pass per (batch, head, query block, row chunk) over block keys + samples.
  const detail::hyper_weights hw{hb.sample_bias.data(), hb.key_block.data(), nk, nq, blocks,
                                 heads_q, heads_kv};
  const auto var = engine::make_variant(hw, engine::no_mask{});
  using scratch_t = engine::scratch<Arch, KV>;
  const index_t max_rows = engine::max_rows_for(dk, dv);
  const index_t per_thread = scratch_t::floats(max_rows, dk, dv);
  const index_t list_cap = bs + std::max<index_t>(1, m);
  // Per thread: the engine scratch, then two index_t lists of list_cap; 64-byte aligned.
  const index_t stride = per_thread + (4 * list_cap + 15) / 16 * 16;
  float* const base = hb.gather_ws.reserve(threads * stride);
  const index_t subs = (qblock_max + max_rows - 1) / max_rows;
  const engine::problem<KV> pb{view4<const float>(qp), scale, dk, dv};
  const contiguous_rows<KV> rows{k, v, nullptr};
  attend::detail::parallel_for(batch * heads_q * blocks * subs, threads, [&](index_t item, int t) {
    const index_t sub = item % subs, blk = (item / subs) % blocks;
    const index_t h = (item / (subs * blocks)) % heads_q, b = item / (subs * blocks * heads_q);
    const index_t qa = blk * nq / blocks, qz = (blk + 1) * nq / blocks;
    const index_t r0 = qa + sub * max_rows;
    if (r0 >= qz) return;
    float* tb = base + t * stride;
    attend::detail::bump bp(tb);
    const scratch_t ws = scratch_t::carve(bp, max_rows, dk, dv);
    index_t* list = reinterpret_cast<index_t*>(tb + per_thread);
    // The key block's keys, ascending, merged with the samples outside the block.
    const index_t hk = h / group;
    const index_t* korder = hb.korder.data() + (b * heads_kv + hk) * nk;
    const index_t ka = blk * bs, kz = std::min(nk, ka + bs);
    index_t* own = list + list_cap;  // scratch for the sorted block
    std::copy(korder + ka, korder + kz, own);
    std::sort(own, own + (kz - ka));
    const index_t* smp = hb.samples.data() + (b * heads_q + h) * std::max<index_t>(1, m);
    const index_t ns = m > 0 ? hb.sample_count[b * heads_q + h] : 0;
    const index_t* kb = hb.key_block.data() + (b * heads_kv + hk) * nk;
    index_t n = 0, x = 0, y = 0;
    while (x < kz - ka || y < ns) {
      if (y < ns && kb[smp[y]] == blk) {  // a sample inside the block: the block has it
        ++y;
        continue;
      }
      if (y >= ns || (x < kz - ka && own[x] < smp[y])) list[n++] = own[x++];
      else list[n++] = smp[y++];
    }
    gather_keys<KV, contiguous_rows<KV>> keys;
    keys.rows = rows;
    keys.list = list;
    keys.count = n;
    engine::row_block rb;
    rb.batch = b;
    rb.kv_head = hk;
    rb.group = group;
    rb.head0 = h;
    rb.heads = 1;
    rb.query0 = r0;
    rb.queries = std::min(max_rows, qz - r0);
    const index_t* qorder = hb.qorder.data() + (b * heads_q + h) * nq;
    engine::run_rows<Arch, DK, DV>(pb, rb, keys, var, ws,
                                   [&](index_t, const engine::row_ctx& ctx, float* row, float l) {
                                     const index_t i = qorder[ctx.query];
                                     std::copy_n(row, dv, &o(b, i, h, 0));
                                     lse(b, h, i) = l;
                                   });
  });
}

template <class Arch, index_t DK, index_t DV, class KV>
void hyper_causal(const view4<const float>& q, const view4<const KV>& k, const view4<const KV>& v,
                  const view4<float>& o, const view3<float>& lse, index_t a, index_t n,
                  const hyper_params& p, float scale, const angular_lsh& lsh,
                  std::mt19937_64& rng, hyper_buffers& hb) {
  if (n <= p.min_seq_len) {
    attention_params ap;
    ap.causal = true;
    ap.scale = scale;
    ap.lse = lse.narrow(2, a, n);
    attend::detail::attention_dispatch<Arch, KV>(q.narrow(1, a, n), k.narrow(1, a, n),
                                                 v.narrow(1, a, n), o.narrow(1, a, n), ap);
    return;
  }
  const index_t h = (n + 1) / 2;  // the reference pads odd lengths by one row
  hyper_causal<Arch, DK, DV>(q, k, v, o, lse, a, h, p, scale, lsh, rng, hb);
  hyper_causal<Arch, DK, DV>(q, k, v, o, lse, a + h, n - h, p, scale, lsh, rng, hb);
  // Bottom-left rectangle: queries [a + h, a + n) x keys [a, a + h), non-causal.
  const index_t batch = q.extent(0), heads_q = q.extent(2), dv = v.extent(3), rows = n - h;
  hb.o_rect.resize(static_cast<std::size_t>(batch * rows * heads_q * dv));
  hb.lse_rect.resize(static_cast<std::size_t>(batch * heads_q * rows));
  const auto orr = view4<float>::contiguous(hb.o_rect.data(), {batch, rows, heads_q, dv});
  const auto lr = view3<float>::contiguous(hb.lse_rect.data(), {batch, heads_q, rows});
  hyper_rect<Arch, DK, DV>(q.narrow(1, a + h, rows), k.narrow(1, a, h), v.narrow(1, a, h), orr,
                           lr, p, scale, lsh, rng, hb);
  const view4<float> ob = o.narrow(1, a + h, rows);
  const view3<float> lb = lse.narrow(2, a + h, rows);
  merge_states(ob, lb, view4<const float>(orr), view3<const float>(lr), ob, lb);
}

}  // namespace detail

/// HyperAttention: approximate softmax attention (see the file comment).
///
/// \param q [batch, seq_q, heads_q, dim] float; k, v [batch, seq_k, heads_kv, dim / dv] float,
///        bf16 or fp16; o [batch, seq_q, heads_q, dv]
/// With p.causal, seq_q must equal seq_k (causal self-attention). Randomised (hyperplanes and
/// samples) but deterministic for a given p.seed and independent of the thread count.
template <class TQ, class TK, class TV>
void hyper_attention(const tensor_view<TQ, 4>& q, const tensor_view<TK, 4>& k,
                     const tensor_view<TV, 4>& v, const tensor_view<float, 4>& o,
                     const hyper_params& p = {}) {
  using KV = std::remove_const_t<TK>;
  using Arch = xsimd::default_arch;
  static_assert(std::is_same_v<std::remove_const_t<TQ>, float>, "q must be float");
  static_assert(std::is_same_v<KV, std::remove_const_t<TV>>, "k and v must have one type");
  constexpr const char* op = "attend::sparse::hyper_attention";
  const view4<const float> qc = q;
  const view4<const KV> kc = k, vc = v;
  attention_params ap;
  ap.scale = p.scale;
  ap.lse = p.lse;
  attend::detail::validate_attention(op, qc, kc, vc, o, ap);
  ATTEND_CHECK(p.lsh_projections >= 1 && p.lsh_projections <= 20 && p.block_size >= 1 &&
                   p.sample_size >= 0 && p.min_seq_len >= 1,
               op, ": need 1 <= lsh_projections <= 20, block_size >= 1, sample_size >= 0, "
               "min_seq_len >= 1 (got ", p.lsh_projections, ", ", p.block_size, ", ",
               p.sample_size, ", ", p.min_seq_len, ")");
  ATTEND_CHECK(!p.causal || qc.extent(1) == kc.extent(1), op,
               ": causal HyperAttention is self-attention: seq_q (", qc.extent(1),
               ") must equal seq_k (", kc.extent(1), ")");
  const index_t batch = qc.extent(0), seq_q = qc.extent(1), heads_q = qc.extent(2);
  const float scale = attend::detail::resolve_scale(ap, qc.extent(3));
  std::vector<float> own_lse;
  view3<float> lse = p.lse;
  if (!lse.has_value()) {
    own_lse.resize(static_cast<std::size_t>(batch * heads_q * seq_q));
    lse = view3<float>::contiguous(own_lse.data(), {batch, heads_q, seq_q});
  }
  std::mt19937_64 rng(p.seed);
  const detail::angular_lsh lsh(p.lsh_projections, qc.extent(3), rng);
  detail::hyper_buffers hb;
  attend::detail::dispatch_head_dims(qc.extent(3), vc.extent(3), [&](auto kdk, auto kdv) {
    constexpr index_t DK = decltype(kdk)::value, DV = decltype(kdv)::value;
    if (p.causal)
      detail::hyper_causal<Arch, DK, DV>(qc, kc, vc, o, lse, 0, seq_q, p, scale, lsh, rng, hb);
    else
      detail::hyper_rect<Arch, DK, DV>(qc, kc, vc, o, lse, p, scale, lsh, rng, hb);
  });
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_HYPER_HPP_
