// Fuzz target for two operators of the sink family, each over an attention_case (shape,
// layouts, every attention_params option, values; see attention_case.hpp):
//   gated_attention  o = attention * sigmoid(gate), headwise or elementwise gates in any
//                    layout; oracle: reference::attention times the sigmoid computed in double
//                    (lse is the ungated one)
//   duo_attention    retrieval KV heads attend as p says, streaming KV heads only to keys
//                    j <= p_i with j < sink or p_i - j < recent (positions bottom-right
//                    aligned); oracle: reference::attention whose boolean mask is the case's
//                    mask AND that rule per KV head; the returned duo_report is sanity-checked
// Invalid mode: the mutations of attention_invalid.hpp plus each operator's own arguments
// (gate extents / null / aliasing o; streaming extents / null, negative sink, recent < 1).
#include "attend/sink/duo.hpp"
#include "attend/sink/gate.hpp"
#include "attention_case.hpp"
#include "attention_invalid.hpp"

namespace attend::fuzz {
namespace {

workspace& shared_workspace() {
  static workspace ws;
  return ws;
}

/// A gate [batch, seq_q, heads_q, 1 | dv] in a fuzzed layout with logits in [-6, 6]; extreme
/// mode mixes in +-inf, +-1e30, FLT_MAX and subnormals (NaN gates are not drawn: a NaN gate
/// makes the rows NaN whatever the row facts of attention_case predict).
buffer<float, 4> draw_gate(input& in, const attention_shape& s, mode m, std::string& desc) {
  const bool elementwise = in.flag();
  desc += elementwise ? "gate[dv]:" : "gate[1]:";
  buffer<float, 4> g =
      make_layout4<float>(in, {s.batch, s.seq_q, s.heads_q, elementwise ? s.dv : 1}, true, desc);
  std::mt19937 rng(in.u32());
  std::uniform_real_distribution<float> logit(-6.0f, 6.0f);
  static constexpr special extremes[] = {
      special::pos_inf,  special::neg_inf,      special::huge, special::neg_huge, special::flt_max,
      special::denormal, special::min_denormal, special::zero, special::neg_zero};
  const bool wild = m == mode::extreme && in.flag();
  fill(g.view, [&] {
    return wild && rng() % 4 == 0 ? special_value(extremes[rng() % std::size(extremes)])
                                  : logit(rng);
  });
  return g;
}

template <class KV>
void run_gated(input& in, mode m) {
  attention_case<KV> c = attention_case<KV>::make(in, m);
  const buffer<float, 4> gate = draw_gate(in, c.s, m, c.desc);
  if (in.flag()) c.p.scratch = &shared_workspace();
  if (verbose()) std::fprintf(stderr, "gated %s %s\n", dtype_name<KV>(), c.desc.c_str());

  const std::vector<float> o_before = c.o.storage, lse_before = c.lse.storage;
  sink::gated_attention(c.qv, c.kv, c.vv, c.o.view, gate.cview(), c.p);
  check_only_view_written(c.o, o_before, "o", c.desc);
  if (c.want_lse) check_only_view_written(c.lse, lse_before, "lse", c.desc);

  c.run_oracle();
  const bool per_channel = gate.view.extent(3) != 1;
  for (index_t b = 0; b < c.s.batch; ++b)
    for (index_t i = 0; i < c.s.seq_q; ++i)
      for (index_t h = 0; h < c.s.heads_q; ++h)
        for (index_t e = 0; e < c.s.dv; ++e) {
          const double g = gate.view(b, i, h, per_channel ? e : 0);
          c.ref_o.view(b, i, h, e) *= 1.0 / (1.0 + std::exp(-g));
        }
  c.check_outputs();
}

template <class KV>
void run_duo(input& in, mode m) {
  attention_case<KV> c = attention_case<KV>::make(in, m);
  const attention_shape& s = c.s;
  std::vector<std::uint8_t> streaming(static_cast<std::size_t>(s.heads_kv));
  const int percent = static_cast<int>(in.range(0, 100));
  for (auto& f : streaming)
    f = in.chance(percent) ? static_cast<std::uint8_t>(in.range(1, 255)) : 0;
  sink::duo_params d;
  d.streaming = make_view<const std::uint8_t>(streaming.data(), s.heads_kv);
  static constexpr index_t sinks[] = {0, 1, 2, 4, 64};
  static constexpr index_t recents[] = {1, 2, 3, 16, 256};
  d.sink = in.chance(30) ? in.range(0, s.seq_k + 1) : in.pick(sinks);
  d.recent = in.chance(30) ? in.range(1, s.seq_k + 2) : in.pick(recents);
  std::ostringstream os;
  os << "duo{sink " << d.sink << " recent " << d.recent << " streaming";
  for (auto f : streaming) os << " " << int(f != 0);
  os << "} ";
  c.desc += os.str();
  if (in.flag()) c.p.scratch = &shared_workspace();
  if (verbose()) std::fprintf(stderr, "duo %s %s\n", dtype_name<KV>(), c.desc.c_str());

  const std::vector<float> o_before = c.o.storage, lse_before = c.lse.storage;
  const sink::duo_report r = sink::duo_attention(c.qv, c.kv, c.vv, c.o.view, d, c.p);
  check_only_view_written(c.o, o_before, "o", c.desc);
  if (c.want_lse) check_only_view_written(c.lse, lse_before, "lse", c.desc);

  index_t n_stream = 0;
  for (auto f : streaming) n_stream += f != 0;
  FUZZ_CHECK(r.streaming_heads == n_stream && r.retrieval_heads == s.heads_kv - n_stream,
             "duo_report head counts ", r.streaming_heads, "/", r.retrieval_heads, " | ", c.desc);
  FUZZ_CHECK(r.pairs_duo <= r.pairs_full && r.kv_bytes_duo <= r.kv_bytes_full &&
                 r.work_saved >= 0.0 && r.work_saved <= 1.0 && r.memory_saved >= 0.0 &&
                 r.memory_saved <= 1.0,
             "duo_report out of range: pairs ", r.pairs_duo, " / ", r.pairs_full, ", bytes ",
             r.kv_bytes_duo, " / ", r.kv_bytes_full, " | ", c.desc);

  // The oracle's mask: the case's mask AND, for streaming KV heads, sink + recent (causal).
  auto both = buffer<bool, 4>::contiguous({s.batch, s.heads_q, s.seq_q, s.seq_k});
  const index_t group = s.heads_q / s.heads_kv;
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads_q; ++h)
      for (index_t i = 0; i < s.seq_q; ++i) {
        const index_t pos = c.qpos(b, i);
        for (index_t j = 0; j < s.seq_k; ++j) {
          bool keep = !streaming[h / group] || (j <= pos && (j < d.sink || pos - j < d.recent));
          if (keep && c.p.mask.has_value())
            keep = c.p.mask(c.p.mask.extent(0) == 1 ? 0 : b, c.p.mask.extent(1) == 1 ? 0 : h, i, j);
          both.view(b, h, i, j) = keep;
        }
      }
  c.p.mask = both.view;
  c.run_oracle();
  c.check_outputs();
}

template <class KV>
void run_invalid(input& in, bool gated) {
  const attention_case<KV> c = attention_case<KV>::make(in, mode::invalid);
  const attention_shape& s = c.s;
  std::string dummy;
  buffer<float, 4> gate = draw_gate(in, s, mode::agreement, dummy);
  std::vector<std::uint8_t> streaming(static_cast<std::size_t>(s.heads_kv), 1);
  sink::duo_params d;
  d.streaming = make_view<const std::uint8_t>(streaming.data(), s.heads_kv);
  d.sink = 4;
  d.recent = 16;
  if (in.chance(60)) {  // an attention argument made invalid
    invalid_call<KV> x = make_invalid(in, c);
    if (verbose()) std::fprintf(stderr, "invalid: %s | %s\n", x.what.c_str(), c.desc.c_str());
    if (gated)
      expect_rejected(
          x.what.c_str(), [&] { sink::gated_attention(x.q, x.k, x.v, x.o, gate.cview(), x.p); },
          x.needle, x.watched);
    else
      expect_rejected(
          x.what.c_str(), [&] { (void)sink::duo_attention(x.q, x.k, x.v, x.o, d, x.p); }, x.needle,
          x.watched);
    return;
  }
  std::vector<watched_bytes> watched{watch(c.o)};
  if (c.want_lse) watched.push_back(watch(c.lse));
  std::string what, needle;
  view4<const float> g = gate.cview();
  view4<float> o = c.o.view;
  buffer<float, 4> g2, raw;
  std::vector<std::uint8_t> streaming2;
  if (gated) {
    switch (in.range(0, 2)) {
      case 0: {
        what = "gate extents";
        needle = "gate has extents";
        std::array<index_t, 4> e{s.batch, s.seq_q, s.heads_q, s.dv};
        const std::size_t axis = static_cast<std::size_t>(in.range(0, 3));
        e[axis] += axis == 3 && s.dv == 1 ? 1 : in.range(1, 2);
        g2 = buffer<float, 4>::contiguous(e);
        g = g2.cview();
        break;
      }
      case 1:
        what = "null gate";
        needle = "gate is null";
        g = view4<const float>(nullptr, g.extents(), g.strides());
        break;
      default: {  // o and gate in one allocation, overlapping
        what = "o overlapping gate";
        needle = "o overlaps input gate";
        const index_t span = o.required_span_size();
        raw = buffer<float, 4>::contiguous(
            {1, 1, 1, span + 4 * s.batch * s.seq_q * s.heads_q * s.dv + 8});
        o = view4<float>(raw.base(), o.extents(), o.strides());
        g = view4<const float>::contiguous(raw.base() + in.range(0, std::max<index_t>(0, span - 1)),
                                           {s.batch, s.seq_q, s.heads_q, 1});
        watched.push_back(watch(raw));
        break;
      }
    }
    if (verbose()) std::fprintf(stderr, "invalid: %s | %s\n", what.c_str(), c.desc.c_str());
    const attention_params p = c.p;
    expect_rejected(
        what.c_str(), [&] { sink::gated_attention(c.qv, c.kv, c.vv, o, g, p); }, needle, watched);
    return;
  }
  switch (in.range(0, 3)) {
    case 0:
      what = "streaming extents";
      needle = "streaming has extents";
      streaming2.assign(static_cast<std::size_t>(s.heads_kv + 2), 0);
      d.streaming = make_view<const std::uint8_t>(streaming2.data(), s.heads_kv + in.range(1, 2));
      break;
    case 1:
      what = "null streaming";
      needle = "streaming is null";
      d.streaming = view1<const std::uint8_t>(nullptr, {s.heads_kv}, {1});
      break;
    case 2:
      what = "negative sink";
      needle = "must be >= 0 and recent";
      d.sink = -in.range(1, 100);
      break;
    default:
      what = "recent < 1";
      needle = "must be >= 0 and recent";
      d.recent = -in.range(0, 100);
      break;
  }
  if (verbose()) std::fprintf(stderr, "invalid: %s | %s\n", what.c_str(), c.desc.c_str());
  const attention_params p = c.p;
  expect_rejected(
      what.c_str(), [&] { (void)sink::duo_attention(c.qv, c.kv, c.vv, o, d, p); }, needle, watched);
}

template <class KV>
void run(input& in, mode m) {
  const bool gated = in.flag();
  if (m == mode::invalid)
    run_invalid<KV>(in, gated);
  else if (gated)
    run_gated<KV>(in, m);
  else
    run_duo<KV>(in, m);
}

}  // namespace
}  // namespace attend::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace attend::fuzz;
  return run_target(data, size,
                    [](auto tag, input& in, mode m) { run<typename decltype(tag)::type>(in, m); });
}
