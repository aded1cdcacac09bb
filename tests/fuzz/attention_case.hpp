// A fuzzed softmax-attention problem: shape, layouts, options and values chosen by the fuzzer's
// bytes, the double oracle's answer, per-row facts (visible keys, clean inputs, NaN scores)
// and the checks every attention-like operator must pass. Targets of other operators that
// compute dense softmax attention over some key set (sparse, sink, streaming) reuse it.
//
// Modes:
//   agreement  moderate finite values; every row must match the oracle within the tolerances
//              of tests/common/tensors.hpp. Cells a kernel must never read (padding, cache
//              capacity, keys past kv_lens, bias entries of invisible pairs) hold NaN.
//   extreme    NaN, +-Inf, 1e30, FLT_MAX and subnormals mixed in; only documented properties are
//              checked: rows that see no key give o = 0, lse = -inf; rows with a NaN score give
//              NaN; rows whose inputs are clean match the oracle (no NaN).
//   invalid    a valid case with one argument made invalid (make_invalid): the operator and the
//              oracle must throw attend::invalid_argument and write nothing.
#ifndef ATTEND_TESTS_FUZZ_ATTENTION_CASE_HPP_
#define ATTEND_TESTS_FUZZ_ATTENTION_CASE_HPP_

#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "attend/core/params.hpp"
#include "attend/reference/naive.hpp"
#include "common/tensors.hpp"
#include "fuzz_common.hpp"

