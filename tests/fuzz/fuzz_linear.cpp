// Fuzz target for attend::linear_attention, causal (chunked) and non-causal, against the
// explicit-weights double oracle of tests/linear/linear_case.hpp (reference_head: products of
// per-token decays, no cumsum, no factorisation), with fuzzed layouts, feature maps, norms,
// scale, eps, per-head decay, per-token log gates, lengths and chunk sizes. Agreement is
// judged against a magnitude computed alongside (the same sums with absolute values), so
// cancellation in unnormalised outputs does not produce false alarms. Causal calls without
// lengths sometimes also run linear_state::step token by token: the recurrent form must agree
// with the chunked one. Extreme mode injects special values: no crash / UB, rows past a
// length stay exactly 0, rows whose inputs are clean still match the oracle. Invalid mode: one
// argument made invalid, attend::invalid_argument naming it, o untouched.
#include "attend/linear/linear.hpp"
#include "attend/linear/state.hpp"
#include "attention_case.hpp"
#include "linear/linear_case.hpp"

namespace attend::fuzz {
namespace {

using testing::fmap;

struct linear_shape {
  index_t batch = 1, seq_q = 1, seq_k = 1, heads = 1, dk = 1, dv = 1;
};

template <class T>
struct linear_fuzz_case {
  mode m = mode::agreement;
  linear_shape s;
  fmap map = fmap::elu1;
  linear_params p;
  buffer<T, 4> q, k, v;
  buffer<float, 4> o;
  std::vector<float> decay, gates;
  std::vector<index_t> lens;
  std::string desc;

