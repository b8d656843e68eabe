// Ternary (BitNet b1.58), binary and PTQ1.61 formats.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <numeric>
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

// Bit i of a packed string (LSB-first).
int bit_at(const Packed& p, uint64_t i) { return (p.bytes[i / 8] >> (i % 8)) & 1; }

const std::vector<std::string> kSpecs = {"ternary:absmean:row", "ternary:absmedian:row", "ternary:opt:g128",
                                         "ternary:absmean:tensor", "ternary:opt:g64", "ternary:opt:row",
                                         "binary:row", "binary:g128", "binary:tensor",
                                         "ptq161:p20", "ptq161:p20:col", "ptq161:p0", "ptq161:p100", "ptq161:p50:col"};

// ---- spec grammar ----------------------------------------------------------------------

TEST(FormatsTernarySpec, CanonicalRoundTrip) {
  for (const auto& s : kSpecs) EXPECT_EQ(make_format(s)->spec(), s);
}

TEST(FormatsTernarySpec, InvalidSpecsNameTheValidForms) {
  struct Case {
    std::string spec, must_contain;
  };
  const std::vector<Case> cases = {
      {"ternary:row", "ternary:absmean|absmedian|opt:g<G>|row|tensor"},
      {"ternary:mean:row", "ternary:absmean|absmedian|opt"},
      {"ternary:absmean:row:x", "ternary:absmean|absmedian|opt"},
      {"ternary:absmean:opt:row", "ternary:absmean|absmedian|opt"},
      {"ternary:absmean", "write 'ternary:absmean:g128'"},
      {"ternary:row:absmean", "write 'ternary:absmean:row'"},
      {"binary:g0", "binary:g<G>|row|tensor"},
      {"binary:b1:row", "binary:g<G>|row|tensor"},
      {"binary", "write 'binary:g128'"},
      {"ptq161:p101", "ptq161:p<P>[:col]"},
      {"ptq161:p20:col:col", "ptq161:p<P>[:col]"},
      {"ptq161:p20:row", "ptq161:p<P>[:col]"},
      {"ptq161", "write 'ptq161:p20'"},
      {"ptq161:col:p20", "write 'ptq161:p20:col'"},
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

TEST(FormatsTernaryBits, ExactStorageOnAnyShape) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{64, 256}, {7, 172}, {1, 1}, {3, 5}, {2, 7}, {5, 300}};
  for (const auto& s : kSpecs)
    for (auto [rows, cols] : shapes) {
      const RoundTrip r = round_trip(s, gaussian(size_t(rows * cols), 7), rows, cols);
      for (float v : r.q) ASSERT_TRUE(std::isfinite(v)) << s;
    }
}

TEST(FormatsTernaryBits, HandCountedBitsPerWeight) {
  // Trits: 8 bits per 5, a last chunk of r trits in ceil(r log2 3) = 2, 4, 5, 7 bits.
  // 64 x 256 = 16384 trits = 3276 chunks + 4 -> 26208 + 7; 7 x 172 = 1204 = 240 * 5 + 4.
  struct Case {
    std::string spec;
    int64_t rows, cols;
    uint64_t bits;
  };
  const std::vector<Case> cases = {
      {"ternary:absmean:row", 64, 256, 64 * 16 + 26208 + 7},  // 1.6626 bits/weight
      {"ternary:absmean:row", 7, 172, 7 * 16 + 240 * 8 + 7},
      {"ternary:opt:g128", 7, 172, 7 * 2 * 16 + 240 * 8 + 7},
      {"ternary:absmean:tensor", 1, 5, 32 + 8},
      {"ternary:absmean:tensor", 1, 6, 32 + 8 + 2},
      {"ternary:absmean:tensor", 1, 7, 32 + 8 + 4},
      {"ternary:absmean:tensor", 1, 8, 32 + 8 + 5},
      {"binary:row", 64, 256, 64 * 16 + 64 * 256},
      {"binary:g128", 7, 172, 7 * 2 * 16 + 7 * 172},
      {"binary:tensor", 7, 172, 32 + 7 * 172},
      // mask (cols) + int4:row:asym of the k = round(cols * P%) salient columns (fp16 scale
      // + 4-bit zero per row + 4 bits/weight) + fp16 mean and scale per row + 1 bit per
      // binarised weight [+ fp16 factor per binarised column]. 256 * 20% -> k = 51, m = 205.
      {"ptq161:p20", 64, 256, 256 + 64 * 20 + 64 * 51 * 4 + 64 * 32 + 64 * 205},
      {"ptq161:p20:col", 64, 256, 256 + 64 * 20 + 64 * 51 * 4 + 205 * 16 + 64 * 32 + 64 * 205},
      {"ptq161:p0", 7, 172, 172 + 7 * 32 + 7 * 172},
      {"ptq161:p100", 7, 172, 172 + 7 * 20 + 7 * 172 * 4},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(make_format(c.spec)->storage_bits(c.rows, c.cols), c.bits) << c.spec;
    EXPECT_EQ(round_trip(c.spec, gaussian(size_t(c.rows * c.cols), 3), c.rows, c.cols).p.bits, c.bits) << c.spec;
  }
}

