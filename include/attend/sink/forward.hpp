// Drivers of the sink family on top of the one engine (engine/flash.hpp). Nothing here copies
// the kernel loop: the drivers choose row blocks and key ranges and run engine::run_rows or
// engine::score_tiles with the family's policies.
//
//   row_stats_forward   the forward pass with the engine's row-statistics hook (entropy, sink
//                       mass, unbiased class mass) and LSE; prefill row blocks as the dense
//                       driver, and split-K decode whose partial statistics merge with the
//                       (o, lse) states (pass 1 of card 13)
//   column_forward      pass 2 of card 13: scores per tile (no P V), P = exp(S - LSE) and
//                       deterministic column sums (and counts of the queries that see a key)
//   score_listed_keys   the scores of one query row against a few listed keys, exactly as the
//                       engine forms them (ACT's epilogue recomputes P for the sink set)
#ifndef ATTEND_SINK_FORWARD_HPP_
#define ATTEND_SINK_FORWARD_HPP_

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../dense/attention.hpp"

namespace attend::sink::detail {

using engine::neg_inf;

/// Calls f(score_mod) with the standard score modifier of p, or with no_score_mod when p sets
/// none (the engine then skips the hook at compile time).
template <class F>
void with_score_mod(const attention_params& p, F&& f) {
  if (attend::detail::has_score_mod(p))
    f(attend::detail::make_score_mod(p));
  else
    f(engine::no_score_mod{});
}

/// The row blocks of the dense driver (dense/attention.hpp): prefill blocks are the query heads
/// of one KV group times a query tile; decode-shaped calls put several KV heads in one block.
struct block_geometry {
  index_t seq_q = 0, heads_kv = 0, group = 1;
  index_t kv_per_block = 1, heads_per_block = 1, queries_per_block = 1;
  index_t kv_chunks = 1, head_chunks = 1, query_tiles = 1, groups = 1;

  template <class Arch>
  static block_geometry make(index_t batch, index_t seq_q, index_t heads_q, index_t heads_kv,
                             index_t max_rows) noexcept {
    block_geometry g;
    g.seq_q = seq_q;
    g.heads_kv = heads_kv;
    g.group = heads_q / heads_kv;
    const bool decode_shaped = engine::uses_dot_kernel<Arch>(g.group * seq_q);
    g.kv_per_block =
        decode_shaped ? std::min(heads_kv, max_rows / engine::dot_rows_padded(g.group * seq_q)) : 1;
    g.heads_per_block = std::min(g.group, max_rows);
    g.queries_per_block = std::max<index_t>(1, max_rows / g.heads_per_block);
    g.kv_chunks = (heads_kv + g.kv_per_block - 1) / g.kv_per_block;
    g.head_chunks = (g.group + g.heads_per_block - 1) / g.heads_per_block;
    g.query_tiles = (seq_q + g.queries_per_block - 1) / g.queries_per_block;
    g.groups = batch * g.kv_chunks * g.head_chunks;
    return g;
  }

