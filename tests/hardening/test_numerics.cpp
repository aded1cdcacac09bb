// Numerical robustness of dense attention: logits up to +-1e30, rows whose scores are all -inf,
// subnormal inputs and the flush-to-zero policy of the softmax exp, NaN propagation (a NaN
// reaches exactly the rows that see it), and the floating-point environment left untouched.
// docs/readme_hardening.md states the policies these tests pin down.
#include <gtest/gtest.h>
#include <xmmintrin.h>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "attend/dense/merge.hpp"
#include "dense/dense_case.hpp"

namespace attend::testing {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

template <class KV>
class Numerics : public ::testing::Test {};
using storage_types = ::testing::Types<float, bf16, fp16>;
TYPED_TEST_SUITE(Numerics, storage_types);

// Prefill over two KV tiles and several query tiles; decode long enough for split-K.
const dense_shape kPrefill{2, 70, 75, 4, 2, 16, 16};
const dense_shape kDecode{2, 2, 1500, 4, 2, 32, 32};

template <class KV>
void set(const view4<KV>& v, index_t b, index_t s, index_t h, index_t d, float x) {
  v(b, s, h, d) = from_float<KV>(x);
}

/// An owning contiguous boolean mask [batch, heads, seq_q, seq_k], all true.
struct bool_mask {
  std::unique_ptr<bool[]> data;
  view4<bool> view;
  explicit bool_mask(const std::array<index_t, 4>& e)
      : data(new bool[static_cast<std::size_t>(e[0] * e[1] * e[2] * e[3])]) {
    std::fill(data.get(), data.get() + e[0] * e[1] * e[2] * e[3], true);
    view = view4<bool>::contiguous(data.get(), e);
  }
};

/// Every element of o's row (b, i, h) is NaN.
template <class KV>
bool o_row_nan(const dense_case<KV>& c, index_t b, index_t i, index_t h) {
  for (index_t d = 0; d < c.shape.dv; ++d)
    if (!std::isnan(c.o.view(b, i, h, d))) return false;
  return true;
}
/// No element of o's row (b, i, h) is NaN.
template <class KV>
bool o_row_finite(const dense_case<KV>& c, index_t b, index_t i, index_t h) {
  for (index_t d = 0; d < c.shape.dv; ++d)
    if (!std::isfinite(c.o.view(b, i, h, d))) return false;
  return std::isfinite(c.lse.view(b, h, i)) || c.lse.view(b, h, i) == -kInf;
}

// ---- Huge and infinite logits -------------------------------------------------------------------

/// A [batch, heads, seq_q, seq_k] bias with +1e30 (2 %), -1e30 (28 %) and 0 entries.
tensor<float, 4> huge_bias(const dense_shape& s, float big, unsigned seed) {
  auto bias = tensor<float, 4>::make({s.batch, s.heads_q, s.seq_q, s.seq_k});
  std::mt19937 rng(seed);
  for (float& x : bias.storage) {
    const unsigned r = rng() % 100;
    x = r < 2 ? big : r < 30 ? -big : 0.0f;
  }
  return bias;
}

/// Prefill with scores of +-1e30 (through the bias): rows with +1e30 keys share their mass
/// equally, the others are unaffected; no overflow, no NaN; LSE ~ 1e30.
TYPED_TEST(Numerics, LogitsOfMagnitude1e30) {
  dense_case<TypeParam> c(kPrefill, layout::bshd, 100);
  const auto bias = huge_bias(kPrefill, 1e30f, 101);
  attention_params p;
  p.bias = bias.view;
  p.causal = true;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
}

/// q . k itself of magnitude 1e30 in prefill (f32 and bf16 can store 1e15; fp16 cannot).
TYPED_TEST(Numerics, DotProductsOfMagnitude1e30) {
  if (std::is_same_v<TypeParam, fp16>) GTEST_SKIP() << "fp16 keys cannot hold 1e15";
  const auto s = kPrefill;
  dense_case<TypeParam> c(s, layout::bhsd, 102);
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t j = 0; j < s.seq_k; j += 7)
      for (index_t g = 0; g < s.heads_kv; ++g) set(c.k.view, b, j, g, 0, j % 2 ? 1e15f : -1e15f);
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t i = 0; i < s.seq_q; ++i)
      for (index_t h = 0; h < s.heads_q; ++h) c.q.view(b, i, h, 0) = i % 3 ? 1e15f : -1e15f;
  attention_params p;
  p.scale = 1.0f;
  c.run(p);
  EXPECT_TRUE(c.matches_reference());
}