  index_t len(index_t b) const { return lens.empty() ? s.seq_k : lens[b]; }
  double scale() const {
    return p.scale ? *p.scale : p.norm == linear_norm::mala ? 1.0 / std::sqrt(double(s.dk)) : 1.0;
  }
};

template <class T>
linear_fuzz_case<T> make_case(input& in, mode m) {
  linear_fuzz_case<T> c;
  c.m = m;
  linear_shape& s = c.s;
  static constexpr index_t dims[] = {1, 2, 3, 4, 5, 8, 13, 16, 17, 32, 33, 64, 80, 128};
  s.batch = in.range(1, 3);
  s.heads = in.range(1, 4);
  s.dk = in.pick(dims);
  s.dv = in.chance(50) ? s.dk : in.pick(dims);
  c.p.causal = in.chance(60);
  s.seq_k = in.chance(50) ? in.range(1, 24) : in.range(1, 300);
  s.seq_q = c.p.causal ? s.seq_k : in.chance(50) ? in.range(1, 24) : in.range(1, 300);
  // The oracle costs batch * heads * seq_q * seq_k * (dk + dv).
  while (s.batch * s.heads * s.seq_q * s.seq_k * (s.dk + s.dv) > kOracleBudget) {
    if (s.dk + s.dv > 24) {
      index_t& d = s.dk >= s.dv ? s.dk : s.dv;
      d = (d + 1) / 2;
    } else if (s.batch > 1) {
      --s.batch;
    } else if (s.heads > 1) {
      --s.heads;
    } else {
      s.seq_k = (s.seq_k + 1) / 2;
      s.seq_q = c.p.causal ? s.seq_k : (s.seq_q + 1) / 2;
    }
  }
  std::ostringstream d;
  d << "B" << s.batch << " Lq" << s.seq_q << " Lk" << s.seq_k << " H" << s.heads << " Dk" << s.dk
    << " Dv" << s.dv << " | ";
  // Norms and maps that keep the oracle well conditioned: a normaliser divides by a sum of
  // positive weights (positive map, positive scale); unnormalised outputs take any map.
  static constexpr linear_norm norms[] = {linear_norm::none, linear_norm::denominator,
                                          linear_norm::mala};
  c.p.norm = in.pick(norms);
  if (c.p.norm == linear_norm::none) {
    static constexpr fmap maps[] = {fmap::identity, fmap::elu1, fmap::relu, fmap::silu};
    c.map = in.pick(maps);
  } else {
    static constexpr fmap maps[] = {fmap::elu1, fmap::elu1, fmap::relu};
    c.map = in.pick(maps);
  }
  if (in.chance(40)) {
    c.p.scale = c.p.norm == linear_norm::none ? in.uniform(-2.0f, 2.0f) : in.uniform(0.1f, 2.0f);
    if (m == mode::extreme && in.chance(30)) {
      static constexpr special scales[] = {special::huge, special::flt_max, special::denormal,
                                           special::zero, special::flt_min};
      c.p.scale = special_value(in.pick(scales));
    }
  }
  if (in.chance(30)) {
    static constexpr float epss[] = {0.0f, 1e-6f, 1e-3f, 1.0f};
    c.p.eps = in.pick(epss);
    if (c.map != fmap::elu1 && c.p.eps == 0.0f) c.p.eps = 1e-6f;  // relu: 0 / 0 otherwise
  }
  const bool decays = c.p.causal && c.p.norm != linear_norm::mala;
  if (decays && in.chance(35)) {
    for (index_t h = 0; h < s.heads; ++h)
      c.decay.push_back(in.chance(20) ? 1.0f : in.uniform(0.5f, 1.0f));
    c.p.decay = make_view<const float>(c.decay.data(), s.heads);
  }
  if (decays && in.chance(35)) {
    static constexpr float lows[] = {0.01f, 0.1f, 0.5f, 2.0f, 10.0f};
    const float lo = in.pick(lows);
    std::mt19937 rng(in.u32());
    std::uniform_real_distribution<float> g(-lo, 0.0f);
    c.gates.resize(static_cast<std::size_t>(s.batch * s.seq_k * s.heads));
    for (auto& x : c.gates) x = rng() % 8 == 0 ? 0.0f : g(rng);
    c.p.log_gates = view3<const float>::contiguous(c.gates.data(), {s.batch, s.seq_k, s.heads});
    d << "gates(" << lo << ") ";
  }
  if (in.chance(30)) {
    for (index_t b = 0; b < s.batch; ++b) {
      const index_t r = in.range(0, 3);
      c.lens.push_back(r == 0 ? 0 : r == 1 ? in.range(0, s.seq_k) : s.seq_k);
    }
    c.p.lengths = make_view<const index_t>(c.lens.data(), s.batch);
  }
  static constexpr index_t chunks[] = {1, 2, 3, 7, 16, 64, 64, 100, 1024};
  c.p.chunk = in.pick(chunks);
  static const char* norm_names[] = {"none", "denominator", "mala"};
  static const char* map_names[] = {"identity", "elu1", "relu", "silu", "squareplus", "square"};
  d << (c.p.causal ? "causal " : "") << norm_names[static_cast<int>(c.p.norm)] << " "
    << map_names[static_cast<int>(c.map)] << " chunk " << c.p.chunk << " eps " << c.p.eps << " ";
  if (c.p.scale) d << "scale " << *c.p.scale << " ";
  if (!c.decay.empty()) d << "decay ";
  for (index_t l : c.lens) d << "len " << l << " ";
  c.desc = d.str();

  c.desc += "q:";
  c.q = make_layout4<T>(in, {s.batch, s.seq_q, s.heads, s.dk}, true, c.desc);
  c.desc += "k:";
  c.k = make_layout4<T>(in, {s.batch, s.seq_k, s.heads, s.dk}, true, c.desc);
  c.desc += "v:";
  c.v = make_layout4<T>(in, {s.batch, s.seq_k, s.heads, s.dv}, true, c.desc);
  c.desc += "o:";
  c.o = make_layout4<float>(in, {s.batch, s.seq_q, s.heads, s.dv}, false, c.desc);

  std::mt19937 rng(in.u32());
  static constexpr float ranges[] = {0.5f, 1.0f, 2.0f};
  std::uniform_real_distribution<float> qk(-in.pick(ranges), 0.0f), unit(-1.0f, 1.0f);
  auto sym = [&] { return rng() % 2 ? qk(rng) : -qk(rng); };
  fill(c.q.view, sym);
  fill(c.k.view, sym);
  fill(c.v.view, [&] { return unit(rng); });
  if (m == mode::extreme) {
    const index_t injections = in.range(1, 6);
    for (index_t n = 0; n < injections; ++n) {
      const float x = special_value(in.pick(kAllSpecials));
      const auto& t = in.range(0, 2) == 0 ? c.q : in.flag() ? c.k : c.v;
      t.view.data()[offset_of_flat(t.view, in.range(0, t.view.size() - 1))] = from_float<T>(x);
    }
  }
  // Tokens past a length are never read: keys (non-causal), or q/k/v rows (causal).
  auto poison_past = [&](const buffer<T, 4>& t, index_t dim) {
    if (t.view.stride(1) == 0) return;  // a broadcast token aliases the valid ones
    for (index_t b = 0; b < s.batch; ++b)
      for (index_t j = c.len(b); j < t.view.extent(1); ++j)
        for (index_t h = 0; h < s.heads; ++h)
          for (index_t e = 0; e < dim; ++e) t.view(b, j, h, e) = poison<T>();
  };
  if (!c.lens.empty()) {
    poison_past(c.k, s.dk);
    poison_past(c.v, s.dv);
    if (c.p.causal) poison_past(c.q, s.dk);
  }
  return c;
}

/// Runs linear_attention with the case's feature map (a compile-time type per fmap).
template <class Body>
void with_map(fmap f, Body&& body) {
  switch (f) {
    case fmap::identity:
      body(linear::identity{});
      break;
    case fmap::relu:
      body(linear::relu{});
      break;
    case fmap::silu:
      body(linear::silu{});
      break;
    default:
      body(linear::elu_plus_one{});
      break;
  }
}

/// Per output element, the oracle's sums with absolute values: the scale of the rounding
/// error a float evaluation of any summation order can make.
template <class T>
void magnitudes(const linear_fuzz_case<T>& c, const view4<double>& mag) {
  const linear_shape& s = c.s;
  const double sc = std::abs(c.scale()), eps = c.p.eps;
  std::vector<double> fk(static_cast<std::size_t>(s.seq_k * s.dk)),
      fq(static_cast<std::size_t>(s.dk));
  std::vector<double> w(static_cast<std::size_t>(s.seq_k));
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads; ++h) {
      for (index_t j = 0; j < s.seq_k; ++j)
        for (index_t d = 0; d < s.dk; ++d)
          fk[j * s.dk + d] = testing::phi_ref(c.map, double(to_float(c.k.view(b, j, h, d))));
      for (index_t i = 0; i < s.seq_q; ++i) {
        for (index_t e = 0; e < s.dv; ++e) mag(b, i, h, e) = 0.0;
        if (c.p.causal && i >= c.len(b)) continue;
        for (index_t d = 0; d < s.dk; ++d)
          fq[d] = testing::phi_ref(c.map, double(to_float(c.q.view(b, i, h, d))));
        const index_t last = c.p.causal ? i : c.len(b) - 1;
        if (last < 0) continue;  // no key (non-causal, length 0): o = 0
        double sum_w = 0.0, decay = 1.0;
        for (index_t j = last; j >= 0; --j) {
          if (c.p.causal && j < last) {
            double a = c.decay.empty() ? 0.0 : std::log(double(c.decay[h]));
            if (!c.gates.empty())
              a += c.gates[static_cast<std::size_t>((b * s.seq_k + j + 1) * s.heads + h)];
            decay *= std::exp(a);
          }
          double dot = 0.0, dot_abs = 0.0;
          for (index_t d = 0; d < s.dk; ++d) {
            dot += fq[d] * fk[j * s.dk + d];
            dot_abs += std::abs(fq[d] * fk[j * s.dk + d]);
          }
          w[j] = decay * dot_abs;
          sum_w += decay * dot;
        }
        const double n = double(last + 1);
        double coef = sc, shift = 0.0;  // |o_e| <= coef Σ_j w_j |v_je| + shift Σ_j |v_je|
        if (c.p.norm == linear_norm::denominator) coef = sc / (sc * sum_w + eps);
        if (c.p.norm == linear_norm::mala) {
          const double z = sc * sum_w / n;
          coef = (1.0 + 1.0 / (z + eps)) * sc / n;
          shift = z / n;
        }
        for (index_t e = 0; e < s.dv; ++e) {
          double acc = 0.0, acc_v = 0.0;
          for (index_t j = 0; j <= last; ++j) {
            const double av = std::abs(double(to_float(c.v.view(b, j, h, e))));
            acc += w[j] * av;
            acc_v += av;
          }
          mag(b, i, h, e) = coef * acc + shift * acc_v;
        }
      }
    }
}

/// Tolerance per unit of magnitude: float rounding over sums of about dk + seq terms.
template <class T>
double rel_tol(const linear_fuzz_case<T>& c) {
  return 2e-6 * std::sqrt(double(c.s.dk + c.s.seq_k)) + 1e-6;
}

/// Inputs of output row (b, i, h) are clean: q_i, every visible key's k and v (and, causal,
/// the keys after i too: the chunked form multiplies them by a zero mask entry).
template <class T>
bool row_clean(const linear_fuzz_case<T>& c, index_t b, index_t i, index_t h) {
  auto ok = [](float x) { return clean(x, 4.0f); };
  if (c.p.scale && !(std::abs(*c.p.scale) <= 2.0f && std::abs(*c.p.scale) >= 1e-3f)) return false;
  for (index_t d = 0; d < c.s.dk; ++d)
    if (!ok(to_float(c.q.view(b, i, h, d)))) return false;
  const index_t last = c.len(b);  // chunk neighbours of a causal row count as inputs too
  for (index_t j = 0; j < last; ++j) {
    for (index_t d = 0; d < c.s.dk; ++d)
      if (!ok(to_float(c.k.view(b, j, h, d)))) return false;
    for (index_t e = 0; e < c.s.dv; ++e)
      if (!ok(to_float(c.v.view(b, j, h, e)))) return false;
  }
  return true;
}

template <class T>
void check_against_oracle(const linear_fuzz_case<T>& c, const view4<const float>& got,
                          const char* what) {
  const linear_shape& s = c.s;
  auto ref = buffer<double, 4>::contiguous({s.batch, s.seq_q, s.heads, s.dv});
  auto mag = buffer<double, 4>::contiguous({s.batch, s.seq_q, s.heads, s.dv});
  testing::ref_config rc;
  rc.map = c.map;
  rc.norm = c.p.norm;
  rc.scale = c.scale();
  rc.eps = c.p.eps;
  rc.causal = c.p.causal;
  for (float x : c.decay) rc.decay.push_back(x);
  testing::reference_all(c.q.cview(), c.k.cview(), c.v.cview(), c.gates, c.lens, rc, ref.view);
  magnitudes(c, mag.view);
  const double tol = rel_tol(c);
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t i = 0; i < s.seq_q; ++i)
      for (index_t h = 0; h < s.heads; ++h) {
        const bool past = c.p.causal && i >= c.len(b);
        if (c.m == mode::extreme && !past && !row_clean(c, b, i, h)) continue;
        for (index_t e = 0; e < s.dv; ++e) {
          const double a = got(b, i, h, e), x = ref.view(b, i, h, e);
          if (past) {
            FUZZ_CHECK(a == 0.0, what, ": row past the length: o[", b, ",", i, ",", h, ",", e,
                       "] = ", a, " | ", c.desc);
            continue;
          }
          FUZZ_CHECK(std::isfinite(a) && std::abs(a - x) <= tol * mag.view(b, i, h, e) + 1e-6, what,
                     ": o[", b, ",", i, ",", h, ",", e, "] = ", a, ", oracle ", x, " (magnitude ",
                     mag.view(b, i, h, e), ", tol ", tol, ") | ", c.desc);
        }
      }
}