namespace attend::fuzz {

enum class mode : std::uint8_t { agreement, extreme, invalid };

/// Masked-out keys whose V row holds Inf or NaN currently poison the other rows of the engine's
/// row block (p = 0 times Inf is NaN in P V; see docs/readme_hardening.md and
/// tests/hardening/test_numerics.cpp, DISABLED_MaskedNonFiniteValueDoesNotLeak). While that is
/// so, a row counts as clean only when no key of its sequence has a non-finite V; set to false
/// once the engine skips masked keys in P V.
inline constexpr bool kMaskedValuesMayLeak = true;

/// Oracle cost budget per case (multiply-adds): keeps a case a few milliseconds under ASan.
inline constexpr index_t kOracleBudget = 1'500'000;

/// The entry of the attention-like targets: the first bytes choose the mode (agreement 4/8,
/// extreme 2/8, invalid 2/8) and the K/V storage type, then run(type_tag<KV>{}, in, mode) draws
/// the case from the rest. (The byte order is the corpora's: keep it.)
template <class T>
struct type_tag {
  using type = T;
};
template <class Run>
int run_target(const std::uint8_t* data, std::size_t size, Run&& run) {
  input in(data, size);
  const index_t mode_byte = in.range(0, 7);
  const mode m = mode_byte < 4 ? mode::agreement : mode_byte < 6 ? mode::extreme : mode::invalid;
  switch (in.range(0, 2)) {
    case 0:
      run(type_tag<float>{}, in, m);
      break;
    case 1:
      run(type_tag<bf16>{}, in, m);
      break;
    default:
      run(type_tag<fp16>{}, in, m);
      break;
  }
  return 0;
}

struct attention_shape {
  index_t batch = 1, seq_q = 1, seq_k = 1, heads_q = 1, heads_kv = 1, dk = 1, dv = 1;
};

inline std::string to_string(const attention_shape& s) {
  std::ostringstream os;
  os << "B" << s.batch << " Lq" << s.seq_q << " Lk" << s.seq_k << " Hq" << s.heads_q << " Hkv"
     << s.heads_kv << " Dk" << s.dk << " Dv" << s.dv;
  return os.str();
}

/// A clean value: finite and moderate (subnormals are clean). Rows whose inputs are all clean
/// must match the oracle even in extreme mode.
inline bool clean(float x, float bound = 8.0f) { return std::isfinite(x) && std::abs(x) <= bound; }

/// Flat index -> element offset of a view (row-major over the logical index).
template <class T, std::size_t R>
index_t offset_of_flat(const tensor_view<T, R>& v, index_t flat) {
  index_t off = 0;
  for (std::size_t r = R; r-- > 0;) {
    off += (flat % v.extent(r)) * v.stride(r);
    flat /= v.extent(r);
  }
  return off;
}

/// A rank-4 [batch, seq, heads, dim] buffer in a fuzzed layout: BSHD, BHSD, padded (either
/// order, padding after rows, extra seq capacity, start offset), or for inputs a stride-0 view
/// that broadcasts one head (GQA-style sharing) or one token.
template <class T>
buffer<T, 4> make_layout4(input& in, const std::array<index_t, 4>& e, bool is_input,
                          std::string& desc) {
  const index_t choice = in.range(0, is_input ? 4 : 2);
  switch (choice) {
    case 1:
      desc += "bhsd ";
      return buffer<T, 4>::permuted(e, {0, 2, 1, 3}, 0, {0, 0, 0, 0}, 0);
    case 2: {
      const bool bhsd = in.flag();
      const index_t pad = in.range(0, 5), extra = in.range(0, 9), offset = in.range(0, 3);
      desc += bhsd ? "padded-bhsd " : "padded-bshd ";
      auto b = buffer<T, 4>::permuted(
          e, bhsd ? std::array<std::size_t, 4>{0, 2, 1, 3} : std::array<std::size_t, 4>{0, 1, 2, 3},
          pad, {0, extra, 0, 0}, offset);
      if (e[3] == 1 && in.flag()) {  // a unit innermost axis may have any stride
        auto s = b.view.strides();
        s[3] = in.range(2, 9);
        return buffer<T, 4>::strided(e, s, offset);
      }
      return b;
    }
    case 3:
      if (e[2] > 1) {
        desc += "bcast-heads ";
        return buffer<T, 4>::strided(e, {e[1] * e[3], e[3], 0, 1}, 0);
      }
      break;
    case 4:
      if (e[1] > 1) {
        desc += "bcast-seq ";
        return buffer<T, 4>::strided(e, {e[2] * e[3], 0, e[3], 1}, 0);
      }
      break;
    default:
      break;
  }
  desc += "bshd ";
  return buffer<T, 4>::contiguous(e);
}

/// A rank-3 [batch, heads, seq] (LSE) or rank-4 [b, h, seq_q, seq_k] (bias, mask) layout:
/// contiguous, with the first two axes swapped, or padded (the operators require a
/// contiguous innermost axis for these too).
template <class T, std::size_t R>
buffer<T, R> make_layout_small(input& in, const std::array<index_t, R>& e) {
  std::array<std::size_t, R> order{};
  for (std::size_t r = 0; r < R; ++r) order[r] = r;
  switch (in.range(0, 2)) {
    case 1:
      std::swap(order[0], order[1]);
      return buffer<T, R>::permuted(e, order, 0, {}, 0);
    case 2:
      return buffer<T, R>::permuted(e, order, in.range(1, 4), {}, in.range(0, 3));
    default:
      return buffer<T, R>::contiguous(e);
  }
}

template <class KV>
struct attention_case {
  mode m = mode::agreement;
  attention_shape s;
  std::string desc;

  // Operands. q/k/v either own buffers or views into one fused QKV buffer (float K/V only).
  buffer<float, 4> q, o;
  buffer<KV, 4> k, v;
  buffer<float, 4> fused;
  bool is_fused = false;
  view4<const float> qv;
  view4<const KV> kv, vv;
  buffer<float, 3> lse;
  bool want_lse = false;

  // Options (the params below point into these).
  buffer<float, 4> bias;
  buffer<bool, 4> mask;
  std::vector<float> slopes, sinks;
  std::vector<index_t> lens;
  attention_params p;

  // The oracle's answer.
  buffer<double, 4> ref_o;
  buffer<double, 3> ref_lse;

