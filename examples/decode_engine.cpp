// A toy decode engine: a prompt is prefilled into a KV cache, then tokens are decoded one at a
// time, each step appending its key / value and attending with its query. The attention policy
// is switchable, so the cost of each (tokens per second, KV bytes kept) sits next to what it
// costs in accuracy (its last-step output against dense attention over the whole cache):
//   dense      attend::attention over every cached key
//   quest      Quest page selection (page_metadata kept up to date as tokens are appended)
//   hip        HiP tree-search top-k, one selection per decode query (block_q = 1)
//   streaming  StreamingLLM: sink tokens + recent window, older tokens evicted from the cache
//   duo        DuoAttention: half the KV heads streaming (sinks + recent), half full
// Every sparse policy gets the same budget of keys per head and step, so they differ only in
// which keys they choose. The prompt hides a few spans of "important" keys that every query
// leans towards: attention that keeps them stays close to dense, attention that drops them
// does not. (HiP scores one key block per tree node, so it relies on important keys clustering:
// in a long prompt a narrow span can slip past it; try --tokens 32768.)
//
//   decode_engine [--tokens N=2048] [--steps S=32] [--policy dense|quest|hip|streaming|duo|all]
#include <attend/attend.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

using namespace attend;

namespace {

enum class policy { dense, quest, hip, streaming, duo };
constexpr policy all_policies[] = {policy::dense, policy::quest, policy::hip, policy::streaming,
                                   policy::duo};
const char* name_of(policy p) {
  constexpr const char* names[] = {"dense", "quest", "hip", "streaming", "duo"};
  return names[static_cast<int>(p)];
}

struct sizes {
  index_t tokens = 2048, steps = 32, hq = 8, hkv = 2, d = 64;
};

// Keys per head a sparse policy may attend to each step, and how it is spent: StreamingLLM's
// and DuoAttention's 4 sinks + recent window, HiP's searched top-k + its sliding window.
constexpr index_t budget = 512, sinks = 4, hip_window = 128;
// Prompt tokens appended per prefill chunk: StreamingLLM evicts room for a whole chunk at once,
// which must fit its recent window.
constexpr index_t chunk = 256;

// The synthetic token stream. Keys and values are noise, except for a few spans of the prompt
// whose keys point (with a triangular profile) along a direction u that every query shares:
// those spans hold most of the attention, as retrieved facts do in a long-context prompt. A
// fixed seed makes every policy see exactly the same tokens.
class token_stream {
 public:
  static constexpr index_t spans = 4, span_len = 64;

  explicit token_stream(const sizes& s) : s_(s), rng_(2024), u_(s.d) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    double norm = 0.0;
    for (auto& x : u_) x = normal(rng_);
    for (float x : u_) norm += double(x) * x;
    for (auto& x : u_) x = float(x / std::sqrt(norm));
  }

  // Draws the next token's k, v [hkv * d] and, when q is not null, its q [hq * d] (prompt
  // queries are never used: prefill only fills the cache).
  void next(float* q, float* k, float* v) {
    std::uniform_real_distribution<float> noise(-0.5f, 0.5f);
    const float lift = 16.0f * importance(pos_++);
    for (index_t i = 0; i < s_.hkv * s_.d; ++i) k[i] = noise(rng_) + lift * u_[i % s_.d];
    for (index_t i = 0; i < s_.hkv * s_.d; ++i) v[i] = 2.0f * noise(rng_);
    if (q != nullptr)
      for (index_t i = 0; i < s_.hq * s_.d; ++i) q[i] = noise(rng_) + 4.0f * u_[i % s_.d];
  }

 private:
  // 1 at the centre of a span, falling to 0 at its edges; spans centred at 1/8, 3/8, 5/8 and
  // 7/8 of the prompt, so the last one is recent enough for a sink + window policy to keep.
  float importance(index_t pos) const {
    for (index_t i = 0; i < spans; ++i) {
      const index_t centre = s_.tokens * (2 * i + 1) / (2 * spans);
      const index_t off = std::abs(pos - centre);
      if (off < span_len / 2) return 1.0f - float(off) / float(span_len / 2);
    }
    return 0.0f;
  }

