// Selection utilities shared by the block-level and token-level sparse selectors: top-k, the
// cumulative-mass budget (FlexPrefill, VMoBA, ProxyAttn), pooling of key/query rows into block
// representatives (mean / max / min / sum), softmax over a score vector and the Jensen-Shannon
// divergence (FlexPrefill's pattern test). Plain scalar code over caller-owned arrays: these run
// on pooled or probed scores, a small fraction of the attention they drive; only top_k_long,
// which scans a score per cached token at decode, uses SIMD.
//
// Conventions: scores are float; -inf (or NaN) marks an entry that must never be chosen (masked
// by causality, say); index lists come back sorted ascending, the order block_mask rows and
// gather lists use; ties go to the lower index, so results never depend on sort stability.
#ifndef ATTEND_SPARSE_SELECT_COMMON_HPP_
#define ATTEND_SPARSE_SELECT_COMMON_HPP_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../../core/dtype.hpp"
#include "../../core/error.hpp"
#include "../../core/tensor_view.hpp"
#include "../../simd/xsimd_compat.hpp"

namespace attend::sparse::select {

namespace detail {

/// Strict "a ranks before b" for descending selection: larger value first, then lower index;
/// non-selectable values (NaN, -inf) rank last.
inline bool ranks_before(float va, index_t a, float vb, index_t b) noexcept {
  const bool oka = va > -std::numeric_limits<float>::infinity();  // false for NaN and -inf
  const bool okb = vb > -std::numeric_limits<float>::infinity();
  if (oka != okb) return oka;
  if (oka && va != vb) return va > vb;
  return a < b;
}

inline bool selectable(float v) noexcept { return v > -std::numeric_limits<float>::infinity(); }

}  // namespace detail

/// Indices of all n entries ordered by descending value (ties: lower index first; NaN and -inf
/// last). \param order [n] output.
inline void argsort_desc(const float* values, index_t n, index_t* order) {
  std::iota(order, order + n, index_t{0});
  std::sort(order, order + n, [values](index_t a, index_t b) {
    return detail::ranks_before(values[a], a, values[b], b);
  });
}

/// The k largest entries of scores[0, n): their indices, ascending, written to out (room for
/// min(k, n)); returns how many were written: min(k, number of selectable entries). Entries
/// that are NaN or -inf are never chosen; ties go to the lower index. O(n) on average.
/// `scratch` (room for n indices) avoids the allocation of the overload without it, for
/// callers inside parallel loops. Never throws when n, k >= 0.
inline index_t top_k(const float* scores, index_t n, index_t k, index_t* out,
                     index_t* scratch) noexcept {
  index_t valid = 0;
  for (index_t i = 0; i < n; ++i) valid += detail::selectable(scores[i]) ? 1 : 0;
  k = std::min(k, valid);
  if (k <= 0) return 0;
  if (k == valid) {  // every selectable entry
    index_t c = 0;
    for (index_t i = 0; i < n; ++i)
      if (detail::selectable(scores[i])) out[c++] = i;
    return c;
  }
  std::iota(scratch, scratch + n, index_t{0});
  std::nth_element(scratch, scratch + (k - 1), scratch + n, [scores](index_t a, index_t b) {
    return detail::ranks_before(scores[a], a, scores[b], b);
  });
  std::copy(scratch, scratch + k, out);
  std::sort(out, out + k);
  return k;
}

inline index_t top_k(const float* scores, index_t n, index_t k, index_t* out) {
  ATTEND_CHECK(n >= 0 && k >= 0, "select::top_k: n (", n, ") and k (", k, ") must be >= 0");
  std::vector<index_t> scratch(static_cast<std::size_t>(n));
  return top_k(scores, n, k, out, scratch.data());
}

/// top_k returning a vector (indices ascending).
inline std::vector<index_t> top_k(const float* scores, index_t n, index_t k) {
  std::vector<index_t> out(static_cast<std::size_t>(std::max<index_t>(0, std::min(k, n))));
  out.resize(static_cast<std::size_t>(top_k(scores, n, k, out.data())));
  return out;
}

/// The cumulative-mass budget: the smallest count c such that the c largest of the n
/// non-negative weights sum to at least gamma times their total (gamma in [0, 1]). Returns 0 when
/// the total is 0 (or gamma is 0). Negative, NaN and -inf weights count as 0. Prefix sums
/// within a relative 1e-6 of the target count as reaching it.
inline index_t mass_budget(const float* weights, index_t n, double gamma) {
  ATTEND_CHECK(gamma >= 0.0 && gamma <= 1.0, "select::mass_budget: gamma (", gamma,
               ") must be in [0, 1]");
  std::vector<float> w(weights, weights + n);
  double total = 0.0;
  for (float& x : w) {
    if (!(x > 0.0f)) x = 0.0f;
    total += x;
  }
  if (total <= 0.0 || gamma <= 0.0) return 0;
  std::sort(w.begin(), w.end(), [](float a, float b) { return a > b; });
  const double target = gamma * total;
  double acc = 0.0;
  for (index_t c = 0; c < n; ++c) {
    acc += w[c];
    // Relative slack of float precision: a prefix that reaches the target in exact arithmetic
    // (whole softmax rows summing to gamma * rows, gamma = 1) must not miss it by rounding.
    if (acc >= target * (1.0 - 1e-6)) return c + 1;
  }
  return n;
}

/// The smallest set of largest weights holding gamma of the mass (mass_budget), its size clamped
/// to [min_count, max_count] (and to the selectable entries); indices ascending into out (room
/// for n). Returns the count. Weights that are NaN or -inf are never chosen.
inline index_t top_mass(const float* weights, index_t n, double gamma, index_t min_count,
                        index_t max_count, index_t* out) {
  ATTEND_CHECK(min_count >= 0 && max_count >= min_count, "select::top_mass: need 0 <= min_count (",
               min_count, ") <= max_count (", max_count, ")");
  const index_t c = std::clamp(mass_budget(weights, n, gamma), min_count, max_count);
  return top_k(weights, n, c, out);
}

/// How pool_rows reduces the rows of one block.
enum class pool_mode { mean, sum, max, min };

/// Pools the rows of x [rows, dim] (any storage type, strided rows, contiguous dim) in groups
/// of `block` consecutive rows: out [ceil(rows / block), dim] row-major floats. The last group
/// may be shorter; mean divides by its true length.
template <class T>
void pool_rows(const tensor_view<const T, 2>& x, index_t block, pool_mode mode, float* out) {
  ATTEND_CHECK(block > 0, "select::pool_rows: block (", block, ") must be > 0");
  const index_t rows = x.extent(0), dim = x.extent(1);
  const index_t blocks = (rows + block - 1) / block;
  for (index_t b = 0; b < blocks; ++b) {
    float* o = out + b * dim;
    const index_t r0 = b * block, r1 = std::min(rows, r0 + block);
    for (index_t d = 0; d < dim; ++d) o[d] = to_float(x(r0, d));
    for (index_t r = r0 + 1; r < r1; ++r) {
      const T* row = x.data() + r * x.stride(0);
      switch (mode) {
        case pool_mode::mean:
        case pool_mode::sum:
          for (index_t d = 0; d < dim; ++d) o[d] += to_float(row[d * x.stride(1)]);
          break;
        case pool_mode::max:
          for (index_t d = 0; d < dim; ++d) o[d] = std::max(o[d], to_float(row[d * x.stride(1)]));
          break;
        case pool_mode::min:
          for (index_t d = 0; d < dim; ++d) o[d] = std::min(o[d], to_float(row[d * x.stride(1)]));
          break;
      }
    }
    if (mode == pool_mode::mean) {
      const float inv = 1.0f / static_cast<float>(r1 - r0);
      for (index_t d = 0; d < dim; ++d) o[d] *= inv;
    }
  }
}

/// Pools a vector v[0, n) in groups of `block` entries: out [ceil(n / block)]. -inf entries
/// count as 0 in sum/mean (masked mass) and are skipped by max/min.
inline void pool_vector(const float* v, index_t n, index_t block, pool_mode mode, float* out) {
  ATTEND_CHECK(block > 0, "select::pool_vector: block (", block, ") must be > 0");
  const float inf = std::numeric_limits<float>::infinity();
  for (index_t b = 0, i0 = 0; i0 < n; ++b, i0 += block) {
    const index_t i1 = std::min(n, i0 + block);
    float acc = mode == pool_mode::max ? -inf : mode == pool_mode::min ? inf : 0.0f;
    for (index_t i = i0; i < i1; ++i) {
      const float x = v[i];
      switch (mode) {
        case pool_mode::mean:
        case pool_mode::sum: acc += x == -inf ? 0.0f : x; break;
        case pool_mode::max: acc = std::max(acc, x); break;
        case pool_mode::min:
          if (x != -inf) acc = std::min(acc, x);
          break;
      }
    }
    out[b] = mode == pool_mode::mean ? acc / static_cast<float>(i1 - i0) : acc;
  }
}

/// Softmax of x[0, n) in place (-inf entries get 0); returns the log-sum-exp. A vector of only
/// -inf becomes all zeros and returns -inf.
inline float softmax(float* x, index_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (index_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  if (m == -std::numeric_limits<float>::infinity()) {
    std::fill(x, x + n, 0.0f);
    return m;
  }
  double sum = 0.0;
  for (index_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (index_t i = 0; i < n; ++i) x[i] *= inv;
  return m + static_cast<float>(std::log(sum));
}

/// Jensen-Shannon divergence (natural log) of two distributions given as non-negative weights
/// p[0, n), q[0, n), each normalised here: 0.5 KL(p || m) + 0.5 KL(q || m), m = (p + q) / 2.
/// In [0, ln 2]. A weight vector summing to 0 is taken as uniform.
inline double js_divergence(const float* p, const float* q, index_t n) {
  double sp = 0.0, sq = 0.0;
  for (index_t i = 0; i < n; ++i) {
    sp += std::max(0.0f, p[i]);
    sq += std::max(0.0f, q[i]);
  }
  const double up = 1.0 / static_cast<double>(n);
  double js = 0.0;
  for (index_t i = 0; i < n; ++i) {
    const double a = sp > 0.0 ? std::max(0.0f, p[i]) / sp : up;
    const double b = sq > 0.0 ? std::max(0.0f, q[i]) / sq : up;
    const double m = 0.5 * (a + b);
    if (a > 0.0) js += 0.5 * a * std::log(a / m);
    if (b > 0.0) js += 0.5 * b * std::log(b / m);
  }
  return std::max(0.0, js);
}

/// sqrt(js_divergence): the Jensen-Shannon distance FlexPrefill compares with tau.
inline double js_distance(const float* p, const float* q, index_t n) {
  return std::sqrt(js_divergence(p, q, n));
}

namespace detail {

/// Order-preserving map of a float that is not NaN to int32: a < b exactly when
/// key(a) < key(b), a == b exactly when key(a) == key(b). Negative floats flip their magnitude
/// bits so that they count down.
inline std::int32_t ordered_key(float x) noexcept {
  x += 0.0f;  // -0 -> +0: equal floats get equal keys
  std::int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i < 0 ? i ^ 0x7fffffff : i;
}

inline float from_ordered_key(std::int32_t key) noexcept {
  const std::int32_t i = key < 0 ? key ^ 0x7fffffff : key;
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}

// The streaming passes of top_k_long, written with xsimd: GCC 12 at -O2 leaves the plain loops
// scalar (a conditional max, a conditional count).
using stream_arch = xsimd::default_arch;

/// acc[i] = max(acc[i], x[i]) for i < n (NaN in x never wins).
inline void max_into(float* acc, const float* x, index_t n) noexcept {
  using V = simd::vfloat<stream_arch>;
  constexpr index_t w = simd::lanes<stream_arch>;
  index_t i = 0;
  for (; i + w <= n; i += w) {
    const V a = V::load_unaligned(acc + i), b = V::load_unaligned(x + i);
    xsimd::select(a < b, b, a).store_unaligned(acc + i);
  }
  for (; i < n; ++i) acc[i] = acc[i] < x[i] ? x[i] : acc[i];
}

/// Lane-wise int32 totals of a register of counts.
inline index_t total(const simd::vint<stream_arch>& counts) noexcept {
  alignas(64) std::int32_t lane[simd::lanes<stream_arch>];
  counts.store_aligned(lane);
  index_t sum = 0;
  for (index_t l = 0; l < simd::lanes<stream_arch>; ++l) sum += lane[l];
  return sum;
}

/// How many of x[0, n) are >= t (n < 2^31 per lane count).
template <class T>
index_t count_at_least(const T* x, index_t n, T t) noexcept {
  using B = xsimd::batch<T, stream_arch>;
  using VI = simd::vint<stream_arch>;
  constexpr index_t w = simd::lanes<stream_arch>;
  VI counts(0);
  const VI one(1), zero(0);
  const B bound(t);
  index_t i = 0;
  for (; i + w <= n; i += w) {
    const auto hit = B::load_unaligned(x + i) >= bound;
    if constexpr (std::is_same_v<T, float>)
      counts += xsimd::select(xsimd::bool_cast(hit), one, zero);
    else
      counts += xsimd::select(hit, one, zero);
  }
  index_t c = total(counts);
  for (; i < n; ++i) c += x[i] >= t ? 1 : 0;
  return c;
}

/// keys[i] = ordered_key(v[i]) for i < n (v NaN-free).
inline void ordered_keys(const float* v, index_t n, std::int32_t* keys) noexcept {
  using V = simd::vfloat<stream_arch>;
  using VI = simd::vint<stream_arch>;
  constexpr index_t w = simd::lanes<stream_arch>;
  const VI flip(0x7fffffff), zero(0);
  index_t i = 0;
  for (; i + w <= n; i += w) {
    const VI bits = simd::bit_cast<VI>(V::load_unaligned(v + i) + V(0.0f));
    xsimd::select(bits < zero, bits ^ flip, bits).store_unaligned(keys + i);
  }
  for (; i < n; ++i) keys[i] = ordered_key(v[i]);
}

/// The k-th largest of keys[0, n) (1 <= k <= n) by bisection on the key value: each step is one
/// counting pass that vectorises and never mispredicts, which beats nth_element's partitioning
/// on the few thousand candidates top_k_long keeps; at most 32 steps.
inline std::int32_t kth_largest_key(const std::int32_t* keys, index_t n, index_t k) noexcept {
  using VI = simd::vint<stream_arch>;
  constexpr index_t w = simd::lanes<stream_arch>;
  VI vlo(std::numeric_limits<std::int32_t>::max()), vhi(std::numeric_limits<std::int32_t>::min());
  index_t i = 0;
  for (; i + w <= n; i += w) {
    const VI x = VI::load_unaligned(keys + i);
    vlo = xsimd::min(vlo, x);
    vhi = xsimd::max(vhi, x);
  }
  alignas(64) std::int32_t lanes_lo[w], lanes_hi[w];
  vlo.store_aligned(lanes_lo);
  vhi.store_aligned(lanes_hi);
  std::int32_t lo = *std::min_element(lanes_lo, lanes_lo + w);
  std::int32_t hi = *std::max_element(lanes_hi, lanes_hi + w);
  for (; i < n; ++i) {
    lo = std::min(lo, keys[i]);
    hi = std::max(hi, keys[i]);
  }
  // Invariant: at least k keys are >= lo, fewer than k are > hi. The answer is the largest
  // t with count(keys >= t) >= k, which is a key.
  while (lo < hi) {
    const auto mid = static_cast<std::int32_t>(
        lo + (static_cast<std::int64_t>(hi) - lo + 1) / 2);
    if (count_at_least(keys, n, mid) >= k) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/// The k-th largest of v[0, n) (1 <= k <= n, no NaN); keys: [n] scratch.
inline float kth_largest(const float* v, index_t n, index_t k, std::int32_t* keys) noexcept {
  ordered_keys(v, n, keys);
  return from_ordered_key(kth_largest_key(keys, n, k));
}

#if defined(__AVX2__)
/// For each 8-bit mask, the positions of its set bits, packed low (AVX2 has no compress).
struct compress_table {
  alignas(32) std::int32_t lanes[256][8];
  constexpr compress_table() : lanes{} {
    for (int m = 0; m < 256; ++m) {
      int c = 0;
      for (int b = 0; b < 8; ++b)
        if (m >> b & 1) lanes[m][c++] = b;
    }
  }
};
inline constexpr compress_table compress_lanes{};
#endif

/// Entries of slack keep_reaching needs past its output's count.
inline constexpr index_t reaching_slack = 16;

/// Appends (in index order) the scores[i] >= bound to cval and their indices to cidx; returns
/// the count. About one register in four holds a hit at decode, too many to branch on: AVX-512
/// compresses each register's hits, AVX2 packs them with a permutation, and both store the
/// whole register: cval and cidx take up to reaching_slack entries past the count (never past
/// n when they have room for n). n < 2^31.
inline index_t keep_reaching(const float* scores, index_t n, float bound, float* cval,
                             std::int32_t* cidx) noexcept {
  index_t c = 0, i = 0;
#if defined(__AVX512F__)
  const __m512 vb = _mm512_set1_ps(bound);
  const __m512i sixteen = _mm512_set1_epi32(16);
  __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (const index_t whole = n - n % 16; i < whole; i += 16) {
    const __m512 x = _mm512_loadu_ps(scores + i);
    const __mmask16 m = _mm512_cmp_ps_mask(x, vb, _CMP_GE_OQ);
    _mm512_storeu_ps(cval + c, _mm512_maskz_compress_ps(m, x));
    _mm512_storeu_si512(cidx + c, _mm512_maskz_compress_epi32(m, lane));
    c += __builtin_popcount(static_cast<unsigned>(m));
    lane = _mm512_add_epi32(lane, sixteen);
  }
#elif defined(__AVX2__)
  const __m256 vb = _mm256_set1_ps(bound);
  const __m256i eight = _mm256_set1_epi32(8);
  __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (const index_t whole = n - n % 8; i < whole; i += 8) {
    const __m256 x = _mm256_loadu_ps(scores + i);
    const int m = _mm256_movemask_ps(_mm256_cmp_ps(x, vb, _CMP_GE_OQ));
    const __m256i perm =
        _mm256_load_si256(reinterpret_cast<const __m256i*>(compress_lanes.lanes[m]));
    _mm256_storeu_ps(cval + c, _mm256_permutevar8x32_ps(x, perm));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(cidx + c),
                        _mm256_permutevar8x32_epi32(lane, perm));
    c += __builtin_popcount(static_cast<unsigned>(m));
    lane = _mm256_add_epi32(lane, eight);
  }
#endif
  for (; i < n; ++i) {  // branch-free append
    cval[c] = scores[i];
    cidx[c] = static_cast<std::int32_t>(i);
    c += scores[i] >= bound ? 1 : 0;
  }
  return c;
}

}  // namespace detail

/// Scratch floats top_k_long needs for n scores.
inline index_t top_k_long_scratch(index_t n) noexcept {
  return 4 * n + 2 * detail::reaching_slack;
}

/// top_k for long score vectors (token scores over a whole KV cache at decode, HiP's children):
/// the same result as top_k (indices ascending, NaN and -inf never chosen, ties to the lower
/// index), without allocation, in streaming passes that vectorise. When n is at least 8k, any
/// partition of the scores into at least k groups bounds the k-th largest score from below by
/// the k-th largest group maximum (k groups reach it); strided groups {g, g + G, g + 2G, ...}
/// make the maxima a vertical max. Only scores reaching the bound are kept as candidates (in
/// index order); the threshold among them comes from kth_largest (bisection, no branches on
/// data). Shorter vectors take every selectable score as a candidate.
/// \param n below 2^31  \param out room for min(k, n) indices
/// \param scratch at least top_k_long_scratch(n) floats
/// \param values when given, receives the chosen scores in list order (room for min(k, n))
/// Returns the number written: min(k, number of selectable entries).
inline index_t top_k_long(const float* scores, index_t n, index_t k, index_t* out,
                          float* scratch, float* values = nullptr) noexcept {
  ATTEND_DCHECK(n <= std::numeric_limits<std::int32_t>::max());
  if (k <= 0 || n <= 0) return 0;
  const float ninf = -std::numeric_limits<float>::infinity();
  index_t per = 16;  // scores per group; aim for >= 4k groups so that few scores reach the bound
  while (per > 1 && n / per < 4 * k) per /= 2;
  const index_t groups = (n + per - 1) / per;
  float* gmax = scratch;                                          // [groups <= n] group maxima
  constexpr index_t slack = detail::reaching_slack;
  float* cval = scratch + n;                                           // [n + slack] candidates
  auto* cidx = reinterpret_cast<std::int32_t*>(scratch + 2 * n + slack);  // [n + slack] indices
  auto* keys = reinterpret_cast<std::int32_t*>(scratch + 3 * n + 2 * slack);  // [n] ordered keys
  float bound = ninf;
  if (per > 1 && groups > k) {
    for (index_t g = 0; g < groups; ++g) gmax[g] = ninf;
    for (index_t r = 0; r * groups < n; ++r) {  // streams the scores; gmax stays in L1
      const float* row = scores + r * groups;
      const index_t m = std::min(groups, n - r * groups);
      detail::max_into(gmax, row, m);
    }
    // A cheaper bound first: a rank slightly past k / 4 in every 4th group maximum. It is a
    // valid bound when at least k group maxima reach it; otherwise take the exact k-th largest.
    const index_t ns = groups / 4, rank = k / 4 + k / 16;
    if (rank >= 1 && rank < ns) {
      for (index_t i = 0; i < ns; ++i) keys[i] = detail::ordered_key(gmax[4 * i]);
      const float trial = detail::from_ordered_key(detail::kth_largest_key(keys, ns, rank));
      if (detail::count_at_least(gmax, groups, trial) >= k) bound = trial;
    }
    if (bound == ninf) bound = detail::kth_largest(gmax, groups, k, keys);
  }
  // Without a bound every selectable score is a candidate: x >= lowest excludes -inf and NaN.
  const index_t c = detail::keep_reaching(
      scores, n, bound > ninf ? bound : std::numeric_limits<float>::lowest(), cval, cidx);
  if (c <= k) {  // every candidate is chosen (only when at most k entries are selectable)
    std::copy(cidx, cidx + c, out);
    if (values != nullptr) std::copy(cval, cval + c, values);
    return c;
  }
  // The k-th largest candidate, then one branch-free pass (about half may be taken) over the
  // candidates' keys, which compare like their values.
  detail::ordered_keys(cval, c, keys);
  const std::int32_t tau = detail::kth_largest_key(keys, c, k);
  const index_t above = detail::count_at_least(keys, c, tau + 1);  // tau < INT32_MAX: no NaN
  index_t ties = k - above;  // entries equal to tau still to take, lowest index first
  index_t written = 0;
  for (index_t i = 0; i < c && written < k; ++i) {
    const index_t tie = static_cast<index_t>(keys[i] == tau) & static_cast<index_t>(ties > 0);
    out[written] = cidx[i];  // kept only if taken
    if (values != nullptr) values[written] = cval[i];
    written += static_cast<index_t>(keys[i] > tau) | tie;
    ties -= tie;
  }
  return written;
}

}  // namespace attend::sparse::select

#endif  // ATTEND_SPARSE_SELECT_COMMON_HPP_
