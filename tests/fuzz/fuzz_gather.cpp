// Fuzz target for attend::sparse::gather_attention (token-level sparse attention over sorted key
// lists plus implicit sinks and a recent window) against the double oracle: the shape, layouts
// and values of an attention_case, fuzzed lists (owner per query head / KV head / layer, query
// tiles, capacity, counts, density, a padded strided view or a token_list_buffer), and
// gather_params (causal, sinks, window, kv_lens, scale, lse). The oracle is reference::attention
// with a boolean mask expanded here from the definition in gather.hpp: list ∪ [0, sinks) ∪
// [first - window + 1, last] of the query's tile, with causal and kv_lens applied by the oracle.
// Invalid cases: unsorted, repeated or out-of-range entries, counts outside [0, capacity], list
// extents, negative sinks / window, bad kv_lens or scale, null q / o; nothing may be written.
#include "attend/sparse/gather.hpp"
#include "attend/sparse/token_lists.hpp"
#include "attention_case.hpp"

namespace attend::fuzz {
namespace {

using sparse::list_owner;

workspace& shared_workspace() {
  static workspace ws;
  return ws;
}

/// A cell of unused list capacity: a kernel that reads it addresses far outside the cache.
constexpr index_t kListPoison = index_t{1} << 40;

/// Owning [batch, owners, tiles, capacity] key indices, `pad` unused cells after each list and
/// `offset` before the first, every unaddressed cell kListPoison (buffer<> holds floats only).
struct index_buffer {
  std::vector<index_t> storage;
  view4<index_t> view;

  static index_buffer make(const std::array<index_t, 4>& e, index_t pad = 0, index_t offset = 0) {
    index_buffer b;
    const index_t row = e[3] + pad;
    b.storage.assign(static_cast<std::size_t>(offset + e[0] * e[1] * e[2] * row), kListPoison);
    b.view = view4<index_t>(b.storage.data() + offset, e, {e[1] * e[2] * row, e[2] * row, row, 1});
    return b;
  }
};

/// Owning lists [batch, owners, tiles, capacity] in a possibly padded layout, plus counts.
struct list_case {
  list_owner owner = list_owner::kv_head;
  index_t query_block = 1, owners = 1, tiles = 1, capacity = 1;
  bool with_counts = true;
  index_buffer idx;
  std::vector<index_t> counts;
  sparse::token_lists view;
  std::string desc;

  index_t& count(index_t b, index_t o, index_t t) {
    return counts[static_cast<std::size_t>((b * owners + o) * tiles + t)];
  }
  index_t count(index_t b, index_t o, index_t t) const {
    return with_counts ? counts[static_cast<std::size_t>((b * owners + o) * tiles + t)] : capacity;
  }
  index_t* list(index_t b, index_t o, index_t t) { return &idx.view(b, o, t, 0); }
  const index_t* list(index_t b, index_t o, index_t t) const { return &idx.view(b, o, t, 0); }