template <class T>
void run_valid(input& in, mode m) {
  linear_fuzz_case<T> c = make_case<T>(in, m);
  workspace ws;
  if (in.flag()) c.p.scratch = &ws;
  const bool recurrent = c.p.causal && c.lens.empty() && in.chance(30);
  if (verbose()) std::fprintf(stderr, "%s %s\n", dtype_name<T>(), c.desc.c_str());
  const std::vector<float> o_before = c.o.storage;
  with_map(c.map, [&](auto phi) {
    linear_attention(c.q.cview(), c.k.cview(), c.v.cview(), c.o.view, c.p, phi);
  });
  check_only_view_written(c.o, o_before, "o", c.desc);
  check_against_oracle(c, c.o.cview(), "chunked");

  if (!recurrent) return;
  // The recurrent form, one token per step, must agree with the chunked one.
  const linear_shape& s = c.s;
  auto rec = buffer<float, 4>::contiguous({s.batch, s.seq_q, s.heads, s.dv});
  with_map(c.map, [&](auto phi) {
    linear_params cfg = c.p;
    cfg.log_gates = {};
    cfg.scratch = nullptr;
    linear_state<decltype(phi)> st(s.batch, s.heads, s.dk, s.dv, cfg, phi);
    for (index_t t = 0; t < s.seq_q; ++t) {
      const view3<const float> g =
          c.gates.empty() ? view3<const float>{} : c.p.log_gates.narrow(1, t, 1);
      st.step(c.q.cview().narrow(1, t, 1), c.k.cview().narrow(1, t, 1), c.v.cview().narrow(1, t, 1),
              rec.view.narrow(1, t, 1), g);
    }
  });
  check_against_oracle(c, rec.cview(), "recurrent");
}

