// block_mask: which key blocks each query block attends (FlexAttention's BlockMask semantics in
// CSR form). For every (batch, head, query block) row it holds the sorted list of key blocks,
// each marked full (the element predicate of the call holds on every element, so the kernel
// skips it there) or partial (the predicate must be evaluated), plus an optional sorted list of
// extra single key columns (MInference's verticals). Causality and windows are not part of the
// mask: they come from the call's attention_params and are applied element-wise on top.
//
// The head axis of a mask is the list owner: `heads` equal to the call's query heads gives one
// list per query head, equal to its KV heads one list shared by each GQA group (one row block
// then serves the group's query heads, so each K/V tile is loaded once per group), and 1 one
// list shared by every head.
//
// Element semantics (what block_sparse_attention computes): query i attends key j iff
//   (j lies in a listed block and (the block is full or mod(b, h, i, j)))
//   or (j is a listed column and mod(b, h, i, j)),
// and j is visible under causal / window / kv_lens; `mod` is the call's optional element
// predicate (always true when absent).
#ifndef ATTEND_SPARSE_BLOCK_MASK_HPP_
#define ATTEND_SPARSE_BLOCK_MASK_HPP_

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"

namespace attend::sparse {

/// Shape of a block mask: `heads` list owners, `seq_q` queries in blocks of `block_q`, `seq_k`
/// keys in blocks of `block_k` (the last block of each axis may be short).
struct mask_geometry {
  index_t batch = 1;
  index_t heads = 1;
  index_t seq_q = 1;
  index_t seq_k = 1;
  index_t block_q = 64;
  index_t block_k = 64;

  index_t q_blocks() const noexcept { return (seq_q + block_q - 1) / block_q; }
  index_t k_blocks() const noexcept { return (seq_k + block_k - 1) / block_k; }
  /// Number of CSR rows: batch * heads * q_blocks.
  index_t rows() const noexcept { return batch * heads * q_blocks(); }
  /// CSR row of (batch b, owner head h, query block qb).
  index_t row(index_t b, index_t h, index_t qb) const noexcept {
    return (b * heads + h) * q_blocks() + qb;
  }
  /// Query range [first, last) of query block qb, key range of key block kb.
  std::pair<index_t, index_t> q_range(index_t qb) const noexcept {
    return {qb * block_q, std::min(seq_q, (qb + 1) * block_q)};
  }
  std::pair<index_t, index_t> k_range(index_t kb) const noexcept {
    return {kb * block_k, std::min(seq_k, (kb + 1) * block_k)};
  }
  bool operator==(const mask_geometry& o) const noexcept {
    return batch == o.batch && heads == o.heads && seq_q == o.seq_q && seq_k == o.seq_k &&
           block_q == o.block_q && block_k == o.block_k;
  }
  bool operator!=(const mask_geometry& o) const noexcept { return !(*this == o); }
};

namespace detail {

inline void check_geometry(const char* op, const mask_geometry& g) {
  ATTEND_CHECK(g.batch > 0 && g.heads > 0 && g.seq_q > 0 && g.seq_k > 0 && g.block_q > 0 &&
                   g.block_k > 0,
               op, ": mask geometry must be positive (batch ", g.batch, ", heads ", g.heads,
               ", seq_q ", g.seq_q, ", seq_k ", g.seq_k, ", block_q ", g.block_q, ", block_k ",
               g.block_k, ")");
}

}  // namespace detail

/// One CSR row of a block_mask: `count` ascending key blocks with their full flags (1 = full,
/// 0 = partial) and `column_count` ascending extra key columns.
struct mask_row {
  const index_t* blocks = nullptr;
  const std::uint8_t* full = nullptr;
  index_t count = 0;
  const index_t* columns = nullptr;
  index_t column_count = 0;
};

class block_mask {
 public:
  block_mask() = default;

  /// A mask of geometry g with no block listed (every row attends nothing).
  explicit block_mask(const mask_geometry& g) : g_(g) {
    detail::check_geometry("attend::sparse::block_mask", g);
    offsets_.assign(static_cast<std::size_t>(g.rows() + 1), 0);
  }

