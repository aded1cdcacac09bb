// Key sources: deliver the KV tiles of one row block to the engine. A source owns the key
// layout (contiguous cache, block list, gathered indices, pages) and asks the mask to clip and
// classify; the engine never sees how keys are stored. The protocol:
//
//   template <class Mask, class Visit>
//   void for_each_tile(const row_block& rb, const Mask& mask, const tile_buffers<KV>& buf,
//                      Visit&& visit) const noexcept;
//
// calls visit(const kv_tile<KV>&) once per non-empty tile, where
//   - count <= buf.capacity keys, positions ascending within the tile (masks classify a tile by
//     its first and last position); tiles may come in any order and must not repeat a key;
//   - pos / k / v point into one of buf's two sets (offset 0 or buf.capacity); k[j], v[j] are
//     the rows of key pos[j] for KV head rb.kv_head;
//   - kind = mask.classify(rb, pos[0], pos[count - 1]) (or partial when unsure), never empty;
//   - k_head_stride / v_head_stride / heads_interleaved are needed only when the source serves
//     blocks with rb.kv_heads > 1; next_* (the following tile) are an optional prefetch hint.
#ifndef ATTEND_ENGINE_KEY_SOURCES_HPP_
#define ATTEND_ENGINE_KEY_SOURCES_HPP_

#include <algorithm>
#include <limits>

#include "../core/tensor_view.hpp"
#include "variant.hpp"

namespace attend::engine {

/// Contiguous keys of a [batch, seq_k, heads_kv, dim] cache, optionally limited per sequence
/// (kv_lens) and to a sub-range [begin, end) (one split of split-K decode).
template <class KV>
struct dense_keys {
  view4<const KV> k, v;
  const index_t* kv_lens = nullptr;  // [batch] or null
  index_t begin = 0;
  index_t end = std::numeric_limits<index_t>::max();

  index_t length(index_t batch) const noexcept { return kv_lens ? kv_lens[batch] : k.extent(1); }

  template <class Mask, class Visit>
  void for_each_tile(const row_block& rb, const Mask& mask, const tile_buffers<KV>& buf,
                     Visit&& visit) const noexcept {
    const auto range = mask.key_range(rb, begin, std::min(end, length(rb.batch)));
    const index_t lo = range.first, hi = range.second;
    const KV* kb = k.data() + rb.batch * k.stride(0) + rb.kv_head * k.stride(2);
    const KV* vb = v.data() + rb.batch * v.stride(0) + rb.kv_head * v.stride(2);
    // Describes the first non-empty tile at or after t0 in buffer set `set`; returns its end.
    auto fill = [&](index_t t0, int set, kv_tile<KV>& t) {
      for (; t0 < hi; t0 += buf.capacity) {
        const index_t t1 = std::min(t0 + buf.capacity, hi);
        const tile_kind kind = mask.classify(rb, t0, t1 - 1);
        if (kind == tile_kind::empty) continue;
        const index_t off = set * buf.capacity;
        t = kv_tile<KV>{t1 - t0,      kind,        buf.pos + off,
                        buf.k + off,  buf.v + off, k.stride(2),
                        v.stride(2),  k.stride(2) < k.stride(1)};
        for (index_t j = 0; j < t.count; ++j) {
          buf.pos[off + j] = t0 + j;
          buf.k[off + j] = kb + (t0 + j) * k.stride(1);
          buf.v[off + j] = vb + (t0 + j) * v.stride(1);
        }
        return t1;
      }
      t.count = 0;
      return hi;
    };
    kv_tile<KV> cur, next;
    index_t after = fill(lo, 0, cur);
    for (int set = 1; cur.count > 0; set ^= 1) {
      after = fill(after, set, next);
      cur.next_count = next.count;
      cur.next_k = next.k;
      cur.next_v = next.v;
      visit(static_cast<const kv_tile<KV>&>(cur));
      cur = next;
    }
  }
};

}  // namespace attend::engine

#endif  // ATTEND_ENGINE_KEY_SOURCES_HPP_
