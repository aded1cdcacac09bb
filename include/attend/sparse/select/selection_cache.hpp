// A selection cache: a query fingerprint and the selection computed for it, reused while later
// fingerprints stay similar (cosine similarity >= theta). TokenSelect reuses its top-k this way
// (theta 0.9 per layer); Recycled attention's dynamic variant uses the same test to decide when
// to run a full step again.
#ifndef ATTEND_SPARSE_SELECT_SELECTION_CACHE_HPP_
#define ATTEND_SPARSE_SELECT_SELECTION_CACHE_HPP_

#include <cmath>
#include <vector>

#include "../../core/config.hpp"

namespace attend::sparse {

/// Cosine similarity of a[0, n) and b[0, n) (0 when either is all zero).
inline double cosine_similarity(const float* a, const float* b, index_t n) noexcept {
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (index_t i = 0; i < n; ++i) {
    ab += double(a[i]) * double(b[i]);
    aa += double(a[i]) * double(a[i]);
    bb += double(b[i]) * double(b[i]);
  }
  return aa > 0.0 && bb > 0.0 ? ab / std::sqrt(aa * bb) : 0.0;
}

/// Fingerprints of the selection in use (one per sequence of a batch) and the reuse test.
class selection_cache {
 public:
  explicit selection_cache(float theta = 0.9f) : theta_(theta) {}

  float theta() const noexcept { return theta_; }
  void set_theta(float theta) noexcept { theta_ = theta; }
  bool valid() const noexcept { return valid_; }
  /// Forgets the stored fingerprints: the next lookup misses.
  void clear() noexcept { valid_ = false; }

  /// True when a selection is stored for `count` fingerprints of `n` floats and every one of
  /// `fingerprints` ([count][n]) has cosine similarity >= theta with its stored counterpart.
  bool similar(const float* fingerprints, index_t count, index_t n) const noexcept {
    if (!valid_ || count != count_ || n != n_) return false;
    for (index_t c = 0; c < count; ++c)
      if (cosine_similarity(fingerprints + c * n, stored_.data() + c * n, n) < theta_) return false;
    return true;
  }

  /// Stores the fingerprints a new selection was computed for.
  void store(const float* fingerprints, index_t count, index_t n) {
    stored_.assign(fingerprints, fingerprints + count * n);
    count_ = count;
    n_ = n;
    valid_ = true;
  }

  /// Records a lookup outcome (statistics only).
  void count_lookup(bool hit) noexcept { (hit ? hits_ : misses_) += 1; }
  index_t hits() const noexcept { return hits_; }
  index_t misses() const noexcept { return misses_; }

 private:
  std::vector<float> stored_;
  index_t count_ = 0, n_ = 0;
  index_t hits_ = 0, misses_ = 0;
  float theta_;
  bool valid_ = false;
};

}  // namespace attend::sparse

#endif  // ATTEND_SPARSE_SELECT_SELECTION_CACHE_HPP_