TEST(FormatsTernaryBits, Ptq161IsAbout1Point61BitsOn4096Square) {
  // k = 819 salient of 4096: (819*4 + 3277*1)/4096 = 1.59985 for the codes, 1/4096 = 0.00024
  // for the mask, (20 + 32)/4096 = 0.01270 for the per-row parameters: 1.61279.
  const auto f = make_format("ptq161:p20");
  EXPECT_EQ(f->storage_bits(4096, 4096), 4096ull * (1 + 20 + 819 * 4 + 32 + 3277));
  EXPECT_NEAR(f->bits_per_weight(4096, 4096), 1.61279, 1e-5);
  // :col adds 16 bits per binarised input channel: 3277 * 16 / 4096^2 = 0.00313.
  EXPECT_NEAR(make_format("ptq161:p20:col")->bits_per_weight(4096, 4096), 1.61592, 1e-5);
  // The ternary codes cost 1.6 bits/weight.
  EXPECT_NEAR(make_format("ternary:absmean:row")->bits_per_weight(4096, 4096), 1.6 + 16.0 / 4096, 1e-6);
}

// ---- known answers ---------------------------------------------------------------------

TEST(FormatsTernaryKnown, FiveTritsPerByte) {
  // mean|W| = 0.8 (fp32 per tensor); trits 1, -1, 0, 1, 1 -> digits 2, 0, 1, 2, 2 ->
  // 2 + 0*3 + 1*9 + 2*27 + 2*81 = 227.
  const RoundTrip r = round_trip("ternary:absmean:tensor", {1, -1, 0, 1, 1}, 1, 5);
  ASSERT_EQ(r.p.bytes.size(), 5u);
  float scale;
  std::memcpy(&scale, r.p.bytes.data(), 4);
  EXPECT_EQ(scale, 0.8f);
  EXPECT_EQ(r.p.bytes[4], 227);
  EXPECT_EQ(r.q, (std::vector<float>{0.8f, -0.8f, 0, 0.8f, 0.8f}));
  const auto sym = make_format("ternary:absmean:tensor")->symbols(r.p);
  ASSERT_EQ(sym.size(), 1u);
  EXPECT_EQ(sym[0].alphabet, 3u);
  EXPECT_EQ(sym[0].symbols, (std::vector<uint32_t>{2, 0, 1, 2, 2}));
}

TEST(FormatsTernaryKnown, ScaleRules) {
  const std::vector<float> w = {0.1f, 0.2f, -0.3f, 1.4f};
  // absmean: 0.5; W/0.5 = 0.2, 0.4, -0.6, 2.8 -> 0, 0, -1, 1.
  EXPECT_EQ(round_trip("ternary:absmean:row", w, 1, 4).q, (std::vector<float>{0, 0, -0.5f, 0.5f}));
  // absmedian: (0.2 + 0.3) / 2 = 0.25 (fp16 exact); W/0.25 = 0.4, 0.8, -1.2, 5.6 -> 0, 1, -1, 1.
  EXPECT_EQ(round_trip("ternary:absmedian:row", w, 1, 4).q, (std::vector<float>{0, 0.25f, -0.25f, 0.25f}));
  // opt: keeping only 1.4 (error 0.14) beats {1.4, 0.3} at 0.85 (0.655) and three at 0.633 (0.897).
  const float s = quantkit::f16_to_f32(quantkit::f32_to_f16(1.4f));
  EXPECT_EQ(round_trip("ternary:opt:row", w, 1, 4).q, (std::vector<float>{0, 0, 0, s}));
  // BitNet's round is half-to-even: W/scale = 0.5 -> 0, 1.5 -> 2 -> clipped to 1.
  EXPECT_EQ(round_trip("ternary:absmean:row", {0.5f, 1.5f}, 1, 2).q, (std::vector<float>{0, 1}));
}

