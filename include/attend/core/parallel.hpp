// Threading: OpenMP at the top level only, over independent work items. Kernels inside are
// serial and noexcept, so nothing can throw out of a parallel region.
#ifndef ATTEND_CORE_PARALLEL_HPP_
#define ATTEND_CORE_PARALLEL_HPP_

#include <algorithm>

#include "config.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attend::detail {

/// Threads an operator may use: OpenMP's current limit (1 inside an active parallel region
/// when nesting is off, or without OpenMP).
inline int max_threads() noexcept {
#if defined(_OPENMP)
  return omp_in_parallel() && omp_get_max_active_levels() <= omp_get_active_level()
             ? 1
             : omp_get_max_threads();
#else
  return 1;
#endif
}

/// Runs body(item, thread) for item in [0, items) on up to `threads` threads, handing out items
/// one at a time (callers order items heaviest first). `thread` indexes per-thread scratch.
template <class Body>
void parallel_for(index_t items, int threads, const Body& body) noexcept {
  threads = static_cast<int>(std::min<index_t>(threads, items));
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (index_t i = 0; i < items; ++i) body(i, omp_get_thread_num());
    return;
  }
#endif
  for (index_t i = 0; i < items; ++i) body(i, 0);
}

}  // namespace attend::detail

#endif  // ATTEND_CORE_PARALLEL_HPP_