  /// Adopts CSR arrays after validating them (throws attend::invalid_argument naming the first
  /// bad row): offsets [rows + 1] from 0 to nnz, non-decreasing; indices [nnz] in [0, k_blocks)
  /// strictly increasing within a row; full [nnz] 0/1 (empty = every entry full);
  /// column_offsets [rows + 1] or empty (no columns); columns strictly increasing within a row,
  /// in [0, seq_k) and outside the row's listed blocks.
  static block_mask from_csr(const mask_geometry& g, std::vector<index_t> offsets,
                             std::vector<index_t> indices, std::vector<std::uint8_t> full = {},
                             std::vector<index_t> column_offsets = {},
                             std::vector<index_t> columns = {}) {
    detail::check_geometry("attend::sparse::block_mask::from_csr", g);
    block_mask m;
    m.g_ = g;
    if (full.empty()) full.assign(indices.size(), 1);
    m.offsets_ = std::move(offsets);
    m.indices_ = std::move(indices);
    m.full_ = std::move(full);
    m.column_offsets_ = std::move(column_offsets);
    m.columns_ = std::move(columns);
    m.validate();
    return m;
  }

  /// Evaluates pred(b, h, i, j) -> bool on every element (query i < seq_q, key j < seq_k) and
  /// lists each block with at least one true element, full when all its elements are true.
  /// O(batch * heads * seq_q * seq_k) predicate calls: for tests and small or static masks.
  template <class Pred>
  static block_mask from_predicate(const mask_geometry& g, const Pred& pred) {
    detail::check_geometry("attend::sparse::block_mask::from_predicate", g);
    block_mask m;
    m.g_ = g;
    m.offsets_.assign(1, 0);
    m.offsets_.reserve(static_cast<std::size_t>(g.rows() + 1));
    for (index_t b = 0; b < g.batch; ++b)
      for (index_t h = 0; h < g.heads; ++h)
        for (index_t qb = 0; qb < g.q_blocks(); ++qb) {
          const auto [i0, i1] = g.q_range(qb);
          for (index_t kb = 0; kb < g.k_blocks(); ++kb) {
            const auto [j0, j1] = g.k_range(kb);
            index_t on = 0;
            for (index_t i = i0; i < i1; ++i)
              for (index_t j = j0; j < j1; ++j) on += pred(b, h, i, j) ? 1 : 0;
            if (on == 0) continue;
            m.indices_.push_back(kb);
            m.full_.push_back(on == (i1 - i0) * (j1 - j0) ? 1 : 0);
          }
          m.offsets_.push_back(static_cast<index_t>(m.indices_.size()));
        }
    return m;
  }

  /// From an element-level boolean matrix dense [batch, heads, seq_q, seq_k] (true = attend;
  /// any strides, a broadcast axis may have stride 0): the blocks of block_q x block_k holding
  /// at least one true element, full when all are true.
  static block_mask from_dense(const view4<const bool>& dense, index_t block_q, index_t block_k) {
    constexpr const char* op = "attend::sparse::block_mask::from_dense";
    attend::detail::check_tensor(op, "dense", dense);
    const mask_geometry g{dense.extent(0), dense.extent(1), dense.extent(2),
                          dense.extent(3), block_q,         block_k};
    detail::check_geometry(op, g);
    return from_predicate(
        g, [&](index_t b, index_t h, index_t i, index_t j) { return dense(b, h, i, j); });
  }

  /// Every block of geometry g, all full: with the same causal/window parameters, attention
  /// through this mask is dense attention.
  static block_mask all_blocks(const mask_geometry& g) {
    detail::check_geometry("attend::sparse::block_mask::all_blocks", g);
    block_mask m;
    m.g_ = g;
    const index_t nk = g.k_blocks();
    m.offsets_.resize(static_cast<std::size_t>(g.rows() + 1));
    m.indices_.resize(static_cast<std::size_t>(g.rows() * nk));
    m.full_.assign(m.indices_.size(), 1);
    for (index_t r = 0; r <= g.rows(); ++r) m.offsets_[r] = r * nk;
    for (index_t r = 0; r < g.rows(); ++r)
      for (index_t kb = 0; kb < nk; ++kb) m.indices_[r * nk + kb] = kb;
    return m;
  }

  const mask_geometry& geometry() const noexcept { return g_; }
  /// Listed blocks over all rows.
  index_t nnz() const noexcept { return static_cast<index_t>(indices_.size()); }
  bool has_columns() const noexcept { return !column_offsets_.empty(); }
  index_t column_count() const noexcept { return static_cast<index_t>(columns_.size()); }

