// Invalid calls derived from a valid attention_case: exactly one argument is made invalid (null
// data with non-zero extents, an empty axis, a negative or non-unit innermost stride, a
// broadcasting output, an output overlapping an input, mismatched extents, heads that do not
// divide, out-of-range lengths or parameters). The operator must throw attend::invalid_argument
// whose message names the argument, and write nothing; the oracle must reject the same
// input-side mistakes instead of reading out of bounds.
#ifndef ATTEND_TESTS_FUZZ_ATTENTION_INVALID_HPP_
#define ATTEND_TESTS_FUZZ_ATTENTION_INVALID_HPP_

#include <string>
#include <vector>

#include "attention_case.hpp"

namespace attend::fuzz {

/// attention() checks that o and lse do not overlap the optional inputs (bias, mask,
/// alibi_slopes, sinks, kv_lens); operators whose validation does not (yet) can set this false.
inline constexpr bool kRejectsOptionalInputAliasing = true;

template <class KV>
struct invalid_call {
  std::string what;    // the mutation, for messages
  std::string needle;  // the operator's message must contain it
  bool oracle_rejects = false;
  view4<const float> q;
  view4<const KV> k, v;
  view4<float> o;
  attention_params p;
  std::vector<watched_bytes> watched;
  // Storage the mutated views may point into.
  buffer<KV, 4> k2, v2;
  buffer<float, 4> o2, f2;
  std::vector<float> raw;
  std::vector<index_t> lens2;
  std::vector<float> vec2;
  buffer<float, 3> lse2;
  buffer<float, 4> bias2;
  buffer<bool, 4> mask2;
};

namespace invalid_detail {

template <class T, std::size_t R>
tensor_view<T, R> with_extent(const tensor_view<T, R>& v, std::size_t axis, index_t e) {
  auto ex = v.extents();
  ex[axis] = e;
  return {v.data(), ex, v.strides()};
}
template <class T, std::size_t R>
tensor_view<T, R> with_stride(const tensor_view<T, R>& v, std::size_t axis, index_t s) {
  auto st = v.strides();
  st[axis] = s;
  return {v.data(), v.extents(), st};
}
template <class T, std::size_t R>
tensor_view<T, R> with_data(const tensor_view<T, R>& v, T* data) {
  return {data, v.extents(), v.strides()};
}

}  // namespace invalid_detail

/// Builds one invalid call from case c (whose buffers must outlive it).
template <class KV>
invalid_call<KV> make_invalid(input& in, const attention_case<KV>& c) {
  using namespace invalid_detail;
  invalid_call<KV> x;
  x.q = c.qv;
  x.k = c.kv;
  x.v = c.vv;
  x.o = c.o.view;
  x.p = c.p;
  const auto& s = c.s;
  const char* names[] = {"q", "k", "v", "o"};
  auto fallback_null = [&](int t) {
    x.what = std::string("null ") + names[t];
    x.needle = std::string(names[t]) + " is null";
    x.oracle_rejects = t < 3;
    switch (t) {
      case 0:
        x.q = with_data<const float>(x.q, nullptr);
        break;
      case 1:
        x.k = with_data<const KV>(x.k, nullptr);
        break;
      case 2:
        x.v = with_data<const KV>(x.v, nullptr);
        break;
      default:
        x.o = with_data<float>(x.o, nullptr);
        break;
    }
  };
  const int t = static_cast<int>(in.range(0, 3));
  const std::size_t axis = static_cast<std::size_t>(in.range(0, 3));
  switch (in.range(0, 29)) {
    case 0:
      fallback_null(t);
      break;
    case 1: {  // an empty axis
      x.what = std::string("empty axis of ") + names[t];
      x.needle = std::string(names[t]) + " has an empty axis";
      x.oracle_rejects = t < 3;
      switch (t) {
        case 0:
          x.q = with_extent(x.q, axis, 0);
          break;
        case 1:
          x.k = with_extent(x.k, axis, 0);
          break;
        case 2:
          x.v = with_extent(x.v, axis, 0);
          break;
        default:
          x.o = with_extent(x.o, axis, 0);
          break;
      }
      break;
    }
    case 2: {  // a negative stride
      x.what = std::string("negative stride of ") + names[t];
      x.needle = std::string(names[t]) + " has a negative stride";
      x.oracle_rejects = t < 3;
      const index_t st = -1 - in.range(0, 100);
      switch (t) {
        case 0:
          x.q = with_stride(x.q, axis, st);
          break;
        case 1:
          x.k = with_stride(x.k, axis, st);
          break;
        case 2:
          x.v = with_stride(x.v, axis, st);
          break;
        default:
          x.o = with_stride(x.o, axis, st);
          break;
      }
      break;
    }
    case 3: {  // a non-unit innermost stride
      const index_t d = t == 0 || t == 1 ? s.dk : s.dv;
      if (d == 1) {
        fallback_null(t);
        break;
      }
      x.what = std::string("strided innermost axis of ") + names[t];
      x.needle = "contiguous innermost";
      x.oracle_rejects = t < 3;
      const index_t st = in.flag() ? 0 : in.range(2, 4);
      switch (t) {
        case 0:
          x.q = with_stride(x.q, 3, st);
          break;
        case 1:
          x.k = with_stride(x.k, 3, st);
          break;
        case 2:
          x.v = with_stride(x.v, 3, st);
          break;
        default:
          x.o = with_stride(x.o, 3, st);
          break;
      }
      break;
    }
    case 4: {  // an output axis that broadcasts (stride 0): rows would race
      if (x.o.extent(axis) == 1 || axis == 3) {
        fallback_null(3);
        break;
      }
      x.what = "broadcasting o";
      x.needle = "maps several indices";
      x.o = with_stride(x.o, axis, 0);
      break;
    }
    case 5:
    case 6: {  // o overlapping q, k or v: both placed in one allocation
      const int which = static_cast<int>(in.range(0, 2));
      x.what = std::string("o overlapping ") + names[which];
      x.needle = std::string("o overlaps input ") + names[which];
      const index_t in_bytes =
          which == 0 ? x.q.required_span_size() * 4
                     : (which == 1 ? x.k : x.v).required_span_size() * index_t(sizeof(KV));
      const index_t o_span = x.o.required_span_size();
      const index_t shift = in.range(0, (in_bytes - 1) / 4);
      x.raw.assign(static_cast<std::size_t>(in_bytes / 4 + 1 + o_span + 8), 1.0f);
      if (which == 0) x.q = with_data<const float>(x.q, x.raw.data());
      if (which == 1) x.k = with_data<const KV>(x.k, reinterpret_cast<const KV*>(x.raw.data()));
      if (which == 2) x.v = with_data<const KV>(x.v, reinterpret_cast<const KV*>(x.raw.data()));
      x.o = with_data<float>(x.o, x.raw.data() + shift);
      x.watched.push_back({x.raw.data(), {}});
      x.watched.back().before.resize(x.raw.size() * 4);
      std::memcpy(x.watched.back().before.data(), x.raw.data(), x.raw.size() * 4);
      break;
    }
    case 7:
    case 8: {  // lse overlapping o or q: placed inside the other view's byte range
      const bool on_o = in.flag();
      const index_t n = s.batch * s.heads_q * s.seq_q;
      const auto& st = on_o ? c.o.storage : (c.is_fused ? c.fused.storage : c.q.storage);
      const float* start = on_o ? c.o.view.data() : c.qv.data();
      const index_t span = on_o ? c.o.view.required_span_size() : c.qv.required_span_size();
      const index_t room = static_cast<index_t>(st.data() + st.size() - start) - n;
      if (room < 0) {
        fallback_null(t);
        break;
      }
      x.what = on_o ? "lse overlapping o" : "lse overlapping q";
      x.needle = on_o ? "output lse overlaps input o" : "output lse overlaps input q";
      const index_t shift = in.range(0, std::min(room, span - 1));
      x.p.lse = view3<float>::contiguous(const_cast<float*>(start) + shift,
                                         {s.batch, s.heads_q, s.seq_q});
      break;
    }
    case 9: {  // heads that do not divide
      x.what = "kv heads not dividing q heads";
      x.needle = "must be a multiple of kv heads";
      x.oracle_rejects = true;
      const index_t hkv = s.heads_q + in.range(1, 3);
      x.k2 = buffer<KV, 4>::contiguous({s.batch, s.seq_k, hkv, s.dk});
      x.v2 = buffer<KV, 4>::contiguous({s.batch, s.seq_k, hkv, s.dv});
      x.k = x.k2.view;
      x.v = x.v2.view;
      break;
    }
    case 10: {  // batch mismatch
      x.what = "k/v batch differs from q";
      x.needle = "batch of q";
      x.oracle_rejects = true;
      const index_t b = s.batch + in.range(1, 2);
      x.k2 = buffer<KV, 4>::contiguous({b, s.seq_k, s.heads_kv, s.dk});
      x.v2 = buffer<KV, 4>::contiguous({b, s.seq_k, s.heads_kv, s.dv});
      x.k = x.k2.view;
      x.v = x.v2.view;
      if (in.flag() && s.batch > 1) {  // smaller instead: the oracle would read past k
        x.k = with_extent(x.k, 0, s.batch - 1);
        x.v = with_extent(x.v, 0, s.batch - 1);
      }
      break;
    }
    case 11: {  // v's seq or heads differ from k's
      x.what = "v extents differ from k";
      x.needle = "must match k";
      x.oracle_rejects = true;
      const bool seq = in.flag();
      const index_t ls = seq ? s.seq_k + 1 : s.seq_k, hs = seq ? s.heads_kv : s.heads_kv * 2;
      x.v2 = buffer<KV, 4>::contiguous({s.batch, ls, hs, s.dv});
      x.v = x.v2.view;
      break;
    }
    case 12: {  // k's head dim differs from q's
      x.what = "k head dim differs from q";
      x.needle = "head dim of k";
      x.oracle_rejects = true;
      x.k2 = buffer<KV, 4>::contiguous({s.batch, s.seq_k, s.heads_kv, s.dk + in.range(1, 3)});
      x.k = x.k2.view;
      if (s.dk > 1 && in.flag()) x.k = with_extent(x.k, 3, s.dk - 1);
      break;
    }
    case 13: {  // o's extents wrong
      x.what = "o extents";
      x.needle = "o has extents";
      auto e = x.o.extents();
      e[axis] += 1;
      x.o2 = buffer<float, 4>::contiguous(e);
      x.o = x.o2.view;
      break;
    }
    case 14: {
      x.what = "window below -1";
      x.needle = "window";
      x.oracle_rejects = true;
      (in.flag() ? x.p.window_left : x.p.window_right) = -2 - in.range(0, 1000);
      break;
    }
    case 15: {
      x.what = "bad softcap";
      x.needle = "softcap";
      x.oracle_rejects = true;
      static constexpr special bad[] = {special::nan, special::pos_inf, special::neg_inf,
                                        special::neg_huge, special::min_denormal};
      static constexpr float tiny[] = {1.4e-45f, 1e-40f, 2e-39f};  // 1 / softcap overflows
      const index_t kind = in.range(0, 2);
      x.p.softcap = kind == 0   ? -in.uniform(0.01f, 100.0f)
                    : kind == 1 ? special_value(in.pick(bad))
                                : in.pick(tiny);
      break;
    }
    case 16: {
      x.what = "non-finite scale";
      x.needle = "scale must be finite";
      x.oracle_rejects = true;
      static constexpr special bad[] = {special::nan, special::pos_inf, special::neg_inf};
      x.p.scale = special_value(in.pick(bad));
      break;
    }
    case 17: {  // a kv length out of range
      x.what = "kv_lens out of range";
      x.needle = "kv_lens[";
      x.oracle_rejects = true;
      x.lens2 = c.lens.empty() ? std::vector<index_t>(static_cast<std::size_t>(s.batch), s.seq_k)
                               : c.lens;
      const index_t b = in.range(0, s.batch - 1);
      x.lens2[b] = in.flag() ? s.seq_k + in.range(1, 1 << 20) : -in.range(1, 1 << 20);
      x.p.kv_lens = make_view<const index_t>(x.lens2.data(), s.batch);
      break;
    }
    case 18: {
      x.what = "kv_lens extent";
      x.needle = "kv_lens has extents";
      x.oracle_rejects = true;
      x.lens2.assign(static_cast<std::size_t>(s.batch + 1), 1);
      x.p.kv_lens = make_view<const index_t>(x.lens2.data(), in.flag() ? s.batch + 1 : s.batch - 1);
      if (x.p.kv_lens.extent(0) == 0) x.needle = "kv_lens has an empty axis";
      break;
    }
    case 19:
    case 20: {
      const bool alibi = in.flag();
      x.what = alibi ? "alibi_slopes extent" : "sinks extent";
      x.needle = alibi ? "alibi_slopes has extents" : "sinks has extents";
      x.oracle_rejects = true;
      x.vec2.assign(static_cast<std::size_t>(s.heads_q + 1), 0.1f);
      const index_t n = in.flag() ? s.heads_q + 1 : s.heads_q - 1;
      if (n == 0) x.needle = alibi ? "alibi_slopes has an empty axis" : "sinks has an empty axis";
      (alibi ? x.p.alibi_slopes : x.p.sinks) = make_view<const float>(x.vec2.data(), n);
      break;
    }
    case 21:
    case 22: {  // bias / mask extents wrong
      const bool is_bias = in.flag();
      x.what = is_bias ? "bias extents" : "mask extents";
      x.needle = is_bias ? "bias has extents" : "mask has extents";
      x.oracle_rejects = true;
      std::array<index_t, 4> e{s.batch, s.heads_q, s.seq_q, s.seq_k};
      e[axis] += 1;
      if (axis <= 1 && e[axis] == 2) e[axis] = 3;  // 1 would be a valid broadcast extent
      if (is_bias) {
        x.bias2 = buffer<float, 4>::contiguous(e);
        x.p.bias = x.bias2.view;
      } else {
        x.mask2 = buffer<bool, 4>::contiguous(e);
        x.p.mask = x.mask2.view;
      }
      break;
    }
    case 23: {  // bias with a negative stride
      x.what = "bias negative stride";
      x.needle = "bias has a negative stride";
      x.oracle_rejects = true;
      x.bias2 = buffer<float, 4>::contiguous({s.batch, s.heads_q, s.seq_q, s.seq_k});
      x.p.bias = with_stride(x.bias2.view, axis == 3 ? 2 : axis, -1);
      break;
    }
    case 24: {
      x.what = "lse extents";
      x.needle = "lse has extents";
      std::array<index_t, 3> e{s.batch, s.heads_q, s.seq_q};
      e[axis % 3] += 1;
      x.lse2 = buffer<float, 3>::contiguous(e);
      x.p.lse = x.lse2.view;
      break;
    }
    case 25: {
      const std::size_t a = axis % 3;
      const index_t e = std::array<index_t, 3>{s.batch, s.heads_q, s.seq_q}[a];
      if (e == 1 || a == 2) {
        fallback_null(t);
        break;
      }
      x.what = "broadcasting lse";
      x.needle = "maps several indices";
      x.lse2 = buffer<float, 3>::contiguous({s.batch, s.heads_q, s.seq_q});
      x.p.lse = with_stride(x.lse2.view, a, 0);
      break;
    }
    case 26: {  // k with a stride that makes heads overlap is fine for an input: valid, so
                // instead null an optional view's data while keeping extents: treated as absent
      fallback_null(t);
      break;
    }
    case 27:
    case 28: {  // o overlapping an optional input (bias or sinks): a race between rows
      if (!kRejectsOptionalInputAliasing) {
        fallback_null(t);
        break;
      }
      x.what = "o overlapping bias";
      x.needle = "output o overlaps input bias";
      x.raw.assign(static_cast<std::size_t>(x.o.required_span_size() +
                                            s.batch * s.heads_q * s.seq_q * s.seq_k + 8),
                   0.0f);
      x.o = with_data<float>(x.o, x.raw.data());
      x.p.bias = view4<const float>::contiguous(x.raw.data() + in.range(0, 7),
                                                {s.batch, s.heads_q, s.seq_q, s.seq_k});
      x.watched.push_back({x.raw.data(), {}});
      x.watched.back().before.resize(x.raw.size() * 4);
      std::memcpy(x.watched.back().before.data(), x.raw.data(), x.raw.size() * 4);
      break;
    }
    default: {  // a fully null required argument
      fallback_null(t);
      break;
    }
  }
  // Whatever the mutation, the case's own outputs must stay untouched too.
  x.watched.push_back(watch(c.o));
  if (c.want_lse) x.watched.push_back(watch(c.lse));
  if (x.o2.view.has_value()) x.watched.push_back(watch(x.o2));
  if (x.lse2.view.has_value()) x.watched.push_back(watch(x.lse2));
  return x;
}

}  // namespace attend::fuzz

#endif  // ATTEND_TESTS_FUZZ_ATTENTION_INVALID_HPP_