/// Split-K decode with huge logits does not overflow or produce NaN at any magnitude.
TYPED_TEST(Numerics, SplitKDecodeWithHugeLogitsStaysFinite) {
  for (float big : {1e4f, 1e30f}) {
    dense_case<TypeParam> c(kDecode, layout::bshd, 118);
    const auto bias = huge_bias(kDecode, big, 119);
    attention_params p;
    p.bias = bias.view;
    c.run(p);
    for (float x : c.o.storage) ASSERT_TRUE(std::isfinite(x)) << big;
    for (float x : c.lse.storage) ASSERT_TRUE(std::isfinite(x)) << big;
  }
}

/// KNOWN LIMITATION (reported, not fixed here): split-K decode merges its splits through
/// normalised states (o, lse = m + log l) in float. When the row maximum m is large, log l
/// drowns in the ulp of m (ulp(1e4) ~ 1e-3, ulp(1e30) ~ 1e23), so the splits' weights are off
/// by about |m| * 6e-8 relative: at |m| = 1e4 the error (7e-5) exceeds the tolerance, at 1e30
/// splits are weighted equally whatever their mass. Prefill keeps (m, l) apart and is exact.
/// Enable once the split partials carry (m, log l) separately.
TYPED_TEST(Numerics, DISABLED_SplitKDecodeWithHugeLogitsMatchesReference) {
  for (float big : {1e4f, 1e30f}) {
    dense_case<TypeParam> c(kDecode, layout::bshd, 118);
    const auto bias = huge_bias(kDecode, big, 119);
    attention_params p;
    p.bias = bias.view;
    c.run(p);
    EXPECT_TRUE(c.matches_reference()) << big;
  }
}

/// Rows whose every score is -inf (bias = -inf, not a mask) give o = 0 and lse = -inf like rows
/// with no key; partially -inf rows are ordinary.
TYPED_TEST(Numerics, RowsOfMinusInfinityScores) {
  for (const auto& s : {kPrefill, kDecode}) {
    dense_case<TypeParam> c(s, layout::padded, 103);
    auto bias = tensor<float, 4>::make({s.batch, s.heads_q, s.seq_q, s.seq_k});
    for (index_t b = 0; b < s.batch; ++b)
      for (index_t h = 0; h < s.heads_q; ++h)
        for (index_t i = 0; i < s.seq_q; ++i)
          for (index_t j = 0; j < s.seq_k; ++j)
            bias.view(b, h, i, j) = (i + h) % 3 == 0 || j % 5 == 0 ? -kInf : 0.0f;
    attention_params p;
    p.bias = bias.view;
    c.run(p);
    EXPECT_TRUE(c.matches_reference()) << to_string(s);
    for (index_t b = 0; b < s.batch; ++b)
      for (index_t h = 0; h < s.heads_q; ++h)
        for (index_t i = 0; i < s.seq_q; ++i) {
          if ((i + h) % 3 != 0) continue;
          EXPECT_EQ(c.lse.view(b, h, i), -kInf);
          for (index_t d = 0; d < s.dv; ++d) ASSERT_EQ(c.o.view(b, i, h, d), 0.0f);
        }
  }
}

// ---- Subnormals and the flush-to-zero policy -----------------------------------------------------

