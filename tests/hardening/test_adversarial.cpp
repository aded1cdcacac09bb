// Adversarial arguments for the dense family (attend::attention, attend::merge_states and the
// oracle attend::reference::attention), extending tests/dense/test_errors.cpp: null data with
// non-zero extents, empty axes, negative / zero / non-unit strides, outputs that overlap inputs
// (partially, through padding, inside a fused QKV buffer, across element types), broadcasting
// outputs, lengths beyond the view's length, head counts that do not divide. Every rejection is
// an attend::invalid_argument whose message names the function and the argument, and no output
// memory is written (sentinel check). Dense attention has no block-size argument; the only
// size-like parameters (windows, kv_lens) are covered here.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "attend/dense/merge.hpp"
#include "dense/dense_case.hpp"

namespace attend::testing {
namespace {

constexpr float kSentinel = 42.0f;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

/// q [2, 5, 4, 16], k/v [2, 9, 2, 16], o [2, 5, 4, 16], lse [2, 4, 5]; o and lse hold a sentinel.
struct fixture {
  tensor<float, 4> q = tensor<float, 4>::make({2, 5, 4, 16});
  tensor<float, 4> k = tensor<float, 4>::make({2, 9, 2, 16});
  tensor<float, 4> v = tensor<float, 4>::make({2, 9, 2, 16});
  tensor<float, 4> o = tensor<float, 4>::make({2, 5, 4, 16});
  tensor<float, 3> lse = tensor<float, 3>::make({2, 4, 5});
  fixture() {
    std::mt19937 rng(1);
    fill_uniform(q.view, rng);
    fill_uniform(k.view, rng);
    fill_uniform(v.view, rng);
    std::fill(o.storage.begin(), o.storage.end(), kSentinel);
    std::fill(lse.storage.begin(), lse.storage.end(), kSentinel);
  }
  attention_params params() const {
    attention_params p;
    p.lse = lse.view;
    return p;
  }
  bool untouched() const {
    for (float x : o.storage)
      if (x != kSentinel) return false;
    for (float x : lse.storage)
      if (x != kSentinel) return false;
    return true;
  }
};

/// call() must throw attend::invalid_argument whose message contains every needle.
template <class Call>
void expect_rejected(Call&& call, std::initializer_list<std::string> needles) {
  try {
    call();
    ADD_FAILURE() << "accepted; expected an error mentioning '" << *needles.begin() << "'";
  } catch (const invalid_argument& e) {
    for (const auto& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "'" << n << "' not in: " << e.what();
  }
}

template <class T, std::size_t R>
tensor_view<T, R> with_extent(tensor_view<T, R> v, std::size_t axis, index_t e) {
  auto ex = v.extents();
  ex[axis] = e;
  return {v.data(), ex, v.strides()};
}
template <class T, std::size_t R>
tensor_view<T, R> with_stride(tensor_view<T, R> v, std::size_t axis, index_t s) {
  auto st = v.strides();
  st[axis] = s;
  return {v.data(), v.extents(), st};
}
template <class T, std::size_t R>
tensor_view<T, R> with_data(tensor_view<T, R> v, T* data) {
  return {data, v.extents(), v.strides()};
}

// ---- attend::attention: required tensors ------------------------------------------------------

TEST(Adversarial, NullDataWithExtentsForEveryTensor) {
  fixture f;
  const auto p = f.params();
  expect_rejected([&] { attention(with_data<float>(f.q.view, nullptr), f.k.view, f.v.view, f.o.view, p); },
                  {"attend::attention", "q is null", "[2, 5, 4, 16]"});
  expect_rejected([&] { attention(f.q.view, f.k.view, with_data<float>(f.v.view, nullptr), f.o.view, p); },
                  {"attend::attention", "v is null"});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, with_data<float>(f.o.view, nullptr), p); },
                  {"attend::attention", "o is null"});
  EXPECT_TRUE(f.untouched());
}