  void make_view(index_t batch) {
    view.indices = idx.view;
    view.counts = with_counts
                      ? view3<const index_t>::contiguous(counts.data(), {batch, owners, tiles})
                      : view3<const index_t>{};
    view.owner = owner;
    view.query_block = query_block;
  }
};

index_t owner_index(list_owner owner, index_t h, index_t group) {
  return owner == list_owner::q_head ? h : owner == list_owner::kv_head ? h / group : 0;
}

/// Fills every list of `lc` (already shaped) with sorted distinct keys of [0, len(b)).
template <class Len>
void fill_lists(input& in, list_case& lc, index_t batch, const Len& len) {
  std::mt19937 rng(in.u32());
  static constexpr int densities[] = {0, 5, 25, 50, 90, 100};
  const int density = in.pick(densities);
  lc.desc += "density " + std::to_string(density) + " ";
  for (index_t b = 0; b < batch; ++b)
    for (index_t o = 0; o < lc.owners; ++o)
      for (index_t t = 0; t < lc.tiles; ++t) {
        const index_t n_max = std::min(lc.capacity, len(b));
        index_t n =
            lc.with_counts
                ? static_cast<index_t>((rng() % 101u) * static_cast<std::uint32_t>(density)) *
                      n_max / 10000
                : lc.capacity;
        if (lc.with_counts && n < n_max && rng() % 8 == 0) n = n_max;
        index_t* l = lc.list(b, o, t);
        // Selection sampling: n distinct keys of [0, len) in ascending order.
        index_t chosen = 0;
        for (index_t j = 0; j < len(b) && chosen < n; ++j)
          if (static_cast<index_t>(rng() % static_cast<std::uint32_t>(len(b) - j)) < n - chosen)
            l[chosen++] = j;
        if (lc.with_counts) lc.count(b, o, t) = n;
      }
}

/// Shapes the lists: owner, query tile, capacity, layout.
list_case draw_lists(input& in, const attention_shape& s, index_t min_len) {
  list_case lc;
  static constexpr list_owner owners[] = {list_owner::q_head, list_owner::kv_head,
                                          list_owner::layer};
  lc.owner = in.pick(owners);
  static constexpr index_t blocks[] = {1, 1, 2, 3, 4, 8, 16, 64};
  lc.query_block = in.chance(15) ? s.seq_q + in.range(0, 3) : in.pick(blocks);
  lc.owners = lc.owner == list_owner::q_head    ? s.heads_q
              : lc.owner == list_owner::kv_head ? s.heads_kv
                                                : 1;
  lc.tiles = (s.seq_q + lc.query_block - 1) / lc.query_block;
  // Without counts every list holds `capacity` keys, so capacity <= every kv length.
  lc.with_counts = min_len == 0 || in.chance(80);
  lc.capacity = lc.with_counts ? in.range(1, s.seq_k + 2) : in.range(1, min_len);
  const std::array<index_t, 4> e{s.batch, lc.owners, lc.tiles, lc.capacity};
  if (in.chance(30)) {
    lc.idx = index_buffer::make(e, in.range(1, 3), in.range(0, 2));
    lc.desc += "padded-lists ";
  } else {
    lc.idx = index_buffer::make(e);
  }
  lc.counts.assign(static_cast<std::size_t>(s.batch * lc.owners * lc.tiles), 0);
  static const char* names[] = {"q_head", "kv_head", "layer"};
  lc.desc += std::string("lists{") + names[static_cast<int>(lc.owner)] + " qb " +
             std::to_string(lc.query_block) + " cap " + std::to_string(lc.capacity) +
             (lc.with_counts ? "" : " no-counts") + "} ";
  return lc;
}

/// The attention_case parts gather_attention has: shape, operands, lse, kv_lens, scale, causal.
template <class KV>
void draw_case(input& in, mode m, attention_case<KV>& c, sparse::gather_params& gp) {
  c.m = m;
  c.s = attention_case<KV>::draw_shape(in);
  c.desc = to_string(c.s) + " | ";
  c.draw_operands(in);  // sets c.p.lse when the case wants one
  gp.lse = c.p.lse;
  gp.causal = in.chance(60);
  c.p.causal = gp.causal;
  if (in.chance(30)) gp.sinks = in.range(0, std::min<index_t>(c.s.seq_k, 70));
  if (in.chance(35)) gp.window = in.range(0, c.s.seq_k + 2);
  if (in.chance(30)) {
    for (index_t b = 0; b < c.s.batch; ++b) {
      const index_t r = in.range(0, 3);
      c.lens.push_back(r == 0 ? 0 : r == 1 ? in.range(0, c.s.seq_k) : c.s.seq_k);
    }
    c.p.kv_lens = make_view<const index_t>(c.lens.data(), c.s.batch);
    gp.kv_lens = c.p.kv_lens;
  }
  if (in.chance(40)) {
    c.p.scale = in.uniform(-1.5f, 1.5f) / std::sqrt(static_cast<float>(c.s.dk));
    if (m == mode::extreme && in.chance(30)) {
      static constexpr special scales[] = {special::huge,     special::neg_huge, special::flt_max,
                                           special::denormal, special::zero,     special::flt_min};
      c.p.scale = special_value(in.pick(scales));
    }
    gp.scale = c.p.scale;
  }
  if (in.flag()) gp.scratch = &shared_workspace();
  std::ostringstream d;
  d << (gp.causal ? "causal " : "") << "sinks " << gp.sinks << " window " << gp.window << " ";
  for (index_t l : c.lens) d << "len " << l << " ";
  if (gp.scale) d << "scale " << *gp.scale << " ";
  c.desc += d.str();
  c.draw_values(in);  // poisons the keys past kv_lens in agreement mode
}

template <class KV>
index_t min_length(const attention_case<KV>& c) {
  index_t m = c.s.seq_k;
  for (index_t b = 0; b < c.s.batch; ++b) m = std::min(m, c.kv_len(b));
  return m;
}

template <class KV>
void run_valid(input& in, mode m) {
  attention_case<KV> c;
  sparse::gather_params gp;
  draw_case(in, m, c, gp);
  const attention_shape& s = c.s;
  list_case lc = draw_lists(in, s, min_length(c));
  fill_lists(in, lc, s.batch, [&](index_t b) { return c.kv_len(b); });
  lc.make_view(s.batch);
  c.desc += lc.desc;
  if (verbose()) std::fprintf(stderr, "%s %s\n", dtype_name<KV>(), c.desc.c_str());

  const std::vector<float> o_before = c.o.storage, lse_before = c.lse.storage;
  sparse::gather_attention(c.qv, c.kv, c.vv, c.o.view, lc.view, gp);
  check_only_view_written(c.o, o_before, "o", c.desc);
  if (c.want_lse) check_only_view_written(c.lse, lse_before, "lse", c.desc);

  // The oracle's mask: list ∪ sinks ∪ the tile's window (causal and kv_lens: the oracle's own).
  auto mask = buffer<bool, 4>::contiguous({s.batch, s.heads_q, s.seq_q, s.seq_k});
  std::fill(mask.base(), mask.base() + mask.storage.size(), false);
  const index_t group = s.heads_q / s.heads_kv;
  for (index_t b = 0; b < s.batch; ++b) {
    const index_t len = c.kv_len(b);
    for (index_t h = 0; h < s.heads_q; ++h)
      for (index_t i = 0; i < s.seq_q; ++i) {
        const index_t o = owner_index(lc.owner, h, group), t = i / lc.query_block;
        const index_t* l = lc.list(b, o, t);
        for (index_t e = 0; e < lc.count(b, o, t); ++e) mask.view(b, h, i, l[e]) = true;
        for (index_t j = 0; j < std::min(gp.sinks, len); ++j) mask.view(b, h, i, j) = true;
        if (gp.window > 0) {
          const index_t first = len - s.seq_q + t * lc.query_block;
          const index_t last = len - s.seq_q + std::min(s.seq_q, (t + 1) * lc.query_block) - 1;
          for (index_t j = std::max<index_t>(0, first - gp.window + 1); j <= last && j < len; ++j)
            mask.view(b, h, i, j) = true;
        }
      }
  }
  c.p.mask = mask.view;
  c.run_oracle();
  c.check_outputs();
}

template <class KV>
void run_invalid(input& in) {
  attention_case<KV> c;
  sparse::gather_params gp;
  draw_case(in, mode::agreement, c, gp);
  const attention_shape& s = c.s;
  list_case lc = draw_lists(in, s, min_length(c));
  fill_lists(in, lc, s.batch, [&](index_t b) { return c.kv_len(b); });
  lc.make_view(s.batch);
  std::vector<watched_bytes> watched{watch(c.o)};
  if (c.want_lse) watched.push_back(watch(c.lse));
  view4<const float> q = c.qv;
  view4<float> o = c.o.view;
  std::vector<index_t> lens2;
  index_buffer idx2;
  std::string what, needle;

  // One list (b, w, t) rewritten; counts exist whenever the lists can be shorter than capacity.
  const index_t b = in.range(0, s.batch - 1), w = in.range(0, lc.owners - 1);
  const index_t t = in.range(0, lc.tiles - 1), len = c.kv_len(b);
  auto set_list = [&](std::initializer_list<index_t> keys) {
    std::copy(keys.begin(), keys.end(), lc.list(b, w, t));
    if (lc.with_counts) lc.count(b, w, t) = static_cast<index_t>(keys.size());
  };
  auto out_of_range = [&] {
    what = "list entry out of range";
    needle = "is outside [0, kv_len";
    const index_t bad = in.flag() ? len + in.range(0, 1 << 20) : -in.range(1, 1 << 20);
    const index_t n = lc.count(b, w, t);
    if (n == 0 || !lc.with_counts) {
      if (lc.with_counts) lc.count(b, w, t) = 1;
      lc.list(b, w, t)[0] = bad;
    } else {
      lc.list(b, w, t)[in.range(0, n - 1)] = bad;
    }
  };
  switch (in.range(0, 10)) {
    case 0:
      out_of_range();
      break;
    case 1:
      if (len < 2 || lc.capacity < 2 || (!lc.with_counts && lc.capacity != 2)) {
        out_of_range();
        break;
      }
      what = "unsorted list";
      needle = "is not sorted";
      set_list({1, 0});
      break;
    case 2:
      if (len < 1 || lc.capacity < 2 || (!lc.with_counts && lc.capacity != 2)) {
        out_of_range();
        break;
      }
      what = "repeated key";
      needle = "repeats key";
      set_list({0, 0});
      break;
    case 3:
      if (!lc.with_counts) {
        out_of_range();
        break;
      }
      what = "count outside [0, capacity]";
      needle = "has count";
      lc.count(b, w, t) = in.flag() ? lc.capacity + in.range(1, 1000) : -in.range(1, 1000);
      break;
    case 4:
      what = "query_block 0";
      needle = "query_block";
      lc.view.query_block = in.flag() ? 0 : -in.range(1, 5);
      break;
    case 5: {  // lists shaped for another owner kind or tile size
      what = "lists extents";
      needle = "lists.indices has extents";
      idx2 = in.flag()
                 ? index_buffer::make({s.batch, lc.owners + in.range(1, 2), lc.tiles, lc.capacity})
                 : index_buffer::make({s.batch, lc.owners, lc.tiles + 1, lc.capacity});
      std::fill(idx2.storage.begin(), idx2.storage.end(), 0);
      lc.view.indices = idx2.view;
      lc.with_counts = false;
      lc.view.counts = {};
      break;
    }
    case 6:
      what = "negative sinks or window";
      needle = "must be >= 0";
      (in.flag() ? gp.sinks : gp.window) = -in.range(1, 100);
      break;
    case 7:
      what = "kv_lens out of range";
      needle = "kv_lens[";
      lens2.assign(static_cast<std::size_t>(s.batch), s.seq_k);
      lens2[b] = in.flag() ? s.seq_k + in.range(1, 100) : -in.range(1, 100);
      gp.kv_lens = make_view<const index_t>(lens2.data(), s.batch);
      break;
    case 8: {
      what = "non-finite scale";
      needle = "scale must be finite";
      static constexpr special bad[] = {special::nan, special::pos_inf, special::neg_inf};
      gp.scale = special_value(in.pick(bad));
      break;
    }
    case 9:
      what = "null q";
      needle = "q is null";
      q = view4<const float>(nullptr, q.extents(), q.strides());
      break;
    default:
      what = "null o";
      needle = "o is null";
      o = view4<float>(nullptr, o.extents(), o.strides());
      break;
  }
  if (verbose()) std::fprintf(stderr, "invalid: %s | %s\n", what.c_str(), c.desc.c_str());
  expect_rejected(
      what.c_str(), [&] { sparse::gather_attention(q, c.kv, c.vv, o, lc.view, gp); }, needle,
      watched);
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
