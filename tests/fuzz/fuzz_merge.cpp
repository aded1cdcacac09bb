// Fuzz target for attend::merge_states: random layouts, in-place and out-of-place use, LSEs that
// are moderate, -inf (empty states), +inf, huge or NaN; and invalid calls (mismatched extents,
// partial overlaps, broadcasting outputs) that must be rejected without writing anything.
//
// Properties checked, per row:
//   both LSEs finite and moderate   o and lse match a double re-implementation (tolerances of
//                                   tests/common/tensors.hpp)
//   both -inf                       o = 0, lse = -inf
//   one -inf (its o is 0, as every  the other state is returned (o equal, lse bitwise)
//   operator produces)
//   a NaN LSE                       lse and every o element NaN
// and for every call: in-place equals out-of-place bitwise, nothing outside the views written.
#include <cmath>

#include "attend/dense/merge.hpp"
#include "attention_case.hpp"

namespace attend::fuzz {
namespace {

struct merge_case {
  index_t batch = 1, seq = 1, heads = 1, dv = 1;
  buffer<float, 4> oa, ob, o;
  buffer<float, 3> la, lb, l;
  std::string desc;

  std::array<index_t, 4> oe() const { return {batch, seq, heads, dv}; }
  std::array<index_t, 3> le() const { return {batch, heads, seq}; }