  /// Row r of the CSR arrays (r < geometry().rows()).
  mask_row row(index_t r) const noexcept {
    mask_row out;
    out.blocks = indices_.data() + offsets_[r];
    out.full = full_.data() + offsets_[r];
    out.count = offsets_[r + 1] - offsets_[r];
    if (has_columns()) {
      out.columns = columns_.data() + column_offsets_[r];
      out.column_count = column_offsets_[r + 1] - column_offsets_[r];
    }
    return out;
  }
  mask_row row(index_t b, index_t h, index_t qb) const noexcept { return row(g_.row(b, h, qb)); }

  /// The CSR arrays themselves: offsets [rows + 1], indices / full [nnz], column_offsets
  /// [rows + 1] (empty without columns), columns.
  const std::vector<index_t>& offsets() const noexcept { return offsets_; }
  const std::vector<index_t>& indices() const noexcept { return indices_; }
  const std::vector<std::uint8_t>& full() const noexcept { return full_; }
  const std::vector<index_t>& column_offsets() const noexcept { return column_offsets_; }
  const std::vector<index_t>& columns() const noexcept { return columns_; }

  /// Block-level dense form [batch, heads, q_blocks, k_blocks] row-major: 0 = not listed,
  /// 1 = partial, 2 = full (FlexAttention's to_dense, with the full/partial split kept).
  std::vector<std::uint8_t> to_dense() const {
    const index_t nk = g_.k_blocks();
    std::vector<std::uint8_t> d(static_cast<std::size_t>(g_.rows() * nk), 0);
    for (index_t r = 0; r < g_.rows(); ++r) {
      const mask_row mr = row(r);
      for (index_t e = 0; e < mr.count; ++e) d[r * nk + mr.blocks[e]] = mr.full[e] ? 2 : 1;
    }
    return d;
  }

  /// Element-level form [batch, heads, seq_q, seq_k] row-major (1 = attended) under the
  /// element semantics above, without causal/window: elements of full blocks, elements of
  /// partial blocks and columns where mod(b, h, i, j) holds (h = the owner head).
  template <class Mod>
  std::vector<std::uint8_t> to_dense_elements(const Mod& mod) const {
    std::vector<std::uint8_t> d(static_cast<std::size_t>(g_.batch * g_.heads * g_.seq_q * g_.seq_k),
                                0);
    for (index_t b = 0; b < g_.batch; ++b)
      for (index_t h = 0; h < g_.heads; ++h)
        for (index_t qb = 0; qb < g_.q_blocks(); ++qb) {
          const mask_row mr = row(b, h, qb);
          const auto [i0, i1] = g_.q_range(qb);
          for (index_t i = i0; i < i1; ++i) {
            std::uint8_t* line = d.data() + ((b * g_.heads + h) * g_.seq_q + i) * g_.seq_k;
            for (index_t e = 0; e < mr.count; ++e) {
              const auto [j0, j1] = g_.k_range(mr.blocks[e]);
              for (index_t j = j0; j < j1; ++j) line[j] = mr.full[e] || mod(b, h, i, j) ? 1 : 0;
            }
            for (index_t c = 0; c < mr.column_count; ++c)
              line[mr.columns[c]] = mod(b, h, i, mr.columns[c]) ? 1 : 0;
          }
        }
    return d;
  }
  std::vector<std::uint8_t> to_dense_elements() const {
    return to_dense_elements([](index_t, index_t, index_t, index_t) { return true; });
  }

  /// Fraction of the (query, key) elements the mask covers (listed blocks and columns, no
  /// predicate), out of seq_q * seq_k per row owner; with causal = true, both counts keep only
  /// causally visible pairs (key j <= seq_k - seq_q + i), which is the fraction of dense
  /// causal work a block-sparse call does.
  double density(bool causal = false) const {
    const index_t off = g_.seq_k - g_.seq_q;
    // Keys j in [j0, j1) visible to query i: all of them, or those <= off + i.
    auto visible = [&](index_t i, index_t j0, index_t j1) {
      if (!causal) return j1 - j0;
      return std::max<index_t>(0, std::min(j1, off + i + 1) - j0);
    };
    double covered = 0.0, total = 0.0;
    for (index_t i = 0; i < g_.seq_q; ++i) total += double(visible(i, 0, g_.seq_k));
    total *= double(g_.batch * g_.heads);
    for (index_t r = 0; r < g_.rows(); ++r) {
      const mask_row mr = row(r);
      const auto [i0, i1] = g_.q_range(r % g_.q_blocks());
      for (index_t i = i0; i < i1; ++i) {
        for (index_t e = 0; e < mr.count; ++e) {
          const auto [j0, j1] = g_.k_range(mr.blocks[e]);
          covered += double(visible(i, j0, j1));
        }
        for (index_t c = 0; c < mr.column_count; ++c)
          covered += double(visible(i, mr.columns[c], mr.columns[c] + 1));
      }
    }
    return total > 0.0 ? covered / total : 0.0;
  }

