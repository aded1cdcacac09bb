// A dense attention test case: random q/k/v in a chosen layout and K/V type, the kernel's output
// and the double-precision oracle's, and their comparison.
#ifndef ATTEND_TESTS_DENSE_DENSE_CASE_HPP_
#define ATTEND_TESTS_DENSE_DENSE_CASE_HPP_

#include <random>
#include <sstream>
#include <string>

#include "attend/dense/instantiate.hpp"
#include "attend/reference/naive.hpp"
#include "common/tensors.hpp"

ATTEND_EXTERN_DENSE_TEMPLATES

namespace attend::testing {

struct dense_shape {
  index_t batch, seq_q, seq_k, heads_q, heads_kv, dk, dv;
};

inline std::string to_string(const dense_shape& s) {
  std::ostringstream os;
  os << "B" << s.batch << "_Lq" << s.seq_q << "_Lk" << s.seq_k << "_Hq" << s.heads_q << "_Hkv"
     << s.heads_kv << "_Dk" << s.dk << "_Dv" << s.dv;
  return os.str();
}

/// bshd: contiguous [B, S, H, D]; bhsd: [B, H, S, D] viewed through strides; padded: BHSD
/// order with 3 unused floats after every row (nothing contiguous but the head dim).
enum class layout { bshd, bhsd, padded };

template <class KV>
struct dense_case {
  dense_shape shape;
  tensor<float, 4> q;
  tensor<KV, 4> k, v;
  tensor<float, 4> o;
  tensor<float, 3> lse;
  tensor<double, 4> ref_o;
  tensor<double, 3> ref_lse;

  dense_case(const dense_shape& s, layout l, unsigned seed, float qk_range = 1.0f)
      : shape(s),
        q(make4<float>({s.batch, s.seq_q, s.heads_q, s.dk}, l)),
        k(make4<KV>({s.batch, s.seq_k, s.heads_kv, s.dk}, l)),
        v(make4<KV>({s.batch, s.seq_k, s.heads_kv, s.dv}, l)),
        o(make4<float>({s.batch, s.seq_q, s.heads_q, s.dv}, l)),
        lse(tensor<float, 3>::make({s.batch, s.heads_q, s.seq_q})),
        ref_o(tensor<double, 4>::make({s.batch, s.seq_q, s.heads_q, s.dv})),
        ref_lse(tensor<double, 3>::make({s.batch, s.heads_q, s.seq_q})) {
    std::mt19937 rng(seed);
    fill_uniform(q.view, rng, -qk_range, qk_range);
    fill_uniform(k.view, rng, -qk_range, qk_range);
    fill_uniform(v.view, rng);
  }

  template <class T>
  static tensor<T, 4> make4(const std::array<index_t, 4>& e, layout l) {
    switch (l) {
      case layout::bhsd: return tensor<T, 4>::make_permuted(e, {0, 2, 1, 3}, 0);
      case layout::padded: return tensor<T, 4>::make_permuted(e, {0, 2, 1, 3}, 3);
      default: return tensor<T, 4>::make(e);
    }
  }

  /// Runs the kernel (writing o and lse) and the oracle with the same parameters.
  void run(attention_params p) {
    p.lse = lse.view;
    attention(q.view, k.view, v.view, o.view, p);
    p.lse = {};
    reference::attention(q.cview(), k.cview(), v.cview(), p, ref_o.view, ref_lse.view);
  }

  ::testing::AssertionResult matches_reference() const {
    auto r = all_close(o.cview(), ref_o.cview(), tolerance<KV>::atol, tolerance<KV>::rtol);
    if (!r) return r << " (o, " << to_string(shape) << ")";
    r = all_close(lse.cview(), ref_lse.cview(), tolerance<KV>::atol, tolerance<KV>::rtol);
    if (!r) return r << " (lse, " << to_string(shape) << ")";
    return r;
  }
};

}  // namespace attend::testing

#endif  // ATTEND_TESTS_DENSE_DENSE_CASE_HPP_
