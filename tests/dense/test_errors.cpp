// Bad input to attention() is rejected with attend::invalid_argument naming the argument, before
// any output is written.
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "dense_case.hpp"

namespace attend::testing {
namespace {

struct fixture {
  tensor<float, 4> q = tensor<float, 4>::make({2, 5, 4, 16});
  tensor<float, 4> k = tensor<float, 4>::make({2, 9, 2, 16});
  tensor<float, 4> v = tensor<float, 4>::make({2, 9, 2, 16});
  tensor<float, 4> o = tensor<float, 4>::make({2, 5, 4, 16});
  fixture() {
    for (auto& x : o.storage) x = 42.0f;  // sentinel: must survive every rejected call
  }
  bool output_untouched() const {
    for (float x : o.storage)
      if (x != 42.0f) return false;
    return true;
  }
};

/// Expects attention(...) to throw invalid_argument whose message contains `needle`.
template <class Call>
void expect_rejected(Call&& call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected one mentioning '" << needle << "'";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(DenseErrors, MismatchedShapes) {
  fixture f;
  auto bad_k = tensor<float, 4>::make({2, 9, 2, 8});
  expect_rejected([&] { attention(f.q.view, bad_k.view, f.v.view, f.o.view); }, "head dim of k");
  auto bad_v = tensor<float, 4>::make({2, 8, 2, 16});
  expect_rejected([&] { attention(f.q.view, f.k.view, bad_v.view, f.o.view); }, "v [2, 8, 2, 16]");
  auto bad_o = tensor<float, 4>::make({2, 5, 4, 8});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, bad_o.view); }, "o has extents");
  auto other_batch = tensor<float, 4>::make({1, 9, 2, 16});
  expect_rejected([&] { attention(f.q.view, other_batch.view, other_batch.view, f.o.view); },
                  "batch");
  EXPECT_TRUE(f.output_untouched());
}

TEST(DenseErrors, HeadsNotDivisible) {
  fixture f;
  auto k3 = tensor<float, 4>::make({2, 9, 3, 16});
  expect_rejected([&] { attention(f.q.view, k3.view, k3.view, f.o.view); },
                  "q heads (4) must be a multiple of kv heads (3)");
  EXPECT_TRUE(f.output_untouched());
}

TEST(DenseErrors, ZeroSizeAndNullAndStrides) {
  fixture f;
  auto empty = tensor<float, 4>::make({2, 0, 2, 16});
  expect_rejected([&] { attention(f.q.view, empty.view, empty.view, f.o.view); }, "empty axis");
  const tensor_view<float, 4> null_k(nullptr, f.k.view.extents(), f.k.view.strides());
  expect_rejected([&] { attention(f.q.view, null_k, f.v.view, f.o.view); }, "k is null");
  auto s = f.k.view.strides();
  s[3] = 2;
  std::vector<float> wide(2 * 9 * 2 * 32);
  expect_rejected(
      [&] { attention(f.q.view, tensor_view<float, 4>(wide.data(), f.k.view.extents(), s), f.v.view, f.o.view); },
      "contiguous innermost");
  s = f.k.view.strides();
  s[1] = -s[1];
  expect_rejected(
      [&] { attention(f.q.view, tensor_view<float, 4>(wide.data() + 400, f.k.view.extents(), s), f.v.view, f.o.view); },
      "negative stride");
  auto bcast_o = f.o.view.strides();
  bcast_o[1] = 0;
  expect_rejected(
      [&] { attention(f.q.view, f.k.view, f.v.view, tensor_view<float, 4>(f.o.storage.data(), f.o.view.extents(), bcast_o)); },
      "maps several indices");
  EXPECT_TRUE(f.output_untouched());
}

TEST(DenseErrors, OutputOverlappingAnInput) {
  fixture f;
  const tensor_view<float, 4> o_on_q(f.q.storage.data(), f.o.view.extents(), f.o.view.strides());
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, o_on_q); }, "overlaps input q");
}

TEST(DenseErrors, BadParameters) {
  fixture f;
  attention_params p;
  p.window_left = -2;
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, "window");
  p = {};
  p.softcap = -1.0f;
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, "softcap");
  p = {};
  p.scale = std::numeric_limits<float>::infinity();
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, "scale");
  p = {};
  const index_t lens[2] = {9, 10};  // longer than the cache
  p.kv_lens = make_view(lens, 2);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, "kv_lens[1] = 10");
  p = {};
  const float slopes[3] = {1, 2, 3};
  p.alibi_slopes = make_view(slopes, 3);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, "alibi_slopes");
  p = {};
  p.sinks = make_view(slopes, 3);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, "sinks");
  p = {};
  std::vector<float> bias(5 * 8);
  p.bias = tensor_view<const float, 4>(bias.data(), {1, 1, 5, 8}, {0, 0, 8, 1});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, "bias");
  p = {};
  auto lse = tensor<float, 3>::make({2, 4, 4});
  p.lse = lse.view;
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, "lse");
  EXPECT_TRUE(f.output_untouched());
}

}  // namespace
}  // namespace attend::testing
