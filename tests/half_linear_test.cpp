// 16-bit float weights (F16, BF16) kept 16-bit: PackedLinear on the strip layout of
// kernels/half_matrix.h must equal the product of the widened weights, exactly up to FP32
// sums with FP32 activations, and within the rounding of the activations to BF16 where BF16
// weights multiply BF16 products (AMX tiles, vdpbf16ps).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>

#include "formats_test_util.h"
#include "kernels/half_matrix.h"
#include "quantkit/fp16.h"
#include "quantkit/linear.h"

namespace {

using namespace quantkit;

struct Weights {
  std::vector<uint16_t> bits;
  std::vector<float> widened;  // the values the bits stand for
};

Weights make_weights(DType type, int64_t rows, int64_t cols, uint64_t seed) {
  Weights w;
  for (const float v : qk_test::gaussian(size_t(rows * cols), seed, 0.05f)) {
    const uint16_t h = type == DType::F16 ? f32_to_f16(v) : f32_to_bf16(v);
    w.bits.push_back(h);
    w.widened.push_back(type == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h));
  }
  return w;
}

// Rows and columns off the 32 of a strip and a chunk, and a real width.
const int64_t kShapes[][2] = {{50, 40}, {70, 100}, {33, 31}, {64, 2048}};
const int64_t kTokens[] = {1, 3, 4, 17, 33, 40, 130};

// BF16 activations: a value in [2^e, 2^(e+1)) rounds by at most 2^(e-8), uniformly, so
// an RMS relative error of ~2^-8 / sqrt(3) / 1.5 ~ 1.5e-3 per input and about that on a
// product of many inputs (1.6e-3 measured from the rounding alone, below); FP32
// activations only round sums.
constexpr double kBf16ActivationBound = 3e-3;
constexpr double kFp32Bound = 1e-5;

TEST(HalfLinear, EqualsTheWidenedProductForEveryShapeAndTokenCount) {
  for (const DType type : {DType::F16, DType::BF16}) {
    for (const auto& shape : kShapes) {
      const int64_t rows = shape[0], cols = shape[1];
      SCOPED_TRACE(std::string(dtype_name(type)) + " " + std::to_string(rows) + "x" + std::to_string(cols));
      const Weights w = make_weights(type, rows, cols, uint64_t(rows * cols));
      const PackedLinear lin(TensorView{"w", type, {rows, cols}, w.bits.data(), w.bits.size() * 2});
      const std::string path = lin.path();
      const bool products = path == "bf16-amx" || path == "bf16-dot";  // BF16 activations
      if (type == DType::F16 || !(kernels::has_amx_bf16() || kernels::has_avx512_bf16())) {
        EXPECT_EQ(path, "half-fma");
      } else if (kernels::has_amx_bf16()) {
        EXPECT_EQ(path, "bf16-amx");
      } else if (!products) {
        EXPECT_EQ(path, "half-fma");  // vdpbf16ps present but slow (Intel without AMX)
      }
      const std::vector<float> x = qk_test::gaussian(size_t(130 * cols), 7);
      for (const int64_t n : kTokens) {
        SCOPED_TRACE(std::to_string(n) + " tokens");
        const bool rounded = products && n >= 4;  // BF16 products from 4 tokens
        EXPECT_LT(qk_test::linear_relative_error(lin, w.widened, cols, x, n), rounded ? kBf16ActivationBound : kFp32Bound);
        set_int8_activations(false);  // --fp32-activations: never rounded
        EXPECT_LT(qk_test::linear_relative_error(lin, w.widened, cols, x, n), kFp32Bound);
        set_int8_activations(true);
      }
    }
  }
}

// The premise of kBf16ActivationBound, on any CPU: the exact product of BF16-rounded
// activations is that close to the product of the FP32 ones (and not much closer, so the
// bound is not loose enough to hide a wrong sum).
TEST(HalfLinear, Bf16ActivationBoundCoversTheRoundingOfTheInputs) {
  const int64_t rows = 64, cols = 2048, n = 17;
  const Weights w = make_weights(DType::BF16, rows, cols, 8);
  const std::vector<float> x = qk_test::gaussian(size_t(n * cols), 7);
  std::vector<uint16_t> xb(x.size());
  kernels::round_to_bf16(x.data(), n, cols, xb.data());
  double err = 0, norm = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double exact = 0, rounded = 0;
      for (int64_t c = 0; c < cols; ++c) {
        exact += double(w.widened[size_t(r * cols + c)]) * x[size_t(t * cols + c)];
        rounded += double(w.widened[size_t(r * cols + c)]) * bf16_to_f32(xb[size_t(t * cols + c)]);
      }
      err += (rounded - exact) * (rounded - exact), norm += exact * exact;
    }
  const double relative = std::sqrt(err / norm);
  EXPECT_LT(relative, kBf16ActivationBound);
  EXPECT_GT(relative, kBf16ActivationBound / 4);
}