TEST(FormatsTernaryKnown, OptimalTernaryByImportance) {
  // Weighting 0.3 heavily makes a shared scale pay: by |w|, A_k^2 / B_k for k = 1..4 is
  // 1.96, 31.4^2/101 = 9.762, 31.6^2/102 = 9.790, 31.7^2/103 = 9.756 -> k = 3, s = 31.6/102.
  const std::vector<float> w = {0.1f, 0.2f, -0.3f, 1.4f}, imp = {1, 1, 100, 1};
  const RoundTrip r = round_trip("ternary:opt:row", w, 1, 4, imp.data());
  const float s = quantkit::f16_to_f32(quantkit::f32_to_f16(float(31.6 / 102)));
  EXPECT_EQ(r.q, (std::vector<float>{0, s, -s, s}));  // 0.2 > s/2 rounds to +s, 1.4 clips to +s
}

TEST(FormatsTernaryKnown, BinaryScale) {
  // sum |w| / n = 6/4 = 1.5; zero maps to +.
  EXPECT_EQ(round_trip("binary:row", {1, -3, 2, 0}, 1, 4).q, (std::vector<float>{1.5f, -1.5f, 1.5f, 1.5f}));
  // Weighted: (1*1 + 1*3) / 2 = 2.
  const std::vector<float> imp = {1, 1, 0, 0};
  EXPECT_EQ(round_trip("binary:row", {1, -3, 2, 0}, 1, 4, imp.data()).q, (std::vector<float>{2, -2, 2, 2}));
  // Layout: fp16 scale, then one bit per weight (1 = +).
  const RoundTrip r = round_trip("binary:row", {1, -3, 2, 0}, 1, 4);
  EXPECT_EQ(r.p.bytes[0] | r.p.bytes[1] << 8, quantkit::f32_to_f16(1.5f));
  EXPECT_EQ(r.p.bytes[2], 0b1101);
}

TEST(FormatsTernaryKnown, Ptq161SmallMatrix) {
  // 5 columns at 20% -> 1 salient channel: column 3 by importance. The binarised rows
  // [1,1,3,3] and [-2,4,-2,4] are two-valued, so mean +- scale is exact; the salient
  // column is int4 per-row asym.
  const std::vector<float> w = {1, 1, 3, 0.6f, 3, -2, 4, -2, -5, 4};
  const std::vector<float> imp = {1, 1, 1, 50, 1};
  const RoundTrip r = round_trip("ptq161:p20", w, 2, 5, imp.data());
  EXPECT_EQ(r.p.bytes[0] & 0x1f, 0b01000);  // the channel mask comes first
  for (size_t i : {0, 1, 2, 4, 5, 6, 7, 9}) EXPECT_EQ(r.q[i], w[i]) << i;
  EXPECT_NEAR(r.q[3], 0.6f, 2e-3);
  EXPECT_NEAR(r.q[8], -5.0f, 1e-2);
  const auto streams = make_format("ptq161:p20")->symbols(r.p);
  ASSERT_EQ(streams.size(), 2u);
  EXPECT_EQ(streams[0].alphabet, 16u);
  EXPECT_EQ(streams[0].symbols.size(), 2u);
  EXPECT_EQ(streams[1].name, "signs");
  EXPECT_EQ(streams[1].symbols, (std::vector<uint32_t>{0, 0, 1, 1, 0, 1, 0, 1}));
}

