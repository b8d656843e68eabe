// Rate-distortion measurement: deterministic sources, bit accounting with entropy coding
// (checked on small formats defined here), reference SQNRs of registered formats on
// N(0, 1), every registered format on a real tensor, and the `quantkit rd` command.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>
#include <nlohmann/json.hpp>

#include "formats/common.h"
#include "quantkit/error.h"
#include "quantkit/model_file.h"
#include "quantkit/rd.h"
#include "test_util.h"

namespace rd = quantkit::rd;
using quantkit::Format;
using quantkit::Packed;
using quantkit::SymbolStream;

namespace {

const std::string kTensorSource = "tensor:" QK_SHARED_DIR "/models/aidreams260K.bin:blk.0.ffn_up.weight";

// 2^20 samples of N(0, 1), seed 0: the reference data of the SQNR values below.
const rd::SourceData& gaussian_1m() {
  static const rd::SourceData d = rd::make_source("gaussian", int64_t(1) << 20, 0);
  return d;
}

// 2^18 samples for the slow vector/trellis quantizers: SQNR within ~0.01 dB of 2^20's.
const rd::SourceData& gaussian_256k() {
  static const rd::SourceData d = rd::make_source("gaussian", int64_t(1) << 18, 0);
  return d;
}

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

// A dead-zone quantizer stored in 2-bit fields: 0 for |x| < 1, else +-a (a: fp32 side
// information). Only 3 of the 4 codes occur and 68% of the symbols are 0, so its
// entropy-coded rate is far below its fixed rate: H = 1.22 bits on N(0, 1).
class DeadZoneFormat : public Format {
 public:
  static constexpr float kLevel = 1.5251f;  // E[|x| : |x| > 1] for N(0, 1)
  std::string spec() const override { return "test-deadzone"; }
  std::string describe() const override { return "test"; }
  uint64_t storage_bits(int64_t rows, int64_t cols) const override { return 32 + 2 * uint64_t(rows * cols); }
  Packed quantize(const float* w, int64_t rows, int64_t cols, const float*) const override {
    quantkit::formats::BitWriter bw;
    bw.put_f32(kLevel);
    for (int64_t i = 0; i < rows * cols; ++i) bw.put(std::abs(w[i]) < 1 ? 0 : (w[i] > 0 ? 1 : 2), 2);
    return quantkit::formats::finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }
  void dequantize(const Packed& p, float* out) const override {
    quantkit::formats::BitReader br(p);
    const float a = br.get_f32();
    for (int64_t i = 0; i < p.rows * p.cols; ++i) out[i] = std::array<float, 4>{0, a, -a, 0}[br.get(2)];
  }
  std::vector<SymbolStream> symbols(const Packed& p) const override {
    quantkit::formats::BitReader br(p);
    br.get_f32();
    SymbolStream s{"level", 4, {}};
    for (int64_t i = 0; i < p.rows * p.cols; ++i) s.symbols.push_back(uint32_t(br.get(2)));
    return {s};
  }
};

// Ternary {-1, 0, 1} packed 5 digits per byte (3^5 = 243 <= 256): 1.6 bits per weight,
// less than the 2 bits a 3-symbol field would take. No side information.
class FiveTritsPerByteFormat : public Format {
 public:
  std::string spec() const override { return "test-trits"; }
  std::string describe() const override { return "test"; }
  uint64_t storage_bits(int64_t rows, int64_t cols) const override { return 8 * uint64_t((rows * cols + 4) / 5); }
  Packed quantize(const float* w, int64_t rows, int64_t cols, const float*) const override {
    quantkit::formats::BitWriter bw;
    const int64_t n = rows * cols;
    for (int64_t i = 0; i < n; i += 5) {
      uint32_t byte = 0;
      for (int64_t k = std::min(n, i + 5); k-- > i;) byte = byte * 3 + (w[k] > 0.5f ? 2 : w[k] < -0.5f ? 0 : 1);
      bw.put(byte, 8);
    }
    return quantkit::formats::finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }
  void dequantize(const Packed& p, float* out) const override {
    const auto s = trits(p);
    for (size_t i = 0; i < s.size(); ++i) out[i] = float(s[i]) - 1;
  }
  std::vector<SymbolStream> symbols(const Packed& p) const override { return {{"trit", 3, trits(p)}}; }

