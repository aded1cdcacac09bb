// Fuzz target for attend::sparse::block_sparse_attention against the double oracle: an
// attention_case (shape, layouts, options, values; see attention_case.hpp) plus a fuzzed block
// mask (geometry, list owners, kept blocks, full / partial flags, extra columns, an optional
// element predicate), built through from_predicate, from_csr, all_blocks or block_mask_builder.
// The oracle is reference::attention whose boolean mask is the case's own mask AND the element
// set of the block mask, expanded here from the fuzzer's own description of the mask (not from
// the library's CSR arrays). Invalid cases: every mutation of attention_invalid.hpp, geometries
// with a zero or negative size, geometries that do not match the shapes, malformed CSR arrays.
#include "attend/sparse/block_mask.hpp"
#include "attend/sparse/block_sparse.hpp"
#include "attention_case.hpp"
#include "attention_invalid.hpp"

namespace attend::fuzz {
namespace {

using sparse::block_mask;
using sparse::mask_geometry;

workspace& shared_workspace() {
  static workspace ws;
  return ws;
}

inline std::uint32_t mix(std::uint32_t x) {
  x ^= x >> 15;
  x *= 0x2C1B3C6Du;
  x ^= x >> 12;
  x *= 0x297A2D39u;
  x ^= x >> 15;
  return x;
}

/// An element predicate from a hash: deterministic, cheap, keeps about keep / 256 elements.
struct hash_mod {
  std::uint32_t seed = 0, keep = 128;
  bool operator()(index_t b, index_t h, index_t i, index_t j) const noexcept {
    const std::uint32_t x = seed ^ static_cast<std::uint32_t>(b) * 0x9E3779B1u ^
                            static_cast<std::uint32_t>(h) * 0x85EBCA77u ^
                            static_cast<std::uint32_t>(i) * 0xC2B2AE3Du ^
                            static_cast<std::uint32_t>(j) * 0x27D4EB2Fu;
    return (mix(x) & 255u) < keep;
  }
};

/// The fuzzer's own description of a block mask: per CSR row (b, owner, query block) the
/// entries (key block, full) it asked for, possibly unsorted and repeated (builder), and the
/// extra columns. The element set follows block_mask.hpp's semantics from this description.
struct mask_spec {
  mask_geometry g;
  std::vector<std::vector<std::pair<index_t, bool>>> entries;
  std::vector<std::vector<index_t>> columns;
  bool use_mod = false;
  hash_mod mod;
  std::string desc;
};

index_t owner_of_head(const mask_geometry& g, const attention_shape& s, index_t h) {
  if (g.heads == s.heads_q) return h;
  if (g.heads == s.heads_kv) return h / (s.heads_q / s.heads_kv);
  return 0;
}

/// Draws a geometry matching the case and one of the construction routes; returns the mask.
block_mask draw_mask(input& in, const attention_shape& s, mask_spec& ms) {
  static constexpr index_t bq_sizes[] = {1, 1, 2, 3, 4, 7, 16, 32, 64, 128, 200};
  static constexpr index_t bk_sizes[] = {1, 2, 3, 5, 8, 16, 17, 32, 64, 64, 128, 300};
  mask_geometry& g = ms.g;
  g.batch = s.batch;
  g.seq_q = s.seq_q;
  g.seq_k = s.seq_k;
  const index_t owners[] = {s.heads_q, s.heads_kv, 1};
  g.heads = in.pick(owners);
  g.block_q = in.chance(15) ? s.seq_q : in.pick(bq_sizes);
  g.block_k = in.chance(10) ? s.seq_k : in.pick(bk_sizes);
  const index_t rows = g.rows(), nk = g.k_blocks();
  ms.entries.assign(static_cast<std::size_t>(rows), {});
  ms.columns.assign(static_cast<std::size_t>(rows), {});
  ms.use_mod = in.chance(35);
  ms.mod.seed = in.u32();
  static constexpr std::uint32_t keeps[] = {0, 40, 128, 220, 256};
  ms.mod.keep = in.pick(keeps);
  std::mt19937 rng(in.u32());
  static constexpr int densities[] = {0, 10, 30, 60, 90, 100};
  const int density = in.pick(densities);
  auto coin = [&](int percent) { return static_cast<int>(rng() % 100) < percent; };
  std::ostringstream d;
  d << "mask{heads " << g.heads << " blocks " << g.block_q << "x" << g.block_k << " density "
    << density << (ms.use_mod ? " mod" : "") << " ";
  block_mask m;
  switch (in.range(0, 3)) {
    case 0: {  // from_predicate: per block none / all / a hashed element pattern
      d << "predicate";
      const std::uint32_t seed = static_cast<std::uint32_t>(rng());
      const hash_mod elem{static_cast<std::uint32_t>(rng()), 128};
      auto pred = [&](index_t b, index_t h, index_t i, index_t j) {
        const std::uint32_t kind = mix(
            seed ^ static_cast<std::uint32_t>(g.row(b, h, i / g.block_q) * 7919 + j / g.block_k));
        if (static_cast<int>(kind % 100) >= density) return false;
        return (kind >> 8) % 2 == 0 || elem(b, h, i, j);
      };
      m = block_mask::from_predicate(g, pred);
      for (index_t b = 0; b < g.batch; ++b)
        for (index_t h = 0; h < g.heads; ++h)
          for (index_t qb = 0; qb < g.q_blocks(); ++qb)
            for (index_t kb = 0; kb < nk; ++kb) {
              const auto [i0, i1] = g.q_range(qb);
              const auto [j0, j1] = g.k_range(kb);
              index_t on = 0;
              for (index_t i = i0; i < i1; ++i)
                for (index_t j = j0; j < j1; ++j) on += pred(b, h, i, j) ? 1 : 0;
              if (on > 0) ms.entries[g.row(b, h, qb)].push_back({kb, on == (i1 - i0) * (j1 - j0)});
            }
      break;
    }
    case 1: {  // from_csr: sorted kept blocks, random flags, optional columns
      d << "csr";
      const bool flags = in.flag(), with_columns = in.chance(40);
      std::vector<index_t> offsets{0}, indices, col_offsets{0}, columns;
      std::vector<std::uint8_t> full;
      for (index_t r = 0; r < rows; ++r) {
        for (index_t kb = 0; kb < nk; ++kb)
          if (coin(density)) {
            const bool f = !flags || coin(50);
            indices.push_back(kb);
            full.push_back(f ? 1 : 0);
            ms.entries[r].push_back({kb, f});
          }
        offsets.push_back(static_cast<index_t>(indices.size()));
        if (with_columns) {
          const index_t tries = static_cast<index_t>(rng() % 4);
          std::vector<index_t> cs;
          for (index_t t = 0; t < tries; ++t) {
            const index_t j = static_cast<index_t>(rng() % static_cast<std::uint32_t>(g.seq_k));
            bool inside = false;
            for (const auto& e : ms.entries[r]) inside = inside || e.first == j / g.block_k;
            if (!inside) cs.push_back(j);
          }
          std::sort(cs.begin(), cs.end());
          cs.erase(std::unique(cs.begin(), cs.end()), cs.end());
          columns.insert(columns.end(), cs.begin(), cs.end());
          ms.columns[r] = cs;
          col_offsets.push_back(static_cast<index_t>(columns.size()));
        }
      }
      if (with_columns) d << "+columns";
      m = block_mask::from_csr(g, offsets, indices, flags ? full : std::vector<std::uint8_t>{},
                               with_columns ? col_offsets : std::vector<index_t>{}, columns);
      break;
    }
    case 2: {
      d << "all_blocks";
      m = block_mask::all_blocks(g);
      for (index_t r = 0; r < rows; ++r)
        for (index_t kb = 0; kb < nk; ++kb) ms.entries[r].push_back({kb, true});
      break;
    }
    default: {  // builder: entries in any order, repeated, mixed flags, columns anywhere
      d << "builder";
      sparse::block_mask_builder bld(g);
      for (index_t r = 0; r < rows; ++r) {
        const index_t n = static_cast<index_t>(rng() % static_cast<std::uint32_t>(2 * nk + 1));
        for (index_t e = 0; e < n; ++e) {
          if (!coin(density)) continue;
          const index_t kb = static_cast<index_t>(rng() % static_cast<std::uint32_t>(nk));
          const bool f = coin(50);
          bld.add(r, kb, f);
          ms.entries[r].push_back({kb, f});
        }
        const index_t nc = static_cast<index_t>(rng() % 3);
        for (index_t c = 0; c < nc; ++c) {
          const index_t j = static_cast<index_t>(rng() % static_cast<std::uint32_t>(g.seq_k));
          bld.add_column(r, j);
          ms.columns[r].push_back(j);
        }
      }
      m = bld.build();
      break;
    }
  }
  d << "} ";
  ms.desc = d.str();
  return m;
}

/// The element set of the spec for query head h, query i, over every key: a listed block with
/// (full or mod), or a listed column with mod.
void spec_row(const mask_spec& ms, const attention_shape& s, index_t b, index_t h, index_t i,
              std::vector<char>& line) {
  const mask_geometry& g = ms.g;
  const index_t r = g.row(b, owner_of_head(g, s, h), i / g.block_q);
  auto mod = [&](index_t j) { return !ms.use_mod || ms.mod(b, h, i, j); };
  std::fill(line.begin(), line.end(), 0);
  for (const auto& e : ms.entries[r]) {
    const auto [j0, j1] = g.k_range(e.first);
    for (index_t j = j0; j < j1; ++j) line[j] = line[j] || e.second || mod(j);
  }
  for (index_t j : ms.columns[r]) line[j] = line[j] || mod(j);
}

template <class KV>
void run_valid(input& in, mode m) {
  attention_case<KV> c = attention_case<KV>::make(in, m);
  mask_spec ms;
  const block_mask mask = draw_mask(in, c.s, ms);
  c.desc += ms.desc;
  if (in.flag()) c.p.scratch = &shared_workspace();
  if (verbose()) std::fprintf(stderr, "%s %s\n", dtype_name<KV>(), c.desc.c_str());

  const std::vector<float> o_before = c.o.storage, lse_before = c.lse.storage;
  if (ms.use_mod)
    sparse::block_sparse_attention(c.qv, c.kv, c.vv, c.o.view, mask, c.p, ms.mod);
  else
    sparse::block_sparse_attention(c.qv, c.kv, c.vv, c.o.view, mask, c.p);
  check_only_view_written(c.o, o_before, "o", c.desc);
  if (c.want_lse) check_only_view_written(c.lse, lse_before, "lse", c.desc);

  // The oracle's mask: the case's own mask AND the block mask's elements.
  const attention_shape& s = c.s;
  auto both = buffer<bool, 4>::contiguous({s.batch, s.heads_q, s.seq_q, s.seq_k});
  std::vector<char> line(static_cast<std::size_t>(s.seq_k));
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads_q; ++h)
      for (index_t i = 0; i < s.seq_q; ++i) {
        spec_row(ms, s, b, h, i, line);
        for (index_t j = 0; j < s.seq_k; ++j) {
          bool keep = line[j] != 0;
          if (keep && c.p.mask.has_value())
            keep = c.p.mask(c.p.mask.extent(0) == 1 ? 0 : b, c.p.mask.extent(1) == 1 ? 0 : h, i, j);
          both.view(b, h, i, j) = keep;
        }
      }
  c.p.mask = both.view;  // visible(), row facts and the oracle now use the combined mask
  c.run_oracle();
  c.check_outputs();
}

/// A CSR description that from_csr must reject, with the words its message must contain.
void expect_bad_csr(input& in, const attention_shape& s, const std::vector<watched_bytes>& w) {
  mask_geometry g{s.batch, 1, s.seq_q, s.seq_k, in.range(1, 8), in.range(1, 8)};
  const index_t rows = g.rows(), nk = g.k_blocks();
  std::vector<index_t> offsets(static_cast<std::size_t>(rows + 1), 0), indices;
  std::vector<index_t> col_offsets, columns;
  std::vector<std::uint8_t> full;
  const index_t r = in.range(0, rows - 1);
  std::string what, needle;
  auto one_row = [&](std::vector<index_t> list) {
    indices = list;
    for (index_t x = r + 1; x <= rows; ++x) offsets[x] = static_cast<index_t>(list.size());
  };
  switch (in.range(0, 6)) {
    case 0:
      what = "block outside [0, k_blocks)";
      needle = "outside [0, k_blocks";
      one_row({in.flag() ? nk + in.range(0, 5) : -in.range(1, 5)});
      break;
    case 1:
      if (nk < 2) {
        what = "repeated block";
        needle = "is not sorted or repeats";
        one_row({0, 0});
        break;
      }
      what = "unsorted blocks";
      needle = "is not sorted or repeats";
      one_row({nk - 1, in.range(0, nk - 1)});
      break;
    case 2:
      what = "offsets of the wrong size";
      needle = "offsets has";
      offsets.resize(static_cast<std::size_t>(rows + (in.flag() ? 2 : 0)), 0);
      break;
    case 3:
      what = "offsets not ending at nnz";
      needle = "offsets must run from 0";
      indices = {0};
      break;
    case 4:
      what = "full flag above 1";
      needle = "full flag";
      one_row({0});
      full = {static_cast<std::uint8_t>(in.range(2, 255))};
      break;
    case 5:
      what = "column inside a listed block";
      needle = "inside its listed key block";
      one_row({0});
      col_offsets.assign(static_cast<std::size_t>(rows + 1), 0);
      for (index_t x = r + 1; x <= rows; ++x) col_offsets[x] = 1;
      columns = {in.range(0, std::min(g.block_k, g.seq_k) - 1)};
      break;
    default:
      what = "column outside [0, seq_k)";
      needle = "outside [0, seq_k";
      col_offsets.assign(static_cast<std::size_t>(rows + 1), 0);
      for (index_t x = r + 1; x <= rows; ++x) col_offsets[x] = 1;
      columns = {in.flag() ? s.seq_k + in.range(0, 5) : -in.range(1, 5)};
      break;
  }
  expect_rejected(
      ("from_csr: " + what).c_str(),
      [&] { (void)block_mask::from_csr(g, offsets, indices, full, col_offsets, columns); }, needle,
      w);
}

template <class KV>
void run_invalid(input& in) {
  const attention_case<KV> c = attention_case<KV>::make(in, mode::invalid);
  const attention_shape& s = c.s;
  std::vector<watched_bytes> watched{watch(c.o)};
  if (c.want_lse) watched.push_back(watch(c.lse));
  const mask_geometry good{s.batch, 1, s.seq_q, s.seq_k, in.range(1, 9), in.range(1, 9)};
  switch (in.range(0, 3)) {
    case 0: {  // one attention argument made invalid, with a valid mask
      invalid_call<KV> x = make_invalid(in, c);
      const block_mask mask = block_mask::all_blocks(good);
      if (verbose()) std::fprintf(stderr, "invalid: %s | %s\n", x.what.c_str(), c.desc.c_str());
      expect_rejected(
          x.what.c_str(), [&] { sparse::block_sparse_attention(x.q, x.k, x.v, x.o, mask, x.p); },
          x.needle, x.watched);
      break;
    }
    case 1: {  // a geometry with a size <= 0 (block size 0 above all)
      mask_geometry g = good;
      index_t* fields[] = {&g.block_q, &g.block_k, &g.batch, &g.heads, &g.seq_q, &g.seq_k};
      *fields[in.range(0, in.flag() ? 1 : 5)] = in.flag() ? 0 : -in.range(1, 4);
      const char* needle = "mask geometry must be positive";
      switch (in.range(0, 4)) {
        case 0:
          expect_rejected(
              "all_blocks", [&] { (void)block_mask::all_blocks(g); }, needle, watched);
          break;
        case 1:
          expect_rejected(
              "block_mask(g)", [&] { block_mask m(g); }, needle, watched);
          break;
        case 2:
          expect_rejected(
              "from_csr",
              [&] {
                (void)block_mask::from_csr(g, {0, 0}, {});
              },
              needle, watched);
          break;
        case 3:
          expect_rejected(
              "builder", [&] { sparse::block_mask_builder b(g); }, needle, watched);
          break;
        default:
          expect_rejected(
              "from_predicate",
              [&] {
                (void)block_mask::from_predicate(
                    g, [](index_t, index_t, index_t, index_t) { return true; });
              },
              needle, watched);
          break;
      }
      break;
    }
    case 2: {  // a valid mask whose geometry does not match the call
      mask_geometry g = good;
      std::string what, needle;
      switch (in.range(0, 3)) {
        case 0:
          g.batch = s.batch + in.range(1, 2);
          if (s.batch > 1 && in.flag()) g.batch = s.batch - 1;
          what = "mask batch", needle = "mask batch";
          break;
        case 1:
          g.seq_q = s.seq_q + in.range(1, 3);
          if (s.seq_q > 1 && in.flag()) g.seq_q = s.seq_q - 1;
          what = "mask seq_q", needle = "mask seq_q";
          break;
        case 2:
          g.seq_k = s.seq_k + in.range(1, 3);
          if (s.seq_k > 1 && in.flag()) g.seq_k = s.seq_k - 1;
          what = "mask seq_k", needle = "mask seq_k";
          break;
        default:
          g.heads = s.heads_q + in.range(1, 3);  // neither heads_q, heads_kv nor 1
          what = "mask heads", needle = "mask heads";
          break;
      }
      const block_mask mask = block_mask::all_blocks(g);
      attention_params p = c.p;
      expect_rejected(
          what.c_str(),
          [&] { sparse::block_sparse_attention(c.qv, c.kv, c.vv, c.o.view, mask, p); }, needle,
          watched);
      break;
    }
    default:
      expect_bad_csr(in, s, watched);
      break;
  }
}

}  // namespace
}  // namespace attend::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace attend::fuzz;
  return run_target(data, size, [](auto tag, input& in, mode m) {
    using KV = typename decltype(tag)::type;
    m == mode::invalid ? run_invalid<KV>(in) : run_valid<KV>(in, m);
  });
}