  /// Checks every invariant; throws attend::invalid_argument naming the first violation.
  void validate() const {
    constexpr const char* op = "attend::sparse::block_mask";
    detail::check_geometry(op, g_);
    const index_t rows = g_.rows(), nk = g_.k_blocks();
    ATTEND_CHECK(static_cast<index_t>(offsets_.size()) == rows + 1, op, ": offsets has ",
                 offsets_.size(), " entries, expected rows + 1 = ", rows + 1);
    ATTEND_CHECK(offsets_[0] == 0 && offsets_[rows] == nnz(), op, ": offsets must run from 0 to ",
                 "nnz = ", nnz(), " (got ", offsets_[0], " .. ", offsets_[rows], ")");
    ATTEND_CHECK(full_.size() == indices_.size(), op, ": full has ", full_.size(),
                 " entries, indices ", indices_.size());
    for (index_t r = 0; r < rows; ++r) {
      ATTEND_CHECK(offsets_[r] <= offsets_[r + 1], op, ": offsets decrease at row ", r, " (",
                   offsets_[r], " > ", offsets_[r + 1], ")");
      for (index_t e = offsets_[r]; e < offsets_[r + 1]; ++e) {
        ATTEND_CHECK(indices_[e] >= 0 && indices_[e] < nk, op, ": row ", r, " lists key block ",
                     indices_[e], ", outside [0, k_blocks = ", nk, ")");
        ATTEND_CHECK(e == offsets_[r] || indices_[e - 1] < indices_[e], op, ": row ", r,
                     " is not sorted or repeats a block (", indices_[e - 1], " then ",
                     indices_[e], ")");
        ATTEND_CHECK(full_[e] <= 1, op, ": full flag of entry ", e, " is ", int(full_[e]),
                     ", expected 0 or 1");
      }
    }
    if (!has_columns()) {
      ATTEND_CHECK(columns_.empty(), op, ": columns given without column_offsets");
      return;
    }
    ATTEND_CHECK(static_cast<index_t>(column_offsets_.size()) == rows + 1, op,
                 ": column_offsets has ", column_offsets_.size(), " entries, expected rows + 1 = ",
                 rows + 1);
    ATTEND_CHECK(column_offsets_[0] == 0 && column_offsets_[rows] == column_count(), op,
                 ": column_offsets must run from 0 to the column count ", column_count());
    for (index_t r = 0; r < rows; ++r) {
      ATTEND_CHECK(column_offsets_[r] <= column_offsets_[r + 1], op,
                   ": column_offsets decrease at row ", r);
      const mask_row mr = row(r);
      for (index_t c = 0; c < mr.column_count; ++c) {
        const index_t j = mr.columns[c];
        ATTEND_CHECK(j >= 0 && j < g_.seq_k, op, ": row ", r, " lists column ", j,
                     ", outside [0, seq_k = ", g_.seq_k, ")");
        ATTEND_CHECK(c == 0 || mr.columns[c - 1] < j, op, ": row ", r,
                     " columns are not sorted or repeat (", mr.columns[c - 1], " then ", j, ")");
        ATTEND_CHECK(!std::binary_search(mr.blocks, mr.blocks + mr.count, j / g_.block_k), op,
                     ": row ", r, " lists column ", j, " inside its listed key block ",
                     j / g_.block_k);
      }
    }
  }

 private:
  friend class block_mask_builder;
  mask_geometry g_{};
  std::vector<index_t> offsets_{0, 0};  // the default geometry has one (empty) row
  std::vector<index_t> indices_;
  std::vector<std::uint8_t> full_;
  std::vector<index_t> column_offsets_;
  std::vector<index_t> columns_;
};

/// Assembles a block_mask row by row, in any order; distinct rows may be filled from different
/// threads at the same time. Entries may come unsorted and repeated (a block listed full and
/// partial ends up full); columns that fall inside a listed block of their row are dropped. The
/// adders never throw (selectors call them inside parallel regions); build() validates.
class block_mask_builder {
 public:
  explicit block_mask_builder(const mask_geometry& g) : g_(g) {
    detail::check_geometry("attend::sparse::block_mask_builder", g);
    rows_.resize(static_cast<std::size_t>(g.rows()));
  }

