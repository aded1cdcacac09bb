// 64-bit index arithmetic: views that address more than 2^31 elements, over large anonymous
// mappings made with MAP_NORESERVE. Pages never written read as the shared zero page, so the
// tests use address space, not memory: a 1M-token decode whose K/V rows are 16 KiB apart spans
// 2^32 elements (16 GiB) yet touches only the few pages the test writes; a prefill whose second
// sequence starts 2^31 + 4096 elements after the first. A 32-bit offset anywhere would read the
// wrong rows (or fault) and break the comparison with the oracle.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstdint>
#include <random>
#include <vector>

#include "dense/dense_case.hpp"

namespace attend::testing {
namespace {

/// An anonymous private mapping that reserves no memory: untouched pages read as zeros.
class huge_mapping {
 public:
  explicit huge_mapping(std::size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    data_ = p == MAP_FAILED ? nullptr : p;
  }
  ~huge_mapping() {
    if (data_) munmap(data_, bytes_);
  }
  huge_mapping(const huge_mapping&) = delete;
  huge_mapping& operator=(const huge_mapping&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  bool ok() const { return data_ != nullptr; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_;
};

constexpr index_t kTwo31 = index_t{1} << 31;

/// Decode over 2^20 keys whose rows are 4096 floats apart: K occupies columns 0..7 and V
/// columns 8..15 of each 16 KiB row, so the views span 2^32 elements. 64 keys (first, last,
/// and many past element 2^31) hold values; all others are zero (score 0, value 0).
TEST(Huge, DecodeOverAMillionTokensSpanningFourBillionElements) {
  const index_t tokens = index_t{1} << 20, row = 4096, dim = 8, heads_q = 4;
  huge_mapping map(static_cast<std::size_t>(tokens * row) * sizeof(float));
  if (!map.ok()) GTEST_SKIP() << "cannot map 16 GiB of address space";
  float* base = map.as<float>();
  const view4<float> k(base, {1, tokens, 1, dim}, {tokens * row, row, row, 1});
  const view4<float> v(base + dim, {1, tokens, 1, dim}, {tokens * row, row, row, 1});
  ASSERT_GT(k.required_span_size(), kTwo31 + kTwo31 / 2);

  std::mt19937 rng(300);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<index_t> hot = {0, tokens - 1, kTwo31 / row - 1, kTwo31 / row, kTwo31 / row + 1};
  for (int n = 0; n < 59; ++n) hot.push_back(static_cast<index_t>(rng() % tokens));
  for (index_t j : hot)
    for (index_t d = 0; d < dim; ++d) {
      k(0, j, 0, d) = u(rng);
      v(0, j, 0, d) = u(rng);
    }
  auto q = tensor<float, 4>::make({1, 1, heads_q, dim});
  std::mt19937 qrng(301);
  fill_uniform(q.view, qrng, -3.0f, 3.0f);
  auto o = tensor<float, 4>::make({1, 1, heads_q, dim});
  auto lse = tensor<float, 3>::make({1, heads_q, 1});
  attention_params p;
  p.scale = 1.0f;
  p.lse = lse.view;
  attention(q.cview(), view4<const float>(k), view4<const float>(v), o.view, p);

  auto ref_o = tensor<double, 4>::make({1, 1, heads_q, dim});
  auto ref_lse = tensor<double, 3>::make({1, heads_q, 1});
  p.lse = {};
  reference::attention(q.cview(), view4<const float>(k), view4<const float>(v), p, ref_o.view,
                       ref_lse.view);
  // 2^20 keys summed in fp32 across 256 splits: a slightly wider absolute bound than the
  // suite's default for the output, whose magnitude is ~1e-4 here (mass on the zero rows).
  EXPECT_TRUE(all_close(o.cview(), ref_o.cview(), 1e-6, 1e-3));
  EXPECT_TRUE(all_close(lse.cview(), ref_lse.cview(), 2e-5, 2e-4));
  // The hot keys decide the output: it is not the all-zero answer of a wrong-row read.
  double mag = 0;
  for (float x : o.storage) mag += std::abs(x);
  EXPECT_GT(mag, 1e-6);
}

/// Prefill (and split-K decode) over a batch whose second sequence starts 2^31 + 4096 elements
/// after the first, for every tensor (q, k, v, o and a bf16 cache).
template <class KV>
void run_sparse_batch(index_t seq_q, index_t seq_k) {
  const index_t H = 4, Hkv = 2, D = 32, stride_b = kTwo31 + 4096;
  const std::size_t floats = static_cast<std::size_t>(stride_b + (index_t{1} << 22));
  huge_mapping qo(2 * floats * sizeof(float)), kv(2 * floats * sizeof(KV));
  if (!qo.ok() || !kv.ok()) GTEST_SKIP() << "cannot map the address space";
  const index_t half = static_cast<index_t>(floats);
  const view4<float> q(qo.as<float>(), {2, seq_q, H, D}, {stride_b, H * D, D, 1});
  const view4<float> o(qo.as<float>() + half, {2, seq_q, H, D}, {stride_b, H * D, D, 1});
  const view4<KV> k(kv.as<KV>(), {2, seq_k, Hkv, D}, {stride_b, Hkv * D, D, 1});
  const view4<KV> v(kv.as<KV>() + half, {2, seq_k, Hkv, D}, {stride_b, Hkv * D, D, 1});
  ASSERT_GT(q.required_span_size(), kTwo31);
  std::mt19937 rng(302);
  fill_uniform(q, rng);
  fill_uniform(k, rng);
  fill_uniform(v, rng);
  auto lse = tensor<float, 3>::make({2, H, seq_q});
  attention_params p;
  p.causal = true;
  p.lse = lse.view;
  attention(view4<const float>(q), view4<const KV>(k), view4<const KV>(v), o, p);
  auto ref_o = tensor<double, 4>::make({2, seq_q, H, D});
  auto ref_lse = tensor<double, 3>::make({2, H, seq_q});
  p.lse = {};
  reference::attention(view4<const float>(q), view4<const KV>(k), view4<const KV>(v), p,
                       ref_o.view, ref_lse.view);
  EXPECT_TRUE(all_close(view4<const float>(o), ref_o.cview(), tolerance<KV>::atol, tolerance<KV>::rtol));
  EXPECT_TRUE(all_close(lse.cview(), ref_lse.cview(), tolerance<KV>::atol, tolerance<KV>::rtol));
}

TEST(Huge, PrefillWithSequencesTwoBillionElementsApart) { run_sparse_batch<float>(70, 130); }
TEST(Huge, DecodeWithSequencesTwoBillionElementsApartBf16) { run_sparse_batch<bf16>(2, 1500); }

}  // namespace
}  // namespace attend::testing
