// The packed-weight kernels against their reference: dequantize, then an FP32 product.
// The integer kernels quantize activations to int8 per block of 32, so they may differ
// from the reference by at most sum_b (dx_b / 2) * sum_{i in b} |w_i| per output (plus
// float rounding); that bound is checked on every output, for every kernel this CPU has.
#include <gtest/gtest.h>

#include <cmath>

#include <nlohmann/json.hpp>

#include "formats_test_util.h"
#include "test_util.h"
#include "kernels/block_q.h"
#include "quantkit/dtype.h"
#include "quantkit/format.h"
#include "quantkit/linear.h"
#include "quantkit/packed_tensor.h"

namespace {

using namespace quantkit;
using kernels::BlockQMatrix;

struct Case {
  std::string spec;
  int64_t rows, cols;
};

std::string case_name(const testing::TestParamInfo<Case>& info) {
  std::string s = info.param.spec + "_" + std::to_string(info.param.rows) + "x" + std::to_string(info.param.cols);
  for (char& c : s)
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

// llama.cpp types by their ggml name, quantkit formats as packed QK tensors.
DType dtype_from_name_or_qk(const std::string& spec) {
  std::string name = spec;  // spec "q4_k", ggml name "q4_K"
  if (name.size() == 4 && name[0] == 'q' && name[3] == 'k') name[3] = 'K';
  try {
    return dtype_from_name(name);
  } catch (const Error&) {
    return DType::QK;
  }
}

// The format's dequantized weights and the kernel layout of the same packed matrix.
struct Prepared {
  std::vector<float> w;  // rows x cols
  BlockQMatrix k;
};

Prepared prepare(const Case& c, uint64_t seed) {
  const auto f = make_format(c.spec);
  std::vector<float> w = qk_test::gaussian(size_t(c.rows * c.cols), seed, 0.02f);
  for (int64_t j = 0; j < c.cols; j += 7) w[size_t(j)] *= 8.0f;  // some outliers
  const Packed p = f->quantize(w.data(), c.rows, c.cols, nullptr);
  Prepared out;
  out.w.resize(w.size());
  f->dequantize(p, out.w.data());
  const DType t = dtype_from_name_or_qk(c.spec);
  auto k = t == DType::QK ? kernels::blockq_from_int(c.spec, p, c.cols)
                          : kernels::blockq_from_ggml(t, p.bytes.data(), c.rows, c.cols);
  EXPECT_TRUE(k.has_value()) << c.spec;
  if (k) out.k = std::move(*k);
  return out;
}

class BlockQKernel : public testing::TestWithParam<Case> {};

// The re-layout is lossless: every row decodes to the format's own dequantization (K-quants
// and asymmetric ints store their scale products in fp16: relative 2^-11 of the offset).
TEST_P(BlockQKernel, LayoutDecodesToTheFormatsWeights) {
  const Case c = GetParam();
  const Prepared p = prepare(c, 11);
  std::vector<float> row(static_cast<size_t>(c.cols));
  double max_err = 0, max_w = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    p.k.decode_row(r, row.data());
    for (int64_t j = 0; j < c.cols; ++j) {
      max_err = std::max(max_err, std::fabs(double(row[size_t(j)]) - p.w[size_t(r * c.cols + j)]));
      max_w = std::max(max_w, std::fabs(double(p.w[size_t(r * c.cols + j)])));
    }
  }
  const bool rounded_scales = p.k.has_min;
  EXPECT_LE(max_err, rounded_scales ? 2e-3 * max_w : 0.0) << c.spec;
}

// y (n tokens x c.rows, rows [r0, r1) written) against the FP32 product of the format's
// weights, within the activation-rounding bound.
void expect_within_activation_bound(const Case& c, const Prepared& p, const std::vector<float>& x,
                                    const kernels::Q8Activations& a, const std::vector<float>& y, const char* isa,
                                    int64_t r0 = 0, int64_t r1 = -1) {
  if (r1 < 0) r1 = c.rows;
  for (int64_t t = 0; t < a.n; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      double ref = 0, bound = 0, mag = 0;
      for (int64_t b = 0; b < p.k.blocks_per_row; ++b) {
        double wsum = 0;
        for (int64_t j = b * 32; j < std::min(c.cols, b * 32 + 32); ++j) {
          const double wv = p.w[size_t(r * c.cols + j)], xv = x[size_t(t * c.cols + j)];
          ref += wv * xv;
          wsum += std::fabs(wv);
          mag += std::fabs(wv * xv);
        }
        bound += 0.5 * a.d[size_t(t * a.blocks + b)] * wsum;
      }
      const double slack = 1e-5 * mag + (p.k.has_min ? 2e-3 * mag : 0.0);
      ASSERT_LE(std::fabs(y[size_t(t * c.rows + r)] - ref), bound + slack + 1e-7)
          << isa << " " << c.spec << " token " << t << " row " << r;
    }
}

std::vector<float> test_activations(const Case& c, int64_t n) {
  std::vector<float> x = qk_test::gaussian(size_t(n * c.cols), 13);
  for (int64_t j = 0; j < n * c.cols; j += 13) x[size_t(j)] *= 10.0f;
  return x;
}

}  // namespace

