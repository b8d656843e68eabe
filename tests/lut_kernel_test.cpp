// The look-up-table kernel of the codebook formats (kernels/lut_vq.h) against its
// reference: dequantize, then an FP32 product. The table reorders the float sums (per code
// slot, then across slots), so the two agree to float rounding of the products' magnitude.
#include <gtest/gtest.h>

#include <cmath>

#include "formats_test_util.h"
#include "kernels/lut_vq.h"
#include "quantkit/format.h"
#include "quantkit/linear.h"
#include "quantkit/packed_tensor.h"

namespace {

using namespace quantkit;

struct Case {
  std::string spec;
  int64_t rows, cols;
  const char* path;          // the path PackedLinear must take
  int64_t stored_cols = 0;  // > cols: zero-padded columns, as quantize stores them
};

std::string case_name(const testing::TestParamInfo<Case>& info) {
  std::string s = info.param.spec + "_" + std::to_string(info.param.rows) + "x" + std::to_string(info.param.cols);
  for (char& c : s)
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

// The layer for one case and the format's own decoding of the same bytes.
struct Prepared {
  std::vector<float> w;  // rows x cols, padding dropped
  Packed packed;
  std::unique_ptr<PackedLinear> lin;
};

Prepared prepare(const Case& c) {
  const int64_t stored = c.stored_cols ? c.stored_cols : c.cols;
  std::vector<float> w = qk_test::gaussian(size_t(c.rows * stored), 21, 0.02f);
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t j = c.cols; j < stored; ++j) w[size_t(r * stored + j)] = 0.0f;
  const auto f = make_format(c.spec);
  Prepared p;
  p.packed = f->quantize(w.data(), c.rows, stored, nullptr);
  p.w.resize(size_t(c.rows * c.cols));
  dequantize_cropped(*f, p.packed, c.cols, p.w.data());
  TensorView v{"w", DType::QK, {c.rows, c.cols}, p.packed.bytes.data(), p.packed.bytes.size()};
  v.format = c.spec;
  v.stored_cols = stored;
  p.lin = std::make_unique<PackedLinear>(v);
  return p;
}

class LutKernel : public testing::TestWithParam<Case> {};

// y (n tokens) equals w . x in double within float rounding: each product and partial sum
// rounds once in float, |error| <= (cols + 8) * 2^-24 * sum|w x|.
void expect_matches_fp32(const Case& c, const Prepared& p, const std::vector<float>& x, const std::vector<float>& y,
                         int64_t n) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < c.rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t j = 0; j < c.cols; ++j) {
        const double prod = double(p.w[size_t(r * c.cols + j)]) * x[size_t(t * c.cols + j)];
        ref += prod;
        mag += std::fabs(prod);
      }
      const double bound = double(c.cols + 8) * 0x1p-24 * mag + 1e-30;
      ASSERT_LE(std::fabs(y[size_t(t * c.rows + r)] - ref), bound)
          << c.spec << " n " << n << " token " << t << " row " << r;
    }
}

}  // namespace

TEST_P(LutKernel, MatchesDequantizeThenFp32) {
  const Case c = GetParam();
  const Prepared p = prepare(c);
  EXPECT_STREQ(p.lin->path(), c.path);
  // 1 and 6 tokens: tables; 11 (> kLutMaxTokens): decoded row tiles.
  for (const int64_t n : {int64_t(1), int64_t(6), int64_t(11)}) {
    std::vector<float> x = qk_test::gaussian(size_t(n * c.cols), 22);
    for (int64_t j = 0; j < n * c.cols; j += 11) x[size_t(j)] *= 10.0f;
    std::vector<float> y(size_t(n * c.rows), NAN);
    p.lin->forward(x.data(), n, y.data());
    expect_matches_fp32(c, p, x, y, n);
  }
}

// Row decoding (the fallback and the row-tile path) gives the format's own bits.
TEST_P(LutKernel, RowsDecodeToTheFormatsWeights) {
  const Case c = GetParam();
  const Prepared p = prepare(c);
  const auto cm = kernels::CodebookMatrix::from_packed(*make_format(c.spec), p.packed, c.cols);
  ASSERT_TRUE(cm.has_value());
  std::vector<float> rows(size_t(c.rows * c.cols));
  cm->decode_rows(0, c.rows, rows.data());
  EXPECT_EQ(rows, p.w);
}

INSTANTIATE_TEST_SUITE_P(
    Codebooks, LutKernel,
    testing::Values(Case{"vq:d4:k16", 37, 96, "vq-lut"}, Case{"vq:d8:k256", 37, 96, "vq-lut"},
                    Case{"vq:d8:k16", 5, 172, "vq-lut"}, Case{"vq:d4:k16", 3, 64, "vq-lut"},
                    Case{"vq:d4:k32:rs", 5, 172, "vq-lut"}, Case{"vq:d4:k16:r16", 37, 96, "vq-lut"},
                    Case{"rvq:d4:2x16", 37, 96, "vq-lut"}, Case{"rvq:d8:3x16", 5, 172, "vq-lut"},
                    Case{"rvq:d4:2x16:rs", 3, 64, "vq-lut"}, Case{"grvq:d8:g2:2x16", 37, 96, "vq-lut"},
                    Case{"vq:d4:k16", 5, 170, "vq-lut", 172},
                    // too few rows share the codebook for its tables to pay: decoded rows
                    Case{"vq:d4:k256", 3, 64, "row-tiles"}),
    case_name);

// A codebook too large for a cached table (K > kLutMaxCodewords) decodes rows instead.
TEST(LutKernelFallback, LargeCodebookUsesRowTiles) {
  const Case c{"vq:d2:k8192:i1", 300, 40, "row-tiles"};
  const Prepared p = prepare(c);
  EXPECT_STREQ(p.lin->path(), "row-tiles");
  std::vector<float> x = qk_test::gaussian(size_t(3 * c.cols), 23), y(size_t(3 * c.rows));
  p.lin->forward(x.data(), 3, y.data());
  expect_matches_fp32(c, p, x, y, 3);
}