TEST(Adversarial, EmptyAxisOfEveryTensor) {
  fixture f;
  const auto p = f.params();
  for (std::size_t a = 0; a < 4; ++a) {
    expect_rejected([&] { attention(with_extent(f.q.view, a, 0), f.k.view, f.v.view, f.o.view, p); },
                    {"q has an empty axis " + std::to_string(a)});
    expect_rejected([&] { attention(f.q.view, with_extent(f.k.view, a, 0), f.v.view, f.o.view, p); },
                    {"k has an empty axis " + std::to_string(a)});
    expect_rejected([&] { attention(f.q.view, f.k.view, with_extent(f.v.view, a, 0), f.o.view, p); },
                    {"v has an empty axis " + std::to_string(a)});
    expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, with_extent(f.o.view, a, 0), p); },
                    {"o has an empty axis " + std::to_string(a)});
  }
  EXPECT_TRUE(f.untouched());
}

TEST(Adversarial, NegativeStrideOnEveryAxis) {
  fixture f;
  const auto p = f.params();
  for (std::size_t a = 0; a < 4; ++a) {
    const std::string axis = "negative stride on axis " + std::to_string(a);
    // The data pointer is placed so that the view would even stay inside the buffer.
    float* qend = f.q.storage.data() + f.q.storage.size() - 1;
    expect_rejected([&] { attention(with_data(with_stride(f.q.view, a, -f.q.view.stride(a)), qend), f.k.view, f.v.view, f.o.view, p); },
                    {"q has a " + axis});
    expect_rejected([&] { attention(f.q.view, f.k.view, with_stride(f.v.view, a, -1), f.o.view, p); },
                    {"v has a " + axis});
    expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, with_stride(f.o.view, a, -1), p); },
                    {"o has a " + axis});
  }
  EXPECT_TRUE(f.untouched());
}

TEST(Adversarial, InnermostAxisMustBeContiguous) {
  fixture f;
  const auto p = f.params();
  std::vector<float> wide(2 * 5 * 4 * 16 * 2);
  const view4<float> q2(wide.data(), f.q.view.extents(), {640, 128, 32, 2});
  expect_rejected([&] { attention(q2, f.k.view, f.v.view, f.o.view, p); }, {"q must have a contiguous innermost axis"});
  // stride 0 on the head dim: every element the same
  expect_rejected([&] { attention(f.q.view, f.k.view, with_stride(f.v.view, 3, 0), f.o.view, p); },
                  {"v must have a contiguous innermost axis (stride 0)"});
  const view4<float> o2(wide.data(), f.o.view.extents(), {640, 128, 32, 2});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, o2, p); }, {"o must have a contiguous innermost axis"});
  EXPECT_TRUE(f.untouched());
  for (float x : wide) EXPECT_EQ(x, 0.0f);
}

/// Head dim 1: a unit innermost axis may have any stride (a column of a wider buffer).
TEST(Adversarial, UnitInnermostAxisAcceptsAnyStride) {
  std::vector<float> qb(3 * 7 * 5), kb(3 * 11 * 5), vb(3 * 11 * 5);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto* b : {&qb, &kb, &vb})
    for (float& x : *b) x = u(rng);
  const view4<const float> q(qb.data() + 2, {3, 7, 1, 1}, {35, 5, 1, 9});
  const view4<const float> k(kb.data() + 4, {3, 11, 1, 1}, {55, 5, 1, 3});
  const view4<const float> v(vb.data() + 1, {3, 11, 1, 1}, {55, 5, 1, 7});
  auto o = tensor<float, 4>::make({3, 7, 1, 1});
  auto ref = tensor<double, 4>::make({3, 7, 1, 1});
  attention_params p;
  p.causal = true;
  attention(q, k, v, o.view, p);
  reference::attention(q, k, v, p, ref.view);
  EXPECT_TRUE(all_close(o.cview(), ref.cview(), 2e-5, 2e-4));
}

