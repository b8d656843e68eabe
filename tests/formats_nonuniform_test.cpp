// Non-uniform scalar grids: nf (QLoRA NormalFloat), pow2, sqrt2 (POST), nupes, lloyd.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "formats_test_util.h"
#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/fp16.h"

namespace {

using quantkit::Error;
using quantkit::make_format;
using quantkit::Packed;

// N(0,1) by Box-Muller from mt19937_64 (portable across standard libraries).
const auto gaussian = qk_test::gaussian_box_muller;
using qk_test::round_trip;
using qk_test::sqnr_db;
using qk_test::weighted_error;
using RoundTrip = qk_test::SpecRoundTrip;

const std::vector<std::string> kSpecs = {
    "nf4:g64",       "nf3:g64",       "nf4:g64:mse",   "nf2:row",         "nf4:tensor",
    "pow2:b4:g128",  "pow2:b3:row",   "pow2:b2:g32",   "sqrt2:b4:g128",   "sqrt2:b3:tensor",
    "nupes:b4:g128", "nupes:b3:g128", "nupes:b2:g128", "nupes:b4:row",    "nupes:b3:tensor",
    "lloyd:b2:tensor", "lloyd:b3:tensor", "lloyd:b4:tensor", "lloyd:b3:g128", "lloyd:b2:row",
    "lloyd:b1:g64",  "lloyd:b4:g32"};

int spec_bits(const std::string& spec) {
  if (spec.rfind("nf", 0) == 0) return spec[2] - '0';
  return spec[spec.find(":b") + 2] - '0';
}

// ---- spec grammar ----------------------------------------------------------------------

TEST(FormatsNonuniformSpec, CanonicalRoundTrip) {
  for (const auto& s : kSpecs) EXPECT_EQ(make_format(s)->spec(), s);
}

TEST(FormatsNonuniformSpec, InvalidSpecsNameTheValidForms) {
  struct Case {
    std::string spec, must_contain;
  };
  const std::vector<Case> cases = {
      {"nf9:g64", "nf<b>:g<G>|row|tensor"},       {"nf1:g64", "nf<b>:g<G>"},
      {"nf4:g64:foo", "nf<b>:g<G>"},              {"nf4:g0", "nf<b>:g<G>"},
      {"nf4", "write 'nf4:g64'"},                  {"nf4:mse:g64", "write 'nf4:g64:mse'"},
      {"pow2:g128", "pow2:b<b>:g<G>|row|tensor"},  {"pow2:b9:g128", "pow2:b<b>"},
      {"pow2:b4", "write 'pow2:b4:g128'"},         {"sqrt2:b1:g128", "sqrt2:b<b>"},
      {"nupes:b4:g128:mse", "nupes:b<b>"},         {"nupes:b4:g128:row", "nupes:b<b>"},
      {"lloyd:b0:g128", "lloyd:b<b>"},             {"lloyd:b9:tensor", "lloyd:b<b>"},
      {"lloyd:g128", "lloyd:b<b>"},                {"lloyd:b04:g128", "lloyd:b<b>"},
  };
  for (const auto& c : cases) {
    try {
      make_format(c.spec);
      ADD_FAILURE() << c.spec << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.must_contain), std::string::npos) << c.spec << ": " << e.what();
    }
  }
}

// ---- bit accounting --------------------------------------------------------------------

TEST(FormatsNonuniformBits, ExactStorageOnAnyShape) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{64, 256}, {7, 172}, {1, 1}, {3, 5}, {2, 300}};
  for (const auto& s : kSpecs)
    for (auto [rows, cols] : shapes) {
      const auto w = gaussian(size_t(rows * cols), 7);
      const RoundTrip r = round_trip(s, w, rows, cols);
      for (float v : r.q) ASSERT_TRUE(std::isfinite(v)) << s;
    }
}