  engine::row_block block(index_t g, index_t tile, index_t kv_len) const noexcept {
    engine::row_block rb;
    rb.batch = g / (kv_chunks * head_chunks);
    rb.kv_head = ((g / head_chunks) % kv_chunks) * kv_per_block;
    rb.kv_heads = std::min(kv_per_block, heads_kv - rb.kv_head);
    const index_t chunk = g % head_chunks;
    rb.group = group;
    rb.head0 = rb.kv_head * group + chunk * heads_per_block;
    rb.heads = std::min(heads_per_block, group - chunk * heads_per_block);
    rb.query0 = tile * queries_per_block;
    rb.queries = std::min(queries_per_block, seq_q - rb.query0);
    rb.pos0 = kv_len - seq_q + rb.query0;
    return rb;
  }
};

/// True when a statistics policy has `S bound(const engine::row_block&, index_t* table,
/// index_t table_len) const`: the driver then calls it per row block (table: per-thread scratch
/// of table_len entries, at least the block's padded rows) and runs the bound copy.
template <class S, class = void>
struct binds_rows : std::false_type {};
template <class S>
struct binds_rows<
    S, std::void_t<decltype(std::declval<const S&>().bound(std::declval<const engine::row_block&>(),
                                                           std::declval<index_t*>(), index_t{}))>>
    : std::true_type {};

/// Mergeable row statistics for row_stats_forward. A policy S provides the engine's protocol
/// (engine/variant.hpp, no_row_stats): `accumulators` (1..4) and `visit<Arch>`, plus
///   void store(const engine::row_ctx& ctx, const float* mean, float lse_keys, float sink_logit,
///              float lse) const noexcept;
/// called once per row with mean[a] = (accumulator a) / l, the expectation of what visit summed
/// under the row's softmax over its keys (sink excluded; 0 for a row that sees no key),
/// lse_keys the log-sum-exp over the keys, sink_logit the row's sink (-inf without one) and
/// lse = logaddexp(lse_keys, sink_logit). Expectations merge across key splits as the outputs
/// do (weights exp(lse_s - lse)), which is what makes split-K statistics exact.
template <class Stats, class Sink>
struct stats_adaptor {
  static constexpr bool is_identity = false;
  static constexpr int accumulators = Stats::accumulators;
  Stats inner{};
  Sink sink{};
  float* partial = nullptr;  // split-K: [rows][splits][dv + 1 + accumulators], else null
  index_t splits = 1, split = 0, heads_q = 0, seq_q = 0, dv = 0;

  template <class Arch>
  ATTEND_INLINE void visit(float* acc, index_t ld, const index_t* kpos, index_t j, index_t r,
                           simd::vfloat<Arch> s, simd::vfloat<Arch> p) const noexcept {
    inner.template visit<Arch>(acc, ld, kpos, j, r, s, p);
  }

