// Randomized Hadamard transform wrapper ("rht:<spec>").
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "formats/common.h"
#include "formats_test_util.h"
#include "quantkit/error.h"

using namespace quantkit;
using qk_test::gaussian;
using qk_test::round_trip;
using qk_test::sqnr_db;

namespace {

// A lossless test format ("probe32": fp32 per weight) that remembers what it was given,
// so the tests can look at the transformed matrix and importance.
struct ProbeLog {
  std::vector<float> matrix, importance;
};
ProbeLog& probe_log() {
  static ProbeLog log;
  return log;
}

class Probe32 : public Format {
 public:
  std::string spec() const override { return "probe32"; }
  std::string describe() const override { return "test probe: raw fp32"; }
  uint64_t storage_bits(int64_t rows, int64_t cols) const override { return uint64_t(rows * cols) * 32; }
  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    probe_log().matrix.assign(w, w + rows * cols);
    probe_log().importance.assign(imp ? imp : w, imp ? imp + cols : w);
    formats::BitWriter bw;
    for (int64_t i = 0; i < rows * cols; ++i) bw.put_f32(w[i]);
    return formats::finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }
  void dequantize(const Packed& p, float* out) const override {
    formats::BitReader br(p);
    for (int64_t i = 0; i < p.rows * p.cols; ++i) out[i] = br.get_f32();
  }
};

formats::Registrar probe_reg{FormatFamily{"probe32", "probe32", "test probe", {"probe32"},
                                          [](const std::vector<std::string>& t) -> std::unique_ptr<Format> {
                                            if (t[0] != "probe32") return nullptr;
                                            formats::SpecTokens(t).finish();
                                            return std::make_unique<Probe32>();
                                          }}};

std::string error_of(const std::string& spec) { return qk_test::spec_error(spec); }

double energy(const std::vector<float>& v) {
  double e = 0;
  for (float x : v) e += double(x) * x;
  return e;
}

// Gaussian weights with a few outlier input columns (x30), as in LLM activations-facing
// weights: what incoherence processing is for.
std::vector<float> with_outlier_columns(int64_t rows, int64_t cols, uint64_t seed) {
  auto w = gaussian(size_t(rows * cols), seed);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 5; c < cols; c += cols / 4) w[size_t(r * cols + c)] *= 30.0f;
  return w;
}

}  // namespace

TEST(FormatsHadamard, SpecsRoundTripAndBadSpecsAreClearErrors) {
  for (const char* s : {"rht:e8:b2", "rht:e8:b2:row", "rht:tcq:b2:l12", "rht:pvq:d8:k8", "rht:probe32"})
    EXPECT_EQ(make_format(s)->spec(), s);
  EXPECT_NE(error_of("rht").find("inner format is required"), std::string::npos);
  EXPECT_NE(error_of("rht:rht:e8:b2").find("nested"), std::string::npos);
  EXPECT_NE(error_of("rht:e8:b2:g128").find("write 'e8:b2'"), std::string::npos);
  EXPECT_NE(error_of("rht:nosuch").find("unknown format 'nosuch'"), std::string::npos);
  EXPECT_NE(error_of("rht:nosuch").find("rht:<spec>"), std::string::npos);
  EXPECT_NE(error_of("nosuchformat").find("rht:<spec>"), std::string::npos);
}

TEST(FormatsHadamard, BitAccountingIsExact) {
  // A 64-bit seed plus exactly the inner format's bits.
  for (const char* inner : {"e8:b2", "tcq:b2:l10", "pvq:d8:k8", "probe32"}) {
    auto f = make_format(std::string("rht:") + inner);
    EXPECT_EQ(f->storage_bits(64, 172), 64 + make_format(inner)->storage_bits(64, 172)) << inner;
  }
  EXPECT_DOUBLE_EQ(make_format("rht:e8:b2:row")->bits_per_weight(4096, 4096), 2.0 + 16.0 / 4096 + 64.0 / (4096.0 * 4096));
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{64, 172}, {3, 5}, {1, 1}, {100, 300}, {7, 64}}) {
    auto w = gaussian(size_t(rows * cols), uint64_t(rows + cols));
    for (const char* s : {"rht:e8:b2", "rht:tcq:b2:l10", "rht:pvq:d8:k8:g64"}) {
      auto out = round_trip(*make_format(s), w, rows, cols);
      for (float x : out) ASSERT_TRUE(std::isfinite(x)) << s;
    }
  }
}

