#include "quantkit/gptq.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "formats_test_util.h"
#include "quantkit/fp16.h"

using namespace quantkit;

namespace {

// A positive-definite Hessian with correlated inputs: X^T X of samples with a random
// linear mixing, so GPTQ has correlations to exploit.
std::vector<double> correlated_hessian(int64_t n, int64_t samples, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  std::vector<double> mix(static_cast<size_t>(n * n));
  for (auto& m : mix) m = nd(rng) / std::sqrt(double(n));
  for (int64_t i = 0; i < n; ++i) mix[size_t(i * n + i)] += 1.0;
  std::vector<double> h(size_t(n * n), 0.0), z(static_cast<size_t>(n)), x(static_cast<size_t>(n));
  for (int64_t s = 0; s < samples; ++s) {
    for (auto& v : z) v = nd(rng);
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < n; ++k) acc += mix[size_t(i * n + k)] * z[size_t(k)];
      x[size_t(i)] = acc * (1.0 + 3.0 * (i % 7 == 0));  // some inputs much larger: act-order matters
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) h[size_t(i * n + j)] += x[size_t(i)] * x[size_t(j)];
  }
  return h;
}

// Test oracle: Algorithm 1 of the GPTQ paper, transcribed plainly (no batches, no lazy
// updates, no act-order), with a per-row asymmetric 4-bit min/max grid (fp16 scale, as
// quantkit's "int4:row:asym:noclip" stores it).
std::vector<float> gptq_reference(std::vector<float> w, int64_t rows, int64_t cols, std::vector<double> h, double damp) {
  double mean = 0;
  for (int64_t j = 0; j < cols; ++j) mean += h[size_t(j * cols + j)];
  mean /= double(cols);
  for (int64_t j = 0; j < cols; ++j) h[size_t(j * cols + j)] += damp * mean;
  // Grid per row from the original weights.
  std::vector<float> scale(static_cast<size_t>(rows)), zero(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    float lo = 0, hi = 0;
    for (int64_t j = 0; j < cols; ++j) lo = std::min(lo, w[size_t(r * cols + j)]), hi = std::max(hi, w[size_t(r * cols + j)]);
    scale[size_t(r)] = f16_to_f32(f32_to_f16((hi - lo) / 15.0f));
    zero[size_t(r)] = float(std::clamp(int(std::lround(7.5f - 0.5f * (hi + lo) / scale[size_t(r)])), 0, 15));
  }
  auto quant = [&](float x, int64_t r) {
    float q = std::clamp(std::nearbyint(x / scale[size_t(r)] + zero[size_t(r)]), 0.0f, 15.0f);
    return scale[size_t(r)] * (q - zero[size_t(r)]);
  };
  // U = upper Cholesky factor of H^-1 (plain double-precision Gauss-Jordan + Cholesky).
  const int64_t n = cols;
  std::vector<double> inv(size_t(n * n), 0.0), a = h;
  for (int64_t i = 0; i < n; ++i) inv[size_t(i * n + i)] = 1.0;
  for (int64_t i = 0; i < n; ++i) {
    const double p = a[size_t(i * n + i)];
    for (int64_t j = 0; j < n; ++j) a[size_t(i * n + j)] /= p, inv[size_t(i * n + j)] /= p;
    for (int64_t k = 0; k < n; ++k) {
      if (k == i) continue;
      const double f = a[size_t(k * n + i)];
      for (int64_t j = 0; j < n; ++j) a[size_t(k * n + j)] -= f * a[size_t(i * n + j)], inv[size_t(k * n + j)] -= f * inv[size_t(i * n + j)];
    }
  }
  std::vector<double> u(size_t(n * n), 0.0);  // inv = U^T U
  for (int64_t i = 0; i < n; ++i) {
    double d = inv[size_t(i * n + i)];
    for (int64_t k = 0; k < i; ++k) d -= u[size_t(k * n + i)] * u[size_t(k * n + i)];
    u[size_t(i * n + i)] = std::sqrt(d);
    for (int64_t j = i + 1; j < n; ++j) {
      double s = inv[size_t(i * n + j)];
      for (int64_t k = 0; k < i; ++k) s -= u[size_t(k * n + i)] * u[size_t(k * n + j)];
      u[size_t(i * n + j)] = s / u[size_t(i * n + i)];
    }
  }
  std::vector<float> q(w.size());
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t r = 0; r < rows; ++r) {
      q[size_t(r * cols + j)] = quant(w[size_t(r * cols + j)], r);
      const double e = (w[size_t(r * cols + j)] - q[size_t(r * cols + j)]) / u[size_t(j * n + j)];
      for (int64_t k = j + 1; k < cols; ++k) w[size_t(r * cols + k)] -= float(e * u[size_t(j * n + k)]);
    }
  return q;
}

std::vector<float> dequantized(const Format& f, const Packed& p) {
  std::vector<float> out(size_t(p.rows * p.cols));
  f.dequantize(p, out.data());
  return out;
}

}  // namespace