  static merge_case make(input& in, bool extreme) {
    merge_case c;
    c.batch = in.range(1, 3);
    c.seq = in.range(1, 12);
    c.heads = in.range(1, 5);
    c.dv = in.chance(50) ? in.range(1, 20) : in.range(1, 140);
    c.desc = "B" + std::to_string(c.batch) + " L" + std::to_string(c.seq) + " H" +
             std::to_string(c.heads) + " Dv" + std::to_string(c.dv) + " ";
    c.oa = make_layout4<float>(in, c.oe(), true, c.desc);
    c.ob = make_layout4<float>(in, c.oe(), true, c.desc);
    c.o = make_layout4<float>(in, c.oe(), false, c.desc);
    c.la = make_layout_small<float, 3>(in, c.le());
    c.lb = make_layout_small<float, 3>(in, c.le());
    c.l = make_layout_small<float, 3>(in, c.le());
    std::mt19937 rng(in.u32());
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f), logit(-30.0f, 30.0f);
    fill(c.oa.view, [&] { return unit(rng); });
    fill(c.ob.view, [&] { return unit(rng); });
    // LSE kinds: mostly moderate, some -inf (an empty state, whose o row is then 0).
    static constexpr special lse_specials[] = {
        special::neg_inf, special::neg_inf,  special::pos_inf, special::nan,
        special::huge,    special::neg_huge, special::denormal};
    const int empty_percent = static_cast<int>(in.range(0, 40));
    auto lse_gen = [&](const buffer<float, 3>& lb3, const buffer<float, 4>& ob4) {
      for_each_index(lb3.view, [&](const std::array<index_t, 3>& i, index_t off) {
        float x = logit(rng);
        if (static_cast<int>(rng() % 100) < empty_percent) x = -INFINITY;
        if (extreme && rng() % 4 == 0)
          x = special_value(lse_specials[rng() % std::size(lse_specials)]);
        lb3.view.data()[off] = x;
        if (x == -INFINITY && (!extreme || rng() % 2 == 0))
          for (index_t d = 0; d < ob4.view.extent(3); ++d) ob4.view(i[0], i[2], i[1], d) = 0.0f;
      });
    };
    lse_gen(c.la, c.oa);
    lse_gen(c.lb, c.ob);
    if (extreme) {
      const index_t injections = in.range(0, 4);
      for (index_t n = 0; n < injections; ++n) {
        const auto& t = in.flag() ? c.oa : c.ob;
        t.view.data()[offset_of_flat(t.view, in.range(0, t.view.size() - 1))] =
            special_value(in.pick(kAllSpecials));
      }
    }
    return c;
  }
};

/// Row checks of the merged (o, l) against the inputs.
void check_rows(const merge_case& c, const view4<const float>& oa, const view3<const float>& la,
                const view4<const float>& ob, const view3<const float>& lb) {
  for (index_t b = 0; b < c.batch; ++b)
    for (index_t h = 0; h < c.heads; ++h)
      for (index_t i = 0; i < c.seq; ++i) {
        const float a = la(b, h, i), e = lb(b, h, i), got = c.l.view(b, h, i);
        auto row_zero = [&](const view4<const float>& x) {
          for (index_t d = 0; d < c.dv; ++d)
            if (x(b, i, h, d) != 0.0f) return false;
          return true;
        };
        if (std::isnan(a) || std::isnan(e)) {
          FUZZ_CHECK(std::isnan(got), "NaN LSE in: lse = ", got, " | ", c.desc);
          for (index_t d = 0; d < c.dv; ++d)
            FUZZ_CHECK(std::isnan(c.o.view(b, i, h, d)), "NaN LSE in: o[", d,
                       "] = ", c.o.view(b, i, h, d), " | ", c.desc);
        } else if (a == -INFINITY && e == -INFINITY) {
          FUZZ_CHECK(got == -INFINITY, "two empty states: lse = ", got, " | ", c.desc);
          // Policy (merge.hpp): o = 0 for two empty states whose o rows are finite, as every
          // operator writes them; a non-finite o of an empty state propagates (0 * NaN).
          bool finite = true;
          for (index_t d = 0; d < c.dv; ++d)
            finite = finite && std::isfinite(oa(b, i, h, d)) && std::isfinite(ob(b, i, h, d));
          if (!finite) continue;
          for (index_t d = 0; d < c.dv; ++d)
            FUZZ_CHECK(c.o.view(b, i, h, d) == 0.0f, "two empty states: o = ", c.o.view(b, i, h, d),
                       " | ", c.desc);
        } else if ((a == -INFINITY && e == INFINITY) || (a == INFINITY && e == -INFINITY)) {
          // Policy (merge.hpp): a +inf LSE makes the row NaN, as a +inf score does in attention;
          // checked with the NaN rows above, not as "merge with an empty state".
        } else if ((a == -INFINITY && row_zero(oa)) || (e == -INFINITY && row_zero(ob))) {
          const bool a_empty = a == -INFINITY;
          const auto& keep = a_empty ? ob : oa;
          const float keep_l = a_empty ? e : a;
          FUZZ_CHECK(same_bits(got, keep_l), "merge with an empty state: lse ", got, " != ", keep_l,
                     " | ", c.desc);
          for (index_t d = 0; d < c.dv; ++d) {
            const float x = c.o.view(b, i, h, d), y = keep(b, i, h, d);
            FUZZ_CHECK(x == y || (std::isnan(x) && std::isnan(y)),
                       "merge with an empty state: o = ", x, ", kept state ", y, " | ", c.desc);
          }
        } else if (clean(a, 50.0f) && clean(e, 50.0f)) {
          const double m = std::max<double>(a, e);
          const double wa = std::exp(a - m), wb = std::exp(e - m);
          const double ref_l = m + std::log(wa + wb);
          using tol = attend::testing::tolerance<float>;
          FUZZ_CHECK(close(got, ref_l, tol::atol, tol::rtol), "lse ", got, " vs ", ref_l, " | ",
                     c.desc);
          for (index_t d = 0; d < c.dv; ++d) {
            const double pa = oa(b, i, h, d), pb = ob(b, i, h, d);
            if (!clean(static_cast<float>(pa)) || !clean(static_cast<float>(pb))) continue;
            const double ref = (wa * pa + wb * pb) / (wa + wb);
            FUZZ_CHECK(close(c.o.view(b, i, h, d), ref, tol::atol, tol::rtol), "o[", d, "] ",
                       c.o.view(b, i, h, d), " vs ", ref, " | ", c.desc);
          }
        }
      }
}

void run_valid(input& in, bool extreme) {
  merge_case c = merge_case::make(in, extreme);
  const std::vector<float> o_before = c.o.storage, l_before = c.l.storage;
  merge_states(c.oa.cview(), c.la.cview(), c.ob.cview(), c.lb.cview(), c.o.view, c.l.view);
  check_only_view_written(c.o, o_before, "o", c.desc);
  check_only_view_written(c.l, l_before, "lse", c.desc);
  check_rows(c, c.oa.cview(), c.la.cview(), c.ob.cview(), c.lb.cview());

  // In place into a or b (only when that input does not broadcast): bitwise the same result.
  const bool into_a = in.flag();
  buffer<float, 4> oi = clone(into_a ? c.oa : c.ob);
  buffer<float, 3> li = clone(into_a ? c.la : c.lb);
  if (!oi.view.is_unique() || !li.view.is_unique()) return;
  if (into_a)
    merge_states(oi.cview(), li.cview(), c.ob.cview(), c.lb.cview(), oi.view, li.view);
  else
    merge_states(c.oa.cview(), c.la.cview(), oi.cview(), li.cview(), oi.view, li.view);
  for_each_index(oi.view, [&](const std::array<index_t, 4>& i, index_t off) {
    FUZZ_CHECK(same_bits(oi.view.data()[off], c.o.view(i[0], i[1], i[2], i[3])),
               "in-place o differs from out-of-place | ", c.desc);
  });
  for_each_index(li.view, [&](const std::array<index_t, 3>& i, index_t off) {
    FUZZ_CHECK(same_bits(li.view.data()[off], c.l.view(i[0], i[1], i[2])),
               "in-place lse differs from out-of-place | ", c.desc);
  });
}

void run_invalid(input& in) {
  merge_case c = merge_case::make(in, false);
  auto oa = c.oa.cview(), ob = c.ob.cview();
  auto la = c.la.cview(), lb = c.lb.cview();
  auto o = c.o.view;
  auto l = c.l.view;
  std::string what, needle;
  std::vector<float> raw;
  std::vector<watched_bytes> watched;
  switch (in.range(0, 9)) {
    case 0:
      what = "null o_b";
      needle = "o_b is null";
      ob = {nullptr, ob.extents(), ob.strides()};
      break;
    case 1: {
      what = "o_b extents";
      needle = "o_b has extents";
      auto e = ob.extents();
      e[static_cast<std::size_t>(in.range(0, 3))] += 1;
      ob = {ob.data(), e, ob.strides()};
      break;
    }
    case 2: {
      what = "lse_a extents";
      needle = "lse_a has extents";
      auto e = la.extents();
      e[static_cast<std::size_t>(in.range(0, 2))] += 1;
      la = {la.data(), e, la.strides()};
      break;
    }
    case 3: {
      what = "empty axis of o";
      needle = "o has an empty axis";
      auto e = o.extents();
      e[static_cast<std::size_t>(in.range(0, 3))] = 0;
      o = {o.data(), e, o.strides()};
      break;
    }
    case 4: {
      what = "negative stride of lse_b";
      needle = "lse_b has a negative stride";
      auto s = lb.strides();
      s[static_cast<std::size_t>(in.range(0, 1))] = -1;
      lb = {lb.data(), lb.extents(), s};
      break;
    }
    case 5: {
      const std::size_t axis = static_cast<std::size_t>(in.range(0, 2));
      if (o.extent(axis) == 1) {
        what = "null o";
        needle = "o is null";
        o = {nullptr, o.extents(), o.strides()};
        break;
      }
      what = "broadcasting o";
      needle = "maps several indices";
      auto s = o.strides();
      s[axis] = 0;
      o = {o.data(), o.extents(), s};
      break;
    }
    case 6:
    case 7: {  // o overlaps o_a without being it: o_a copied into a shared allocation
      const index_t span_a = oa.required_span_size(), span_o = o.required_span_size();
      if (span_a < 2) {
        what = "null o";
        needle = "o is null";
        o = {nullptr, o.extents(), o.strides()};
        break;
      }
      what = "o partially overlapping o_a";
      needle = "o overlaps input o_a";
      const index_t shift = in.range(1, span_a - 1);  // never exactly o_a, always inside it
      raw.assign(static_cast<std::size_t>(span_a + span_o + shift + 1), 0.5f);
      oa = {raw.data(), oa.extents(), oa.strides()};
      o = {raw.data() + shift, o.extents(), o.strides()};
      watched.push_back({raw.data(), {}});
      watched.back().before.resize(raw.size() * 4);
      std::memcpy(watched.back().before.data(), raw.data(), raw.size() * 4);
      break;
    }
    case 8: {  // o = o_a's memory with other strides
      if (o.strides() == oa.strides() || !oa.is_unique()) {
        what = "null lse";
        needle = "lse is null";
        l = {nullptr, l.extents(), l.strides()};
        break;
      }
      what = "o over o_a with other strides";
      needle = "o overlaps input o_a";
      const index_t need = std::max(o.required_span_size(), oa.required_span_size());
      raw.assign(static_cast<std::size_t>(need), 0.25f);
      oa = {raw.data(), oa.extents(), oa.strides()};
      o = {raw.data(), o.extents(), o.strides()};
      watched.push_back({raw.data(), {}});
      watched.back().before.resize(raw.size() * 4);
      std::memcpy(watched.back().before.data(), raw.data(), raw.size() * 4);
      break;
    }
    default: {  // lse overlapping o
      const index_t n = c.batch * c.heads * c.seq;
      what = "lse overlapping o";
      needle = "output lse overlaps input o";
      const index_t room =
          static_cast<index_t>(c.o.storage.data() + c.o.storage.size() - o.data()) - n;
      if (room < 0) {
        needle = "lse is null";
        l = {nullptr, l.extents(), l.strides()};
        break;
      }
      l = view3<float>::contiguous(
          o.data() + in.range(0, std::min(room, o.required_span_size() - 1)), l.extents());
      break;
    }
  }
  watched.push_back(watch(c.o));
  watched.push_back(watch(c.l));
  watched.push_back(watch(c.oa));
  if (verbose()) std::fprintf(stderr, "merge invalid: %s | %s\n", what.c_str(), c.desc.c_str());
  expect_rejected(
      what.c_str(), [&] { merge_states(oa, la, ob, lb, o, l); }, needle, watched);
}

}  // namespace
}  // namespace attend::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace attend::fuzz;
  using attend::index_t;
  input in(data, size);
  switch (in.range(0, 3)) {
    case 0:
    case 1:
      run_valid(in, false);
      break;
    case 2:
      run_valid(in, true);
      break;
    default:
      run_invalid(in);
      break;
  }
  return 0;
}