/// Compares o with the oracle after scaling both by `unit` (so subnormal outputs are compared
/// relative to their own magnitude, not against an absolute tolerance they would always pass).
template <class KV>
::testing::AssertionResult matches_scaled(const dense_case<KV>& c, double unit, double tol) {
  for (index_t b = 0; b < c.shape.batch; ++b)
    for (index_t i = 0; i < c.shape.seq_q; ++i)
      for (index_t h = 0; h < c.shape.heads_q; ++h)
        for (index_t d = 0; d < c.shape.dv; ++d) {
          const double a = double(c.o.view(b, i, h, d)) * unit, e = c.ref_o.view(b, i, h, d) * unit;
          if (!(std::abs(a - e) <= tol * (1.0 + std::abs(e))))
            return ::testing::AssertionFailure()
                   << "o[" << b << "," << i << "," << h << "," << d << "] = " << a / unit
                   << ", oracle " << e / unit;
        }
  return ::testing::AssertionSuccess();
}

/// Subnormal V: the output is subnormal too and correct to its own precision (neither the
/// inputs nor the results are flushed: attend never sets FTZ/DAZ).
TYPED_TEST(Numerics, SubnormalValues) {
  // float and bf16 share the float exponent range; fp16 has its own subnormals below 6.1e-5.
  const float tiny = std::is_same_v<TypeParam, fp16> ? 3e-6f : 4e-39f;
  for (const auto& s : {kPrefill, kDecode}) {
    dense_case<TypeParam> c(s, layout::bshd, 104);
    std::mt19937 rng(105);
    fill_uniform(c.v.view, rng, tiny, 2 * tiny);
    c.run({});
    EXPECT_TRUE(matches_scaled(c, 1.0 / tiny, 2e-3)) << to_string(s);
    for (float x : c.o.storage) ASSERT_GT(x, 0.0f);  // flushed would be 0
  }
}

/// Subnormal K against huge Q gives moderate scores: K must not be read as zero (DAZ).
TYPED_TEST(Numerics, SubnormalKeysAndQueries) {
  const bool half = std::is_same_v<TypeParam, fp16>;
  const float k_tiny = half ? 2e-6f : 3e-39f, q_big = half ? 4e4f : 3e37f;
  for (const auto& s : {kPrefill, kDecode}) {
    dense_case<TypeParam> c(s, layout::bshd, 106);
    std::mt19937 rng(107);
    fill_uniform(c.k.view, rng, -k_tiny, k_tiny);
    fill_uniform(c.q.view, rng, -q_big, q_big);
    attention_params p;
    p.scale = 1.0f;
    c.run(p);
    EXPECT_TRUE(c.matches_reference()) << to_string(s);
    // and the mirror image: subnormal queries (always float) against ordinary keys
    dense_case<TypeParam> d(s, layout::bhsd, 108);
    fill_uniform(d.q.view, rng, -3e-39f, 3e-39f);
    d.run(p);
    EXPECT_TRUE(d.matches_reference()) << to_string(s);
  }
}

/// The policy: exp in the softmax flushes results below FLT_MIN (arguments below about -87.3)
/// to 0, so a key 100 below the row's maximum gets probability 0, not e^-100 = 3.7e-44. Its
/// contribution is bounded by FLT_MIN * |v| per key: invisible unless |v| is near FLT_MAX.
TEST(NumericsPolicy, SoftmaxFlushesProbabilitiesBelowFltMin) {
  auto q = tensor<float, 4>::make({1, 1, 1, 1}), k = tensor<float, 4>::make({1, 2, 1, 1});
  auto v = tensor<float, 4>::make({1, 2, 1, 1}), o = tensor<float, 4>::make({1, 1, 1, 1});
  q.storage = {1.0f};
  k.storage = {0.0f, -100.0f};
  v.storage = {0.5f, 8.5e37f};
  attention_params p;
  p.scale = 1.0f;
  attention(q.view, k.view, v.view, o.view, p);
  EXPECT_EQ(o.storage[0], 0.5f);  // without the flush: 0.5 + 3.7e-44 * 8.5e37 = 0.5000031
  auto ref = tensor<double, 4>::make({1, 1, 1, 1});
  reference::attention(q.cview(), k.cview(), v.cview(), p, ref.view);
  EXPECT_NEAR(ref.storage[0], 0.5 + std::exp(-100.0) * 8.5e37, 1e-12);
  EXPECT_NEAR(o.storage[0], ref.storage[0], tolerance<float>::atol);
}

