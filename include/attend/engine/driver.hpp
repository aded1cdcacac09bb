// The common driver of every softmax operator: runs a set of row blocks (optionally each in
// several key splits) on all threads with per-thread scratch from one workspace, and stores the
// finished rows — directly, or, with splits, as partial states merged afterwards in split order.
// Operators differ only in how they cut the call into blocks and which key source a block
// reads; they describe that in a `Blocks` object and call engine::drive.
#ifndef ATTEND_ENGINE_DRIVER_HPP_
#define ATTEND_ENGINE_DRIVER_HPP_

#include <algorithm>

#include "../core/parallel.hpp"
#include "../core/workspace.hpp"
#include "flash.hpp"

namespace attend::engine {

/// Blocks protocol (a plain struct the operator writes):
///   using keys_type = ...;                       // its key source
///   index_t blocks() const;                      // row blocks, heaviest first
///   index_t splits() const;                      // key splits per block (1 = none)
///   bool setup(index_t block, index_t split, row_block& rb, keys_type& keys) const;
///                                                // false: the block has nothing to do
///   index_t position(index_t batch, index_t query) const;  // absolute position of a query
///   index_t max_rows() const;                    // rows per block at most (scratch size)
///
/// Rows are stored into o [batch, seq_q, heads_q, dv] and lse [batch, heads_q, seq_q] (optional)
/// through finish_row (sink, output hook). Split partial states are merged in split order, so
/// results depend on the split count only, which operators derive from sizes, never threads.
template <class Arch, index_t DK, index_t DV, class KV, class Variant, class Blocks>
void drive(const problem<KV>& pb, const Blocks& plan, const Variant& var, const view4<float>& o,
           const view3<float>& lse, workspace* user_scratch) {
  using scratch_t = scratch<Arch, KV>;
  using keys_t = typename Blocks::keys_type;
  const index_t batch = pb.q.extent(0), seq_q = pb.q.extent(1), heads_q = pb.q.extent(2);
  const index_t dk = pb.dk, dv = pb.dv, max_rows = plan.max_rows();
  const index_t blocks = plan.blocks(), splits = plan.splits();

  const int threads = detail::max_threads();
  const index_t per_thread = scratch_t::floats(max_rows, dk, dv);
  const index_t partial_row = dv + 1;  // normalised o, then lse
  const index_t partial_floats = splits > 1 ? batch * heads_q * seq_q * splits * partial_row : 0;
  workspace local;
  workspace& ws = user_scratch ? *user_scratch : local;
  float* const base = ws.reserve(per_thread * threads + partial_floats);
  float* const partial = base + per_thread * threads;
  auto scratch_of = [&](int t) {
    detail::bump b(base + t * per_thread);
    return scratch_t::carve(b, max_rows, dk, dv);
  };

  if (splits == 1) {
    detail::parallel_for(blocks, threads, [&](index_t i, int t) {
      row_block rb;
      keys_t keys;
      if (!plan.setup(i, 0, rb, keys)) return;
      run_rows<Arch, DK, DV>(pb, rb, keys, var, scratch_of(t),
                             [&](index_t, const row_ctx& ctx, float* row, float l) {
                               finish_row<Arch>(var, ctx, row, l, dv, o, lse);
                             });
    });
    return;
  }

  // Partial states laid out [batch, heads_q, seq_q, split] so each row merges in place. A split
  // with no keys (or a block with nothing to do) leaves lse = -inf, which merges as nothing.
  for (index_t r = 0; r < batch * heads_q * seq_q * splits; ++r)
    partial[r * partial_row + dv] = neg_inf;
  detail::parallel_for(blocks * splits, threads, [&](index_t item, int t) {
    const index_t s = item % splits;
    row_block rb;
    keys_t keys;
    if (!plan.setup(item / splits, s, rb, keys)) return;
    run_rows<Arch, DK, DV>(
        pb, rb, keys, var, scratch_of(t), [&](index_t, const row_ctx& ctx, const float* row, float l) {
          float* dst = partial + (((ctx.batch * heads_q + ctx.head) * seq_q + ctx.query) * splits +
                                  s) * partial_row;
          std::copy(row, row + dv, dst);
          dst[dv] = l;
        });
  });
  detail::parallel_for(batch * heads_q * seq_q, threads, [&](index_t row, int) {
    float* acc = partial + row * splits * partial_row;
    float acc_lse = acc[dv];
    if (acc_lse == neg_inf) std::fill(acc, acc + dv, 0.0f);  // a split that never ran
    for (index_t s = 1; s < splits; ++s) {
      const float* st = acc + s * partial_row;
      if (st[dv] != neg_inf) merge_state<Arch>(acc, acc_lse, st, st[dv], dv);
    }
    const index_t b = row / (heads_q * seq_q), h = (row / seq_q) % heads_q, i = row % seq_q;
    finish_row<Arch>(var, row_ctx{b, h, i, plan.position(b, i)}, acc, acc_lse, dv, o, lse);
  });
}

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_DRIVER_HPP_