  index_t kv_len(index_t b) const { return lens.empty() ? s.seq_k : lens[b]; }
  index_t qpos(index_t b, index_t i) const { return kv_len(b) - s.seq_q + i; }
  index_t kv_head(index_t h) const { return h / (s.heads_q / s.heads_kv); }
  bool visible(index_t b, index_t h, index_t i, index_t j) const {
    return reference::visible(p, b, h, i, qpos(b, i), j, kv_len(b));
  }
  float scale() const { return p.scale ? *p.scale : 1.0f / std::sqrt(static_cast<float>(s.dk)); }

  // ---- Construction ------------------------------------------------------------------------

  static attention_case make(input& in, mode m) {
    attention_case c;
    c.m = m;
    c.s = draw_shape(in);
    c.desc = to_string(c.s) + " | ";
    c.draw_operands(in);
    c.draw_options(in);
    c.draw_values(in);
    return c;
  }

  static attention_shape draw_shape(input& in) {
    attention_shape s;
    static constexpr index_t groups[] = {1, 1, 2, 3, 4, 8};
    static constexpr index_t dims[] = {1, 2, 3, 4, 5, 8, 13, 16, 17, 32, 33, 64, 80, 96, 128, 256};
    s.batch = in.range(1, 3);
    s.heads_kv = in.range(1, 3);
    s.heads_q = s.heads_kv * in.pick(groups);
    s.dk = in.pick(dims);
    s.dv = in.chance(60) ? s.dk : in.pick(dims);
    if (in.chance(15)) {  // decode: split-K runs from 1024 keys on
      s.seq_q = in.range(1, 16);
      s.seq_k = in.range(1000, 1400);
    } else {
      s.seq_q = in.range(1, 140);
      s.seq_k = in.chance(50) ? in.range(1, 24) : in.range(1, 140);
    }
    auto cost = [&] { return s.batch * s.heads_q * s.seq_q * s.seq_k * (s.dk + s.dv); };
    while (cost() > kOracleBudget) {
      if (s.dk + s.dv > 24) {
        index_t& d = s.dk >= s.dv ? s.dk : s.dv;
        d = (d + 1) / 2;
      } else if (s.batch > 1) {
        --s.batch;
      } else if (s.heads_q > s.heads_kv) {
        s.heads_q -= s.heads_kv;
      } else if (s.heads_kv > 1) {
        s.heads_q = --s.heads_kv;
      } else if (s.seq_q > 1) {
        s.seq_q = (s.seq_q + 1) / 2;
      } else {
        s.seq_k = (s.seq_k + 1) / 2;
      }
    }
    return s;
  }

  void draw_operands(input& in) {
    const index_t B = s.batch, Lq = s.seq_q, Lk = s.seq_k, Hq = s.heads_q, Hkv = s.heads_kv;
    if constexpr (std::is_same_v<KV, float>) {
      if (s.dk == s.dv && Lq == Lk && in.chance(15)) {
        is_fused = true;
        desc += "fused-qkv ";
        fused = buffer<float, 4>::contiguous({B, Lq, Hq + 2 * Hkv, s.dk});
        const auto views = fused_qkv(fused.storage.data(), B, Lq, Hq, Hkv, s.dk);
        qv = views.q;
        kv = views.k;
        vv = views.v;
      }
    }
    if (!is_fused) {
      desc += "q:";
      q = make_layout4<float>(in, {B, Lq, Hq, s.dk}, true, desc);
      desc += "k:";
      k = make_layout4<KV>(in, {B, Lk, Hkv, s.dk}, true, desc);
      desc += "v:";
      v = make_layout4<KV>(in, {B, Lk, Hkv, s.dv}, true, desc);
      qv = q.view;
      kv = k.view;
      vv = v.view;
    }
    desc += "o:";
    o = make_layout4<float>(in, {B, Lq, Hq, s.dv}, false, desc);
    want_lse = in.chance(70);
    if (want_lse) {
      lse = make_layout_small<float, 3>(in, {B, Hq, Lq});
      p.lse = lse.view;
    }
    ref_o = buffer<double, 4>::contiguous({B, Lq, Hq, s.dv});
    ref_lse = buffer<double, 3>::contiguous({B, Hq, Lq});
  }