 protected:
  static std::vector<uint32_t> trits(const Packed& p) {
    std::vector<uint32_t> out;
    const int64_t n = p.rows * p.cols;
    for (int64_t i = 0; i < n; i += 5) {
      uint32_t byte = p.bytes[size_t(i / 5)];
      for (int64_t k = i; k < std::min(n, i + 5); ++k) out.push_back(byte % 3), byte /= 3;
    }
    return out;
  }
};

// Claims a 5-symbol alphabet for its trits: log2(5) = 2.32 bits even densely packed,
// more than the 1.6 bits stored, so the streams cannot be located in the packed bits.
class RedundantSymbolsFormat : public FiveTritsPerByteFormat {
 public:
  std::vector<SymbolStream> symbols(const Packed& p) const override { return {{"trit", 5, trits(p)}}; }
};

double recomputed_sqnr(const Format& f, const rd::SourceData& d) {
  const Packed p = f.quantize(d.w.data(), d.rows, d.cols, nullptr);
  std::vector<float> q(d.w.size());
  f.dequantize(p, q.data());
  double s = 0, e = 0;
  for (size_t i = 0; i < q.size(); ++i) s += double(d.w[i]) * d.w[i], e += (double(d.w[i]) - q[i]) * (double(d.w[i]) - q[i]);
  return 10 * std::log10(s / e);
}

// The registered format for `spec`, or null (then the test skips: its family is being
// written by a colleague and is not in this build yet).
std::unique_ptr<Format> registered(const std::string& spec) {
  try {
    return quantkit::make_format(spec);
  } catch (const quantkit::Error&) {
    return nullptr;
  }
}

std::string first_registered_example() {
  for (const auto& fam : quantkit::format_families())
    for (const auto& spec : fam.examples)
      if (quantkit::make_format(spec)->check_shape(16, 256).empty()) return spec;
  return "";
}

}  // namespace

// ---- sources -----------------------------------------------------------------------------

TEST(RateDistortionSource, SyntheticSourcesAreDeterministicWithTheRightMoments) {
  const rd::SourceData& g = gaussian_1m();
  EXPECT_EQ(g.rows, 1024);
  EXPECT_EQ(g.cols, 1024);
  EXPECT_EQ(rd::make_source("gaussian", 4096, 0).w, std::vector<float>(g.w.begin(), g.w.begin() + 4096));
  EXPECT_NE(rd::make_source("gaussian", 4096, 1).w, rd::make_source("gaussian", 4096, 0).w);
  // Our own transforms of mt19937_64: the same numbers everywhere (golden values).
  EXPECT_FLOAT_EQ(g.w[0], rd::make_source("gaussian", 1, 0).w[0]);
  auto moments = [](const std::vector<float>& w) {
    double m1 = 0, m2 = 0, m4 = 0;
    for (float v : w) m1 += v, m2 += double(v) * v, m4 += double(v) * v * v * v;
    const double n = double(w.size());
    return std::array<double, 3>{m1 / n, m2 / n, m4 / n / (m2 / n) / (m2 / n)};
  };
  const auto gm = moments(g.w);  // mean 0 (sd 0.001), variance 1 (sd 0.0014), kurtosis 3
  EXPECT_NEAR(gm[0], 0, 0.005);
  EXPECT_NEAR(gm[1], 1, 0.007);
  EXPECT_NEAR(gm[2], 3, 0.03);
  const auto lm = moments(rd::make_source("laplace", 1 << 20, 0).w);  // variance 1, kurtosis 6
  EXPECT_NEAR(lm[0], 0, 0.005);
  EXPECT_NEAR(lm[1], 1, 0.01);
  EXPECT_NEAR(lm[2], 6, 0.25);
  const auto tm = moments(rd::make_source("student-t:10", 1 << 20, 0).w);  // variance 10/8, kurtosis 4
  EXPECT_NEAR(tm[0], 0, 0.005);
  EXPECT_NEAR(tm[1], 1.25, 0.015);
  EXPECT_NEAR(tm[2], 4, 0.3);
  // Fractional degrees of freedom (gamma with shape < 1) and heavy tails stay finite.
  for (float v : rd::make_source("student-t:0.5", 1 << 14, 3).w) ASSERT_TRUE(std::isfinite(v));
}