// ---- attend::attention: outputs overlapping inputs ----------------------------------------------

TEST(Adversarial, OutputOverlappingAnInputInSeveralWays) {
  fixture f;
  const auto p = f.params();
  // o starting inside q (a partial overlap, not the same view)
  std::vector<float> shared(f.q.storage.size() + f.o.storage.size());
  std::copy(f.q.storage.begin(), f.q.storage.end(), shared.begin());
  const view4<float> q_in(shared.data(), f.q.view.extents(), f.q.view.strides());
  const view4<float> o_tail(shared.data() + 600, f.o.view.extents(), f.o.view.strides());
  const std::vector<float> before = shared;
  expect_rejected([&] { attention(q_in, f.k.view, f.v.view, o_tail, p); }, {"output o overlaps input q"});
  // o placed in the padding between the rows of a padded K cache: the elements are disjoint but
  // the byte ranges interleave; the check is conservative and rejects it
  std::vector<float> padded(2 * 9 * 2 * 32, 1.0f);
  const view4<float> k_pad(padded.data(), f.k.view.extents(), {9 * 2 * 32, 2 * 32, 32, 1});
  const view4<float> o_gap(padded.data() + 16, {1, 1, 2, 16}, {0, 0, 32, 1});
  expect_rejected([&] {
    attention(f.q.view.narrow(0, 0, 1).narrow(1, 0, 1).narrow(2, 0, 2), k_pad.narrow(0, 0, 1).narrow(2, 0, 1),
              f.v.view.narrow(0, 0, 1).narrow(2, 0, 1), o_gap, attention_params{});
  }, {"output o overlaps input k"});
  // in-place attention into a fused QKV buffer (o over the q slots)
  std::vector<float> fused(2 * 5 * (4 + 2 * 2) * 16, 0.5f);
  const auto qkv = fused_qkv(fused.data(), 2, 5, 4, 2, 16);
  expect_rejected([&] { attention(qkv.q, qkv.k, qkv.v, qkv.q, p); }, {"output o overlaps input q"});
  // o overlapping a bf16 v in one allocation
  std::vector<float> mixed(4096, 0.0f);
  const view4<const bf16> v16(reinterpret_cast<const bf16*>(mixed.data()), {2, 9, 2, 16}, {288, 32, 16, 1});
  std::vector<bf16> k16(2 * 9 * 2 * 16, to_bf16(0.25f));
  const view4<float> o_v(mixed.data() + 100, f.o.view.extents(), f.o.view.strides());
  expect_rejected([&] { attention(f.q.view, bshd<const bf16>(k16.data(), 2, 9, 2, 16), v16, o_v, p); },
                  {"output o overlaps input v"});
  for (float x : mixed) ASSERT_EQ(x, 0.0f);
  for (float x : fused) ASSERT_EQ(x, 0.5f);
  for (float x : padded) ASSERT_EQ(x, 1.0f);
  EXPECT_EQ(shared, before);
  EXPECT_TRUE(f.untouched());
}

TEST(Adversarial, LseOverlappingAnyTensor) {
  fixture f;
  attention_params p;
  p.lse = view3<float>::contiguous(f.o.storage.data() + 7, {2, 4, 5});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"output lse overlaps input o"});
  for (auto* t : {&f.q, &f.k, &f.v}) {
    const char* name = t == &f.q ? "q" : t == &f.k ? "k" : "v";
    p.lse = view3<float>::contiguous(t->storage.data() + 3, {2, 4, 5});
    const std::vector<float> before = t->storage;
    expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); },
                    {std::string("output lse overlaps input ") + name});
    EXPECT_EQ(t->storage, before);
  }
  EXPECT_TRUE(f.untouched());
}