  /// A value for an option: moderate, or in extreme mode sometimes a special one.
  float option_value(input& in, float lo, float hi) {
    if (m == mode::extreme && in.chance(25)) return special_value(in.pick(kAllSpecials));
    return in.uniform(lo, hi);
  }

  void draw_options(input& in) {
    const index_t B = s.batch, Lq = s.seq_q, Lk = s.seq_k, Hq = s.heads_q;
    std::ostringstream d;
    p.causal = in.chance(40);
    if (in.chance(30)) p.window_left = in.range(0, Lk + 1);
    if (in.chance(25)) p.window_right = in.range(0, std::max<index_t>(1, Lk / 2));
    if (in.chance(20)) {
      p.softcap = in.uniform(0.5f, 30.0f);
      if (m == mode::extreme && in.chance(30)) {
        static constexpr float caps[] = {1e30f, 3.4e38f, 3.5e-39f, 1.2e-38f, 0.0f};
        p.softcap = in.pick(caps);
      }
    }
    if (in.chance(20)) {
      const float top = std::min(1.0f, 24.0f / static_cast<float>(Lk));
      for (index_t h = 0; h < Hq; ++h) slopes.push_back(option_value(in, 0.0f, top));
      p.alibi_slopes = make_view<const float>(slopes.data(), Hq);
    }
    if (in.chance(20)) {
      for (index_t h = 0; h < Hq; ++h) sinks.push_back(option_value(in, -4.0f, 4.0f));
      p.sinks = make_view<const float>(sinks.data(), Hq);
    }
    if (in.chance(30)) {
      for (index_t b = 0; b < B; ++b) {
        const index_t r = in.range(0, 3);
        lens.push_back(r == 0 ? 0 : r == 1 ? in.range(0, Lk) : Lk);
      }
      p.kv_lens = make_view<const index_t>(lens.data(), B);
    }
    if (in.chance(40)) {
      p.scale = in.uniform(-1.5f, 1.5f) / std::sqrt(static_cast<float>(s.dk));
      if (m == mode::extreme && in.chance(30)) {
        static constexpr special scales[] = {special::huge,    special::neg_huge,
                                             special::flt_max, special::denormal,
                                             special::zero,    special::flt_min};
        p.scale = special_value(in.pick(scales));
      }
    }
    if (in.chance(25)) {
      const index_t bb = in.flag() ? B : 1, hb = in.flag() ? Hq : 1;
      bias = make_layout_small<float, 4>(in, {bb, hb, Lq, Lk});
      p.bias = bias.view;
      d << "bias[" << bb << "," << hb << "] ";
    }
    if (in.chance(25)) {
      const index_t bb = in.flag() ? B : 1, hb = in.flag() ? Hq : 1;
      mask = make_layout_small<bool, 4>(in, {bb, hb, Lq, Lk});
      p.mask = mask.view;
      d << "mask[" << bb << "," << hb << "] ";
    }
    d << (p.causal ? "causal " : "") << "win(" << p.window_left << "," << p.window_right << ") ";
    if (p.softcap != 0.0f) d << "softcap " << p.softcap << " ";
    if (!slopes.empty()) d << "alibi ";
    if (!sinks.empty()) d << "sinks ";
    if (!lens.empty()) {
      d << "kv_lens";
      for (index_t l : lens) d << " " << l;
      d << " ";
    }
    if (p.scale) d << "scale " << *p.scale << " ";
    if (want_lse) d << "lse ";
    desc += d.str();
  }