  sizes s_;
  std::mt19937 rng_;
  std::vector<float> u_;
  index_t pos_ = 0;
};

struct result {
  double tokens_per_s = 0.0, kv_bytes = 0.0;
  std::vector<float> last;  // the last decode step's output [hq * d]
};

result run(policy pol, const sizes& s) {
  const index_t hq = s.hq, hkv = s.hkv, d = s.d, row = hkv * d;
  const double row_bytes = 2.0 * double(row) * sizeof(float);  // one token's K + V
  const bool windowed = pol == policy::streaming;

  // Every buffer is sized once, up front: the cache for the longest it will get (the whole
  // stream, or StreamingLLM's sinks + window), the staging rows for one prefill chunk.
  sink::streaming_cache window(sinks, budget - sinks);
  const index_t capacity = windowed ? window.capacity() : s.tokens + s.steps;
  std::vector<float> k_cache(capacity * row), v_cache(capacity * row);
  const auto kc = bshd(k_cache.data(), 1, capacity, hkv, d);
  const auto vc = bshd(v_cache.data(), 1, capacity, hkv, d);
  const view4<const float> k_read = kc, v_read = vc;
  index_t len = 0;

  std::optional<sparse::page_metadata<float>> meta;
  if (pol == policy::quest) meta.emplace(1, hkv, d, capacity);
  sparse::quest_params quest;
  quest.token_budget = budget;
  sparse::hip_params hip;
  hip.k = budget - hip_window;
  hip.window = hip_window;
  hip.block_q = 1;  // decode: each step's single query gets its own selection
  sparse::token_list_buffer lists;
  std::vector<std::uint8_t> streaming_heads(hkv, 0);
  for (index_t h = hkv - hkv / 2; h < hkv; ++h) streaming_heads[h] = 1;
  sink::duo_params duo;
  duo.streaming = make_view<const std::uint8_t>(streaming_heads.data(), hkv);
  duo.sink = sinks;
  duo.recent = budget - sinks;
  sink::duo_report duo_last;
  workspace ws, search_ws;  // reused by every step instead of allocating per call
  attention_params p;
  p.causal = true;
  p.scratch = &ws;
  hip.scratch = &search_ws;

  // Appends n tokens (k, v [1, n, hkv, d]) to the cache.
  auto append = [&](const view4<const float>& k, const view4<const float>& v) {
    const index_t n = k.extent(1);
    if (windowed) {
      // StreamingLLM positions are cache slots, so the kept tokens stay in stream order: room
      // is made by sliding the recent window down over the evicted tokens.
      const auto e = window.evict_for_space(n);
      sink::streaming_cache::move(e, kc);
      sink::streaming_cache::move(e, vc);
      len = window.append(n);
    }
    sink::streaming_cache::write<float>(k, kc, len);
    sink::streaming_cache::write<float>(v, vc, len);
    len += n;
    if (meta) meta->update(k_read, len);  // folds only the new tokens into their pages
  };

  // One decode step's attention: q [1, 1, hq, d] over the cache's valid slots into o.
  auto attend_step = [&](const view4<const float>& q, const view4<float>& o) {
    const auto k = k_read.narrow(1, 0, len), v = v_read.narrow(1, 0, len);
    switch (pol) {
      case policy::dense:
        attention(q, k, v, o, p);
        break;
      case policy::quest:
        sparse::quest_attention(q, k, v, o, *meta, quest, p);
        break;
      case policy::hip:
        sparse::hip_attention(q, k, v, o, lists, hip, {}, &ws);
        break;
      case policy::streaming:
        sink::streaming_attention(q, k, v, o, sink::streaming_params{}, p);
        break;
      case policy::duo:
        duo_last = sink::duo_attention(q, k, v, o, duo, p);
        break;
    }
  };

  token_stream stream(s);
  std::vector<float> k_stage(chunk * row), v_stage(chunk * row);
  for (index_t t = 0; t < s.tokens; t += chunk) {
    const index_t n = std::min(chunk, s.tokens - t);
    for (index_t i = 0; i < n; ++i) stream.next(nullptr, &k_stage[i * row], &v_stage[i * row]);
    append(bshd<const float>(k_stage.data(), 1, n, hkv, d),
           bshd<const float>(v_stage.data(), 1, n, hkv, d));
  }

  // Decode tokens are drawn before the clock starts: tokens/s measures the engine, not the RNG.
  std::vector<float> q(s.steps * hq * d), k(s.steps * row), v(s.steps * row), o(hq * d);
  for (index_t t = 0; t < s.steps; ++t) stream.next(&q[t * hq * d], &k[t * row], &v[t * row]);
  const auto t0 = std::chrono::steady_clock::now();
  for (index_t t = 0; t < s.steps; ++t) {
    append(bshd<const float>(&k[t * row], 1, 1, hkv, d),
           bshd<const float>(&v[t * row], 1, 1, hkv, d));
    attend_step(bshd<const float>(&q[t * hq * d], 1, 1, hq, d), bshd(o.data(), 1, 1, hq, d));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  result r;
  r.tokens_per_s = double(s.steps) / secs;
  r.kv_bytes = double(len) * row_bytes;
  // Quest keeps every token plus each page's channel-wise max and min of the keys.
  if (meta) r.kv_bytes += double(meta->pages(0) * hkv * 2 * d) * sizeof(float);
  // duo_attention reads one full cache for both kinds of heads; a deployment keeps streaming
  // heads in their own sink + recent cache, which is what the report counts.
  if (pol == policy::duo) r.kv_bytes = duo_last.kv_bytes_duo;
  r.last = o;
  return r;
}

int usage() {
  std::fprintf(stderr,
               "usage: decode_engine [--tokens N>=1] [--steps S>=1] "
               "[--policy dense|quest|hip|streaming|duo|all]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  sizes s;
  std::vector<policy> chosen(std::begin(all_policies), std::end(all_policies));
  for (int i = 1; i < argc; ++i) {
    if (i + 1 >= argc) return usage();
    const char* value = argv[++i];
    if (!std::strcmp(argv[i - 1], "--tokens")) {
      s.tokens = std::atol(value);
    } else if (!std::strcmp(argv[i - 1], "--steps")) {
      s.steps = std::atol(value);
    } else if (!std::strcmp(argv[i - 1], "--policy")) {
      if (std::strcmp(value, "all") != 0) {
        const auto* it = std::find_if(std::begin(all_policies), std::end(all_policies),
                                      [&](policy p) { return !std::strcmp(name_of(p), value); });
        if (it == std::end(all_policies)) return usage();
        chosen = {*it};
      }
    } else {
      return usage();
    }
  }
  if (s.tokens < 1 || s.steps < 1) return usage();
  // Dense always runs: it is the reference every other policy's output is measured against.
  if (chosen.front() != policy::dense) chosen.insert(chosen.begin(), policy::dense);

  std::printf(
      "decode engine: %ld-token prompt + %ld decode steps, %ld query / %ld kv heads, dim %ld\n",
      long(s.tokens), long(s.steps), long(s.hq), long(s.hkv), long(s.d));
  std::printf(
      "  %ld spans of %ld important keys in the prompt; sparse policies attend to <= %ld "
      "keys per head\n",
      long(token_stream::spans), long(token_stream::span_len), long(budget));
  std::printf("  %-10s %12s %16s %9s %16s\n", "policy", "tokens/s", "KV kept (bytes)", "vs dense",
              "max |o - dense|");
  result dense;
  bool finite = true;
  for (policy pol : chosen) {
    result r = run(pol, s);
    if (pol == policy::dense) dense = r;
    double worst = 0.0;
    for (std::size_t i = 0; i < r.last.size(); ++i) {
      finite = finite && std::isfinite(r.last[i]);
      worst = std::max(worst, double(std::abs(r.last[i] - dense.last[i])));
    }
    std::printf("  %-10s %12.0f %16.0f %8.1f%% %16.3g\n", name_of(pol), r.tokens_per_s, r.kv_bytes,
                100.0 * r.kv_bytes / dense.kv_bytes, worst);
  }
  double scale = 0.0;
  for (float x : dense.last) scale = std::max(scale, double(std::abs(x)));
  std::printf("  (dense output scale: max |o| = %.3g)\n", scale);
  return finite ? 0 : 1;
}
