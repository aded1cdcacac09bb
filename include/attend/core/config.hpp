// Project-wide configuration: index type, version, inlining, restrict and unroll macros.
#ifndef ATTEND_CORE_CONFIG_HPP_
#define ATTEND_CORE_CONFIG_HPP_

#include <cstddef>
#include <cstdint>

#define ATTEND_VERSION_MAJOR 0
#define ATTEND_VERSION_MINOR 1
#define ATTEND_VERSION_PATCH 0

#if defined(__GNUC__) || defined(__clang__)
#define ATTEND_INLINE inline __attribute__((always_inline))
#define ATTEND_NOINLINE __attribute__((noinline))
#define ATTEND_RESTRICT __restrict__
#else
#define ATTEND_INLINE inline
#define ATTEND_NOINLINE
#define ATTEND_RESTRICT
#endif

// Unrolls the loop that follows fully (register arrays indexed by its counter stay in
// registers; GCC 12 at -O2 otherwise keeps them in memory).
#if defined(__clang__)
#define ATTEND_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define ATTEND_UNROLL _Pragma("GCC unroll 32")
#else
#define ATTEND_UNROLL
#endif

/// Head dims (dk == dv) with compile-time fast paths; any other shape runs the run-time-dim
/// path. Each listed dim instantiates every kernel once more, so a build that knows its models'
/// head dims can list only those (or none) to shrink compile time and code size, e.g.
/// -DATTEND_FAST_HEAD_DIMS=128 or -DATTEND_FAST_HEAD_DIMS= (results are identical either way).
#ifndef ATTEND_FAST_HEAD_DIMS
#define ATTEND_FAST_HEAD_DIMS 64, 80, 96, 128, 256
#endif

namespace attend {

/// Signed 64-bit index for every extent, stride and offset: a 1M-token KV cache with
/// 32 heads of 128 dims already overflows 32-bit offsets.
using index_t = std::ptrdiff_t;

}  // namespace attend

#endif  // ATTEND_CORE_CONFIG_HPP_