TEST(FormatsNonuniformBits, HandCountedBitsPerWeight) {
  struct Case {
    std::string spec;
    int64_t rows, cols;
    uint64_t bits;
  };
  // scale bits per group (16, or 32 per tensor) + b bits per weight [+ 16 NUPES exponent];
  // lloyd: 2^b fp16 codewords per group + b bits per weight. 172 = 64+64+44 = 128+44.
  const std::vector<Case> cases = {
      {"nf4:g64", 64, 256, 64 * 4 * 16 + 64 * 256 * 4},        // 4.25 bits/weight
      {"nf4:g64", 7, 172, 7 * 3 * 16 + 7 * 172 * 4},
      {"nf3:g64", 7, 172, 7 * 3 * 16 + 7 * 172 * 3},
      {"nf4:tensor", 7, 172, 32 + 7 * 172 * 4},
      {"pow2:b4:g128", 7, 172, 7 * 2 * 16 + 7 * 172 * 4},
      {"sqrt2:b4:g128", 64, 256, 64 * 2 * 16 + 64 * 256 * 4},  // 4.125
      {"nupes:b4:g128", 64, 256, 16 + 64 * 2 * 16 + 64 * 256 * 4},
      {"nupes:b2:g128", 7, 172, 16 + 7 * 2 * 16 + 7 * 172 * 2},
      {"lloyd:b3:g128", 64, 256, 64 * 2 * 8 * 16 + 64 * 256 * 3},  // 4.0: the codebooks cost 1 bit/weight
      {"lloyd:b3:g128", 7, 172, 7 * 2 * 8 * 16 + 7 * 172 * 3},
      {"lloyd:b2:tensor", 64, 256, 4 * 16 + 64 * 256 * 2},
      {"lloyd:b2:row", 7, 172, 7 * 4 * 16 + 7 * 172 * 2},
      {"lloyd:b4:g32", 64, 256, 64 * 8 * 16 * 16 + 64 * 256 * 4},  // 12.0 bits/weight
  };
  for (const auto& c : cases) {
    EXPECT_EQ(make_format(c.spec)->storage_bits(c.rows, c.cols), c.bits) << c.spec;
    const RoundTrip r = round_trip(c.spec, gaussian(size_t(c.rows * c.cols), 3), c.rows, c.cols);
    EXPECT_EQ(r.p.bits, c.bits) << c.spec;
  }
  EXPECT_DOUBLE_EQ(make_format("nf4:g64")->bits_per_weight(64, 256), 4.25);
  EXPECT_DOUBLE_EQ(make_format("lloyd:b3:g128")->bits_per_weight(64, 256), 4.0);
  EXPECT_DOUBLE_EQ(make_format("lloyd:b4:g32")->bits_per_weight(64, 256), 12.0);
}

// ---- known answers ---------------------------------------------------------------------

// The NF4 table as published with QLoRA (bitsandbytes), to its float32 digits.
const std::vector<float> kQloraNf4 = {-1.0f,
                                      -0.6961928009986877f,
                                      -0.5250730514526367f,
                                      -0.39491748809814453f,
                                      -0.28444138169288635f,
                                      -0.18477343022823334f,
                                      -0.09105003625154495f,
                                      0.0f,
                                      0.07958029955625534f,
                                      0.16093020141124725f,
                                      0.24611230194568634f,
                                      0.33791524171829224f,
                                      0.44070982933044434f,
                                      0.5626170039176941f,
                                      0.7229568362236023f,
                                      1.0f};

TEST(FormatsNonuniformKnown, Nf4LevelsAreQloras) {
  // A group holding exactly the 16 levels (absmax 1): every level decodes to itself, codes
  // are the level indices in ascending order.
  const auto f = make_format("nf4:g64");
  const Packed p = f->quantize(kQloraNf4.data(), 1, 16, nullptr);
  std::vector<float> q(16);
  f->dequantize(p, q.data());
  for (size_t i = 0; i < 16; ++i) EXPECT_NEAR(q[i], kQloraNf4[i], 1e-6) << i;
  EXPECT_EQ(q[7], 0.0f);  // the exact zero
  const auto sym = f->symbols(p);
  ASSERT_EQ(sym.size(), 1u);
  EXPECT_EQ(sym[0].alphabet, 16u);
  for (uint32_t i = 0; i < 16; ++i) EXPECT_EQ(sym[0].symbols[i], i);
}