/// o or lse overlapping an optional input (bias, mask, alibi_slopes, sinks, kv_lens): rows would
/// read values other rows had already overwritten. (Found by this suite: attention() used to
/// check o and lse against q, k and v only.)
TEST(Adversarial, OutputOverlappingAnOptionalInput) {
  fixture f;
  std::vector<float> buf(2 * 5 * 4 * 16 + 2 * 4 * 5 * 9, 0.0f);
  const view4<float> o(buf.data(), f.o.view.extents(), f.o.view.strides());
  attention_params p;
  p.bias = view4<const float>::contiguous(buf.data() + 100, {2, 4, 5, 9});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, o, p); }, {"overlaps input bias"});
  p = {};
  p.sinks = make_view<const float>(buf.data() + 5, 4);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, o, p); }, {"overlaps input sinks"});
  p = {};
  p.alibi_slopes = make_view<const float>(buf.data() + 5, 4);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, o, p); }, {"overlaps input alibi_slopes"});
  p = f.params();
  std::vector<float> sinks_and_lse(64, 0.0f);
  p.sinks = make_view<const float>(sinks_and_lse.data(), 4);
  p.lse = view3<float>::contiguous(sinks_and_lse.data() + 2, {2, 4, 5});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"overlaps input sinks"});
  p = f.params();
  index_t lens_store[64] = {};
  p.kv_lens = make_view<const index_t>(lens_store, 2);
  p.lse = view3<float>(reinterpret_cast<float*>(lens_store) + 1, {2, 4, 5},
                       {20, 5, 1});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"output lse overlaps input kv_lens"});
  for (float x : buf) EXPECT_EQ(x, 0.0f);
  EXPECT_TRUE(f.untouched());
}

TEST(Adversarial, OutputsThatMapSeveralIndicesToOneElement) {
  fixture f;
  const auto p = f.params();
  for (std::size_t a = 0; a < 3; ++a)
    expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, with_stride(f.o.view, a, 0), p); },
                    {"output o maps several indices"});
  // heads that overlap by half a row (strides neither zero nor disjoint)
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, with_stride(f.o.view, 2, 8), p); },
                  {"output o maps several indices"});
  for (std::size_t a = 0; a < 2; ++a) {
    attention_params pl = p;
    pl.lse = with_stride(f.lse.view, a, 0);
    expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, pl); }, {"output lse maps several indices"});
  }
  EXPECT_TRUE(f.untouched());
}

// ---- attend::attention: optional inputs, lengths, heads ----------------------------------------

TEST(Adversarial, OptionalInputsWithNegativeStrides) {
  fixture f;
  std::vector<float> bias(2 * 4 * 5 * 9), vec(8, 0.1f);
  std::vector<char> maskb(2 * 4 * 5 * 9, 1);
  const index_t lens[2] = {9, 9};
  attention_params p = f.params();
  p.bias = with_stride(view4<const float>::contiguous(bias.data(), {2, 4, 5, 9}), 1, -45);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"bias has a negative stride on axis 1"});
  p = f.params();
  p.mask = with_stride(view4<const bool>::contiguous(reinterpret_cast<const bool*>(maskb.data()), {2, 4, 5, 9}), 2, -9);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"mask has a negative stride on axis 2"});
  p = f.params();
  p.alibi_slopes = view1<const float>(vec.data() + 7, {4}, {-1});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"alibi_slopes has a negative stride"});
  p = f.params();
  p.sinks = view1<const float>(vec.data() + 7, {4}, {-1});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"sinks has a negative stride"});
  p = f.params();
  p.kv_lens = view1<const index_t>(lens + 1, {2}, {-1});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"kv_lens has a negative stride"});
  p = f.params();
  p.lse = with_stride(f.lse.view, 0, -20);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"lse has a negative stride"});
  EXPECT_TRUE(f.untouched());
}