  void draw_values(input& in) {
    std::mt19937 rng(in.u32());
    static constexpr float ranges[] = {0.5f, 1.0f, 2.0f};
    const float r = in.pick(ranges);
    std::uniform_real_distribution<float> qk(-r, r), unit(-1.0f, 1.0f), wide(-4.0f, 4.0f);
    if (m != mode::extreme) {
      fill(qv_mut(), [&] { return qk(rng); });
      fill(kv_mut(), [&] { return qk(rng); });
      fill(vv_mut(), [&] { return unit(rng); });
      if (p.bias.has_value()) fill(bias.view, [&] { return wide(rng); });
      if (p.mask.has_value()) {
        static constexpr float density[] = {0.0f, 0.1f, 0.5f, 0.9f, 1.0f};
        std::bernoulli_distribution keep(in.pick(density));
        for_each_index(mask.view,
                       [&](const auto&, index_t off) { mask.view.data()[off] = keep(rng); });
      }
      poison_unreadable();
      return;
    }
    // Extreme: a base distribution per tensor, then targeted special values.
    auto base = [&](auto view, std::uniform_real_distribution<float>& mod) {
      const index_t kind = in.range(0, 5);
      std::uniform_real_distribution<float> u(0.0f, 1.0f);
      fill(view, [&]() -> float {
        const float x = mod(rng);
        switch (kind) {
          case 1:
            return x * 1e-39f;  // subnormal
          case 2:
            return x * 1e30f;  // huge
          case 3:              // mixed
            return u(rng) < 0.1f ? special_value(kAllSpecials[rng() % std::size(kAllSpecials)]) : x;
          default:
            return x;
        }
      });
      if (kind != 0) desc += "dist" + std::to_string(kind) + " ";
    };
    base(qv_mut(), qk);
    base(kv_mut(), qk);
    base(vv_mut(), unit);
    if (p.bias.has_value()) base(bias.view, wide);
    if (p.mask.has_value()) {
      std::bernoulli_distribution keep(0.7);
      for_each_index(mask.view,
                     [&](const auto&, index_t off) { mask.view.data()[off] = keep(rng); });
    }
    const index_t injections = in.range(0, 6);
    for (index_t n = 0; n < injections; ++n) {
      const float x = special_value(in.pick(kAllSpecials));
      switch (in.range(0, 3)) {
        case 0:
          inject(qv_mut(), in, x);
          break;
        case 1:
          inject(kv_mut(), in, x);
          break;
        case 2:
          inject(vv_mut(), in, x);
          break;
        default:
          if (p.bias.has_value()) inject(bias.view, in, x);
          break;
      }
    }
  }

  template <class T, std::size_t R>
  void inject(const tensor_view<T, R>& view, input& in, float x) {
    const index_t flat = in.range(0, view.size() - 1);
    view.data()[offset_of_flat(view, flat)] = from_float<std::remove_cv_t<T>>(x);
  }

  // Mutable views of the operands (the operator gets const ones).
  view4<float> qv_mut() const {
    return {const_cast<float*>(qv.data()), qv.extents(), qv.strides()};
  }
  view4<KV> kv_mut() const { return {const_cast<KV*>(kv.data()), kv.extents(), kv.strides()}; }
  view4<KV> vv_mut() const { return {const_cast<KV*>(vv.data()), vv.extents(), vv.strides()}; }

  /// Agreement mode: NaN into the cells the operator must never read (keys past kv_lens, bias
  /// entries no row can see); padding and capacity already hold NaN.
  void poison_unreadable() {
    if (!lens.empty() && kv.stride(1) != 0 && vv.stride(1) != 0) {
      for (index_t b = 0; b < s.batch; ++b)
        for (index_t j = lens[b]; j < s.seq_k; ++j)
          for (index_t g = 0; g < s.heads_kv; ++g) {
            for (index_t d = 0; d < s.dk; ++d) kv_mut()(b, j, g, d) = poison<KV>();
            for (index_t d = 0; d < s.dv; ++d) vv_mut()(b, j, g, d) = poison<KV>();
          }
      // A K/V view that broadcasts heads (stride 0) aliases every head's row: fine, the key
      // is invisible to all of them.
    }
    if (p.bias.has_value()) {
      const index_t bb = bias.view.extent(0), hb = bias.view.extent(1);
      for (index_t b0 = 0; b0 < bb; ++b0)
        for (index_t h0 = 0; h0 < hb; ++h0)
          for (index_t i = 0; i < s.seq_q; ++i)
            for (index_t j = 0; j < s.seq_k; ++j) {
              bool seen = false;
              for (index_t b = (bb == 1 ? 0 : b0); b < (bb == 1 ? s.batch : b0 + 1); ++b)
                for (index_t h = (hb == 1 ? 0 : h0); h < (hb == 1 ? s.heads_q : h0 + 1); ++h)
                  seen = seen || visible(b, h, i, j);
              if (!seen) bias.view(b0, h0, i, j) = std::numeric_limits<float>::quiet_NaN();
            }
    }
  }