TEST_P(BlockQKernel, EveryKernelMatchesTheReferenceWithinTheActivationBound) {
  const Case c = GetParam();
  const Prepared p = prepare(c, 12);
  const int64_t n = 6;  // one full token tile and a remainder
  const std::vector<float> x = test_activations(c, n);
  kernels::Q8Activations a;
  kernels::quantize_activations(x.data(), n, c.cols, p.k.blocks_per_row, a);
  for (const auto& kern : kernels::blockq_kernels()) {
    std::vector<float> y(static_cast<size_t>(n * c.rows), NAN);
    kern.fn(p.k, a, y.data(), c.rows, 0, c.rows);
    expect_within_activation_bound(c, p, x, a, y, kern.isa);
  }
}

// The 16-row interleaved layout decodes to the same weights, and its kernel (8-token tiles
// and every remainder, a partial last group, a range starting at a later group) stays
// within the same bound. Skipped on CPUs without AVX-512 VNNI.
TEST_P(BlockQKernel, InterleavedSixteenRowKernelMatchesTheReference) {
  if (!kernels::blockq_i16_supported()) GTEST_SKIP() << "no AVX-512 VNNI";
  const Case c = GetParam();
  Prepared p = prepare(c, 12);
  BlockQMatrix i16 = p.k;
  ASSERT_TRUE(kernels::blockq_interleave16(i16));
  ASSERT_EQ(i16.row_group, 16);
  std::vector<float> want(size_t(c.cols)), got(size_t(c.cols));
  for (int64_t r = 0; r < c.rows; ++r) {
    p.k.decode_row(r, want.data());
    i16.decode_row(r, got.data());
    ASSERT_EQ(want, got) << c.spec << " row " << r;
  }
  for (const int64_t n : {1, 3, 8, 11, 17}) {
    const std::vector<float> x = test_activations(c, n);
    kernels::Q8Activations a;
    kernels::quantize_activations(x.data(), n, c.cols, p.k.blocks_per_row, a);
    std::vector<float> y(static_cast<size_t>(n * c.rows), NAN);
    kernels::blockq_matmul(i16, a, y.data(), c.rows, 0, c.rows);
    expect_within_activation_bound(c, p, x, a, y, "avx512-vnni-i16");
    if (c.rows > 16) {  // a later range leaves the rows before it untouched
      std::vector<float> y2(static_cast<size_t>(n * c.rows), NAN);
      kernels::blockq_matmul(i16, a, y2.data(), c.rows, 16, c.rows);
      expect_within_activation_bound(c, p, x, a, y2, "avx512-vnni-i16 from row 16", 16, c.rows);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < 16; ++r) ASSERT_TRUE(std::isnan(y2[size_t(t * c.rows + r)]));
    }
  }
}

// The layer a model uses picks the kernel path and gives the same answer as FP32.
TEST_P(BlockQKernel, PackedLinearUsesTheIntegerKernel) {
  const Case c = GetParam();
  const auto f = make_format(c.spec);
  const std::vector<float> w = qk_test::gaussian(size_t(c.rows * c.cols), 14, 0.02f);
  const Packed pk = f->quantize(w.data(), c.rows, c.cols, nullptr);
  TensorView v{"w", dtype_from_name_or_qk(c.spec), {c.rows, c.cols}, pk.bytes.data(), pk.bytes.size()};
  if (v.type == DType::QK) v.format = c.spec, v.stored_cols = c.cols;
  PackedLinear lin(v);
  EXPECT_STREQ(lin.path(), "int8-kernel");
  std::vector<float> deq(w.size()), x = qk_test::gaussian(size_t(3 * c.cols), 15), y(size_t(3 * c.rows));
  f->dequantize(pk, deq.data());
  lin.forward(x.data(), 3, y.data());
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t r = 0; r < c.rows; ++r) {
      double ref = 0, mag = 0;
      for (int64_t j = 0; j < c.cols; ++j)
        ref += double(deq[size_t(r * c.cols + j)]) * x[size_t(t * c.cols + j)],
            mag += std::fabs(double(deq[size_t(r * c.cols + j)]) * x[size_t(t * c.cols + j)]);
      ASSERT_NEAR(y[size_t(t * c.rows + r)], ref, 0.02 * mag + 1e-6) << c.spec;
    }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, BlockQKernel,
    testing::Values(Case{"q4_0", 37, 96}, Case{"q4_1", 5, 64}, Case{"q5_0", 9, 160}, Case{"q5_1", 3, 32},
                    Case{"q8_0", 33, 256}, Case{"q4_k", 7, 512}, Case{"q5_k", 4, 256}, Case{"iq4_nl", 6, 128},
                    Case{"int4:g128", 19, 384}, Case{"int4:g32:asym", 8, 96}, Case{"int3:row", 5, 172},
                    Case{"int2:g64:mid", 4, 200}, Case{"int8:g64", 6, 130}, Case{"int5:row:asym", 3, 50}),
    case_name);