TEST(FormatsNonuniformKnown, Nf3AndNf2Levels) {
  // Same construction with 2^b levels (2^(b-1) positive quantiles, 2^(b-1)-1 negative, 0),
  // computed independently with Python's statistics.NormalDist.
  const std::vector<float> nf3 = {-1.0f, -0.535022708485538f, -0.24693143181157523f, 0.0f,
                                  0.18333748033548755f, 0.3819939543209139f, 0.6229857417143424f, 1.0f};
  const std::vector<float> nf2 = {-1.0f, 0.0f, 0.43581816458311545f, 1.0f};
  for (const auto& [spec, levels] : {std::pair{std::string("nf3:g64"), nf3}, std::pair{std::string("nf2:g64"), nf2}}) {
    const RoundTrip r = round_trip(spec, levels, 1, int64_t(levels.size()));
    for (size_t i = 0; i < levels.size(); ++i) EXPECT_NEAR(r.q[i], levels[i], 1e-6) << spec << " " << i;
  }
}

TEST(FormatsNonuniformKnown, Nf4RoundsToNearestLevel) {
  // absmax 1 -> scale 1; 0.5 is below the 0.4407/0.5626 midpoint 0.5017 -> 0.4407; -0.3 is
  // above the -0.3949/-0.2844 midpoint -0.3397 -> -0.2844; 0.03 is below the 0/0.0796
  // midpoint 0.0398 -> 0; -0.05 is below the -0.0911/0 midpoint -0.0455 -> -0.0911.
  const std::vector<float> w = {1.0f, 0.5f, -0.3f, 0.03f, -0.05f};
  const RoundTrip r = round_trip("nf4:g64", w, 1, 5);
  const std::vector<float> want = {1.0f, kQloraNf4[12], kQloraNf4[4], 0.0f, kQloraNf4[6]};
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(r.q[i], want[i], 1e-6) << i;
  // absmax scale of a group with absmax 3: 1.6 / 3 = 0.533 -> 0.5626 * 3.
  const RoundTrip r3 = round_trip("nf4:g64", {3.0f, 1.6f}, 1, 2);
  EXPECT_NEAR(r3.q[1], 3 * kQloraNf4[13], 1e-5);
}

// A row holding every level of a sign + exponent grid reconstructs exactly at scale 1; the
// codes are sign << 3 | e with e = 0 for zero and magnitude base^-(e-1).
void expect_sign_exponent_grid(const std::string& spec, double log2_base) {
  std::vector<float> w = {0.0f};
  std::vector<uint32_t> want_codes = {0};
  for (uint32_t e = 1; e < 8; ++e)
    for (uint32_t sign = 0; sign < 2; ++sign) {
      const float mag = float(std::exp2(-double(e - 1) * log2_base));
      w.push_back(sign ? -mag : mag);
      want_codes.push_back(sign << 3 | e);
    }
  const auto f = make_format(spec);
  const Packed p = f->quantize(w.data(), 1, int64_t(w.size()), nullptr);
  std::vector<float> q(w.size());
  f->dequantize(p, q.data());
  for (size_t i = 0; i < w.size(); ++i) EXPECT_EQ(q[i], w[i]) << spec << " " << i;
  EXPECT_EQ(f->symbols(p)[0].symbols, want_codes) << spec;
  EXPECT_EQ(p.bytes[0] | p.bytes[1] << 8, quantkit::f32_to_f16(1.0f)) << spec;  // the scale comes first
}

TEST(FormatsNonuniformKnown, PowerOfTwoGridCodes) { expect_sign_exponent_grid("pow2:b4:g128", 1.0); }
TEST(FormatsNonuniformKnown, PowerOfSqrt2GridCodes) { expect_sign_exponent_grid("sqrt2:b4:g128", 0.5); }

TEST(FormatsNonuniformKnown, Sqrt2RoundsBetweenLevels) {
  // With all 15 grid values in the group the scale stays at (about) 1; between the levels
  // 0.5 and 0.7071 (midpoint 0.6036) 0.58 takes code e = 3 (0.5) and -0.63 takes the
  // negative e = 2 (-0.7071): 8 | 2.
  std::vector<float> w = {0.0f};
  for (int e = 0; e < 7; ++e) w.push_back(float(std::exp2(-e / 2.0))), w.push_back(-float(std::exp2(-e / 2.0)));
  w.push_back(0.58f);
  w.push_back(-0.63f);
  const auto f = make_format("sqrt2:b4:g128");
  const auto codes = f->symbols(f->quantize(w.data(), 1, int64_t(w.size()), nullptr))[0].symbols;
  EXPECT_EQ(codes[15], 3u);
  EXPECT_EQ(codes[16], 10u);
}

