// Masks: which keys each query row may see. A mask answers at three levels so the engine does
// the least work: key_range() clips the keys a row block can see at all (nothing outside is
// visited), classify() sorts each tile into empty (never loaded) / full (no predicate) / partial,
// and keep() is the element predicate, evaluated on partial tiles only.
#ifndef ATTEND_ENGINE_MASKS_HPP_
#define ATTEND_ENGINE_MASKS_HPP_

#include <algorithm>
#include <utility>

#include "variant.hpp"

namespace attend::engine {

/// Causal / sliding-window band in positions, plus an optional boolean mask
/// [batch, heads_q, seq_q, seq_k] (true = keep; broadcast axes have stride 0).
/// A key at position j is visible to a query at position p when
/// p - left <= j <= p + right (a negative bound is unbounded; causal is right = 0).
struct standard_mask {
  static constexpr bool is_identity = false;
  index_t left = -1;
  index_t right = -1;
  const bool* mask = nullptr;
  index_t mask_stride_b = 0, mask_stride_h = 0, mask_stride_q = 0, mask_stride_k = 0;

  std::pair<index_t, index_t> key_range(const row_block& rb, index_t lo, index_t hi) const noexcept {
    if (left >= 0) lo = std::max(lo, rb.first_pos() - left);
    if (right >= 0) hi = std::min(hi, rb.last_pos() + right + 1);
    return {lo, std::max(lo, hi)};
  }

  tile_kind classify(const row_block& rb, index_t kmin, index_t kmax) const noexcept {
    const index_t qlo = rb.first_pos(), qhi = rb.last_pos();
    if (right >= 0 && kmin > qhi + right) return tile_kind::empty;
    if (left >= 0 && kmax < qlo - left) return tile_kind::empty;
    const bool inside = (right < 0 || kmax <= qlo + right) && (left < 0 || kmin >= qhi - left);
    return inside && mask == nullptr ? tile_kind::full : tile_kind::partial;
  }

  bool keep(const row_block& rb, index_t head, index_t query, index_t qpos,
            index_t kpos) const noexcept {
    if (right >= 0 && kpos > qpos + right) return false;
    if (left >= 0 && kpos < qpos - left) return false;
    if (mask == nullptr) return true;
    return mask[rb.batch * mask_stride_b + head * mask_stride_h + query * mask_stride_q +
                kpos * mask_stride_k];
  }
};

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_MASKS_HPP_