TEST(Adversarial, LengthsBeyondTheViewsLength) {
  fixture f;
  // A cache of capacity 20 viewed with length 9: kv_lens are bounded by the view, not the buffer.
  auto cache = tensor<float, 4>::make({2, 20, 2, 16});
  const auto k9 = cache.view.narrow(1, 0, 9);
  attention_params p = f.params();
  const index_t over[2] = {9, 12};
  p.kv_lens = make_view(over, 2);
  expect_rejected([&] { attention(f.q.view, k9, k9, f.o.view, p); }, {"kv_lens[1] = 12 is outside [0, seq_k = 9]"});
  const index_t negative[2] = {-1, 3};
  p.kv_lens = make_view(negative, 2);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"kv_lens[0] = -1"});
  const index_t huge[2] = {std::numeric_limits<index_t>::max(), 3};
  p.kv_lens = make_view(huge, 2);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"kv_lens[0] = 9223372036854775807"});
  const index_t three[3] = {1, 2, 3};
  p.kv_lens = make_view(three, 3);
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"kv_lens has extents [3], expected [2]"});
  EXPECT_TRUE(f.untouched());
  // Rank-1 parameters are tensors too: a stride-0 kv_lens (one length for every sequence) is
  // rejected like any non-contiguous innermost axis.
  const index_t one = 4;
  p.kv_lens = view1<const index_t>(&one, {2}, {0});
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); },
                  {"kv_lens must have a contiguous innermost axis"});
  EXPECT_TRUE(f.untouched());
  // The boundary values themselves are valid: 0 (an empty sequence) and the view's length.
  const index_t edge[2] = {0, 9};
  p.kv_lens = make_view(edge, 2);
  attention(f.q.view, k9, k9, f.o.view, p);
  auto ref = tensor<double, 4>::make({2, 5, 4, 16});
  p.lse = {};
  reference::attention(f.q.cview(), view4<const float>(k9), view4<const float>(k9), p, ref.view);
  EXPECT_TRUE(all_close(f.o.cview(), ref.cview(), 2e-5, 2e-4));
}

TEST(Adversarial, HeadCountsThatDoNotDivide) {
  fixture f;
  const auto p = f.params();
  auto k8 = tensor<float, 4>::make({2, 9, 8, 16});  // more kv heads than q heads
  expect_rejected([&] { attention(f.q.view, k8.view, k8.view, f.o.view, p); },
                  {"q heads (4) must be a multiple of kv heads (8)"});
  auto v1 = tensor<float, 4>::make({2, 9, 1, 16});
  expect_rejected([&] { attention(f.q.view, f.k.view, v1.view, f.o.view, p); }, {"must match k"});
  std::vector<float> slopes(2, 0.5f);
  attention_params pa = p;
  pa.alibi_slopes = make_view<const float>(slopes.data(), 2);  // kv heads, not q heads
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, pa); }, {"alibi_slopes has extents [2], expected [4]"});
  std::vector<float> bias(2 * 2 * 5 * 9);
  pa = p;
  pa.bias = view4<const float>::contiguous(bias.data(), {2, 2, 5, 9});  // neither 1 nor 4 heads
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, pa); }, {"bias has extents [2, 2, 5, 9]"});
  EXPECT_TRUE(f.untouched());
}

TEST(Adversarial, NonFiniteScalarParameters) {
  fixture f;
  attention_params p = f.params();
  // (a positive softcap below 1 / FLT_MAX made the kernel's 1 / softcap infinite, and a zero
  // score times infinity NaN: found by this suite, now rejected)
  for (float bad : {kNaN, kInf, -kInf, -1e-30f, 1.4e-45f, 1e-40f}) {
    p.softcap = bad;
    expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"softcap"});
  }
  p = f.params();
  for (float bad : {kNaN, kInf, -kInf}) {
    p.scale = bad;
    expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"scale must be finite"});
  }
  p = f.params();
  p.window_right = -7;
  expect_rejected([&] { attention(f.q.view, f.k.view, f.v.view, f.o.view, p); }, {"window (-1, -7)"});
  EXPECT_TRUE(f.untouched());
}