TEST(FormatsNonuniformKnown, NupesFindsThePowerOfAGrid) {
  // Rows on the 2-bit power grid a = 2: c * {+-1, +-(1/3)^2}. The exponent search must find
  // a = 2 (stored first as fp16) and reconstruct exactly.
  const int64_t rows = 4, cols = 64;
  const float row_scale[] = {0.5f, 1.0f, 2.0f, 4.0f};
  const float unit[] = {-1.0f, -1.0f / 9, 1.0f / 9, 1.0f};
  std::vector<float> w(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) w[size_t(r * cols + c)] = row_scale[r] * unit[(c * 7 + r) % 4];
  const RoundTrip r = round_trip("nupes:b2:g128", w, rows, cols);
  EXPECT_EQ(r.p.bytes[0] | r.p.bytes[1] << 8, quantkit::f32_to_f16(2.0f));
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(r.q[i], w[i], 1e-6 * std::fabs(w[i])) << i;
}

TEST(FormatsNonuniformKnown, LloydCodebooks) {
  // Two levels for {0,0,0,1,1,1,5,5}: {0,1} | {5} (error 1.5) beats {0} | {1,5} (19.2).
  const std::vector<float> w = {0, 0, 0, 1, 1, 1, 5, 5};
  const RoundTrip two = round_trip("lloyd:b1:row", w, 1, 8);
  EXPECT_EQ(two.q, (std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 5, 5}));
  // The codebook is stored first, ascending fp16.
  EXPECT_EQ(two.p.bytes[0] | two.p.bytes[1] << 8, quantkit::f32_to_f16(0.5f));
  EXPECT_EQ(two.p.bytes[2] | two.p.bytes[3] << 8, quantkit::f32_to_f16(5.0f));
  // Four levels for three distinct values: exact.
  EXPECT_EQ(round_trip("lloyd:b2:row", w, 1, 8).q, w);
  // Importance decides: with the 10 carrying no weight, {0} | {1, 10} costs nothing.
  const std::vector<float> x = {0, 1, 10}, imp = {1, 1, 0};
  EXPECT_EQ(round_trip("lloyd:b1:row", x, 1, 3).q, (std::vector<float>{0.5f, 0.5f, 10}));
  EXPECT_EQ(round_trip("lloyd:b1:row", x, 1, 3, imp.data()).q, (std::vector<float>{0, 1, 1}));
}

TEST(FormatsNonuniformKnown, LloydLargeGroupFindsClusters) {
  // 2048 weights (beyond the exact limit: coarse optimum + Lloyd): two clusters.
  const int64_t rows = 64, cols = 32;
  std::vector<float> w(size_t(rows * cols));
  for (size_t i = 0; i < w.size(); ++i) w[i] = (i * 37 % 5 < 2) ? 3.0f : -1.0f;
  EXPECT_EQ(round_trip("lloyd:b1:tensor", w, rows, cols).q, w);
}

// ---- error on N(0,1) -------------------------------------------------------------------

TEST(FormatsNonuniformError, LloydMaxGaussian) {
  // The classic Lloyd-Max SQNR of N(0,1) at 2, 3, 4 bits (MSE 0.1175, 0.03454, 0.009497);
  // 2^20 samples and a per-tensor codebook (its 2^b fp16 codewords cost nothing here).
  const auto w = gaussian(size_t(1) << 20, 1);
  EXPECT_NEAR(sqnr_db(w, round_trip("lloyd:b2:tensor", w, 1024, 1024).q), 9.30, 0.05);
  EXPECT_NEAR(sqnr_db(w, round_trip("lloyd:b3:tensor", w, 1024, 1024).q), 14.62, 0.05);
  EXPECT_NEAR(sqnr_db(w, round_trip("lloyd:b4:tensor", w, 1024, 1024).q), 20.22, 0.05);
}

