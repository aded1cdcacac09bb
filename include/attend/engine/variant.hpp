// Variant hooks of the tiled online-softmax engine (FlashInfer/FlexAttention style, resolved at
// compile time). A variant has one slot per hook kind; every default is a no-op whose
// `is_identity` lets the engine drop it with `if constexpr`, so an unused hook costs nothing.
//
//   score_mod     transforms a tile of scores (softcap, ALiBi, additive bias, class biases)
//   mask          key range + tile classification (empty / partial / full) + element predicate:
//                 empty tiles are never loaded, full tiles never evaluate the predicate
//   row_mod       a per-head sink logit joining each row's softmax denominator exactly once
//   output_mod    rewrites a finished, normalised output row (gates, ACT, DuoAttention blends)
//   key_transform rewrites a key row on load at its cache position (RoPE on read, StreamingLLM)
//   row_stats     extra rescaled per-row accumulators in the forward pass (entropy, sink mass)
#ifndef ATTEND_ENGINE_VARIANT_HPP_
#define ATTEND_ENGINE_VARIANT_HPP_

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "../core/config.hpp"

namespace attend::engine {

/// How a KV tile relates to a row block's mask: no visible key (never loaded), some (the
/// element predicate runs), all (no predicate).
enum class tile_kind : std::uint8_t { empty, partial, full };

/// The query rows processed together. A block covers KV heads [kv_head, kv_head + kv_heads);
/// for each of them query heads [head0 + g * group, + heads) (g = 0.. kv_heads - 1, group =
/// query heads per KV head), times queries [query0, query0 + queries). Several KV heads share
/// one block in decode so that a [batch, seq, heads, dim] cache is streamed token by token.
/// Row r belongs to KV head kv_head + r / (heads * queries), query head head_of(r), query
/// query0 + r % queries at position pos0 + r % queries (bottom-right alignment is in pos0).
struct row_block {
  index_t batch = 0;
  index_t kv_head = 0, kv_heads = 1;
  index_t head0 = 0, heads = 1, group = 1;
  index_t query0 = 0, queries = 1;
  index_t pos0 = 0;