// Formats without an integer kernel still run on packed weights, through the other paths.
TEST(PackedLinearPaths, RowTilesAndWholeMatrixMatchFp32) {
  for (const std::string spec : {"q6_k", "q3_k", "e8:b2", "nf4:g64", "int4:tensor"}) {
    const auto f = make_format(spec);
    const int64_t rows = 21, cols = 256;
    const std::vector<float> w = qk_test::gaussian(size_t(rows * cols), 16, 0.02f);
    const Packed pk = f->quantize(w.data(), rows, cols, nullptr);
    TensorView v{"w", dtype_from_name_or_qk(spec), {rows, cols}, pk.bytes.data(), pk.bytes.size()};
    if (v.type == DType::QK) v.format = spec, v.stored_cols = cols;
    PackedLinear lin(v);
    EXPECT_STREQ(lin.path(), "row-tiles") << spec;
    std::vector<float> deq(w.size()), x = qk_test::gaussian(size_t(5 * cols), 17), y(size_t(5 * rows));
    f->dequantize(pk, deq.data());
    lin.forward(x.data(), 5, y.data());
    for (int64_t t = 0; t < 5; ++t)
      for (int64_t r = 0; r < rows; ++r) {
        double ref = 0;
        for (int64_t j = 0; j < cols; ++j) ref += double(deq[size_t(r * cols + j)]) * x[size_t(t * cols + j)];
        ASSERT_NEAR(y[size_t(t * rows + r)], ref, 1e-4) << spec;
      }
  }
}

// `eval --fp32-activations` measures the weight format alone; the default int8 activations
// (as llama.cpp) cost a little more, on a real model.
TEST(PackedLinearPaths, EvalReportsInt8AndFp32Activations) {
  const std::string dir = qk_test::temp_dir("int8act"), q = dir + "/q4_0.gguf";
  ASSERT_EQ(qk_test::run_cli("quantize -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                             " -f q4_0 -o " + q)
                .exit_code,
            0);
  auto ppl = [&](const std::string& extra) {
    const auto r = qk_test::run_cli("eval -m " + q + " --text " + qk_test::shared("data/aidreams-eval.txt") +
                                    " --ctx 128 --max-tokens 4096 --json " + extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    return std::make_pair(j["activations"].get<std::string>(),
                          j["perplexity"]["llama.cpp"]["perplexity"].get<double>());
  };
  const auto int8 = ppl(""), fp32 = ppl("--fp32-activations");
  EXPECT_EQ(int8.first, "int8");
  EXPECT_EQ(fp32.first, "fp32");
  EXPECT_NE(int8.second, fp32.second);
  EXPECT_NEAR(int8.second, fp32.second, 0.01 * fp32.second);
}

// Activation quantization (SIMD for full blocks, scalar for the rest) against its definition,
// bit for bit: d = max|x| / 127, q = round-half-even(x / d), including exact ties.
TEST(BlockQActivations, QuantizeMatchesTheDefinitionBitForBit) {
  const int64_t n = 3, cols = 32 * 5 + 7;
  std::vector<float> x = qk_test::gaussian(size_t(n * cols), 21);
  for (int64_t i = 0; i < 32; ++i) x[size_t(i)] = float(i % 9) - 4.5f;  // ties: d = 4.5/127
  x[32] = 127.0f, x[33] = 2.5f, x[34] = -3.5f, x[35] = 0.5f, x[36] = -0.5f;  // d = 1: ties to even
  for (int64_t i = 64; i < 96; ++i) x[size_t(i)] = 0.0f;  // an all-zero block
  kernels::Q8Activations a;
  const int64_t blocks = (cols + 31) / 32;
  kernels::quantize_activations(x.data(), n, cols, blocks, a);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t len = std::min<int64_t>(32, cols - b * 32);
      const float* xb = x.data() + t * cols + b * 32;
      float amax = 0.0f;
      for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
      ASSERT_EQ(a.d[size_t(t * blocks + b)], d) << t << " " << b;
      int sum = 0;
      for (int64_t i = 0; i < 32; ++i) {
        const int q = i < len ? int(std::nearbyint(xb[i] * inv)) : 0;
        ASSERT_EQ(a.q[size_t((t * blocks + b) * 32 + i)], q) << t << " " << b << " " << i;
        sum += q;
      }
      ASSERT_EQ(a.qsum[size_t(t * blocks + b)], sum);
    }
  EXPECT_EQ(a.q[size_t(32 + 1)], 2);   // 2.5 -> 2
  EXPECT_EQ(a.q[size_t(32 + 2)], -4);  // -3.5 -> -4
}