TEST(FormatsNonuniformError, GaussianSqnr) {
  // 256 x 256 = 2^16 samples, fixed seed. Expected values measured with this code; the
  // tolerance 0.1 dB is ~3 standard errors of an SQNR estimate on 2^16 samples (should the
  // data change) and well below what a broken scale/exponent search costs (>= 0.3 dB).
  const int64_t rows = 256, cols = 256;
  const auto w = gaussian(size_t(rows * cols), 11);
  struct Case {
    std::string spec;
    double db;
  };
  const std::vector<Case> cases = {
      {"nf4:g64", 20.68},       {"nf3:g64", 14.03},       {"nf4:g64:mse", 21.32},  {"nf3:g64:mse", 15.08},
      {"pow2:b4:g128", 14.97},  {"sqrt2:b4:g128", 19.68}, {"nupes:b4:g128", 20.53}, {"nupes:b3:g128", 14.77},
      {"nupes:b2:g128", 9.41},  {"lloyd:b3:g128", 15.94}, {"lloyd:b2:g128", 9.73},  {"lloyd:b2:row", 9.52},
  };
  for (const auto& c : cases) EXPECT_NEAR(sqnr_db(w, round_trip(c.spec, w, rows, cols).q), c.db, 0.1) << c.spec;
}

TEST(FormatsNonuniformError, SearchBeatsFixedRules) {
  const auto w = gaussian(size_t(128 * 256), 5);
  auto db = [&](const std::string& s) { return sqnr_db(w, round_trip(s, w, 128, 256).q); };
  EXPECT_GT(db("nf4:g64:mse"), db("nf4:g64") + 0.3);
  EXPECT_GT(db("sqrt2:b4:g128"), db("pow2:b4:g128") + 3);  // finer ratio than 2 near the peak
  EXPECT_GT(db("lloyd:b4:row"), db("lloyd:b4:tensor"));  // per-row codebooks adapt
}

// ---- importance ------------------------------------------------------------------------

TEST(FormatsNonuniformImportance, WeightedErrorDrops) {
  // A few large, very important input columns: with importance the weighted error must drop.
  const int64_t rows = 32, cols = 256;
  auto w = gaussian(size_t(rows * cols), 9);
  std::vector<float> imp(size_t(cols), 1.0f);
  for (int64_t c = 0; c < 8; ++c) {
    imp[size_t(c * 17)] = 1000.0f;
    for (int64_t r = 0; r < rows; ++r) w[size_t(r * cols + c * 17)] *= 3.0f;
  }
  for (const std::string s : {"nf4:g64:mse", "nf3:g64:mse", "pow2:b4:g128", "sqrt2:b3:g128", "nupes:b3:g128",
                              "nupes:b2:row", "lloyd:b2:row", "lloyd:b3:g128", "lloyd:b2:tensor"}) {
    const double plain = weighted_error(w, round_trip(s, w, rows, cols).q, cols, imp.data());
    const double weighted = weighted_error(w, round_trip(s, w, rows, cols, imp.data()).q, cols, imp.data());
    EXPECT_LT(weighted, 0.95 * plain) << s;
  }
}

TEST(FormatsNonuniformImportance, AbsmaxIgnoresImportance) {
  // nf<b> without :mse is QLoRA's absmax rule: no choice for importance to steer.
  const auto w = gaussian(64 * 128, 2);
  std::vector<float> imp(128, 1.0f);
  imp[3] = 500;
  EXPECT_EQ(round_trip("nf4:g64", w, 64, 128, imp.data()).q, round_trip("nf4:g64", w, 64, 128).q);
}

// ---- degenerate inputs -----------------------------------------------------------------