TEST(RateDistortionSource, GoldenGaussianSamples) {
  // Marsaglia polar method on std::mt19937_64(0): pinned so a change of generator shows.
  const auto w = rd::make_source("gaussian", 4, 0).w;
  const auto again = rd::make_source("gaussian", 4, 0).w;
  EXPECT_EQ(w, again);
  std::mt19937_64 rng(0);
  double u, v, s;
  do {
    u = 2 * ((double(rng() >> 11) + 0.5) * 0x1p-53) - 1;
    v = 2 * ((double(rng() >> 11) + 0.5) * 0x1p-53) - 1;
    s = u * u + v * v;
  } while (s >= 1 || s == 0);
  const double f = std::sqrt(-2 * std::log(s) / s);
  EXPECT_EQ(w[0], float(u * f));
  EXPECT_EQ(w[1], float(v * f));
}

TEST(RateDistortionSource, ShapesAndBadSources) {
  const auto small = rd::make_source("laplace", 100, 0);
  EXPECT_EQ(small.rows, 1);
  EXPECT_EQ(small.cols, 100);
  const auto custom = rd::make_source("gaussian", 172 * 3, 0, 172);
  EXPECT_EQ(custom.rows, 3);
  EXPECT_EQ(custom.cols, 172);
  EXPECT_THROW(rd::make_source("gaussian", 1500, 0), quantkit::Error);  // not a multiple of 1024
  EXPECT_THROW(rd::make_source("gaussian", 0, 0), quantkit::Error);
  for (const char* bad : {"normal", "student-t:", "student-t:abc", "student-t:0", "student-t:-3", "student-t:5x",
                          "tensor:", "tensor:nofile", "tensor:/nonexistent/model.bin:x"})
    EXPECT_THROW(rd::make_source(bad, 1024, 0), quantkit::Error) << bad;
}

TEST(RateDistortionSource, RealTensorInItsOwnShape) {
  const auto d = rd::make_source(kTensorSource, 0, 0);
  const quantkit::ModelFile m = quantkit::load_model(QK_SHARED_DIR "/models/aidreams260K.bin", "");
  const auto& view = m.get("blk.0.ffn_up.weight");
  ASSERT_EQ(view.shape.size(), 2u);
  EXPECT_EQ(d.rows, view.shape[0]);
  EXPECT_EQ(d.cols, view.shape[1]);
  EXPECT_EQ(d.kind, "tensor");
  EXPECT_THROW(rd::make_source("tensor:" QK_SHARED_DIR "/models/aidreams260K.bin:no.such.tensor", 0, 0), quantkit::Error);
}

TEST(RateDistortionSource, ImportanceFilesTextAndBinary) {
  const std::string dir = qk_test::temp_dir("rd_imp");
  {
    std::ofstream(dir + "/imp.txt") << "# importance\n1, 2.5 3\n0\n";
    const float bin[4] = {0.5f, 1, 2, 4};
    std::ofstream(dir + "/imp.bin", std::ios::binary).write(reinterpret_cast<const char*>(bin), sizeof bin);
    std::ofstream(dir + "/neg.txt") << "1 -2 3 4";
    std::ofstream(dir + "/short.txt") << "1 2 3";
  }
  EXPECT_EQ(rd::load_importance(dir + "/imp.txt", 4), (std::vector<float>{1, 2.5f, 3, 0}));
  EXPECT_EQ(rd::load_importance(dir + "/imp.bin", 4), (std::vector<float>{0.5f, 1, 2, 4}));
  EXPECT_THROW(rd::load_importance(dir + "/imp.txt", 5), quantkit::Error);
  EXPECT_THROW(rd::load_importance(dir + "/neg.txt", 4), quantkit::Error);
  EXPECT_THROW(rd::load_importance(dir + "/short.txt", 4), quantkit::Error);
  EXPECT_THROW(rd::load_importance(dir + "/missing", 4), quantkit::Error);
}

