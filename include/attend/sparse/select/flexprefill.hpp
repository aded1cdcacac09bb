// FlexPrefill (Lai et al., ICLR 2025; card 3): per head, a run-time choice between a
// query-aware block pattern and a vertical-slash pattern, each head's budget sized by a
// cumulative attention threshold gamma. Per (batch, query head), with blocks of bs tokens:
//  1. probe: A = softmax of the last bs queries (scaled, causal) against all keys; vertical[j]
//     = mean over the probe rows of A[:, j], slash[o] = sum of A along offset o / bs;
//  2. budgets: n_v = the fewest top tokens holding gamma of the vertical mass, as blocks
//     n_v / bs + 1, clamped to [min_budget, max_budget] / bs; n_s likewise from slash;
//  3. pattern test: a_bar = softmax(mean(probe queries) . mean-pooled keys) over key blocks,
//     a = vertical sum-pooled over key blocks, D = sqrt(JSD(a_bar, a)); D < tau -> query-aware;
//  4. vertical-slash head: top n_v key blocks by pooled vertical mass (block 0 forced), top n_s
//     block offsets by pooled slash mass (offset 0 forced); vertical block j is active for every
//     query block that sees it, offset o at (i, i - o);
//  5. query-aware head: the vertical-slash pattern at min_budget, united with the global top
//     entries of softmax_rows(mean-pooled Q . mean-pooled K^T / sqrt(d)) (block-causal)
//     holding gamma of the total mass (gamma * query blocks).
// Defaults (README): block 128, gamma 0.9, tau 0.1, min_budget 512 tokens. Dense (all causal
// blocks) when seq_q <= max(2 bs, min_budget). Cumulative budgets use select::mass_budget (the
// fewest entries reaching gamma); the reference counts entries with cumulative mass <= gamma
// and adds one, which differs only when a prefix sum hits gamma exactly.
#ifndef ATTEND_SPARSE_SELECT_FLEXPREFILL_HPP_
#define ATTEND_SPARSE_SELECT_FLEXPREFILL_HPP_

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../core/parallel.hpp"
#include "../../core/validate.hpp"
#include "../../dense/attention.hpp"
#include "../block_mask.hpp"
#include "common.hpp"
#include "scores.hpp"