// ---- attend::merge_states ------------------------------------------------------------------------

struct merge_fixture {
  tensor<float, 4> oa = tensor<float, 4>::make({2, 3, 4, 8}), ob = tensor<float, 4>::make({2, 3, 4, 8});
  tensor<float, 3> la = tensor<float, 3>::make({2, 4, 3}), lb = tensor<float, 3>::make({2, 4, 3});
  tensor<float, 4> o = tensor<float, 4>::make({2, 3, 4, 8});
  tensor<float, 3> l = tensor<float, 3>::make({2, 4, 3});
  merge_fixture() {
    std::fill(o.storage.begin(), o.storage.end(), kSentinel);
    std::fill(l.storage.begin(), l.storage.end(), kSentinel);
  }
  bool untouched() const {
    for (float x : o.storage)
      if (x != kSentinel) return false;
    for (float x : l.storage)
      if (x != kSentinel) return false;
    return true;
  }
  void merge(view4<const float> a, view3<const float> al, view4<const float> b,
             view3<const float> bl, view4<float> out, view3<float> outl) const {
    merge_states(a, al, b, bl, out, outl);
  }
};

TEST(AdversarialMerge, NullEmptyAndNegativeStrides) {
  merge_fixture m;
  const auto oa = m.oa.cview(), ob = m.ob.cview();
  const auto la = m.la.cview(), lb = m.lb.cview();
  expect_rejected([&] { m.merge(with_data<const float>(oa, nullptr), la, ob, lb, m.o.view, m.l.view); },
                  {"attend::merge_states", "o_a is null"});
  expect_rejected([&] { m.merge(oa, with_data<const float>(la, nullptr), ob, lb, m.o.view, m.l.view); }, {"lse_a is null"});
  expect_rejected([&] { m.merge(oa, la, with_data<const float>(ob, nullptr), lb, m.o.view, m.l.view); }, {"o_b is null"});
  expect_rejected([&] { m.merge(oa, la, ob, with_data<const float>(lb, nullptr), m.o.view, m.l.view); }, {"lse_b is null"});
  expect_rejected([&] { m.merge(oa, la, ob, lb, with_data<float>(m.o.view, nullptr), m.l.view); }, {"o is null"});
  expect_rejected([&] { m.merge(oa, la, ob, lb, m.o.view, with_data<float>(m.l.view, nullptr)); }, {"lse is null"});
  for (std::size_t a = 0; a < 3; ++a) {
    expect_rejected([&] { m.merge(oa, la, ob, lb, with_extent(m.o.view, a, 0), m.l.view); }, {"o has an empty axis"});
    expect_rejected([&] { m.merge(oa, with_stride(la, a, -1), ob, lb, m.o.view, m.l.view); }, {"lse_a has a negative stride"});
  }
  expect_rejected([&] { m.merge(oa, la, ob, lb, m.o.view, with_stride(m.l.view, 0, 0)); }, {"output lse maps several indices"});
  expect_rejected([&] { m.merge(oa, la, ob, lb, with_stride(m.o.view, 1, 0), m.l.view); }, {"output o maps several indices"});
  expect_rejected([&] { m.merge(oa, la, with_extent(ob, 3, 7), lb, m.o.view, m.l.view); }, {"o_b has extents [2, 3, 4, 7]"});
  expect_rejected([&] { m.merge(oa, la, ob, with_extent(lb, 2, 4), m.o.view, m.l.view); }, {"lse_b has extents [2, 4, 4]"});
  EXPECT_TRUE(m.untouched());
}