TEST(Gptq, MatchesThePapersAlgorithmOne) {
  const int64_t rows = 256, cols = 512;
  auto w = qk_test::gaussian(size_t(rows * cols), 5);
  auto h = correlated_hessian(cols, 2048, 9);
  auto f = make_format("int4:row:asym:noclip");
  GptqOptions opt;
  opt.act_order = false;
  opt.compute_objective = true;
  GptqResult res = gptq_quantize(*f, w.data(), rows, cols, h.data(), opt);
  auto ours = dequantized(*f, res.packed);
  auto ref = gptq_reference(w, rows, cols, h, 0.01);
  int64_t differ = 0;
  for (size_t i = 0; i < ours.size(); ++i) differ += ours[i] != ref[i];
  std::printf("GPTQ vs Algorithm 1 oracle: %lld of %zu weights differ\n", (long long)differ, ours.size());
  // FP32 blocked updates vs the oracle's FP64 sequential ones: a weight may only differ
  // when it sits within rounding noise of a decision boundary.
  EXPECT_LE(differ, int64_t(ours.size() / 2000));
  const double obj_ref = hessian_objective(w.data(), ref.data(), rows, cols, h.data());
  EXPECT_NEAR(res.objective, obj_ref, 1e-3 * obj_ref);
}

TEST(Gptq, BeatsRoundToNearestOnEveryMatrix) {
  for (uint64_t seed : {1, 2, 3}) {
    const int64_t rows = 128, cols = 256;
    auto w = qk_test::gaussian(size_t(rows * cols), seed);
    auto h = correlated_hessian(cols, 1024, seed + 100);
    for (const char* spec : {"int4:row:asym:noclip", "int4:g32", "int3:g64:asym", "int2:g32", "int4:g128:dr8"}) {
      auto f = make_format(spec);
      for (bool act : {false, true}) {
        GptqOptions opt;
        opt.act_order = act;
        opt.compute_objective = true;
        GptqResult g = gptq_quantize(*f, w.data(), rows, cols, h.data(), opt);
        auto rtn = dequantized(*f, f->quantize(w.data(), rows, cols, nullptr));
        const double obj_rtn = hessian_objective(w.data(), rtn.data(), rows, cols, h.data());
        EXPECT_LT(g.objective, obj_rtn) << spec << " seed " << seed << " act " << act;
      }
    }
  }
}

// GPTQ's objective on a 64x128 Gaussian W with a correlated H must be below 0.95x that of
// the same format quantized with diag(H) as importance; each spec fixes `step` columns at a
// time.
void expect_second_order_gain(const std::vector<std::pair<const char*, int64_t>>& specs, uint64_t seed) {
  const int64_t rows = 64, cols = 128;
  auto w = qk_test::gaussian(size_t(rows * cols), seed);
  auto h = correlated_hessian(cols, 512, seed + 1);
  std::vector<float> diag(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) diag[size_t(j)] = float(h[size_t(j * cols + j)]);
  for (const auto& [spec, step] : specs) {
    auto f = make_format(spec);
    GptqOptions opt;
    opt.compute_objective = true;
    GptqResult g = gptq_quantize(*f, w.data(), rows, cols, h.data(), opt);
    EXPECT_EQ(g.step, step) << spec;
    auto weighted = dequantized(*f, f->quantize(w.data(), rows, cols, diag.data()));
    const double obj_weighted = hessian_objective(w.data(), weighted.data(), rows, cols, h.data());
    std::printf("%s: gptq objective %.4g, weighted %.4g\n", spec, g.objective, obj_weighted);
    EXPECT_LT(g.objective, 0.95 * obj_weighted) << spec;
  }
}

// VPTQ-style second-order vector quantization: codebooks from diag(H)-weighted k-means,
// then vector columns fixed one block of d at a time with the error fed forward.
TEST(Gptq, VectorCodebooksGetSecondOrderFeedback) {
  expect_second_order_gain({{"vq:d4:k64", 4}, {"rvq:d4:2x16", 4}, {"vq:d2:k16:rs", 2}}, 7);
}

// Scalar grids (binary, ternary, NF, power-of-two/sqrt(2), NUPES) with row / tensor scales:
// GPTQ column by column with the scales fitted up front.
TEST(Gptq, RowScaledScalarGridsGetColumnFeedback) {
  expect_second_order_gain({{"ternary:opt:row", 1}, {"ternary:absmean:tensor", 1}, {"binary:row", 1}, {"nf4:row", 1},
                            {"pow2:b3:row", 1}, {"sqrt2:b4:tensor", 1}, {"nupes:b3:row", 1}},
                           9);
}

TEST(Gptq, DeadColumnsAreZeroed) {
  const int64_t rows = 16, cols = 64;
  auto w = qk_test::gaussian(size_t(rows * cols), 4);
  auto h = correlated_hessian(cols, 256, 4);
  for (int64_t j = 0; j < cols; ++j) h[size_t(3 * cols + j)] = h[size_t(j * cols + 3)] = 0.0;
  auto f = make_format("int4:g32");
  GptqResult g = gptq_quantize(*f, w.data(), rows, cols, h.data());
  EXPECT_EQ(g.dead_columns, 1);
  auto q = dequantized(*f, g.packed);
  for (int64_t r = 0; r < rows; ++r) EXPECT_EQ(q[size_t(r * cols + 3)], 0.0f);
}