TEST(FormatsHadamard, TransformIsOrthogonalAndExactlyInverted) {
  // Through a lossless inner format the matrix comes back to float precision, and the
  // transformed matrix has the same energy (orthogonal), for power-of-two and other sizes.
  auto f = make_format("rht:probe32");
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{64, 128}, {100, 172}, {3, 5}, {1, 1}, {33, 2}}) {
    auto w = gaussian(size_t(rows * cols), uint64_t(rows * cols));
    auto out = round_trip(*f, w, rows, cols);
    for (size_t i = 0; i < w.size(); ++i) ASSERT_NEAR(out[i], w[i], 1e-5) << rows << "x" << cols;
    EXPECT_NEAR(energy(probe_log().matrix), energy(w), 1e-4 * energy(w));
    if (rows * cols > 1) {
      EXPECT_NE(probe_log().matrix, w);  // something happened
    }
  }
}

TEST(FormatsHadamard, KnownAnswers) {
  // A single spike in a power-of-two matrix is spread perfectly flat: every entry of
  // W' = R W C^T has magnitude 1 / sqrt(rows * cols).
  auto f = make_format("rht:probe32");
  std::vector<float> spike(16 * 32, 0.0f);
  spike[3 * 32 + 7] = 1.0f;
  auto out = round_trip(*f, spike, 16, 32);
  for (float x : probe_log().matrix) ASSERT_NEAR(std::fabs(x), 1.0 / std::sqrt(16.0 * 32.0), 1e-6);
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], spike[i], 1e-6);
  // For 172 = 128 + 44 columns (two overlapping blocks of 128) a spike in the last column
  // reaches the columns [44, 172) only.
  std::vector<float> tail(4 * 172, 0.0f);
  tail[171] = 1.0f;
  round_trip(*f, tail, 4, 172);
  for (int64_t c = 0; c < 172; ++c) {
    const float v = probe_log().matrix[size_t(c)];
    if (c < 44) EXPECT_EQ(v, 0.0f) << c;
    else EXPECT_NEAR(std::fabs(v), 1.0 / std::sqrt(4.0 * 128.0), 1e-6) << c;
  }
  // Importance: the mean for a power-of-two width; for 172, the mean over [0, 128) then
  // the mean over [44, 172) of the result.
  std::vector<float> imp(32);
  for (int j = 0; j < 32; ++j) imp[size_t(j)] = float(j);
  make_format("rht:probe32")->quantize(spike.data(), 16, 32, imp.data());
  for (float d : probe_log().importance) EXPECT_FLOAT_EQ(d, 15.5f);
  std::vector<float> imp172(172, 1.0f);
  for (int j = 128; j < 172; ++j) imp172[size_t(j)] = 85.0f;
  make_format("rht:probe32")->quantize(tail.data(), 4, 172, imp172.data());
  const double second = (84.0 * 1.0 + 44.0 * 85.0) / 128.0;
  for (int j = 0; j < 172; ++j) EXPECT_NEAR(probe_log().importance[size_t(j)], j < 44 ? 1.0 : second, 1e-5) << j;
  // The seed is stored, and it is what the decoder uses.
  auto g = make_format("rht:e8:b2");
  auto w = gaussian(8 * 64, 4);
  Packed p = g->quantize(w.data(), 8, 64, nullptr);
  std::vector<float> good(w.size()), bad(w.size());
  g->dequantize(p, good.data());
  p.bytes[0] ^= 1;
  g->dequantize(p, bad.data());
  EXPECT_GT(sqnr_db(w, good), 9.0);
  EXPECT_LT(sqnr_db(w, bad), 3.0);
  // Symbols are the inner format's: one 16-bit index per 8 weights.
  auto streams = g->symbols(p);
  ASSERT_EQ(streams.size(), 1u);
  EXPECT_EQ(streams[0].alphabet, 65536u);
  EXPECT_EQ(streams[0].symbols.size(), 8u * 64 / 8);
}