  index_t rows_per_kv() const noexcept { return heads * queries; }
  index_t rows() const noexcept { return kv_heads * heads * queries; }
  index_t head_of(index_t r) const noexcept {
    return head0 + (r / rows_per_kv()) * group + (r % rows_per_kv()) / queries;
  }
  index_t query_of(index_t r) const noexcept { return query0 + r % queries; }
  index_t pos_of(index_t r) const noexcept { return pos0 + r % queries; }
  index_t first_pos() const noexcept { return pos0; }
  index_t last_pos() const noexcept { return pos0 + queries - 1; }
};

/// Per-row data of a row block, padded to the SIMD width (padding rows repeat the last row).
struct row_info {
  const index_t* head;   // [ld] query head of each row
  const index_t* pos;    // [ld] absolute position of each row's query
  const float* posf;     // [ld] the same as float, for vectorised position arithmetic
  const index_t* query;  // [ld] query index (into seq_q) of each row
};

/// Keys of one tile: `count` sorted positions and their K/V rows (any layout, paged or gathered)
/// for the block's first KV head; the rows of KV head kv_head + g are g * k_head_stride
/// (v_head_stride) elements further (sources that serve multi-KV-head blocks set them).
template <class KV>
struct kv_tile {
  index_t count = 0;
  tile_kind kind = tile_kind::full;
  const index_t* pos = nullptr;
  const KV* const* k = nullptr;
  const KV* const* v = nullptr;
  index_t k_head_stride = 0;
  index_t v_head_stride = 0;
  // True when the KV heads of one token are adjacent in memory ([batch, seq, heads, dim]):
  // multi-KV-head blocks then walk a few tokens at a time across all heads, a sequential read.
  bool heads_interleaved = false;
  // The tile the source will deliver next (count 0 at the end), so kernels can prefetch across
  // the tile boundary.
  index_t next_count = 0;
  const KV* const* next_k = nullptr;
  const KV* const* next_v = nullptr;
};

/// Scratch a key source fills with tiles: two sets of `capacity` entries, so that the tile
/// after the one being visited can be described too (sources alternate between the sets).
template <class KV>
struct tile_buffers {
  index_t capacity;
  index_t* pos;  // [2 * capacity]
  const KV** k;  // [2 * capacity]
  const KV** v;  // [2 * capacity]
};

/// What a row's finalisation knows: where the row lives and its log-sum-exp.
struct row_ctx {
  index_t batch, head, query, pos;
};

// ---------------------------------------------------------------------------------------------
// No-op defaults.

struct no_score_mod {
  static constexpr bool is_identity = true;
};

/// Mask protocol (a non-identity mask provides):
///   std::pair<index_t, index_t> key_range(const row_block&, index_t lo, index_t hi) const;
///       clips the half-open key range [lo, hi) a block may see (nothing outside is visited)
///   tile_kind classify(const row_block&, index_t kmin, index_t kmax) const;
///       the kind of a tile whose keys lie in the closed range [kmin, kmax]
///   bool keep(const row_block&, index_t head, index_t query, index_t qpos, index_t kpos) const;
///       the element predicate (only on partial tiles)
/// Every key of the tile source is visible: every tile is full.
struct no_mask {
  static constexpr bool is_identity = true;
  std::pair<index_t, index_t> key_range(const row_block&, index_t lo, index_t hi) const noexcept {
    return {lo, hi};
  }
  tile_kind classify(const row_block&, index_t, index_t) const noexcept { return tile_kind::full; }
  bool keep(const row_block&, index_t, index_t, index_t, index_t) const noexcept { return true; }
};

/// Row modifier protocol: float logit(index_t head) const, a sink logit joined once per row at
/// finalisation (-inf = none).
struct no_sink {
  static constexpr bool is_identity = true;
  float logit(index_t) const noexcept { return -std::numeric_limits<float>::infinity(); }
};

/// Output hook protocol: void apply(const row_ctx&, float* o, float lse, index_t dv) const,
/// rewriting a finished, normalised output row (after the sink) before it is stored.
struct no_output_mod {
  static constexpr bool is_identity = true;
};

/// Key transform protocol: void apply(float* k, index_t dk, index_t pos, index_t kv_head) const,
/// rewriting a key row (widened to float) on load, at its position (RoPE on read).
struct no_key_transform {
  static constexpr bool is_identity = true;
};

/// Row statistics protocol (see sink/stats.hpp for the users): a non-identity policy provides
///   static constexpr int accumulators;   // floats per row it keeps, at most 4
///   template <class Arch> void visit(float* acc, index_t ld, const index_t* kpos, index_t j,
///                                    index_t r, simd::vfloat<Arch> s, simd::vfloat<Arch> p) const;
///       per tile, for every score vector s (key j, rows r..r+lanes) and p = exp(s - m_new);
///       acc[a * ld + r] are this tile's sums (zeroed by the engine before each tile)
///   void finish(const row_block&, index_t r, const row_ctx&, const float* totals, index_t ld,
///               float m, float l) const;
///       once per row at the end: totals[a * ld] are the sums over all tiles, each rescaled to
///       the row's final max m (like l), so e.g. entropy = m + log l - totals[0] / l.
struct no_row_stats {
  static constexpr bool is_identity = true;
  static constexpr int accumulators = 0;
};

/// The set of hooks one engine instantiation runs with.
template <class ScoreMod = no_score_mod, class Mask = no_mask, class RowMod = no_sink,
          class OutputMod = no_output_mod, class KeyTransform = no_key_transform,
          class RowStats = no_row_stats>
struct variant {
  ScoreMod score{};
  Mask mask{};
  RowMod row{};
  OutputMod output{};
  KeyTransform key{};
  RowStats stats{};
};

/// Builds a variant from its hooks (later ones defaulted).
template <class ScoreMod, class Mask, class RowMod = no_sink, class OutputMod = no_output_mod,
          class KeyTransform = no_key_transform, class RowStats = no_row_stats>
variant<ScoreMod, Mask, RowMod, OutputMod, KeyTransform, RowStats> make_variant(
    ScoreMod s, Mask m, RowMod r = {}, OutputMod o = {}, KeyTransform k = {}, RowStats st = {}) {
  return {s, m, r, o, k, st};
}

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_VARIANT_HPP_