namespace attend::sparse {

/// FlexPrefill parameters (defaults from the reference README).
struct flexprefill_params {
  index_t block_size = 128;  // query and key block (and probe rows)
  double gamma = 0.9;        // cumulative attention threshold
  double tau = 0.1;          // JS-distance threshold of the pattern test
  index_t min_budget = 512;  // tokens per pattern (vertical, slash)
  index_t max_budget = 0;    // tokens per pattern, 0 = unlimited
};

/// Which pattern a head chose (for inspection and tests).
enum class flex_pattern : std::uint8_t { dense, vertical_slash, query_aware };

namespace detail {

/// Indices of the top `count` entries of v[0, n) with entry `forced` always included.
inline index_t top_with_forced(const float* v, index_t n, index_t count, index_t forced,
                               std::vector<float>& tmp, index_t* out, index_t* scratch) noexcept {
  tmp.assign(v, v + n);
  tmp[forced] = std::numeric_limits<float>::infinity();
  return select::top_k(tmp.data(), n, std::min(count, n), out, scratch);
}

/// Query block qb's last position and the key block holding it (block-causal limit).
inline index_t last_pos_of(const mask_geometry& g, index_t qb) noexcept {
  return g.seq_k - g.seq_q + std::min(g.seq_q, (qb + 1) * g.block_q) - 1;
}

}  // namespace detail

/// FlexPrefill selection. q [batch, seq_q, heads_q, dim] float; k, v [batch, seq_k, heads_kv,
/// dim] (v only feeds the engine's tile buffers); causal, bottom-right aligned. Returns the mask
/// {batch, heads_q, seq_q, seq_k, block_size, block_size} (entries full; use params.causal).
/// `patterns` (optional, batch * heads_q entries) receives each head's choice.
template <class KV, class Arch = xsimd::default_arch>
block_mask flexprefill_select(const view4<const float>& q, const view4<const KV>& k,
                              const view4<const KV>& v, const flexprefill_params& fp = {},
                              std::vector<flex_pattern>* patterns = nullptr) {
  constexpr const char* op = "attend::sparse::flexprefill_select";
  attend::detail::check_tensor(op, "q", q);
  attend::detail::check_tensor(op, "k", k);
  attend::detail::check_tensor(op, "v", v);
  const index_t batch = q.extent(0), seq_q = q.extent(1), hq = q.extent(2), dim = q.extent(3);
  const index_t seq_k = k.extent(1), hkv = k.extent(2);
  ATTEND_CHECK(k.extent(0) == batch && k.extent(3) == dim && hq % hkv == 0 && seq_k >= seq_q &&
                   v.extent(0) == batch && v.extent(1) == seq_k && v.extent(2) == hkv,
               op, ": q ", attend::detail::shape_string(q), ", k ",
               attend::detail::shape_string(k), " and v ", attend::detail::shape_string(v),
               " do not match");
  ATTEND_CHECK(fp.block_size > 0 && fp.gamma >= 0.0 && fp.gamma <= 1.0 && fp.tau >= 0.0 &&
                   fp.min_budget >= 0 && fp.max_budget >= 0,
               op, ": need block_size > 0, gamma in [0, 1], tau >= 0, budgets >= 0 (got ",
               fp.block_size, ", ", fp.gamma, ", ", fp.tau, ", ", fp.min_budget, ", ",
               fp.max_budget, ")");
  const index_t bs = fp.block_size, group = hq / hkv;
  const mask_geometry g{batch, hq, seq_q, seq_k, bs, bs};
  const index_t nq = g.q_blocks(), nk = g.k_blocks();
  block_mask_builder bld(g);
  if (patterns) patterns->assign(static_cast<std::size_t>(batch * hq), flex_pattern::dense);

  if (seq_q <= std::max(2 * bs, fp.min_budget)) {  // short inputs: dense (block-causal)
    for (index_t r = 0; r < g.rows(); ++r)
      for (index_t kb = 0; kb <= detail::last_pos_of(g, r % nq) / bs; ++kb) bld.add(r, kb);
    return bld.build();
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
  const index_t max_rows = engine::max_rows_for(dim, v.extent(3));
  const index_t last = std::min(bs, seq_q);
  const index_t ldk = select::padded_cols<Arch>(nk);
  const index_t min_blocks = fp.min_budget / bs;
  const index_t max_blocks = fp.max_budget > 0 ? std::max<index_t>(1, fp.max_budget / bs) : nk;

  // Mean-pooled keys per (batch, KV head), transposed [dim][ldk].
  std::vector<float> kpool_t(static_cast<std::size_t>(batch * hkv * dim * ldk));
  {
    std::vector<float> pooled(static_cast<std::size_t>(nk * dim));
    for (index_t b = 0; b < batch; ++b)
      for (index_t h = 0; h < hkv; ++h) {
        select::pool_rows(view2<const KV>(k.matrix(b, h)), bs, select::pool_mode::mean,
                          pooled.data());
        select::pack_transposed(pooled.data(), dim, nk, dim,
                                kpool_t.data() + (b * hkv + h) * dim * ldk, ldk);
      }
  }

  struct thread_buffers {
    std::vector<float> ws, s, vertical, slash, qpool, blk, tmp, flat;
    std::vector<index_t> picks, scratch, vsel, ssel;
  };
  const index_t items = batch * hq;
  const int threads = static_cast<int>(std::min<index_t>(attend::detail::max_threads(), items));
  using scratch_t = engine::scratch<Arch, KV>;
  const index_t ws_floats = scratch_t::floats(max_rows, dim, v.extent(3));
  std::vector<thread_buffers> tb(static_cast<std::size_t>(threads));
  for (auto& t : tb) {
    t.ws.resize(static_cast<std::size_t>(ws_floats + 16));
    t.s.resize(static_cast<std::size_t>(select::probe_floats<Arch>(seq_k, max_rows)));
    t.vertical.resize(static_cast<std::size_t>(seq_k));
    t.slash.resize(static_cast<std::size_t>(seq_k));
    t.qpool.resize(static_cast<std::size_t>(nq * dim));
    t.blk.resize(static_cast<std::size_t>(nq * ldk));
    t.tmp.reserve(static_cast<std::size_t>(std::max(seq_k, nq * nk)));
    t.flat.resize(static_cast<std::size_t>(nq * nk));
    t.picks.resize(static_cast<std::size_t>(nq * nk + 1));
    t.scratch.resize(static_cast<std::size_t>(nq * nk + 1));
    t.vsel.reserve(static_cast<std::size_t>(nk));
    t.ssel.reserve(static_cast<std::size_t>(nk));
  }

  attend::detail::parallel_for(items, threads, [&](index_t item, int t) {
    thread_buffers& B = tb[t];
    const index_t b = item / hq, h = item % hq, hk = h / group;
    // The workspace floats are 64-byte aligned from an aligned base.
    float* base = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(B.ws.data()) + 63) /
                                           64 * 64);
    attend::detail::bump bump(base);
    const scratch_t ws = scratch_t::carve(bump, max_rows, dim, v.extent(3));
    std::fill(B.vertical.begin(), B.vertical.end(), 0.0f);
    std::fill(B.slash.begin(), B.slash.end(), 0.0f);
    attend::detail::dispatch_head_dims(dim, dim, [&](auto kdk, auto) {
      select::probe_last_queries<Arch, decltype(kdk)::value>(q, k, v, b, h, last, scale, ws,
                                                             max_rows, B.s.data(),
                                                             B.vertical.data(), B.slash.data());
    });
    const float inv_rows = 1.0f / static_cast<float>(last);
    for (index_t j = 0; j < seq_k; ++j) {
      B.vertical[j] *= inv_rows;
      B.slash[j] *= inv_rows;
    }
    // Budgets in blocks.
    auto budget = [&](const std::vector<float>& mass) {
      const index_t tokens = select::mass_budget(mass.data(), seq_k, fp.gamma);
      return std::clamp<index_t>(tokens / bs + 1, std::min(min_blocks, nk),
                                 std::max(std::min(max_blocks, nk), std::min(min_blocks, nk)));
    };
    index_t nv = budget(B.vertical), ns = budget(B.slash);

    // Pattern test: pooled estimate vs the probe's block distribution.
    std::vector<float>& a = B.tmp;
    float* vpool = B.flat.data();        // [nk] vertical mass per key block
    float* spool = B.flat.data() + nk;   // [nk] slash mass per offset block
    select::pool_vector(B.vertical.data(), seq_k, bs, select::pool_mode::sum, vpool);
    select::pool_vector(B.slash.data(), seq_k, bs, select::pool_mode::sum, spool);
    float* qmean = B.qpool.data();
    std::fill(qmean, qmean + dim, 0.0f);
    for (index_t i = seq_q - last; i < seq_q; ++i)
      for (index_t d = 0; d < dim; ++d) qmean[d] += q(b, i, h, d) * scale * inv_rows;
    float* est = B.blk.data();
    select::gemm_rows<Arch>(qmean, dim, 1, kpool_t.data() + (b * hkv + hk) * dim * ldk, ldk, ldk,
                            dim, 1.0f, est, ldk);
    select::softmax(est, nk);
    const double dist = select::js_distance(est, vpool, nk);
    const bool query_aware = dist < fp.tau;
    if (patterns)
      (*patterns)[item] = query_aware ? flex_pattern::query_aware : flex_pattern::vertical_slash;
    if (query_aware) {
      nv = std::min(min_blocks, nk);
      ns = std::min(min_blocks, nk);
    }

    // Vertical-slash blocks.
    index_t* pick = B.picks.data();
    index_t* scr = B.scratch.data();
    std::vector<index_t>& vsel = B.vsel;
    std::vector<index_t>& ssel = B.ssel;
    {
      const index_t c = detail::top_with_forced(vpool, nk, std::max<index_t>(nv, 1), 0, a, pick,
                                                scr);
      vsel.assign(pick, pick + c);
      const index_t c2 = detail::top_with_forced(spool, nk, std::max<index_t>(ns, 1), 0, a, pick,
                                                 scr);
      ssel.assign(pick, pick + c2);
    }
    for (index_t qb = 0; qb < nq; ++qb) {
      const index_t r = g.row(b, h, qb);
      const index_t p0 = seq_k - seq_q + qb * bs, p1 = detail::last_pos_of(g, qb);
      for (index_t kb : vsel)
        if (kb * bs <= p1) bld.add(r, kb);
      for (index_t o : ssel)
        for (index_t d = p0 / bs; d <= p1 / bs; ++d)
          if (d - o >= 0) bld.add(r, d - o);
    }
    if (!query_aware) return;

    // Query-aware: global cumulative selection over the pooled block estimate.
    for (index_t qb = 0; qb < nq; ++qb) {
      float* row = B.qpool.data() + qb * dim;
      std::fill(row, row + dim, 0.0f);
      const index_t i0 = qb * bs, i1 = std::min(seq_q, i0 + bs);
      for (index_t i = i0; i < i1; ++i)
        for (index_t d = 0; d < dim; ++d) row[d] += q(b, i, h, d);
      for (index_t d = 0; d < dim; ++d) row[d] /= static_cast<float>(i1 - i0);
    }
    select::gemm_rows<Arch>(B.qpool.data(), dim, nq, kpool_t.data() + (b * hkv + hk) * dim * ldk,
                            ldk, ldk, dim, scale, B.blk.data(), ldk);
    float* flat = B.flat.data();
    for (index_t qb = 0; qb < nq; ++qb) {
      float* row = B.blk.data() + qb * ldk;
      const index_t lim = detail::last_pos_of(g, qb) / bs;
      for (index_t kb = lim + 1; kb < nk; ++kb) row[kb] = -std::numeric_limits<float>::infinity();
      select::softmax(row, nk);
      std::copy(row, row + nk, flat + qb * nk);
    }
    const index_t keep = select::mass_budget(flat, nq * nk, fp.gamma);
    const index_t c = select::top_k(flat, nq * nk, keep, pick, scr);
    for (index_t e = 0; e < c; ++e) bld.add(g.row(b, h, pick[e] / nk), pick[e] % nk);
  });
  return bld.build();
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_FLEXPREFILL_HPP_
