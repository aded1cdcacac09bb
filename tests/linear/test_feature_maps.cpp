// Feature maps: the vectorised form equals the scalar definition (in double) for every map, over
// lengths with SIMD tails; maps callable on float only are applied lane by lane; elu+1 stays
// positive.
#include "linear/linear_case.hpp"

namespace attend::testing {
namespace {

template <class FM>
void check_map(const FM& phi, fmap f, double rtol) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-6.0f, 6.0f);
  for (index_t n : {1, 7, 8, 15, 16, 17, 33, 128}) {
    std::vector<float> x(static_cast<std::size_t>(n)), y(static_cast<std::size_t>(n));
    for (auto& v : x) v = d(rng);
    x[0] = -100.0f;  // far in the negative tail
    linear::apply_feature_map(phi, x.data(), y.data(), n);
    for (index_t i = 0; i < n; ++i) {
      const double want = phi_ref(f, x[i]);
      EXPECT_NEAR(y[i], want, 1e-30 + rtol * std::abs(want)) << "x = " << x[i] << ", n = " << n;
    }
  }
}

TEST(feature_maps, vector_equals_scalar_definition) {
  check_map(linear::identity{}, fmap::identity, 0.0);
  check_map(linear::elu_plus_one{}, fmap::elu1, 1e-6);
  check_map(linear::relu{}, fmap::relu, 0.0);
  check_map(linear::silu{}, fmap::silu, 1e-6);
  check_map(squareplus{}, fmap::squareplus, 1e-3);  // cancellation at x = -100 in float
  check_map(square_scalar{}, fmap::square, 1e-7);
}

TEST(feature_maps, user_maps_are_detected) {
  using V = simd::vfloat<xsimd::default_arch>;
  static_assert(std::is_invocable_r_v<V, const squareplus&, V>, "template map is vectorised");
  static_assert(!std::is_invocable_r_v<V, const square_scalar&, V>, "float-only map");
  static_assert(linear::detail::is_feature_map_v<square_scalar>);
  static_assert(!linear::detail::is_feature_map_v<int>);
  // A lambda works as a feature map too.
  auto cube = [](float x) { return x * x * x; };
  float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, -2}, y[9];
  linear::apply_feature_map(cube, x, y, 9);
  for (int i = 0; i < 9; ++i) EXPECT_EQ(y[i], x[i] * x[i] * x[i]);
}

TEST(feature_maps, elu_plus_one_is_non_negative_and_positive_for_moderate_inputs) {
  std::vector<float> x, y;
  for (float v = -80.0f; v <= 80.0f; v += 0.37f) x.push_back(v);
  y.resize(x.size());
  linear::apply_feature_map(linear::elu_plus_one{}, x.data(), y.data(), index_t(x.size()));
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_GT(y[i], 0.0f) << x[i];
    EXPECT_TRUE(std::isfinite(y[i]));
  }
}

}  // namespace
}  // namespace attend::testing