/// attend never changes the floating-point environment (FTZ/DAZ, rounding): MXCSR is the same
/// after calls on every path, including in the threads OpenMP runs.
TYPED_TEST(Numerics, FloatingPointEnvironmentUntouched) {
  const unsigned before = _mm_getcsr();
  for (const auto& s : {kPrefill, kDecode}) {
    dense_case<TypeParam> c(s, layout::bshd, 109);
    attention_params p;
    p.softcap = 5.0f;
    c.run(p);
    EXPECT_EQ(_mm_getcsr(), before);
  }
}

// ---- NaN propagation ---------------------------------------------------------------------------

/// A NaN in one key's K row makes exactly the rows that see that key NaN (o and lse); rows that
/// mask it out (causal, window, boolean mask, kv_lens) are unaffected.
TYPED_TEST(Numerics, NanKeyPoisonsExactlyTheRowsThatSeeIt) {
  struct variant {
    const char* name;
    attention_params p;
  };
  const index_t j_nan = 37, g_nan = 1;
  bool_mask mask({1, 1, kPrefill.seq_q, kPrefill.seq_k});
  for (index_t i = 0; i < kPrefill.seq_q; ++i)
    for (index_t j = 0; j < kPrefill.seq_k; ++j) mask.view(0, 0, i, j) = (i + j) % 4 != 0;
  const index_t lens[2] = {75, 30};
  std::vector<variant> variants(5);
  variants[0].name = "causal";
  variants[0].p.causal = true;
  variants[1].name = "window";
  variants[1].p.window_left = 4;
  variants[1].p.window_right = 2;
  variants[2].name = "mask";
  variants[2].p.mask = mask.view;
  variants[3].name = "kv_lens";
  variants[3].p.kv_lens = make_view(lens, 2);
  variants[3].p.causal = true;
  variants[4].name = "none";
  for (const auto& var : variants) {
    for (index_t b_nan : {0, 1}) {
      dense_case<TypeParam> c(kPrefill, layout::bshd, 110);
      set(c.k.view, b_nan, j_nan, g_nan, 3, kNaN);
      c.run(var.p);
      const index_t group = kPrefill.heads_q / kPrefill.heads_kv;
      for (index_t b = 0; b < kPrefill.batch; ++b)
        for (index_t h = 0; h < kPrefill.heads_q; ++h)
          for (index_t i = 0; i < kPrefill.seq_q; ++i) {
            const index_t len = var.p.kv_lens.has_value() ? lens[b] : kPrefill.seq_k;
            const bool sees = b == b_nan && h / group == g_nan &&
                              reference::visible(var.p, b, h, i, len - kPrefill.seq_q + i, j_nan, len);
            if (sees) {
              EXPECT_TRUE(o_row_nan(c, b, i, h) && std::isnan(c.lse.view(b, h, i)))
                  << var.name << ": row b" << b << " h" << h << " i" << i << " sees the NaN key: o "
                  << c.o.view(b, i, h, 0) << ", lse " << c.lse.view(b, h, i);
            } else {
              EXPECT_TRUE(o_row_finite(c, b, i, h))
                  << var.name << ": row b" << b << " h" << h << " i" << i << " masks the NaN key";
            }
          }
      EXPECT_TRUE(c.matches_reference()) << var.name;  // the oracle propagates the same way
    }
  }
}

