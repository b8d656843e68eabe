// Format::dequantize_rows against dequantize for every example spec of the registry: a row
// range must decode bit for bit as the same rows of the whole matrix. Formats that cannot
// decode rows alone are listed here, so that losing the capability fails a test. PackedLinear
// then multiplies these formats by row tiles.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>

#include "formats/ggml_formats.h"
#include "formats_test_util.h"
#include "quantkit/format.h"
#include "quantkit/linear.h"

namespace {

using namespace quantkit;

// Families whose rows cannot be decoded on their own: rht's row transform mixes every row
// (the runtime multiplies through Format::rotated instead).
const std::set<std::string> kRotatedFamilies = {"rht"};

// Families registered by other tests (formats_hadamard_test.cpp), not by the library.
const std::set<std::string> kTestFamilies = {"probe32"};

std::string family_of(const std::string& spec) { return spec.substr(0, spec.find(':')); }

struct Example {
  std::string spec;
  std::unique_ptr<Format> format;
};

// Layouts the examples miss: several codebook blocks (and row scales) in a row range,
// tensor scales, small groups, a ptq161 with no salient or no binarised channel, split
// around a vector format.
const char* const kExtraSpecs[] = {"vq:d2:k4:r4", "rvq:d4:2x16:r5:rs", "int3:tensor:asym", "int4:row:mid",
                                   "nf4:tensor", "lloyd:b2:g32", "ternary:opt:g32", "binary:tensor",
                                   "fsq:l5x5x5:tensor", "fp6:search:g32", "fp8:e4m3:tensor", "tcq:b3:l12:g32",
                                   "pvq:d8:k8:g64", "e8:b2:g64", "ptq161:p0", "ptq161:p100", "split2:e8:b2",
                                   "rht:nf4:g64"};

std::vector<Example> all_examples() {
  std::vector<Example> out;
  for (const auto& fam : format_families())
    if (!kTestFamilies.count(fam.name))
      for (const auto& spec : fam.examples) out.push_back({spec, make_format(spec)});
  for (const char* spec : kExtraSpecs) out.push_back({spec, make_format(spec)});
  return out;
}

// An odd shape the format accepts: cols not a multiple of the usual groups (96 = 64 + 32,
// 100 not a multiple of 8), or whole llama.cpp super-blocks for the ggml types.
std::pair<int64_t, int64_t> shape_for(const Format& f, int64_t rows, int64_t cols) {
  if (f.check_shape(rows, cols).empty()) return {rows, cols};
  return {rows, 256};
}

TEST(FormatRows, EveryExampleDecodesRowRangesBitExact) {
  int checked = 0;
  for (const auto& [spec, f] : all_examples())
    for (const auto& [r, c] : {std::pair<int64_t, int64_t>{37, 96}, {13, 100}}) {
      const auto [rows, cols] = shape_for(*f, r, c);
      SCOPED_TRACE(spec + " " + std::to_string(rows) + "x" + std::to_string(cols));
      const std::vector<float> w = qk_test::gaussian(size_t(rows * cols), 7, 0.05f);
      const Packed p = f->quantize(w.data(), rows, cols, nullptr);
      std::vector<float> whole(w.size());
      f->dequantize(p, whole.data());
      if (kRotatedFamilies.count(family_of(spec))) {
        std::vector<float> out(static_cast<size_t>(cols), 0.0f);
        EXPECT_FALSE(f->dequantize_rows(p, 0, 1, out.data()));
        continue;
      }
      EXPECT_TRUE(f->dequantize_rows(p, 0, 0, nullptr));  // the capability probe
      for (const auto& [r0, nr] : {std::pair<int64_t, int64_t>{0, 1}, {rows - 1, 1}, {rows / 3, 7}, {0, rows}}) {
        std::vector<float> part(size_t(nr * cols), -1.0f);
        ASSERT_TRUE(f->dequantize_rows(p, r0, nr, part.data()));
        EXPECT_EQ(std::memcmp(part.data(), &whole[size_t(r0 * cols)], part.size() * sizeof(float)), 0)
            << "rows [" << r0 << ", " << r0 + nr << ")";
      }
      EXPECT_THROW(f->dequantize_rows(p, rows - 1, 2, whole.data()), Error);
      ++checked;
    }
  EXPECT_GT(checked, 100);
}

// lin's output for n tokens of x against the FP32 product of its dequantized weights
// (deq: rows x stored, the logical columns first), within 1e-4 of the terms' magnitude.
void expect_forward_matches_fp32(const PackedLinear& lin, const std::vector<float>& deq, int64_t stored,
                                 const std::vector<float>& x, int64_t n) {
  const int64_t rows = lin.out_features(), cols = lin.in_features();
  std::vector<float> y(size_t(n * rows));
  lin.forward(x.data(), n, y.data());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const double term = double(deq[size_t(r * stored + j)]) * x[size_t(t * cols + j)];
        ref += term, mag += std::fabs(term);
      }
      ASSERT_NEAR(y[size_t(t * rows + r)], ref, 1e-4 * mag + 1e-30) << "token " << t << ", row " << r;
    }
}

