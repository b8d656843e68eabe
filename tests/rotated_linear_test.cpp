// Rotated formats (rht:<inner>) at run time: PackedLinear multiplies y = R^T Q' (C x) with
// the inner format's own path (integer kernel, codebook tables or row tiles) and must equal
// the FP32 product of the fully decoded W = R^T Q' C, within the rounding of the
// activations the inner path uses.
#include <gtest/gtest.h>

#include <cmath>

#include "formats_test_util.h"
#include "quantkit/format.h"
#include "quantkit/linear.h"

namespace {

using namespace quantkit;

struct Case {
  const char* spec;
  int64_t rows, cols, stored;  // stored > cols: zero padding columns, as plan_tensor stores them
  const char* path;
  // Relative error with int8 activations. Blocks of 32 Gaussian inputs round to steps of
  // amax / 127 (amax ~ 2.2 sigma), an error of step / sqrt(12) ~ 0.005 sigma per input,
  // and so ~0.005 of the product (measured 0.0050-0.0055); FP32 paths only round sums.
  double int8_bound;
};

// 320 and 96 columns are not powers of two (two overlapping Hadamard blocks); 288 rows
// neither.
const Case kCases[] = {
    {"rht:int4:g64", 288, 320, 320, "rotated:int8-kernel", 1e-2},
    {"rht:q4_0", 256, 256, 256, "rotated:int8-kernel", 1e-2},
    {"rht:vq:d4:k256", 288, 320, 320, "rotated:vq-lut", 1e-5},
    {"rht:nf4:g64", 288, 300, 320, "rotated:row-tiles", 1e-5},
    {"rht:e8:b2", 96, 90, 96, "rotated:row-tiles", 1e-5},
};

TEST(RotatedLinear, EqualsTheDecodedMatrixProductOnEveryInnerPath) {
  for (const Case& c : kCases) {
    SCOPED_TRACE(c.spec);
    const auto f = make_format(c.spec);
    std::vector<float> w = qk_test::gaussian(size_t(c.rows * c.stored), 3, 0.05f);
    for (int64_t r = 0; r < c.rows; ++r)
      std::fill(&w[size_t(r * c.stored + c.cols)], &w[size_t((r + 1) * c.stored)], 0.0f);
    w[17] = 1.5f;  // an outlier, which the rotation spreads over every row and column
    const Packed p = f->quantize(w.data(), c.rows, c.stored, nullptr);
    TensorView v{"w", DType::QK, {c.rows, c.cols}, p.bytes.data(), p.bytes.size()};
    v.format = c.spec, v.stored_cols = c.stored;
    const PackedLinear lin(v);
    EXPECT_STREQ(lin.path(), c.path);
    EXPECT_LT(lin.weight_bytes(), size_t(c.rows * c.stored)) << "under 8 bits per weight: nothing decoded";
    std::vector<float> deq(w.size());
    f->dequantize(p, deq.data());
    const std::vector<float> x = qk_test::gaussian(size_t(200 * c.cols), 9);
    for (const int64_t n : {1, 3, 200}) {  // 200: the GEMM row blocks of the inner row tiles
      SCOPED_TRACE(std::to_string(n) + " tokens");
      EXPECT_LT(qk_test::linear_relative_error(lin, deq, c.stored, x, n), c.int8_bound);
      set_int8_activations(false);
      EXPECT_LT(qk_test::linear_relative_error(lin, deq, c.stored, x, n), 1e-5);
      set_int8_activations(true);
    }
  }
}

}  // namespace