  // ---- Oracle and row facts ----------------------------------------------------------------

  void run_oracle() {
    attention_params rp = p;
    rp.lse = {};
    rp.scratch = nullptr;
    reference::attention(qv, kv, vv, rp, ref_o.view, ref_lse.view);
  }

  float q_at(index_t b, index_t i, index_t h, index_t d) const { return qv(b, i, h, d); }
  float k_at(index_t b, index_t j, index_t g, index_t d) const { return to_float(kv(b, j, g, d)); }
  float v_at(index_t b, index_t j, index_t g, index_t d) const { return to_float(vv(b, j, g, d)); }
  float bias_at(index_t b, index_t h, index_t i, index_t j) const {
    return bias.view(bias.view.extent(0) == 1 ? 0 : b, bias.view.extent(1) == 1 ? 0 : h, i, j);
  }
  bool has_sink(index_t h) const { return !sinks.empty() && sinks[h] != -INFINITY; }

  /// The row sees no key and has no sink: o must be 0 and lse -inf.
  bool row_empty(index_t b, index_t h, index_t i) const {
    if (has_sink(h)) return false;
    for (index_t j = 0; j < s.seq_k; ++j)
      if (visible(b, h, i, j)) return false;
    return true;
  }

  /// Some visible key's score is NaN for certain: a NaN in the row's query, in the key's K row,
  /// in its bias entry or in the head's ALiBi slope.
  bool row_nan_score(index_t b, index_t h, index_t i) const {
    const index_t g = kv_head(h);
    bool q_nan = !slopes.empty() && std::isnan(slopes[h]);
    for (index_t d = 0; d < s.dk; ++d) q_nan = q_nan || std::isnan(q_at(b, i, h, d));
    for (index_t j = 0; j < s.seq_k; ++j) {
      if (!visible(b, h, i, j)) continue;
      if (q_nan || (p.bias.has_value() && std::isnan(bias_at(b, h, i, j)))) return true;
      for (index_t d = 0; d < s.dk; ++d)
        if (std::isnan(k_at(b, j, g, d))) return true;
    }
    return false;
  }

  /// Every input the row depends on is clean (finite, moderate): it must match the oracle.
  bool row_clean(index_t b, index_t h, index_t i) const {
    const index_t g = kv_head(h);
    if (!(std::abs(scale()) * std::sqrt(static_cast<float>(s.dk)) <= 1.5f)) return false;
    if (p.softcap != 0.0f && !(p.softcap >= 0.5f && p.softcap <= 1e4f)) return false;
    if (!slopes.empty() && !(slopes[h] >= 0.0f && slopes[h] * s.seq_k <= 32.0f)) return false;
    if (!sinks.empty() && !(clean(sinks[h]) || sinks[h] == -INFINITY)) return false;
    for (index_t d = 0; d < s.dk; ++d)
      if (!clean(q_at(b, i, h, d), 4.0f)) return false;
    for (index_t j = 0; j < kv_len(b); ++j) {
      const bool vis = visible(b, h, i, j);
      for (index_t d = 0; d < s.dv; ++d)
        if (vis ? !clean(v_at(b, j, g, d))
                : kMaskedValuesMayLeak && !std::isfinite(v_at(b, j, g, d)))
          return false;
      if (!vis) continue;
      for (index_t d = 0; d < s.dk; ++d)
        if (!clean(k_at(b, j, g, d), 4.0f)) return false;
      if (p.bias.has_value() && !clean(bias_at(b, h, i, j))) return false;
    }
    return true;
  }

