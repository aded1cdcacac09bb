// Scratch memory. Operators need per-thread tile buffers (and, for split-K decode, room for
// partial states). Pass a `workspace` in the params to reuse one buffer across calls (no
// allocation once it has grown); without one, each call allocates and frees its scratch.
// A workspace must not be shared by calls running at the same time.
#ifndef ATTEND_CORE_WORKSPACE_HPP_
#define ATTEND_CORE_WORKSPACE_HPP_

#include <cstdlib>
#include <memory>
#include <new>

#include "config.hpp"

namespace attend {

/// Reusable, growable scratch buffer (64-byte aligned floats) that operators carve their
/// per-thread tile buffers from. Sizes are in floats.
class workspace {
 public:
  workspace() = default;
  /// Pre-allocates `floats` floats.
  explicit workspace(index_t floats) { reserve(floats); }

  /// Returns at least `floats` floats, 64-byte aligned; grows (and discards contents) if needed.
  float* reserve(index_t floats) {
    if (floats > capacity_) {
      const std::size_t bytes = (static_cast<std::size_t>(floats) * sizeof(float) + 63) / 64 * 64;
      void* p = std::aligned_alloc(64, bytes);
      if (p == nullptr) throw std::bad_alloc();
      buffer_.reset(static_cast<float*>(p));
      capacity_ = floats;
    }
    return buffer_.get();
  }

  /// Floats currently allocated.
  index_t capacity() const noexcept { return capacity_; }

 private:
  struct free_deleter {
    void operator()(float* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<float, free_deleter> buffer_;
  index_t capacity_ = 0;
};

namespace detail {

/// Carves 64-byte aligned sub-buffers out of one float buffer; `bump` with a null base only
/// counts, so the same code computes a layout's size and its pointers.
class bump {
 public:
  explicit bump(float* base) noexcept : base_(base) {}

  template <class T>
  T* take(index_t count) noexcept {
    const index_t floats = (count * static_cast<index_t>(sizeof(T)) + 63) / 64 * 16;
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += floats;
    return p;
  }
  index_t used() const noexcept { return used_; }

 private:
  float* base_;
  index_t used_ = 0;
};

}  // namespace detail
}  // namespace attend

#endif  // ATTEND_CORE_WORKSPACE_HPP_
