// Token-level selections: for every (batch, owner, query tile) a sorted list of key positions.
// Every token-level selector of the library (exact / low-bit top-k, TokenSelect, Recycled, HiP,
// DHSA) writes this format and gather_attention reads it. An owner is a query head, a KV head
// (the list is shared by the query heads of its group) or the whole layer (one list for all
// heads); a tile is `query_block` consecutive queries that share the list (1 = per query).
#ifndef ATTEND_SPARSE_TOKEN_LISTS_HPP_
#define ATTEND_SPARSE_TOKEN_LISTS_HPP_

#include <algorithm>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor_view.hpp"

namespace attend::sparse {

/// Which query heads read a list.
enum class list_owner {
  q_head,   ///< one list per query head
  kv_head,  ///< one list per KV head, shared by the heads_q / heads_kv query heads of its group
  layer     ///< one list shared by every head
};

/// Number of list owners per batch entry.
inline index_t owner_count(list_owner owner, index_t heads_q, index_t heads_kv) noexcept {
  switch (owner) {
    case list_owner::q_head: return heads_q;
    case list_owner::kv_head: return heads_kv;
    default: return 1;
  }
}

/// The owner whose list query head `head` reads (group = heads_q / heads_kv).
inline index_t owner_of(list_owner owner, index_t head, index_t group) noexcept {
  switch (owner) {
    case list_owner::q_head: return head;
    case list_owner::kv_head: return head / group;
    default: return 0;
  }
}

/// Number of query tiles of `query_block` queries covering seq_q queries.
inline index_t tile_count(index_t seq_q, index_t query_block) noexcept {
  return (seq_q + query_block - 1) / query_block;
}

/// A view of per (batch, owner, tile) key lists.
///   indices [batch, owners, tiles, capacity]: list entries, strictly ascending key positions
///           (cache indices), each < the sequence's KV length; the innermost axis contiguous
///   counts  [batch, owners, tiles]: valid entries of each list (<= capacity); empty = every list
///           holds `capacity` entries
/// owners = heads_q, heads_kv or 1 (see list_owner); tiles = ceil(seq_q / query_block).
struct token_lists {
  view4<const index_t> indices{};
  view3<const index_t> counts{};
  list_owner owner = list_owner::kv_head;
  index_t query_block = 1;

  index_t capacity() const noexcept { return indices.extent(3); }
  index_t count(index_t b, index_t o, index_t t) const noexcept {
    return counts.has_value() ? counts(b, o, t) : indices.extent(3);
  }
  const index_t* list(index_t b, index_t o, index_t t) const noexcept {
    return indices.data() + indices.offset(b, o, t, 0);
  }
};

/// Owning storage for token lists (contiguous [batch, owners, tiles, capacity] plus counts), as
/// selectors write them. Growing reuses the storage when it is large enough.
class token_list_buffer {
 public:
  token_list_buffer() = default;

  /// Lists for a problem of `batch` sequences, heads_q / heads_kv heads and seq_q queries.
  token_list_buffer(list_owner owner, index_t query_block, index_t batch, index_t heads_q,
                    index_t heads_kv, index_t seq_q, index_t capacity) {
    reshape(owner, query_block, batch, heads_q, heads_kv, seq_q, capacity);
  }

  /// Re-shapes the buffer (contents are unspecified afterwards; counts are zero).
  void reshape(list_owner owner, index_t query_block, index_t batch, index_t heads_q,
               index_t heads_kv, index_t seq_q, index_t capacity) {
    ATTEND_CHECK(query_block >= 1 && batch >= 1 && heads_q >= 1 && heads_kv >= 1 && seq_q >= 1 &&
                     capacity >= 1,
                 "attend::sparse::token_list_buffer: sizes must be >= 1 (query_block ",
                 query_block, ", batch ", batch, ", heads ", heads_q, "/", heads_kv, ", seq_q ",
                 seq_q, ", capacity ", capacity, ")");
    owner_ = owner;
    query_block_ = query_block;
    batch_ = batch;
    owners_ = owner_count(owner, heads_q, heads_kv);
    tiles_ = tile_count(seq_q, query_block);
    capacity_ = capacity;
    const auto lists = static_cast<std::size_t>(batch_ * owners_ * tiles_);
    indices_.resize(lists * static_cast<std::size_t>(capacity_));
    counts_.assign(lists, 0);
  }

  index_t batch() const noexcept { return batch_; }
  index_t owners() const noexcept { return owners_; }
  index_t tiles() const noexcept { return tiles_; }
  index_t capacity() const noexcept { return capacity_; }
  list_owner owner() const noexcept { return owner_; }
  index_t query_block() const noexcept { return query_block_; }

  index_t* list(index_t b, index_t o, index_t t) noexcept {
    return indices_.data() + ((b * owners_ + o) * tiles_ + t) * capacity_;
  }
  const index_t* list(index_t b, index_t o, index_t t) const noexcept {
    return indices_.data() + ((b * owners_ + o) * tiles_ + t) * capacity_;
  }
  index_t& count(index_t b, index_t o, index_t t) noexcept {
    return counts_[static_cast<std::size_t>((b * owners_ + o) * tiles_ + t)];
  }
  index_t count(index_t b, index_t o, index_t t) const noexcept {
    return counts_[static_cast<std::size_t>((b * owners_ + o) * tiles_ + t)];
  }

  /// Writable views, for selectors that write through views.
  view4<index_t> indices_view() noexcept {
    return view4<index_t>::contiguous(indices_.data(), {batch_, owners_, tiles_, capacity_});
  }
  view3<index_t> counts_view() noexcept {
    return view3<index_t>::contiguous(counts_.data(), {batch_, owners_, tiles_});
  }

  /// The read-only view gather_attention takes.
  token_lists view() const noexcept {
    token_lists l;
    l.indices =
        view4<const index_t>::contiguous(indices_.data(), {batch_, owners_, tiles_, capacity_});
    l.counts = view3<const index_t>::contiguous(counts_.data(), {batch_, owners_, tiles_});
    l.owner = owner_;
    l.query_block = query_block_;
    return l;
  }

 private:
  std::vector<index_t> indices_, counts_;
  list_owner owner_ = list_owner::kv_head;
  index_t query_block_ = 1, batch_ = 0, owners_ = 0, tiles_ = 0, capacity_ = 0;
};

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_TOKEN_LISTS_HPP_