template <class T>
void run_invalid(input& in) {
  linear_fuzz_case<T> c = make_case<T>(in, mode::agreement);
  const linear_shape& s = c.s;
  view4<const T> q = c.q.cview(), k = c.k.cview(), v = c.v.cview();
  view4<float> o = c.o.view;
  linear_params p = c.p;
  std::vector<float> vec;
  std::vector<index_t> lens;
  buffer<T, 4> k2;
  buffer<float, 4> o2;
  std::string what, needle;
  const bool mala = p.norm == linear_norm::mala;
  switch (in.range(0, 13)) {
    case 0:
      if (!p.causal || mala) {
        what = "decay without causal or with mala";
        needle = !p.causal ? "decay needs causal" : "mala has no decay";
        vec.assign(static_cast<std::size_t>(s.heads), 0.9f);
      } else {
        what = "decay outside (0, 1]";
        needle = "is outside (0, 1]";
        vec.assign(static_cast<std::size_t>(s.heads), 0.9f);
        static constexpr float bad[] = {0.0f, -0.5f, 1.0001f, 2.0f, NAN, INFINITY};
        vec[static_cast<std::size_t>(in.range(0, s.heads - 1))] = in.pick(bad);
      }
      p.decay = make_view<const float>(vec.data(), s.heads);
      break;
    case 1:
      vec.assign(static_cast<std::size_t>(s.batch * s.seq_k * s.heads), -0.1f);
      p.log_gates = view3<const float>::contiguous(vec.data(), {s.batch, s.seq_k, s.heads});
      if (!p.causal || mala) {
        what = "gates without causal or with mala";
        needle = !p.causal ? "log_gates need causal" : "mala has no gates";
      } else {
        what = "gate > 0 or non-finite";
        needle = "must be finite and <= 0";
        static constexpr float bad[] = {0.5f, 1e-30f, NAN, -INFINITY, INFINITY};
        vec[static_cast<std::size_t>(in.range(0, static_cast<index_t>(vec.size()) - 1))] =
            in.pick(bad);
      }
      break;
    case 2:
      what = "chunk outside [1, 1024]";
      needle = "chunk (";
      p.chunk = in.flag() ? -in.range(0, 10) : 1025 + in.range(0, 1000);
      break;
    case 3: {
      what = "bad eps";
      needle = "eps (";
      static constexpr float bad[] = {-1e-6f, -1.0f, NAN, INFINITY};
      p.eps = in.pick(bad);
      break;
    }
    case 4: {
      what = "non-finite scale";
      needle = "scale must be finite";
      static constexpr float bad[] = {NAN, INFINITY, -INFINITY};
      p.scale = in.pick(bad);
      break;
    }
    case 5:
      what = "lengths out of range";
      needle = "lengths[";
      lens.assign(static_cast<std::size_t>(s.batch), s.seq_k);
      lens[static_cast<std::size_t>(in.range(0, s.batch - 1))] =
          in.flag() ? s.seq_k + in.range(1, 100) : -in.range(1, 100);
      p.lengths = make_view<const index_t>(lens.data(), s.batch);
      break;
    case 6:
      if (s.seq_q == 1 && s.seq_k == 1) {
        what = "null k";
        needle = "k is null";
        k = view4<const T>(nullptr, k.extents(), k.strides());
        break;
      }
      what = "causal with seq_q != seq_k";
      needle = "causal linear attention needs";
      p.causal = true;
      if (s.seq_q == s.seq_k) {  // drop the last query
        q = q.narrow(1, 0, s.seq_q - 1);
        o = o.narrow(1, 0, s.seq_q - 1);
      }
      break;
    case 7:
      what = "heads of k differ";
      needle = "heads of q";
      k2 = buffer<T, 4>::contiguous({s.batch, s.seq_k, s.heads + in.range(1, 2), s.dk});
      fill(k2.view, [] { return 0.0f; });
      k = k2.cview();
      break;
    case 8:
      what = "head dim of k differs";
      needle = "head dim of k";
      k2 = buffer<T, 4>::contiguous({s.batch, s.seq_k, s.heads, s.dk + in.range(1, 3)});
      fill(k2.view, [] { return 0.0f; });
      k = k2.cview();
      break;
    case 9: {
      what = "o extents";
      needle = "o has extents";
      std::array<index_t, 4> e{s.batch, s.seq_q, s.heads, s.dv};
      e[static_cast<std::size_t>(in.range(0, 3))] += 1;
      o2 = buffer<float, 4>::contiguous(e);
      o = o2.view;
      break;
    }
    case 10:
      what = "null q";
      needle = "q is null";
      q = view4<const T>(nullptr, q.extents(), q.strides());
      break;
    case 11:
      what = "null o";
      needle = "o is null";
      o = view4<float>(nullptr, o.extents(), o.strides());
      break;
    case 12:
      what = "negative stride of v";
      needle = "v has a negative stride";
      v = view4<const T>(v.data(), v.extents(),
                         {v.stride(0), -1 - in.range(0, 5), v.stride(2), v.stride(3)});
      break;
    default:
      if constexpr (std::is_same_v<T, float>) {
        what = "o overlapping q";
        needle = "o overlaps input q";
        o = view4<float>(const_cast<float*>(q.data()), o.extents(), o.strides());
        break;
      }
      what = "empty axis of k";
      needle = "k has an empty axis";
      k = view4<const T>(k.data(), {s.batch, 0, s.heads, s.dk}, k.strides());
      break;
  }
  std::vector<watched_bytes> watched{watch(c.o)};
  if (o2.view.has_value()) watched.push_back(watch(o2));
  if (std::string(needle) == "o overlaps input q") watched.push_back(watch(c.q));
  if (verbose()) std::fprintf(stderr, "invalid: %s | %s\n", what.c_str(), c.desc.c_str());
  with_map(c.map, [&](auto phi) {
    expect_rejected(
        what.c_str(), [&] { linear_attention(q, k, v, o, p, phi); }, needle, watched);
  });
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