  const mask_geometry& geometry() const noexcept { return g_; }

  /// Adds key block kb to row r (full or partial).
  void add(index_t r, index_t kb, bool full = true) noexcept {
    rows_[r].blocks.push_back(kb * 2 + (full ? 1 : 0));
  }
  /// Adds `count` key blocks to row r, all with the same flag.
  void add(index_t r, const index_t* blocks, index_t count, bool full = true) noexcept {
    auto& v = rows_[r].blocks;
    for (index_t e = 0; e < count; ++e) v.push_back(blocks[e] * 2 + (full ? 1 : 0));
  }
  /// Adds extra key column j to row r.
  void add_column(index_t r, index_t j) noexcept { rows_[r].columns.push_back(j); }

  /// Sorts, merges and validates every row; the builder is left empty.
  block_mask build() {
    block_mask m;
    m.g_ = g_;
    const index_t rows = g_.rows();
    m.offsets_.assign(static_cast<std::size_t>(rows + 1), 0);
    bool any_columns = false;
    for (auto& row : rows_) {
      std::sort(row.blocks.begin(), row.blocks.end());
      any_columns = any_columns || !row.columns.empty();
    }
    for (index_t r = 0; r < rows; ++r) {
      const auto& v = rows_[r].blocks;
      for (std::size_t e = 0; e < v.size(); ++e) {
        const index_t kb = v[e] >> 1;  // floor division: negative blocks stay negative
        if (!m.indices_.empty() && static_cast<index_t>(m.indices_.size()) > m.offsets_[r] &&
            m.indices_.back() == kb) {
          m.full_.back() = static_cast<std::uint8_t>(m.full_.back() | (v[e] & 1));
          continue;
        }
        m.indices_.push_back(kb);
        m.full_.push_back(static_cast<std::uint8_t>(v[e] & 1));
      }
      m.offsets_[r + 1] = static_cast<index_t>(m.indices_.size());
    }
    if (any_columns) {
      m.column_offsets_.assign(static_cast<std::size_t>(rows + 1), 0);
      for (index_t r = 0; r < rows; ++r) {
        auto& c = rows_[r].columns;
        std::sort(c.begin(), c.end());
        c.erase(std::unique(c.begin(), c.end()), c.end());
        const index_t* b0 = m.indices_.data() + m.offsets_[r];
        const index_t* b1 = m.indices_.data() + m.offsets_[r + 1];
        for (index_t j : c)
          if (j < 0 || !std::binary_search(b0, b1, j / g_.block_k)) m.columns_.push_back(j);
        m.column_offsets_[r + 1] = static_cast<index_t>(m.columns_.size());
      }
    }
    rows_.clear();
    rows_.shrink_to_fit();
    m.validate();
    return m;
  }

 private:
  struct row_lists {
    std::vector<index_t> blocks;  // kb * 2 + full
    std::vector<index_t> columns;
  };
  mask_geometry g_;
  std::vector<row_lists> rows_;
};

/// The union of two masks of the same geometry: per row, the merged block lists (a block full
/// in either is full) and the merged columns, minus columns covered by a listed block.
/// Element semantics: the union of both element sets when both are used with the same mod.
inline block_mask unite(const block_mask& a, const block_mask& b) {
  ATTEND_CHECK(a.geometry() == b.geometry(), "attend::sparse::unite: geometries differ (heads ",
               a.geometry().heads, " vs ", b.geometry().heads, ", seq_q ", a.geometry().seq_q,
               " vs ", b.geometry().seq_q, ", seq_k ", a.geometry().seq_k, " vs ",
               b.geometry().seq_k, ", blocks ", a.geometry().block_q, "x", a.geometry().block_k,
               " vs ", b.geometry().block_q, "x", b.geometry().block_k, ")");
  block_mask_builder out(a.geometry());
  for (const block_mask* m : {&a, &b})
    for (index_t r = 0; r < a.geometry().rows(); ++r) {
      const mask_row mr = m->row(r);
      for (index_t e = 0; e < mr.count; ++e) out.add(r, mr.blocks[e], mr.full[e] != 0);
      for (index_t c = 0; c < mr.column_count; ++c) out.add_column(r, mr.columns[c]);
    }
  return out.build();
}

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_BLOCK_MASK_HPP_