TEST(FormatsNonuniformDegenerate, ZerosConstantsTinyHuge) {
  const int64_t rows = 4, cols = 150;
  for (const auto& s : kSpecs) {
    std::vector<float> w(size_t(rows * cols), 0.0f);
    for (float v : round_trip(s, w, rows, cols).q) ASSERT_EQ(v, 0.0f) << s;

    std::fill(w.begin(), w.end(), 0.3f);
    for (float v : round_trip(s, w, rows, cols).q) ASSERT_NEAR(v, 0.3f, 1e-3) << s;

    // Rows: tiny, huge, one non-zero among zeros, ordinary.
    for (int64_t c = 0; c < cols; ++c) {
      w[size_t(c)] = (c % 2 ? 1e-30f : -1e-30f);
      w[size_t(cols + c)] = (c % 3 ? 1e30f : -1e30f);
      w[size_t(2 * cols + c)] = c == 5 ? -2.0f : 0.0f;
      w[size_t(3 * cols + c)] = float(c % 7) - 3.0f;
    }
    const RoundTrip r = round_trip(s, w, rows, cols);
    for (size_t i = 0; i < w.size(); ++i) ASSERT_TRUE(std::isfinite(r.q[i])) << s << " " << i;
    // A tiny row with its own scale or codebook decodes to (about) zero; under one tensor
    // scale it shares the grid of the 1e30 row, where NUPES has no zero level.
    if (s.find("tensor") == std::string::npos) {
      for (int64_t c = 0; c < cols; ++c) ASSERT_LE(std::fabs(r.q[size_t(c)]), 1e-29f) << s;
    }

    const std::vector<float> one = {-2.5f};
    EXPECT_EQ(round_trip(s, one, 1, 1).q[0], -2.5f) << s;

    // Importance all zero, or zero on some columns.
    std::vector<float> imp(size_t(cols), 0.0f);
    for (float v : round_trip(s, w, rows, cols, imp.data()).q) ASSERT_TRUE(std::isfinite(v)) << s;
    for (int64_t c = 0; c < cols; c += 2) imp[size_t(c)] = 1.0f;
    for (float v : round_trip(s, w, rows, cols, imp.data()).q) ASSERT_TRUE(std::isfinite(v)) << s;
  }
}

TEST(FormatsNonuniformDegenerate, WrongPackedSizeThrows) {
  const auto w = gaussian(4 * 64, 1);
  for (const auto& s : kSpecs) {
    const auto f = make_format(s);
    Packed p = f->quantize(w.data(), 4, 64, nullptr);
    p.bits -= 1;
    std::vector<float> q(w.size());
    EXPECT_THROW(f->dequantize(p, q.data()), Error) << s;
  }
}

// ---- symbols and column groups ---------------------------------------------------------

TEST(FormatsNonuniformSymbols, CodesWithinAlphabet) {
  const auto w = gaussian(7 * 172, 4);
  for (const auto& s : kSpecs) {
    const auto f = make_format(s);
    const auto streams = f->symbols(f->quantize(w.data(), 7, 172, nullptr));
    ASSERT_EQ(streams.size(), 1u) << s;
    EXPECT_EQ(streams[0].alphabet, 1u << spec_bits(s)) << s;
    ASSERT_EQ(streams[0].symbols.size(), w.size()) << s;
    for (uint32_t v : streams[0].symbols) ASSERT_LT(v, streams[0].alphabet) << s;
  }
}

TEST(FormatsNonuniformSymbols, ColumnGroupsAreIndependent) {
  EXPECT_EQ(make_format("nf4:g64")->column_group(256), 64);
  EXPECT_EQ(make_format("lloyd:b3:g128")->column_group(256), 128);
  EXPECT_EQ(make_format("nupes:b4:g128")->column_group(256), 0);  // per-tensor exponent
  EXPECT_EQ(make_format("nf4:row")->column_group(256), 0);
  // A column block quantized alone decodes as it does inside the whole matrix.
  const int64_t rows = 4, cols = 200;
  const auto w = gaussian(size_t(rows * cols), 8);
  for (const std::string s : {"nf4:g64:mse", "pow2:b3:g64", "lloyd:b3:g64"}) {
    const auto whole = round_trip(s, w, rows, cols).q;
    std::vector<float> block(size_t(rows * 64));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < 64; ++c) block[size_t(r * 64 + c)] = w[size_t(r * cols + 64 + c)];
    const auto alone = round_trip(s, block, rows, 64).q;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < 64; ++c) ASSERT_EQ(alone[size_t(r * 64 + c)], whole[size_t(r * cols + 64 + c)]) << s;
  }
}

}  // namespace