TEST(HalfLinear, KeepsTwoBytesPerWeight) {
  const Weights w = make_weights(DType::BF16, 4096, 256, 1);
  const PackedLinear lin(TensorView{"w", DType::BF16, {4096, 256}, w.bits.data(), w.bits.size() * 2});
  EXPECT_EQ(lin.weight_bytes(), size_t(4096 * 256 * 2));
  const Weights odd = make_weights(DType::F16, 50, 40, 2);  // padded to 64 x 64
  const PackedLinear padded(TensorView{"w", DType::F16, {50, 40}, odd.bits.data(), odd.bits.size() * 2});
  EXPECT_EQ(padded.weight_bytes(), size_t(64 * 64 * 2));
}

TEST(HalfLinear, MakeLinearKeepsSixteenBitWeights) {
  const Weights w = make_weights(DType::F16, 96, 64, 3);
  const auto lin = make_linear(TensorView{"w", DType::F16, {96, 64}, w.bits.data(), w.bits.size() * 2});
  ASSERT_NE(dynamic_cast<const PackedLinear*>(lin.get()), nullptr);
  EXPECT_EQ(lin->weight_bytes(), size_t(96 * 64 * 2));
}

TEST(HalfMatrix, DecodesEveryRowFromTheStripLayout) {
  for (const DType type : {DType::F16, DType::BF16}) {
    const int64_t rows = 70, cols = 100;
    const Weights w = make_weights(type, rows, cols, 4);
    const kernels::HalfMatrix m(type == DType::F16 ? kernels::HalfType::F16 : kernels::HalfType::BF16,
                                w.bits.data(), rows, cols);
    EXPECT_EQ(m.strips(), 3);
    std::vector<float> out(size_t(5 * cols));
    for (const int64_t r0 : {0, 14, 31, 47, 65}) {
      m.decode_rows(r0, 5, out.data());
      for (int64_t i = 0; i < 5 * cols; ++i) ASSERT_EQ(out[size_t(i)], w.widened[size_t(r0 * cols + i)]) << r0 << " " << i;
    }
  }
}

// The scalar definition: round to nearest, ties to even, on the bits; NaNs stay NaNs.
uint16_t bf16_reference(float f) {
  if (std::isnan(f)) return 0;  // checked apart
  const uint32_t u = std::bit_cast<uint32_t>(f), low = u & 0xFFFF, high = u >> 16;
  if (low > 0x8000 || (low == 0x8000 && (high & 1))) return uint16_t(high + 1);
  return uint16_t(high);
}

TEST(HalfMatrix, RoundsActivationsToNearestEvenBf16) {
  std::mt19937 rng(5);
  std::vector<float> x;
  for (int i = 0; i < 4000; ++i) x.push_back(std::bit_cast<float>(uint32_t(rng())));  // every exponent, NaNs
  for (const uint32_t u : {0x3F808000u, 0x3F818000u, 0x3F807FFFu, 0x00008000u, 0x00018000u, 0x7F7FFFFFu,
                           0x7F800000u, 0xFF800000u, 0x80000000u, 0x7F800001u, 0xFFC00000u})
    x.push_back(std::bit_cast<float>(u));  // ties both ways, denormals, overflow, infinities, NaNs
  std::vector<uint16_t> xb(x.size());
  kernels::round_to_bf16(x.data(), 1, int64_t(x.size()), xb.data());  // 16 at a time, then a tail
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(xb[i]))) << std::hex << std::bit_cast<uint32_t>(x[i]);
      continue;
    }
    ASSERT_EQ(xb[i], bf16_reference(x[i])) << std::hex << std::bit_cast<uint32_t>(x[i]);
  }
}

}  // namespace