/// The same through split-K decode, including splits left empty by kv_lens (an empty split's
/// -inf LSE must not hide the NaN of another split when they are merged).
TYPED_TEST(Numerics, NanKeyThroughSplitKDecode) {
  for (index_t len : {1500, 800, 600}) {
    dense_case<TypeParam> c(kDecode, layout::bshd, 111);
    set(c.k.view, 0, 700, 0, 5, kNaN);
    const index_t lens[2] = {len, len};
    attention_params p;
    p.kv_lens = make_view(lens, 2);
    c.run(p);
    for (index_t h = 0; h < kDecode.heads_q; ++h)
      for (index_t i = 0; i < kDecode.seq_q; ++i) {
        const bool sees = h < 2 && len > 700;
        EXPECT_EQ(o_row_nan(c, 0, i, h) && std::isnan(c.lse.view(0, h, i)), sees)
            << "len " << len << " h" << h << " i" << i << ": o " << c.o.view(0, i, h, 0) << ", lse "
            << c.lse.view(0, h, i);
        EXPECT_TRUE(o_row_finite(c, 1, i, h));
      }
    EXPECT_TRUE(c.matches_reference()) << len;
  }
}

/// A NaN in one channel of a key's V row: rows that see the key get NaN in that channel only;
/// their other channels and their LSE stay exact. Keys past kv_lens are never read.
TYPED_TEST(Numerics, NanValueChannelStaysInItsChannel) {
  for (const auto& s : {kPrefill, kDecode}) {
    dense_case<TypeParam> c(s, layout::bhsd, 112);
    const index_t j = s.seq_k - 3, ch = 5;
    for (index_t b = 0; b < s.batch; ++b) set(c.v.view, b, j, 0, ch, kNaN);
    const index_t lens[2] = {s.seq_k, s.seq_k - 10};  // batch 1 never reaches key j
    attention_params p;
    p.kv_lens = make_view(lens, 2);
    c.run(p);
    for (index_t b = 0; b < s.batch; ++b)
      for (index_t h = 0; h < s.heads_q; ++h)
        for (index_t i = 0; i < s.seq_q; ++i)
          for (index_t d = 0; d < s.dv; ++d) {
            const bool nan = b == 0 && h < 2 && d == ch;
            EXPECT_EQ(std::isnan(c.o.view(b, i, h, d)), nan) << b << " " << h << " " << i << " " << d;
          }
    EXPECT_TRUE(c.matches_reference()) << to_string(s);
  }
}

/// A NaN query, a NaN bias entry of a visible pair and a NaN sink poison their own rows only; a
/// NaN bias entry of a masked pair changes nothing; a +inf score makes its row NaN (the
/// softmax of +inf is undefined: attend does not pick that key, it reports NaN).
TYPED_TEST(Numerics, NanQueryBiasAndSinkStayInTheirRows) {
  const auto s = kPrefill;
  dense_case<TypeParam> c(s, layout::bshd, 113);
  c.q.view(1, 20, 3, 0) = kNaN;  // row (b1, h3, i20)
  auto bias = tensor<float, 4>::make({1, s.heads_q, s.seq_q, s.seq_k});
  bias.view(0, 0, 10, 12) = kNaN;   // visible to (h0, i10) under causal (bottom-right: pos 15)
  bias.view(0, 1, 10, 60) = kNaN;   // masked for (h1, i10): key 60 > position 15
  bias.view(0, 2, 40, 3) = kInf;    // +inf score for (h2, i40)
  const float sinks[4] = {0.5f, -1.0f, 0.25f, 0.0f};
  attention_params p;
  p.causal = true;
  p.bias = bias.view;
  p.sinks = make_view(sinks, 4);
  c.run(p);
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads_q; ++h)
      for (index_t i = 0; i < s.seq_q; ++i) {
        const bool nan = (b == 1 && h == 3 && i == 20) || (h == 0 && i == 10) || (h == 2 && i == 40);
        EXPECT_EQ(o_row_nan(c, b, i, h) && std::isnan(c.lse.view(b, h, i)), nan)
            << b << " " << h << " " << i;
        if (!nan) {
          EXPECT_TRUE(o_row_finite(c, b, i, h)) << b << " " << h << " " << i;
        }
      }
  EXPECT_TRUE(c.matches_reference());

  const float nan_sink[4] = {0.5f, kNaN, 0.25f, 0.0f};
  p = {};
  p.sinks = make_view(nan_sink, 4);
  dense_case<TypeParam> d(s, layout::bshd, 114);
  d.run(p);
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.heads_q; ++h)
      for (index_t i = 0; i < s.seq_q; ++i)
        EXPECT_EQ(o_row_nan(d, b, i, h), h == 1) << b << " " << h << " " << i;
  EXPECT_TRUE(d.matches_reference());
}