TEST(RateDistortionFormats, ExpandsAllAndChecksSpecs) {
  size_t examples = 0;
  for (const auto& fam : quantkit::format_families()) examples += fam.examples.size();
  if (examples == 0) {
    EXPECT_THROW(rd::expand_formats("all"), quantkit::Error);
  } else {
    EXPECT_EQ(rd::expand_formats("all").size(), examples);
    const std::string first = quantkit::format_families()[0].examples[0];
    EXPECT_EQ(rd::expand_formats(first + ", " + first), std::vector<std::string>{first});
  }
  EXPECT_THROW(rd::expand_formats("no-such-format:b9"), quantkit::Error);
  EXPECT_THROW(rd::expand_formats(" , "), quantkit::Error);
}

// ---- accounting, on formats with known answers ------------------------------------------

TEST(RateDistortionMeasure, EntropyCodedRateOfASkewedFormat) {
  const DeadZoneFormat f;
  const rd::Result r = rd::measure(f, gaussian_1m(), nullptr);
  const double n = double(1 << 20);
  ASSERT_FALSE(r.skipped);
  EXPECT_EQ(r.packed_bits, 32 + 2 * uint64_t(n));
  EXPECT_DOUBLE_EQ(r.fixed_bpw, 2 + 32 / n);
  ASSERT_EQ(r.streams.size(), 1u);
  EXPECT_EQ(r.streams[0].fixed_bits, 2 * uint64_t(n));
  EXPECT_EQ(r.side_bits, 32u);  // the fp32 level
  EXPECT_EQ(r.streams[0].coded_mode, 'R');
  // Entropy of the 3 symbols on N(0, 1): P(0) = 2 Phi(1) - 1, P(+-) = 1 - Phi(1) each.
  const double p0 = 2 * normal_cdf(1) - 1, p1 = 1 - normal_cdf(1);
  const double h = -p0 * std::log2(p0) - 2 * p1 * std::log2(p1);
  EXPECT_NEAR(r.shannon_bpw, h, 0.003);                  // sampling error of 2^20 draws
  EXPECT_GE(r.entropy_bpw, r.shannon_bpw);                // the table and rANS cost a little
  EXPECT_LE(r.entropy_bpw, r.shannon_bpw * 1.01 + 0.001);
  EXPECT_NEAR(r.sqnr_db, recomputed_sqnr(f, gaussian_1m()), 1e-9);
  // Distortion by hand: E[x^2 : |x| < 1] + E[(|x| - a)^2 : |x| > 1] on N(0, 1).
  const double phi1 = std::exp(-0.5) / std::sqrt(2 * M_PI), a = DeadZoneFormat::kLevel;
  const double inner = p0 - 2 * phi1;                        // E[x^2; |x|<1]
  const double outer = 2 * (p1 + phi1) - 2 * a * 2 * phi1 + a * a * 2 * p1;
  EXPECT_NEAR(r.mse, inner + outer, 0.003);
  ASSERT_TRUE(r.has_bound);
  EXPECT_DOUBLE_EQ(r.bound_fixed_db, rd::kDbPerBit * r.fixed_bpw);
  EXPECT_DOUBLE_EQ(r.gap_fixed_db, r.bound_fixed_db - r.sqnr_db);
  EXPECT_DOUBLE_EQ(r.gap_entropy_db, rd::kDbPerBit * r.entropy_bpw - r.sqnr_db);
  EXPECT_GT(r.encode_mbps, 0);
  EXPECT_GT(r.decode_mbps, 0);
}