// Quantkit formats without an integer kernel or codebook tables: row tiles (rht: rotations
// around its inner format's path), padding columns beyond the layer's inputs cropped, and
// the product equal to the FP32 product of the dequantized weights. Rotated layers run with
// FP32 activations here, so that an inner integer kernel is exact too (tests/
// rotated_linear_test.cpp checks them with int8 activations).
TEST(FormatRows, PackedLinearMultipliesRowTiles) {
  // 6 zero padding columns, as plan_tensor stores them.
  const int64_t rows = 70, cols = 90, stored = 96;
  const int64_t max_n = 130;  // 3 tokens: 8-row dot tiles; 130: row blocks through the GEMM
  const std::vector<float> x = qk_test::gaussian(size_t(max_n * cols), 11);
  int row_tiles = 0, rotated_layers = 0;
  for (const auto& [spec, f] : all_examples()) {
    if (formats::ggml_type_for_spec(spec) || !f->check_shape(rows, stored).empty()) continue;
    SCOPED_TRACE(spec);
    std::vector<float> w = qk_test::gaussian(size_t(rows * stored), 5, 0.05f);
    for (int64_t r = 0; r < rows; ++r) std::fill(&w[size_t(r * stored + cols)], &w[size_t((r + 1) * stored)], 0.0f);
    const Packed p = f->quantize(w.data(), rows, stored, nullptr);
    TensorView v{"w", DType::QK, {rows, cols}, p.bytes.data(), p.bytes.size()};
    v.format = spec, v.stored_cols = stored;
    PackedLinear lin(v);
    const std::string path = lin.path();
    if (path == "int8-kernel" || path == "vq-lut") continue;  // tested with their kernels
    const bool rotated = kRotatedFamilies.count(family_of(spec));
    if (rotated)
      EXPECT_EQ(path.rfind("rotated:", 0), 0u) << path;
    else
      EXPECT_EQ(path, "row-tiles");
    row_tiles += path == "row-tiles";
    rotated_layers += rotated;
    std::vector<float> deq(w.size());
    f->dequantize(p, deq.data());
    set_int8_activations(!rotated);
    for (const int64_t n : {int64_t(3), max_n}) {
      SCOPED_TRACE(std::to_string(n) + " tokens");
      expect_forward_matches_fp32(lin, deq, stored, x, n);
    }
    set_int8_activations(true);
  }
  EXPECT_GE(row_tiles, 60);  // of the registry's ~90 examples (today 60)
  EXPECT_GE(rotated_layers, 4);
}

// Long prompts on a matrix of several 512-row blocks (the last one partial).
TEST(FormatRows, LongPromptsRunRowBlocksThroughTheGemm) {
  const int64_t rows = 1100, cols = 64, n = 130;
  const auto f = make_format("nf4:g64");
  const std::vector<float> w = qk_test::gaussian(size_t(rows * cols), 7, 0.05f), x = qk_test::gaussian(size_t(n * cols), 8);
  const Packed p = f->quantize(w.data(), rows, cols, nullptr);
  TensorView v{"w", DType::QK, {rows, cols}, p.bytes.data(), p.bytes.size()};
  v.format = "nf4:g64", v.stored_cols = cols;
  PackedLinear lin(v);
  ASSERT_STREQ(lin.path(), "row-tiles");
  std::vector<float> deq(w.size());
  f->dequantize(p, deq.data());
  expect_forward_matches_fp32(lin, deq, cols, x, n);
}

}  // namespace