  // ---- Checks ------------------------------------------------------------------------------

  /// Compares one row of (o, lse) with the oracle.
  void check_row_against_oracle(index_t b, index_t h, index_t i, const char* why) const {
    using tol = attend::testing::tolerance<KV>;
    for (index_t c = 0; c < s.dv; ++c) {
      const double a = o.view(b, i, h, c), e = ref_o.view(b, i, h, c);
      FUZZ_CHECK(close(a, e, tol::atol, tol::rtol), why, ": o[", b, ",", i, ",", h, ",", c,
                 "] = ", a, ", oracle ", e, " | ", desc);
    }
    if (want_lse) {
      const double a = lse.view(b, h, i), e = ref_lse.view(b, h, i);
      FUZZ_CHECK(close(a, e, tol::atol, tol::rtol), why, ": lse[", b, ",", h, ",", i, "] = ", a,
                 ", oracle ", e, " | ", desc);
    }
  }

  /// The checks of the case's mode on the operator's (o, lse).
  void check_outputs() const {
    for (index_t b = 0; b < s.batch; ++b)
      for (index_t h = 0; h < s.heads_q; ++h)
        for (index_t i = 0; i < s.seq_q; ++i) {
          if (m == mode::agreement) {
            check_row_against_oracle(b, h, i, "agreement");
            continue;
          }
          if (row_empty(b, h, i)) {
            for (index_t c = 0; c < s.dv; ++c)
              FUZZ_CHECK(o.view(b, i, h, c) == 0.0f, "row without keys: o[", b, ",", i, ",", h, ",",
                         c, "] = ", o.view(b, i, h, c), " | ", desc);
            if (want_lse)
              FUZZ_CHECK(lse.view(b, h, i) == -INFINITY,
                         "row without keys: lse = ", lse.view(b, h, i), " | ", desc);
          } else if (row_nan_score(b, h, i)) {
            for (index_t c = 0; c < s.dv; ++c)
              FUZZ_CHECK(std::isnan(o.view(b, i, h, c)), "row with a NaN score: o[", b, ",", i, ",",
                         h, ",", c, "] = ", o.view(b, i, h, c), " | ", desc);
            if (want_lse)
              FUZZ_CHECK(std::isnan(lse.view(b, h, i)),
                         "row with a NaN score: lse = ", lse.view(b, h, i), " | ", desc);
          } else if (row_clean(b, h, i)) {
            check_row_against_oracle(b, h, i, "clean row (extreme mode)");
          }
        }
  }
};

/// Checks that only the cells a view addresses changed between `before` (a copy of the buffer
/// taken before the call) and `after`.
template <class T, std::size_t R>
void check_only_view_written(const buffer<T, R>& after,
                             const std::vector<typename buffer<T, R>::cell>& before,
                             const char* name, const std::string& desc) {
  std::vector<char> addressed(after.storage.size(), 0);
  const index_t base = after.view.data() - after.base();
  for_each_index(after.view, [&](const auto&, index_t off) { addressed[base + off] = 1; });
  for (std::size_t n = 0; n < before.size(); ++n)
    if (!addressed[n])
      FUZZ_CHECK(std::memcmp(&before[n], &after.storage[n], sizeof(T)) == 0, name,
                 ": a cell outside the view was written (storage index ", n, ") | ", desc);
}

/// A copy of `b` whose view addresses the copy's storage at the same offsets.
template <class T, std::size_t R>
buffer<T, R> clone(const buffer<T, R>& b) {
  buffer<T, R> c;
  c.storage = b.storage;
  if (b.view.data() != nullptr)
    c.view = tensor_view<T, R>(c.base() + (b.view.data() - b.base()), b.view.extents(),
                               b.view.strides());
  return c;
}

}  // namespace attend::fuzz

#endif  // ATTEND_TESTS_FUZZ_ATTENTION_CASE_HPP_