TEST(RateDistortionMeasure, DenselyPackedTernaryStreams) {
  const FiveTritsPerByteFormat f;
  const auto d = rd::make_source("gaussian", 100000, 2, 1000);
  const rd::Result r = rd::measure(f, d, nullptr);
  ASSERT_EQ(r.streams.size(), 1u);
  // 2 bits per trit would exceed the 1.6 bits stored: the trits count as densely packed.
  const uint64_t dense = uint64_t(std::ceil(100000 * std::log2(3.0)));
  EXPECT_EQ(r.streams[0].fixed_bits, dense);
  EXPECT_EQ(r.side_bits, 8u * 20000 - dense);
  EXPECT_FALSE(r.note.empty());
  EXPECT_DOUBLE_EQ(r.fixed_bpw, 1.6);
  EXPECT_TRUE(r.streams_separable);
  EXPECT_LT(r.entropy_bpw, r.fixed_bpw);  // P(0) = 0.38, P(+-1) = 0.31: H = 1.58 bits

  const rd::Result redundant = rd::measure(RedundantSymbolsFormat(), d, nullptr);
  EXPECT_FALSE(redundant.streams_separable);
  EXPECT_DOUBLE_EQ(redundant.entropy_bpw, redundant.fixed_bpw);  // no gain claimed
  EXPECT_NE(redundant.note.find("not claimed"), std::string::npos);
}

TEST(RateDistortionMeasure, NoBoundOffTheGaussianAndImportanceWeighting) {
  const DeadZoneFormat f;
  const auto d = rd::make_source("laplace", 4096, 0, 64);
  std::vector<float> imp(64, 1.0f);
  imp[3] = 100;
  const rd::Result plain = rd::measure(f, d, nullptr), weighted = rd::measure(f, d, imp.data());
  EXPECT_FALSE(plain.has_bound);
  EXPECT_DOUBLE_EQ(plain.weighted_mse, plain.mse);
  EXPECT_GT(weighted.weighted_mse, weighted.mse);
}

// ---- reference values on N(0, 1), 2^20 samples ---------------------------------------------

struct Reference {
  const char* spec;
  double sqnr_db;
};

class RateDistortionReference : public testing::TestWithParam<Reference> {};

// Lloyd-Max scalar quantizers of N(0, 1) (Max 1960): 9.30, 14.62, 20.22 dB at 2, 3, 4
// bits; the best uniform 2-bit quantizer (step 0.996): 9.25 dB.
TEST_P(RateDistortionReference, MatchesTheKnownSqnr) {
  const auto f = registered(GetParam().spec);
  if (!f) GTEST_SKIP() << GetParam().spec << " is not registered in this build";
  const rd::Result r = rd::measure(*f, gaussian_1m(), nullptr);
  EXPECT_NEAR(r.sqnr_db, GetParam().sqnr_db, 0.05) << GetParam().spec;
}

INSTANTIATE_TEST_SUITE_P(RateDistortionNormal, RateDistortionReference,
                         testing::Values(Reference{"lloyd:b2:tensor", 9.30}, Reference{"lloyd:b3:tensor", 14.62},
                                         Reference{"lloyd:b4:tensor", 20.22}, Reference{"int2:tensor:mid", 9.25}));

class RateDistortionBeatsScalar : public testing::TestWithParam<const char*> {};