TEST(FormatsTernaryKnown, Ptq161MaskChoice) {
  const int64_t rows = 16, cols = 40;  // 20% -> 8 salient channels
  auto w = gaussian(size_t(rows * cols), 4);
  // With importance: the 8 most important channels.
  std::vector<float> imp(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) imp[size_t(c)] = float((c * 13) % cols);  // a permutation of 0..39
  const RoundTrip a = round_trip("ptq161:p20", w, rows, cols, imp.data());
  for (int64_t c = 0; c < cols; ++c) EXPECT_EQ(bit_at(a.p, uint64_t(c)), imp[size_t(c)] >= 32 ? 1 : 0) << c;
  // Without: the 8 columns of largest norm.
  const std::vector<int64_t> loud = {0, 3, 9, 10, 21, 22, 30, 39};
  for (int64_t c : loud)
    for (int64_t r = 0; r < rows; ++r) w[size_t(r * cols + c)] *= 10;
  const RoundTrip b = round_trip("ptq161:p20", w, rows, cols);
  for (int64_t c = 0; c < cols; ++c)
    EXPECT_EQ(bit_at(b.p, uint64_t(c)), std::count(loud.begin(), loud.end(), c) ? 1 : 0) << c;
}

TEST(FormatsTernaryKnown, Ptq161ColumnFactors) {
  // Binarised columns with their own magnitudes (rank-one structure): the per-channel
  // factors of :col capture what per-row levels cannot.
  const int64_t rows = 32, cols = 100;
  auto w = gaussian(size_t(rows * cols), 6);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) w[size_t(r * cols + c)] = (w[size_t(r * cols + c)] > 0 ? 1.0f : -1.0f) * (1 + c % 5);
  const double plain = sqnr_db(w, round_trip("ptq161:p0", w, rows, cols).q);
  const double col = sqnr_db(w, round_trip("ptq161:p0:col", w, rows, cols).q);
  EXPECT_GT(col, 40.0);  // exact up to fp16 rounding
  EXPECT_LT(plain, 10.0);
}

// ---- error on N(0,1) -------------------------------------------------------------------

TEST(FormatsTernaryError, GaussianSqnr) {
  // 256 x 256 = 2^16 samples, fixed seed; 0.1 dB covers the sampling error of the estimate.
  // Theory for N(0,1): binary 1/(1 - 2/pi) -> 4.40 dB; BitNet absmean (scale 0.798,
  // threshold 0.399) -> 5.79 dB; the optimal ternary quantizer -> 7.21 dB per tensor
  // (per-group scales gain a little).
  const int64_t rows = 256, cols = 256;
  const auto w = gaussian(size_t(rows * cols), 11);
  struct Case {
    std::string spec;
    double db;
  };
  const std::vector<Case> cases = {
      {"binary:row", 4.40},            {"binary:g128", 4.41},      {"ternary:absmean:row", 5.79},
      {"ternary:absmedian:row", 4.96}, {"ternary:opt:g128", 7.25}, {"ternary:opt:row", 7.22},
      {"ptq161:p20", 5.54},            {"ptq161:p20:col", 5.55},
  };
  for (const auto& c : cases) EXPECT_NEAR(sqnr_db(w, round_trip(c.spec, w, rows, cols).q), c.db, 0.1) << c.spec;
}

// ---- importance ------------------------------------------------------------------------

TEST(FormatsTernaryImportance, WeightedErrorDrops) {
  const int64_t rows = 32, cols = 256;
  auto w = gaussian(size_t(rows * cols), 9);
  std::vector<float> imp(size_t(cols), 1.0f);
  for (int64_t c = 0; c < 8; ++c) {
    imp[size_t(c * 17)] = 1000.0f;
    for (int64_t r = 0; r < rows; ++r) w[size_t(r * cols + c * 17)] *= 3.0f;
  }
  for (const std::string s : {"ternary:opt:g128", "ternary:opt:row", "binary:row", "binary:g128", "ptq161:p20",
                              "ptq161:p20:col", "ptq161:p0"}) {
    const double plain = weighted_error(w, round_trip(s, w, rows, cols).q, cols, imp.data());
    const double weighted = weighted_error(w, round_trip(s, w, rows, cols, imp.data()).q, cols, imp.data());
    EXPECT_LT(weighted, 0.95 * plain) << s;
  }
}