  void finish(const engine::row_block&, index_t, const engine::row_ctx& ctx, const float* totals,
              index_t ld, float m, float l) const noexcept {
    float mean[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float lse_keys = neg_inf;
    if (l > 0.0f) {
      for (int a = 0; a < accumulators; ++a) mean[a] = totals[a * ld] / l;
      lse_keys = m + std::log(l);
    }
    if (partial != nullptr) {
      float* dst =
          partial + (((ctx.batch * heads_q + ctx.head) * seq_q + ctx.query) * splits + split) *
                        (dv + 1 + accumulators);
      std::copy(mean, mean + accumulators, dst + dv + 1);
      return;
    }
    const float sigma = sink_logit(ctx.head);
    inner.store(ctx, mean, lse_keys, sigma, engine::weights_of(lse_keys, sigma).lse);
  }

  float sink_logit(index_t head) const noexcept {
    if constexpr (Sink::is_identity)
      return neg_inf;
    else
      return sink.logit(head);
  }
};

/// Forward attention with mergeable row statistics (see stats_adaptor): o (optional) and lse
/// (optional) as the dense operator writes them (sink joined once, after any split merge), and
/// stats.store() once per row. q [batch, seq_q, heads_q, dk], k/v [batch, seq_k, heads_kv,
/// dk/dv], o [batch, seq_q, heads_q, dv] or empty, lse [batch, heads_q, seq_q] or empty. Inputs
/// must be validated. Row blocks, split points and merge order are those of the dense driver,
/// so results do not depend on the thread count.
template <class Arch, index_t DK, index_t DV, class KV, class Score, class Mask, class Sink,
          class Key, class Stats>
void row_stats_forward(const view4<const float>& q, const view4<const KV>& k,
                       const view4<const KV>& v, const view4<float>& o, const view3<float>& lse,
                       const index_t* kv_lens, float scale, const Score& score, const Mask& mask,
                       const Sink& sink, const Key& key, const Stats& stats,
                       workspace* user_scratch) {
  using scratch_t = engine::scratch<Arch, KV>;
  using adaptor_t = stats_adaptor<Stats, Sink>;
  constexpr int A = Stats::accumulators;
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t dk = q.extent(3), seq_k = k.extent(1), heads_kv = k.extent(2), dv = v.extent(3);
  const index_t max_rows = engine::max_rows_for(dk, dv);
  const block_geometry geo = block_geometry::make<Arch>(batch, seq_q, heads_q, heads_kv, max_rows);
  const index_t split = attend::detail::decode_split_length(seq_q, seq_k);
  const index_t splits = split ? (seq_k + split - 1) / split : 1;

  const int threads = attend::detail::max_threads();
  constexpr index_t w = simd::lanes<Arch>;
  const index_t ld_max = (max_rows + w - 1) / w * w;
  const index_t engine_floats = scratch_t::floats(max_rows, dk, dv);
  const index_t per_thread = engine_floats + 2 * ld_max + 16;  // + a row table (bound stats)
  const index_t partial_row = dv + 1 + A;
  const index_t partial_floats = splits > 1 ? batch * heads_q * seq_q * splits * partial_row : 0;
  workspace local;
  workspace& ws = user_scratch ? *user_scratch : local;
  float* const base = ws.reserve(per_thread * threads + partial_floats);
  float* const partial = base + per_thread * threads;

  const engine::problem<KV> pb{q, scale, dk, dv};
  const engine::dense_keys<KV> keys{k, v, kv_lens};
  auto length_of = [&](index_t b) { return kv_lens ? kv_lens[b] : seq_k; };
  auto scratch_of = [&](int t) {
    attend::detail::bump b(base + t * per_thread);
    return scratch_t::carve(b, max_rows, dk, dv);
  };
  adaptor_t adaptor{stats, sink, nullptr, splits, 0, heads_q, seq_q, dv};
  // Statistics that need to know where a block's rows go get a copy bound to the block.
  auto bind = [&](adaptor_t ad, const engine::row_block& rb, int t) {
    if constexpr (binds_rows<Stats>::value)
      ad.inner = ad.inner.bound(
          rb, reinterpret_cast<index_t*>(base + t * per_thread + engine_floats), ld_max);
    (void)rb;
    (void)t;
    return ad;
  };
  auto store_row = [&](const engine::row_ctx& ctx, const float* row, float l) {
    if (o.has_value())
      std::memcpy(o.data() + o.offset(ctx.batch, ctx.query, ctx.head, 0), row,
                  static_cast<std::size_t>(dv) * sizeof(float));
    if (lse.has_value()) lse(ctx.batch, ctx.head, ctx.query) = l;
  };

  if (splits == 1) {
    attend::detail::parallel_for(geo.groups * geo.query_tiles, threads, [&](index_t item, int t) {
      const index_t tile = geo.query_tiles - 1 - item / geo.groups;  // heaviest causal first
      const index_t g = item % geo.groups;
      const engine::row_block rb =
          geo.block(g, tile, length_of(g / (geo.kv_chunks * geo.head_chunks)));
      const auto var = engine::make_variant(score, mask, engine::no_sink{}, engine::no_output_mod{},
                                            key, bind(adaptor, rb, t));
      engine::run_rows<Arch, DK, DV>(pb, rb, keys, var, scratch_of(t),
                                     [&](index_t, const engine::row_ctx& ctx, float* row, float l) {
                                       engine::join_sink<Arch>(row, l, adaptor.sink_logit(ctx.head),
                                                               dv);
                                       store_row(ctx, row, l);
                                     });
    });
    return;
  }

  // Split-K: partial (o, lse, means) laid out [batch, heads_q, seq_q, split] per row.
  attend::detail::parallel_for(
      geo.groups * geo.query_tiles * splits, threads, [&](index_t item, int t) {
        const index_t s = item % splits;
        const index_t rest = item / splits;
        engine::dense_keys<KV> part = keys;
        part.begin = s * split;
        part.end = part.begin + split;
        const index_t g = rest % geo.groups;
        const engine::row_block rb =
            geo.block(g, rest / geo.groups, length_of(g / (geo.kv_chunks * geo.head_chunks)));
        adaptor_t ad = bind(adaptor, rb, t);
        ad.partial = partial;
        ad.split = s;
        const auto var =
            engine::make_variant(score, mask, engine::no_sink{}, engine::no_output_mod{}, key, ad);
        engine::run_rows<Arch, DK, DV>(
            pb, rb, part, var, scratch_of(t),
            [&](index_t, const engine::row_ctx& ctx, const float* row, float l) {
              float* dst =
                  partial + (((ctx.batch * heads_q + ctx.head) * seq_q + ctx.query) * splits + s) *
                                partial_row;
              std::copy(row, row + dv, dst);
              dst[dv] = l;
            });
      });
  attend::detail::parallel_for(batch * heads_q * seq_q, threads, [&](index_t row, int) {
    float* acc = partial + row * splits * partial_row;
    float acc_lse = acc[dv];
    float* mean = acc + dv + 1;
    for (index_t s = 1; s < splits; ++s) {
      const float* st = acc + s * partial_row;
      const engine::merge_weights mw = engine::weights_of(acc_lse, st[dv]);
      for (int a = 0; a < A; ++a) mean[a] = mw.wa * mean[a] + mw.wb * st[dv + 1 + a];
      engine::merge_state<Arch>(acc, acc_lse, st, st[dv], dv);
    }
    const index_t b = row / (heads_q * seq_q), h = (row / seq_q) % heads_q, i = row % seq_q;
    const engine::row_ctx ctx{b, h, i, length_of(b) - seq_q + i};
    const float sigma = adaptor.sink_logit(h);
    const float lse_keys = acc_lse;
    engine::join_sink<Arch>(acc, acc_lse, sigma, dv);
    stats.store(ctx, mean, lse_keys, sigma, acc_lse);
    store_row(ctx, acc, acc_lse);
  });
}

/// Pass 2 of card 13: column sums of P = exp(S - LSE) and (optionally) the number of queries
/// that see each key, for the query heads with head_on[h] != 0.
///
/// q [batch, seq_q, heads_q, dk], k [batch, seq_k, heads_kv, dk], lse [batch, heads_q, seq_q]
/// (natural log, sink included, as the forward writes it); col_sum and col_count
/// [batch, heads_q, seq_k], either may be empty. With accumulate the results are added to what
/// the outputs hold (H2O running scores), otherwise they are overwritten (0 past kv_lens[b]).
/// Heads not selected are not touched. Scores are formed by the same score_tiles as the forward
/// (the variant's score, mask and key hooks), so P matches the forward's weights.
///
/// Determinism: each (head block, query chunk) sums its rows in a fixed order into its own
/// partial row of columns; chunks are a fixed function of the shape (never of the thread
/// count) and are reduced in chunk order, so results are the same for any thread count.
template <class Arch, index_t DK, class KV, class Variant>
void column_forward(const view4<const float>& q, const view4<const KV>& k,
                    const view3<const float>& lse, const index_t* kv_lens, float scale,
                    const Variant& var, const std::vector<char>& head_on,
                    const view3<float>& col_sum, const view3<float>& col_count, bool accumulate,
                    workspace* user_scratch) {
  using scratch_t = engine::scratch<Arch, KV>;
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  constexpr index_t max_chunks = 16;
  const index_t batch = q.extent(0), seq_q = q.extent(1), heads_q = q.extent(2);
  const index_t dk = q.extent(3), seq_k = k.extent(1), heads_kv = k.extent(2);
  const index_t group = heads_q / heads_kv;
  const index_t max_rows = engine::max_rows_for(dk, dk);
  const bool want_sum = col_sum.has_value(), want_count = col_count.has_value();
  if (!want_sum && !want_count) return;
  auto length_of = [&](index_t b) { return kv_lens ? kv_lens[b] : seq_k; };

  // Blocks: runs of selected heads inside one KV group, times query tiles grouped in chunks.
  struct col_block {
    index_t b, kv_head, head0, heads, queries, tiles, chunks;
  };
  std::vector<col_block> blocks;
  std::vector<index_t> chunks_of(static_cast<std::size_t>(batch * heads_q), 0);
  for (index_t b = 0; b < batch; ++b)
    for (index_t kvh = 0; kvh < heads_kv; ++kvh)
      for (index_t h = kvh * group; h < (kvh + 1) * group;) {
        if (!head_on[h]) {
          ++h;
          continue;
        }
        index_t h1 = h;
        while (h1 < (kvh + 1) * group && head_on[h1] && h1 - h < max_rows) ++h1;
        col_block cb{b, kvh, h, h1 - h, 0, 0, 0};
        cb.queries = std::max<index_t>(1, max_rows / cb.heads);
        cb.tiles = (seq_q + cb.queries - 1) / cb.queries;
        cb.chunks = std::min(cb.tiles, max_chunks);
        for (index_t hh = h; hh < h1; ++hh) chunks_of[b * heads_q + hh] = cb.chunks;
        blocks.push_back(cb);
        h = h1;
      }
  if (blocks.empty()) return;
  bool direct = true;  // one chunk everywhere: sum straight into the outputs
  index_t items_per_split = 0;
  for (const col_block& cb : blocks) {
    direct = direct && cb.chunks == 1;
    items_per_split += cb.chunks;
  }
  // Key splits only add parallelism (columns of different splits are disjoint), so their
  // number may follow the thread count without changing any result.
  const int threads = attend::detail::max_threads();
  index_t key_splits = 1;
  if (items_per_split < 4 * threads && seq_k >= 2048)
    key_splits =
        std::min<index_t>((4 * threads + items_per_split - 1) / items_per_split, seq_k / 1024);
  const index_t tile = engine::kv_tile_size<Arch>;
  const index_t split_len = ((seq_k + key_splits - 1) / key_splits + tile - 1) / tile * tile;
  key_splits = (seq_k + split_len - 1) / split_len;

  const index_t per_thread = scratch_t::floats(max_rows, dk, dk) + max_rows + 2 * w;
  const index_t plane = batch * heads_q * seq_k;  // one chunk's columns
  const index_t partial_floats = direct ? 0 : max_chunks * plane * (want_sum + want_count);
  workspace local;
  workspace& ws = user_scratch ? *user_scratch : local;
  float* const base = ws.reserve(per_thread * threads + partial_floats);
  float* const psum = base + per_thread * threads;
  float* const pcount = psum + (want_sum ? max_chunks * plane : 0);

  if (direct && !accumulate) {  // overwrite: clear the selected rows first (incl. past kv_lens)
    for (index_t b = 0; b < batch; ++b)
      for (index_t h = 0; h < heads_q; ++h) {
        if (!head_on[h]) continue;
        if (want_sum) std::fill(&col_sum(b, h, 0), &col_sum(b, h, 0) + seq_k, 0.0f);
        if (want_count) std::fill(&col_count(b, h, 0), &col_count(b, h, 0) + seq_k, 0.0f);
      }
  }

  const engine::problem<KV> pb{q, scale, dk, dk};
  const index_t items = items_per_split * key_splits;
  std::vector<std::array<index_t, 2>> item_of;  // (block, chunk) per item of one split
  item_of.reserve(static_cast<std::size_t>(items_per_split));
  for (index_t bi = 0; bi < static_cast<index_t>(blocks.size()); ++bi)
    for (index_t c = 0; c < blocks[bi].chunks; ++c) item_of.push_back({bi, c});

  attend::detail::parallel_for(items, threads, [&](index_t item, int t) {
    const auto [bi, c] = item_of[item % items_per_split];
    const index_t ks = item / items_per_split;
    const col_block& cb = blocks[bi];
    attend::detail::bump carve(base + t * per_thread);
    const scratch_t sc = scratch_t::carve(carve, max_rows, dk, dk);
    float* const lrow = carve.take<float>(max_rows + 2 * w);
    const index_t len = length_of(cb.b);
    const index_t kb = std::min(ks * split_len, len), ke = std::min(kb + split_len, len);
    if (kb >= ke) return;

    std::array<float*, 128> sum_t{}, count_t{};
    for (index_t hh = 0; hh < cb.heads; ++hh) {
      const index_t h = cb.head0 + hh;
      const index_t off = ((c * batch + cb.b) * heads_q + h) * seq_k;
      if (want_sum) sum_t[hh] = direct ? &col_sum(cb.b, h, 0) : psum + off;
      if (want_count) count_t[hh] = direct ? &col_count(cb.b, h, 0) : pcount + off;
      if (!direct) {
        if (want_sum) std::fill(sum_t[hh] + kb, sum_t[hh] + ke, 0.0f);
        if (want_count) std::fill(count_t[hh] + kb, count_t[hh] + ke, 0.0f);
      }
    }
    const engine::dense_keys<KV> keys{k, k, kv_lens, kb, ke};
    const V one(1.0f), zero(0.0f), ninf(neg_inf);
    // Query tiles of this chunk, zigzag so that heavy (late, causal) and light tiles mix.
    for (index_t qt = 0; qt < cb.tiles; ++qt) {
      const index_t m = qt % (2 * cb.chunks);
      if ((m < cb.chunks ? m : 2 * cb.chunks - 1 - m) != c) continue;
      engine::row_block rb;
      rb.batch = cb.b;
      rb.kv_head = cb.kv_head;
      rb.kv_heads = 1;
      rb.head0 = cb.head0;
      rb.heads = cb.heads;
      rb.group = group;
      rb.query0 = qt * cb.queries;
      rb.queries = std::min(cb.queries, seq_q - rb.query0);
      rb.pos0 = len - seq_q + rb.query0;
      const index_t rows = rb.rows(), nq = rb.queries;
      const index_t ld = (rows + w - 1) / w * w;
      // exp(s - lse): a row that sees no key (lse = -inf) gets +inf here, so P = 0, not NaN.
      for (index_t r = 0; r < ld; ++r) {
        const float l = r < rows ? lse(cb.b, rb.head_of(r), rb.query_of(r)) : neg_inf;
        lrow[r] = l == neg_inf ? std::numeric_limits<float>::infinity() : l;
      }
      const bool aligned = nq % w == 0;
      engine::score_tiles<Arch, DK>(
          pb, rb, keys, var, sc, [&](const engine::kv_tile<KV>& kt, float* st, index_t) {
            for (index_t j = 0; j < kt.count; ++j) {
              float* s = st + j * ld;
              const index_t kp = kt.pos[j];
              if (aligned) {
                for (index_t hh = 0; hh < rb.heads; ++hh) {
                  V acc = zero, cnt = zero;
                  for (index_t r = hh * nq; r < (hh + 1) * nq; r += w) {
                    const V sv = V::load_aligned(s + r);
                    acc += simd::exp<Arch>(sv - V::load_aligned(lrow + r));
                    if (want_count) cnt += xsimd::select(sv > ninf, one, zero);
                  }
                  if (want_sum) sum_t[hh][kp] += simd::reduce_sum<Arch>(acc);
                  if (want_count) count_t[hh][kp] += simd::reduce_sum<Arch>(cnt);
                }
              } else {
                if (want_count)
                  for (index_t r = 0; r < rows; ++r) count_t[r / nq][kp] += s[r] > neg_inf;
                for (index_t r = 0; r < ld; r += w)
                  simd::exp<Arch>(V::load_aligned(s + r) - V::load_aligned(lrow + r))
                      .store_aligned(s + r);
                if (want_sum)
                  for (index_t r = 0; r < rows; ++r) sum_t[r / nq][kp] += s[r];
              }
            }
          });
    }
  });

  if (direct) return;
  attend::detail::parallel_for(batch * heads_q, threads, [&](index_t bh, int) {
    const index_t b = bh / heads_q, h = bh % heads_q;
    if (!head_on[h]) return;
    const index_t len = length_of(b), chunks = chunks_of[bh];
    auto reduce = [&](const view3<float>& out, const float* part) {
      float* dst = &out(b, h, 0);
      for (index_t j = 0; j < len; ++j) {
        float s = accumulate ? dst[j] : 0.0f;
        for (index_t c = 0; c < chunks; ++c) s += part[((c * batch + b) * heads_q + h) * seq_k + j];
        dst[j] = s;
      }
      if (!accumulate) std::fill(dst + len, dst + seq_k, 0.0f);
    };
    if (want_sum) reduce(col_sum, psum);
    if (want_count) reduce(col_count, pcount);
  });
}

/// Scores of one query row (ctx) against n listed keys (positions < the row's kv length),
/// formed as the engine forms them: scale * q . k, then the score hook, then the mask (a masked
/// key gets -inf). `group` = heads_q / heads_kv.
template <class Arch, class KV, class Score, class Mask>
void score_listed_keys(const Score& score, const Mask& mask, const view4<const float>& q,
                       const view4<const KV>& k, float scale, index_t group,
                       const engine::row_ctx& ctx, const index_t* keys, index_t n,
                       float* out) noexcept {
  using V = simd::vfloat<Arch>;
  constexpr index_t w = simd::lanes<Arch>;
  constexpr index_t chunk = 16;
  const index_t dk = q.extent(3);
  engine::row_block rb;
  rb.batch = ctx.batch;
  rb.kv_head = ctx.head / group;
  rb.head0 = ctx.head;
  rb.heads = 1;
  rb.group = group;
  rb.query0 = ctx.query;
  rb.queries = 1;
  rb.pos0 = ctx.pos;
  alignas(64) index_t head[w], pos[w], query[w];
  alignas(64) float posf[w];
  for (index_t r = 0; r < w; ++r) {
    head[r] = ctx.head;
    pos[r] = ctx.pos;
    query[r] = ctx.query;
    posf[r] = static_cast<float>(ctx.pos);
  }
  const engine::row_info ri{head, pos, posf, query};
  alignas(64) float st[chunk * w];
  const float* qr = q.data() + q.offset(ctx.batch, ctx.query, ctx.head, 0);
  const V vscale(scale);  // q is scaled before the product, as the engine packs it
  const KV* kbase = k.data() + ctx.batch * k.stride(0) + rb.kv_head * k.stride(2);
  for (index_t c0 = 0; c0 < n; c0 += chunk) {
    const index_t cn = std::min(chunk, n - c0);
    for (index_t j = 0; j < cn; ++j) {
      const KV* kr = kbase + keys[c0 + j] * k.stride(1);
      V acc(0.0f);
      index_t d = 0;
      for (; d + w <= dk; d += w)
        acc = simd::fmadd<Arch>(V::load_unaligned(qr + d) * vscale, simd::load<Arch>(kr + d), acc);
      float dot = simd::reduce_sum<Arch>(acc);
      for (; d < dk; ++d) dot += (qr[d] * scale) * simd::load_scalar(kr + d);
      V(dot).store_aligned(st + j * w);
    }
    if constexpr (!Score::is_identity) score.template apply<Arch>(rb, ri, keys + c0, cn, st, w);
    for (index_t j = 0; j < cn; ++j) {
      bool kept = true;
      if constexpr (!Mask::is_identity)
        kept = mask.keep(rb, ctx.head, ctx.query, ctx.pos, keys[c0 + j]);
      out[c0 + j] = kept ? st[j * w] : neg_inf;
    }
  }
}

}  // namespace attend::sink::detail

#endif  // ATTEND_SINK_FORWARD_HPP_