// Vector and trellis quantizers at 2 bits (of codes) beat the best scalar quantizer (9.30 dB).
TEST_P(RateDistortionBeatsScalar, AtTwoBits) {
  const auto f = registered(GetParam());
  if (!f) GTEST_SKIP() << GetParam() << " is not registered in this build";
  const rd::Result r = rd::measure(*f, gaussian_256k(), nullptr);
  EXPECT_LE(r.fixed_bpw, 2.125 + 1e-9) << GetParam();  // 2 bits of codes, at most a fp16 scale per 128
  EXPECT_GT(r.sqnr_db, 9.30) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(RateDistortionNormal, RateDistortionBeatsScalar, testing::Values("vq:d4:k256", "tcq:b2", "e8:b2"));

// ---- every registered format on a real tensor ----------------------------------------------

TEST(RateDistortionTensor, EveryRegisteredFormatOnARealTensor) {
  const auto d = rd::make_source(kTensorSource, 0, 0);
  int measured = 0;
  for (const auto& fam : quantkit::format_families())
    for (const std::string& spec : fam.examples) {
      SCOPED_TRACE(spec);
      const auto f = quantkit::make_format(spec);
      const rd::Result r = rd::measure(*f, d, nullptr);
      EXPECT_EQ(r.skipped, !f->check_shape(d.rows, d.cols).empty());
      if (r.skipped) {
        EXPECT_FALSE(r.note.empty());
        continue;
      }
      ++measured;
      EXPECT_EQ(r.packed_bits, f->storage_bits(d.rows, d.cols));
      EXPECT_GT(r.sqnr_db, 0);
      EXPECT_TRUE(std::isfinite(r.mse));
      EXPECT_FALSE(r.has_bound);
      EXPECT_LE(r.entropy_bpw, r.fixed_bpw + 1e-12);
      EXPECT_LE(r.shannon_bpw, r.entropy_bpw + 1e-12);
      uint64_t stream_bits = 0;
      for (const auto& s : r.streams) stream_bits += s.fixed_bits;
      if (r.streams_separable) EXPECT_EQ(r.side_bits + stream_bits, r.packed_bits);
      else EXPECT_EQ(r.entropy_bpw, r.fixed_bpw);
    }
  if (measured == 0) GTEST_SKIP() << "no registered format fits " << d.rows << "x" << d.cols;
}

// ---- the command ---------------------------------------------------------------------------

TEST(RateDistortionCli, JsonTableAndPlot) {
  const std::string spec = first_registered_example();
  if (spec.empty()) GTEST_SKIP() << "no registered format yet";
  const std::string dir = qk_test::temp_dir("rd_cli");
  auto res = qk_test::run_cli("rd --source gaussian --n 4096 --cols 256 --formats " + spec + " --json --plot " + dir + "/rd.svg");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  const auto j = nlohmann::json::parse(res.out);
  EXPECT_EQ(j["rows"], 16);
  EXPECT_EQ(j["cols"], 256);
  ASSERT_EQ(j["results"].size(), 1u);
  EXPECT_EQ(j["results"][0]["spec"], spec);
  EXPECT_GT(j["results"][0]["bits_per_weight"].get<double>(), 0);
  EXPECT_TRUE(j["results"][0].contains("gap_db"));
  const std::string svg = qk_test::read_file(dir + "/rd.svg");
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("Shannon bound"), std::string::npos);

  {
    std::ofstream imp(dir + "/imp.txt");
    for (int j = 0; j < 256; ++j) imp << (j < 8 ? 100 : 1) << "\n";
  }
  res = qk_test::run_cli("rd --n 4096 --cols 256 --formats " + spec + " --importance " + dir + "/imp.txt --json");
  ASSERT_EQ(res.exit_code, 0) << res.err;
  const auto jw = nlohmann::json::parse(res.out)["results"][0];
  EXPECT_GT(jw["weighted_mse"].get<double>(), jw["mse"].get<double>());  // the heavy columns weigh in

  res = qk_test::run_cli("rd --source laplace --n 4096 --formats " + spec);
  ASSERT_EQ(res.exit_code, 0) << res.err;
  EXPECT_NE(res.out.find("SQNR dB"), std::string::npos);
  EXPECT_EQ(res.out.find("bound dB"), std::string::npos);  // the bound is the Gaussian's
  EXPECT_NE(res.out.find(spec), std::string::npos);
}

TEST(RateDistortionCli, BadArgumentsGiveOneLineErrors) {
  for (const std::string args : {"rd --source normal --formats all", "rd --source student-t:x --formats all",
                                 "rd --n 1500 --formats all", "rd --formats no-such-format",
                                 "rd --source tensor:/nonexistent.bin:x --formats all"}) {
    const auto res = qk_test::run_cli(args);
    EXPECT_EQ(res.exit_code, 1) << args;
    EXPECT_EQ(qk_test::count_lines(res.err), 1) << args << ": " << res.err;
    EXPECT_EQ(res.err.rfind("quantkit: ", 0), 0u) << res.err;
  }
}