TEST(FormatsTernaryImportance, FixedRulesIgnoreImportance) {
  // BitNet's absmean and the absmedian rule fix the scale: nothing for importance to steer.
  const auto w = gaussian(64 * 128, 2);
  std::vector<float> imp(128, 1.0f);
  imp[3] = 500;
  for (const std::string s : {"ternary:absmean:row", "ternary:absmedian:row"})
    EXPECT_EQ(round_trip(s, w, 64, 128, imp.data()).q, round_trip(s, w, 64, 128).q) << s;
}

// ---- degenerate inputs -----------------------------------------------------------------

TEST(FormatsTernaryDegenerate, ZerosConstantsTinyHuge) {
  const int64_t rows = 4, cols = 150;
  for (const auto& s : kSpecs) {
    std::vector<float> w(size_t(rows * cols), 0.0f);
    for (float v : round_trip(s, w, rows, cols).q) ASSERT_EQ(v, 0.0f) << s;

    std::fill(w.begin(), w.end(), 0.3f);
    for (float v : round_trip(s, w, rows, cols).q) ASSERT_NEAR(v, 0.3f, 1e-3) << s;

    for (int64_t c = 0; c < cols; ++c) {
      w[size_t(c)] = (c % 2 ? 1e-30f : -1e-30f);
      w[size_t(cols + c)] = (c % 3 ? 1e30f : -1e30f);
      w[size_t(2 * cols + c)] = c == 5 ? -2.0f : 0.0f;
      w[size_t(3 * cols + c)] = float(c % 7) - 3.0f;
    }
    const RoundTrip r = round_trip(s, w, rows, cols);
    for (size_t i = 0; i < w.size(); ++i) ASSERT_TRUE(std::isfinite(r.q[i])) << s << " " << i;
    if (s.find("tensor") == std::string::npos) {  // under one tensor scale, binary maps 1e-30 to +-scale
      for (int64_t c = 0; c < cols; ++c) ASSERT_LE(std::fabs(r.q[size_t(c)]), 1e-29f) << s;
    }

    EXPECT_NEAR(round_trip(s, {-2.5f}, 1, 1).q[0], -2.5f, 2e-3) << s;

    std::vector<float> imp(size_t(cols), 0.0f);
    for (float v : round_trip(s, w, rows, cols, imp.data()).q) ASSERT_TRUE(std::isfinite(v)) << s;
    for (int64_t c = 0; c < cols; c += 2) imp[size_t(c)] = 1.0f;
    for (float v : round_trip(s, w, rows, cols, imp.data()).q) ASSERT_TRUE(std::isfinite(v)) << s;
  }
}

TEST(FormatsTernaryDegenerate, CorruptDataThrows) {
  const auto f = make_format("ternary:absmean:row");
  Packed p = f->quantize(std::vector<float>{1, -1, 0, 1, 1}.data(), 1, 5, nullptr);
  p.bytes[2] = 250;  // the trit byte after the fp16 scale: 250 >= 3^5
  std::vector<float> q(5);
  EXPECT_THROW(f->dequantize(p, q.data()), Error);
  const auto w = gaussian(4 * 64, 1);
  for (const auto& s : kSpecs) {
    const auto g = make_format(s);
    Packed pk = g->quantize(w.data(), 4, 64, nullptr);
    pk.bits -= 1;
    std::vector<float> out(w.size());
    EXPECT_THROW(g->dequantize(pk, out.data()), Error) << s;
  }
}

// ---- symbols and column groups ---------------------------------------------------------

TEST(FormatsTernarySymbols, StreamsWithinAlphabet) {
  const auto w = gaussian(7 * 172, 4);
  for (const auto& s : kSpecs) {
    const auto f = make_format(s);
    const auto streams = f->symbols(f->quantize(w.data(), 7, 172, nullptr));
    ASSERT_FALSE(streams.empty()) << s;
    size_t total = 0;
    for (const auto& st : streams) {
      for (uint32_t v : st.symbols) ASSERT_LT(v, st.alphabet) << s << " " << st.name;
      total += st.symbols.size();
    }
    EXPECT_EQ(total, w.size()) << s;
  }
  EXPECT_EQ(make_format("ternary:opt:g128")->column_group(256), 128);
  EXPECT_EQ(make_format("binary:g128")->column_group(256), 128);
  EXPECT_EQ(make_format("binary:row")->column_group(256), 0);
  EXPECT_EQ(make_format("ptq161:p20")->column_group(256), 0);
}

}  // namespace