TEST(FormatsHadamard, ImprovesHeavyTailedMatrices) {
  const int64_t rows = 64, cols = 512;
  auto w = with_outlier_columns(rows, cols, 5);
  for (const char* inner : {"int4:g128", "e8:b2", "tcq:b2:l10"}) {
    const double plain = sqnr_db(w, round_trip(*make_format(inner), w, rows, cols));
    const double rht = sqnr_db(w, round_trip(*make_format(std::string("rht:") + inner), w, rows, cols));
    std::printf("outlier columns: %s %.2f dB, rht:%s %.2f dB\n", inner, plain, inner, rht);
    EXPECT_GT(rht, plain + 3.0) << inner;
  }
  // On i.i.d. Gaussian weights there is nothing to fix: about the same SQNR.
  auto g = gaussian(size_t(rows * cols), 6);
  const double plain = sqnr_db(g, round_trip(*make_format("e8:b2"), g, rows, cols));
  const double rht = sqnr_db(g, round_trip(*make_format("rht:e8:b2"), g, rows, cols));
  EXPECT_NEAR(rht, plain, 0.15);
}

TEST(FormatsHadamard, ImportanceIsOnlyAvailableAsBlockMeans) {
  // The inner format receives diag(C diag(d) C^T) (checked exactly in KnownAnswers): block
  // means of the importance. With 172 columns the 44 important columns past the first
  // Hadamard block raise the weight of W' columns [44, 172) 30-fold over [0, 44), but the
  // error of every W' column is spread back over ~128 original columns, so the weighted
  // error barely moves (measured: +0.1% for e8 and tcq, +1.6% for int3:g32, whose group
  // scales see near-constant weights). This is the documented limit of the diagonal
  // approximation; the test only guards that passing importance does no real harm.
  const int64_t rows = 64, cols = 172;
  auto w = gaussian(size_t(rows * cols), 8);
  std::vector<float> imp(cols, 0.01f);
  for (int64_t j = 128; j < cols; ++j) imp[size_t(j)] = 100.0f;
  auto weighted = [&](const std::vector<float>& q) {
    double e = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) e += imp[size_t(c)] * std::pow(w[size_t(r * cols + c)] - q[size_t(r * cols + c)], 2);
    return e;
  };
  for (const char* s : {"rht:e8:b2:row", "rht:tcq:b2:l10", "rht:int3:g32"}) {
    auto f = make_format(s);
    const double with = weighted(round_trip(*f, w, rows, cols, imp.data()));
    const double without = weighted(round_trip(*f, w, rows, cols));
    EXPECT_LT(with, 1.02 * without) << s;
  }
}

TEST(FormatsHadamard, DegenerateInputsStayFinite) {
  for (const char* s : {"rht:e8:b2", "rht:tcq:b2:l10", "rht:pvq:d8:k8"}) {
    auto f = make_format(s);
    for (float v : {0.0f, 1e-30f, 1e30f, -3.0f}) {
      std::vector<float> w(size_t(6 * 43), v);
      w[5] = v * 0.5f;
      auto out = round_trip(*f, w, 6, 43);
      for (float x : out) ASSERT_TRUE(std::isfinite(x)) << s << " " << v;
      if (v == 0.0f) {
        for (float x : out) ASSERT_EQ(x, 0.0f) << s;
      }
    }
  }
}