TEST(AdversarialMerge, OverlapsOtherThanExactInPlace) {
  merge_fixture m;
  // o starting inside o_a (partial overlap)
  std::vector<float> shared(400, 0.5f);
  const view4<float> a_in(shared.data(), m.oa.view.extents(), m.oa.view.strides());
  const view4<float> o_in(shared.data() + 8, m.o.view.extents(), m.o.view.strides());
  expect_rejected([&] { m.merge(a_in, m.la.cview(), m.ob.cview(), m.lb.cview(), o_in, m.l.view); },
                  {"output o overlaps input o_a"});
  // o over o_a's memory with other strides (BHSD instead of BSHD): not the in-place case
  const view4<float> o_bhsd(shared.data(), m.o.view.extents(), {96, 8, 24, 1});
  expect_rejected([&] { m.merge(a_in, m.la.cview(), m.ob.cview(), m.lb.cview(), o_bhsd, m.l.view); },
                  {"output o overlaps input o_a"});
  // lse starting inside lse_b
  std::vector<float> lshared(64, 0.25f);
  const view3<float> lb_in(lshared.data(), {2, 4, 3}, {12, 3, 1});
  const view3<float> l_in(lshared.data() + 1, {2, 4, 3}, {12, 3, 1});
  expect_rejected([&] { m.merge(m.oa.cview(), m.la.cview(), m.ob.cview(), lb_in, m.o.view, l_in); },
                  {"output lse overlaps input lse_b"});
  // lse overlapping o
  expect_rejected([&] {
    m.merge(m.oa.cview(), m.la.cview(), m.ob.cview(), m.lb.cview(), m.o.view,
            view3<float>::contiguous(m.o.storage.data() + 50, {2, 4, 3}));
  }, {"output lse overlaps input o"});
  for (float x : shared) ASSERT_EQ(x, 0.5f);
  for (float x : lshared) ASSERT_EQ(x, 0.25f);
  EXPECT_TRUE(m.untouched());
}

// ---- The oracle validates like the operator (it must never read out of bounds either) ----------

TEST(AdversarialReference, RejectsWhatAttentionRejects) {
  fixture f;
  auto ref = tensor<double, 4>::make({2, 5, 4, 16});
  auto run = [&](const view4<const float>& q, const view4<const float>& k,
                 const view4<const float>& v, const attention_params& p) {
    reference::attention(q, k, v, p, ref.view);
  };
  const std::string op = "attend::reference::attention";
  auto k1 = tensor<float, 4>::make({1, 9, 2, 16});  // batch 1 < 2: would read past k
  expect_rejected([&] { run(f.q.view, k1.view, k1.view, {}); }, {op, "batch of q (2)"});
  auto v8 = tensor<float, 4>::make({2, 8, 2, 16});
  expect_rejected([&] { run(f.q.view, f.k.view, v8.view, {}); }, {op, "must match k"});
  auto k8 = tensor<float, 4>::make({2, 9, 2, 8});
  expect_rejected([&] { run(f.q.view, k8.view, f.v.view, {}); }, {op, "head dim of k (8)"});
  attention_params p;
  const index_t lens[2] = {9, 10};
  p.kv_lens = make_view(lens, 2);
  expect_rejected([&] { run(f.q.view, f.k.view, f.v.view, p); }, {op, "kv_lens[1] = 10"});
  p = {};
  std::vector<float> bias(5 * 10);
  p.bias = view4<const float>::contiguous(bias.data(), {1, 1, 5, 10});
  expect_rejected([&] { run(f.q.view, f.k.view, f.v.view, p); }, {op, "bias has extents"});
  p = {};
  const float sinks[3] = {0, 0, 0};
  p.sinks = make_view(sinks, 3);
  expect_rejected([&] { run(f.q.view, f.k.view, f.v.view, p); }, {op, "sinks has extents"});
  p = {};
  p.window_left = -3;
  expect_rejected([&] { run(f.q.view, f.k.view, f.v.view, p); }, {op, "window"});
  p = {};
  p.softcap = kNaN;
  expect_rejected([&] { run(f.q.view, f.k.view, f.v.view, p); }, {op, "softcap"});
}

}  // namespace
}  // namespace attend::testing
