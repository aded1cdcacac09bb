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

enum class tile_kind : std::uint8_t { empty, partial, full };

/// The query rows processed together: query heads [head0, head0 + heads) of one KV group and
/// queries [query0, query0 + queries). Row r is head head0 + r / queries, query query0 + r % queries,
/// at absolute position pos0 + r % queries (bottom-right alignment is folded into pos0).
struct row_block {
  index_t batch = 0;
  index_t kv_head = 0;
  index_t head0 = 0, heads = 1;
  index_t query0 = 0, queries = 1;
  index_t pos0 = 0;

  index_t rows() const noexcept { return heads * queries; }
  index_t head_of(index_t r) const noexcept { return head0 + r / queries; }
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

/// Keys of one tile: `count` sorted positions and their K/V rows (any layout, paged or gathered).
template <class KV>
struct kv_tile {
  index_t count = 0;
  tile_kind kind = tile_kind::full;
  const index_t* pos = nullptr;
  const KV* const* k = nullptr;
  const KV* const* v = nullptr;
};

/// Scratch a key source fills with one tile (capacity entries each).
template <class KV>
struct tile_buffers {
  index_t capacity;
  index_t* pos;
  const KV** k;
  const KV** v;
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

/// Every key of the tile source is visible: every tile is full.
struct no_mask {
  static constexpr bool is_identity = true;
  std::pair<index_t, index_t> key_range(const row_block&, index_t lo, index_t hi) const noexcept {
    return {lo, hi};
  }
  tile_kind classify(const row_block&, index_t, index_t) const noexcept { return tile_kind::full; }
  bool keep(const row_block&, index_t, index_t, index_t, index_t) const noexcept { return true; }
};

struct no_sink {
  static constexpr bool is_identity = true;
  float logit(index_t) const noexcept { return -std::numeric_limits<float>::infinity(); }
};

struct no_output_mod {
  static constexpr bool is_identity = true;
};

struct no_key_transform {
  static constexpr bool is_identity = true;
};

struct no_row_stats {
  static constexpr bool is_identity = true;
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

template <class ScoreMod, class Mask, class RowMod = no_sink, class OutputMod = no_output_mod,
          class KeyTransform = no_key_transform, class RowStats = no_row_stats>
variant<ScoreMod, Mask, RowMod, OutputMod, KeyTransform, RowStats> make_variant(
    ScoreMod s, Mask m, RowMod r = {}, OutputMod o = {}, KeyTransform k = {}, RowStats st = {}) {
  return {s, m, r, o, k, st};
}

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_VARIANT_HPP_