/// merge_states: a NaN LSE on either side gives a NaN row, even against an empty state.
TEST(NumericsMerge, NanStatesStayNan) {
  auto oa = tensor<float, 4>::make({1, 1, 3, 2}), ob = tensor<float, 4>::make({1, 1, 3, 2});
  auto la = tensor<float, 3>::make({1, 3, 1}), lb = tensor<float, 3>::make({1, 3, 1});
  auto o = tensor<float, 4>::make({1, 1, 3, 2});
  auto l = tensor<float, 3>::make({1, 3, 1});
  la.storage = {kNaN, -kInf, kNaN};
  lb.storage = {-kInf, kNaN, 2.0f};
  oa.storage = {1, 2, 0, 0, 3, 4};
  ob.storage = {0, 0, 5, 6, 7, 8};
  merge_states(oa.cview(), la.cview(), ob.cview(), lb.cview(), o.view, l.view);
  for (float x : l.storage) EXPECT_TRUE(std::isnan(x)) << x;
  for (float x : o.storage) EXPECT_TRUE(std::isnan(x)) << x;
}

/// An Inf in a visible key's V gives +-Inf in that channel, like the oracle.
TYPED_TEST(Numerics, InfiniteValueOfAVisibleKey) {
  dense_case<TypeParam> c(kPrefill, layout::bshd, 115);
  set(c.v.view, 0, 3, 1, 2, kInf);
  c.run({});
  EXPECT_TRUE(c.matches_reference());
  EXPECT_EQ(c.o.view(0, 0, 2, 2), kInf);
}

/// KNOWN BUG (reported, not fixed here): a key masked out for some rows of an engine row block
/// but visible to others still enters those rows' P V product with probability 0, and 0 * Inf
/// or 0 * NaN is NaN: a non-finite V of a masked key poisons rows that never see it. Here rows
/// 0..4 of a causal call do not see key 5, whose V holds a NaN, yet they come out NaN. Enable
/// once the engine skips masked keys in P V (and set kMaskedValuesMayLeak = false in
/// tests/fuzz/attention_case.hpp).
TYPED_TEST(Numerics, DISABLED_MaskedNonFiniteValueDoesNotLeak) {
  for (float bad : {kNaN, kInf}) {
    dense_case<TypeParam> c({1, 8, 8, 1, 1, 16, 16}, layout::bshd, 116);
    set(c.v.view, 0, 5, 0, 3, bad);
    attention_params p;
    p.causal = true;
    c.run(p);
    for (index_t i = 0; i < 5; ++i) EXPECT_TRUE(o_row_finite(c, 0, i, 0)) << "row " << i;
  }
  // Decode: a boolean mask hides key 100 (V = NaN) from every row.
  dense_case<TypeParam> d(kDecode, layout::bshd, 117);
  set(d.v.view, 0, 100, 0, 0, kNaN);
  bool_mask mask({1, 1, kDecode.seq_q, kDecode.seq_k});
  for (index_t i = 0; i < kDecode.seq_q; ++i) mask.view(0, 0, i, 100) = false;
  attention_params p;
  p.mask = mask.view;
  d.run(p);
  for (index_t h = 0; h < kDecode.heads_q; ++h)
    for (index_t i = 0; i < kDecode.seq_q; ++i) EXPECT_TRUE(o_row_finite(d, 0, i, h));
}

}  // namespace
}  // namespace attend::testing
