// Masks of the sink family, in the engine's three-level protocol (engine/masks.hpp): key_range
// clips a row block's keys, classify sorts tiles into empty / partial / full (empty tiles are
// never loaded), keep is the element predicate on partial tiles only.
//
//   sink_window_mask   StreamingLLM / DuoAttention streaming heads: j <= p and (j < sink or
//                      p - j < window); the gap between the sinks and the window is never loaded
//   key_class_mask     keys of one class (documents or not, for Found-in-the-middle)
//   intersect_mask     both of two masks (a family mask and the user's causal / window / bool)
#ifndef ATTEND_SINK_MASKS_HPP_
#define ATTEND_SINK_MASKS_HPP_

#include <algorithm>
#include <cstdint>
#include <utility>

#include "../engine/variant.hpp"

namespace attend::sink {

/// Attention sinks plus a recent window, causal in positions: a key at position j is visible to
/// a query at position p when j <= p and (j < sink or p - j < window). Tiles wholly inside the
/// gap [sink, p - window] of every row of a block are empty, so a decode step reads
/// sink + window keys whatever the cache length.
struct sink_window_mask {
  static constexpr bool is_identity = false;
  index_t sink = 64;
  index_t window = 256;

  std::pair<index_t, index_t> key_range(const engine::row_block& rb, index_t lo,
                                        index_t hi) const noexcept {
    hi = std::min(hi, rb.last_pos() + 1);
    return {lo, std::max(lo, hi)};
  }

  engine::tile_kind classify(const engine::row_block& rb, index_t kmin,
                             index_t kmax) const noexcept {
    const index_t qlo = rb.first_pos(), qhi = rb.last_pos();
    if (kmin > qhi) return engine::tile_kind::empty;
    if (kmin >= sink && qlo - kmax >= window) return engine::tile_kind::empty;  // in every gap
    const bool causal_full = kmax <= qlo;
    const bool all_visible = kmax < sink || qhi - kmin < window;
    return causal_full && all_visible ? engine::tile_kind::full : engine::tile_kind::partial;
  }

  bool keep(const engine::row_block&, index_t, index_t, index_t qpos, index_t kpos) const noexcept {
    return kpos <= qpos && (kpos < sink || qpos - kpos < window);
  }
};

/// Keys whose class matches: cls[batch * cls_stride + j] >= 0 is "in a document" (the document
/// index), -1 is "outside every document". want_docs selects the documents (true) or the rest.
/// in_docs[batch * prefix_stride + j] counts the document keys in [0, j) (prefix sums), so a
/// tile is classified in O(1).
struct key_class_mask {
  static constexpr bool is_identity = false;
  const std::int32_t* cls = nullptr;
  const std::int32_t* in_docs = nullptr;
  index_t cls_stride = 0, prefix_stride = 0;
  bool want_docs = true;

  std::pair<index_t, index_t> key_range(const engine::row_block&, index_t lo,
                                        index_t hi) const noexcept {
    return {lo, hi};
  }

  engine::tile_kind classify(const engine::row_block& rb, index_t kmin,
                             index_t kmax) const noexcept {
    const std::int32_t* pre = in_docs + rb.batch * prefix_stride;
    const index_t docs = pre[kmax + 1] - pre[kmin];
    const index_t wanted = want_docs ? docs : (kmax - kmin + 1) - docs;
    if (wanted == 0) return engine::tile_kind::empty;
    return wanted == kmax - kmin + 1 ? engine::tile_kind::full : engine::tile_kind::partial;
  }

  bool keep(const engine::row_block& rb, index_t, index_t, index_t, index_t kpos) const noexcept {
    return (cls[rb.batch * cls_stride + kpos] >= 0) == want_docs;
  }
};

/// Keys visible under both masks: the key ranges intersect, a tile is empty if either mask
/// says so, full if both do, partial otherwise.
template <class A, class B>
struct intersect_mask {
  static constexpr bool is_identity = false;
  A a{};
  B b{};

  std::pair<index_t, index_t> key_range(const engine::row_block& rb, index_t lo,
                                        index_t hi) const noexcept {
    const auto ra = a.key_range(rb, lo, hi);
    const auto rb2 = b.key_range(rb, ra.first, ra.second);
    return {rb2.first, std::max(rb2.first, rb2.second)};
  }

  engine::tile_kind classify(const engine::row_block& rb, index_t kmin,
                             index_t kmax) const noexcept {
    const engine::tile_kind ka = a.classify(rb, kmin, kmax);
    if (ka == engine::tile_kind::empty) return ka;
    const engine::tile_kind kb = b.classify(rb, kmin, kmax);
    if (kb == engine::tile_kind::empty) return kb;
    return ka == engine::tile_kind::full && kb == engine::tile_kind::full
               ? engine::tile_kind::full
               : engine::tile_kind::partial;
  }

  bool keep(const engine::row_block& rb, index_t head, index_t query, index_t qpos,
            index_t kpos) const noexcept {
    return a.keep(rb, head, query, qpos, kpos) && b.keep(rb, head, query, qpos, kpos);
  }
};

template <class A, class B>
intersect_mask<A, B> intersect(const A& a, const B& b) {
  return {a, b};
}

}  // namespace attend::sink

#endif  // ATTEND_SINK_MASKS_HPP_
