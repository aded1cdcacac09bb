// Memory for KV caches. Sparse kernels read a cache in scattered rows (gathered keys, tree-search
// representatives): with 4 KiB pages nearly every row costs a TLB miss and a page walk, which on
// the suite's machine caps random 512-byte row reads at ~13 GB/s; on transparent huge pages the
// same reads reach ~17 GB/s. `huge_page_allocator` asks Linux to back large allocations with
// 2 MiB pages (madvise, honoured when transparent huge pages are set to "madvise" or "always");
// elsewhere it is a plain aligned allocator. The advice is given at allocation, so memory the
// allocator maps fresh is faulted in as whole huge pages.
#ifndef ATTEND_CORE_MEMORY_HPP_
#define ATTEND_CORE_MEMORY_HPP_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace attend {

/// Size of a transparent huge page on x86-64 Linux.
inline constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

/// Asks the OS to back the whole huge pages inside [p, p + bytes) with huge pages (madvise needs
/// an aligned start, and only aligned 2 MiB extents can be huge pages); a no-op where that is
/// not supported. Best-effort: a refused hint leaves ordinary pages.
inline void advise_huge_pages(void* p, std::size_t bytes) noexcept {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (at + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
  const std::uintptr_t last = (at + bytes) / huge_page_bytes * huge_page_bytes;
  if (p != nullptr && bytes <= UINTPTR_MAX - at && last > first)
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

/// Allocates `bytes` (rounded up) aligned to a huge page when at least one huge page long, to 64
/// bytes otherwise, and advises huge pages for the large ones. Free with std::free.
inline void* allocate_cache_memory(std::size_t bytes) {
  const std::size_t align = bytes >= huge_page_bytes ? huge_page_bytes : 64;
  if (bytes > std::numeric_limits<std::size_t>::max() - align) throw std::bad_alloc();
  const std::size_t rounded = (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded == 0 ? align : rounded);
  if (p == nullptr) throw std::bad_alloc();
  advise_huge_pages(p, rounded);
  return p;
}

/// std::allocator replacement for KV-cache buffers (see allocate_cache_memory).
template <class T>
struct huge_page_allocator {
  static_assert(alignof(T) <= 64, "huge_page_allocator aligns to 64 bytes at least, not more");
  using value_type = T;
  huge_page_allocator() = default;
  template <class U>
  huge_page_allocator(const huge_page_allocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(allocate_cache_memory(n * sizeof(T)));
  }
  void deallocate(T* p, std::size_t) noexcept { std::free(p); }

  template <class U>
  bool operator==(const huge_page_allocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const huge_page_allocator<U>&) const noexcept {
    return false;
  }
};

/// A vector whose storage is huge-page backed when large (KV caches, int8 key copies).
template <class T>
using cache_vector = std::vector<T, huge_page_allocator<T>>;

}  // namespace attend

#endif  // ATTEND_CORE_MEMORY_HPP_
