#include <gtest/gtest.h>

#include "formats/int_uniform.h"
#include "formats_test_util.h"
#include "quantkit/error.h"

using namespace quantkit;
using qk_test::gaussian;
using qk_test::round_trip;
using qk_test::sqnr_db;

TEST(FormatsInt, SpecsRoundTripAndBadSpecsAreClearErrors) {
  for (const char* s : {"int8:row", "int4:g128", "int4:g128:asym", "int2:tensor:mid", "int4:g128:dr8",
                        "int3:g64:asym:dr8:noclip", "int1:row:asym"})
    EXPECT_EQ(make_format(s)->spec(), s);
  auto error_of = [](const char* s) {
    try {
      make_format(s);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of("int4:asym:g128").find("write 'int4:g128:asym'"), std::string::npos);
  EXPECT_NE(error_of("int4").find("write 'int4:g128'"), std::string::npos);
  EXPECT_NE(error_of("int9:g32").find("out of range"), std::string::npos);
  EXPECT_NE(error_of("int1:g32").find("asym"), std::string::npos);
  EXPECT_NE(error_of("int4:g32:banana").find("banana"), std::string::npos);
  EXPECT_NE(error_of("int4:g0").find("out of range"), std::string::npos);
  EXPECT_NE(error_of("int4:g32:dr4").find("wider"), std::string::npos);
  const std::string unknown = error_of("nosuchformat");
  EXPECT_NE(unknown.find("valid forms"), std::string::npos);
  EXPECT_NE(unknown.find("int<b>"), std::string::npos);
  EXPECT_EQ(unknown.find('\n'), std::string::npos);
}

TEST(FormatsInt, BitAccountingIsExact) {
  EXPECT_DOUBLE_EQ(make_format("int4:g128")->bits_per_weight(4096, 4096), 4.0 + 16.0 / 128);
  EXPECT_DOUBLE_EQ(make_format("int4:g128:asym")->bits_per_weight(4096, 4096), 4.0 + 20.0 / 128);
  EXPECT_DOUBLE_EQ(make_format("int8:row")->bits_per_weight(4096, 4096), 8.0 + 16.0 / 4096);
  EXPECT_DOUBLE_EQ(make_format("int2:tensor:mid")->bits_per_weight(1024, 1024), 2.0 + 32.0 / (1024 * 1024));
  // 172 columns in groups of 32: 6 groups per row (the last holds 12).
  EXPECT_EQ(make_format("int3:g32")->storage_bits(64, 172), uint64_t(64 * 172 * 3 + 64 * 6 * 16));
  auto w = gaussian(64 * 172);
  for (const char* s : {"int3:g32", "int4:g128:asym", "int2:tensor:mid", "int8:row", "int4:g32:dr8", "int1:g32:asym"})
    round_trip(*make_format(s), w, 64, 172);
}

TEST(FormatsInt, KnownAnswers) {
  // Symmetric: the largest magnitude (-4) maps to the level -8, scale 0.5: every value on the grid is exact.
  std::vector<float> w = {-4.0f, -2.0f, 0.0f, 0.5f, 3.5f, 1.0f, -0.5f, 2.5f};
  auto out = round_trip(*make_format("int4:row:noclip"), w, 1, 8);
  EXPECT_EQ(out, w);
  // Asymmetric 2-bit on {0..3}: scale 1, zero point 0.
  std::vector<float> a = {0, 1, 2, 3};
  EXPECT_EQ(round_trip(*make_format("int2:row:asym:noclip"), a, 1, 4), a);
  std::vector<float> b = {-1, 1, -3, 3};
  // Midrise 2-bit, absmax 3: scale 3/1.5 = 2, levels {-3, -1, 1, 3}.
  EXPECT_EQ(round_trip(*make_format("int2:row:mid:noclip"), b, 1, 4), b);
  // Rounding: 0.26 with levels step 0.5 -> 0.5 (nearest).
  std::vector<float> c = {-4.0f, 0.26f};
  auto oc = round_trip(*make_format("int4:row:noclip"), c, 1, 2);
  EXPECT_FLOAT_EQ(oc[1], 0.5f);
}

TEST(FormatsInt, GaussianSqnrMatchesTheory) {
  auto w = gaussian(1 << 20, 7);
  // The optimal 4-level uniform quantizer of N(0,1) has SQNR 9.25 dB (Max 1960).
  EXPECT_NEAR(sqnr_db(w, round_trip(*make_format("int2:tensor:mid"), w, 1024, 1024)), 9.25, 0.05);
  // Per-group 4-bit with clipping search: about 6 dB per bit above the 2-bit figure.
  const double int4 = sqnr_db(w, round_trip(*make_format("int4:g128"), w, 1024, 1024));
  EXPECT_GT(int4, 19.5);
  EXPECT_LT(int4, 21.5);
  const double int8 = sqnr_db(w, round_trip(*make_format("int8:row"), w, 1024, 1024));
  EXPECT_GT(int8, 38.0);
  // Clipping search helps at low bits.
  EXPECT_GT(sqnr_db(w, round_trip(*make_format("int3:g128"), w, 1024, 1024)),
            sqnr_db(w, round_trip(*make_format("int3:g128:noclip"), w, 1024, 1024)) + 0.3);
}

TEST(FormatsInt, ImportanceLowersWeightedError) {
  const int64_t rows = 64, cols = 256;
  auto w = gaussian(size_t(rows * cols), 3);
  std::vector<float> imp(cols, 1.0f);
  for (int j = 0; j < cols; j += 16) imp[size_t(j)] = 1000.0f;
  auto weighted = [&](const std::vector<float>& q) {
    double e = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) e += imp[size_t(c)] * std::pow(w[size_t(r * cols + c)] - q[size_t(r * cols + c)], 2);
    return e;
  };
  for (const char* s : {"int3:g128", "int2:g64:asym", "int3:row:mid"}) {
    auto f = make_format(s);
    EXPECT_LT(weighted(round_trip(*f, w, rows, cols, imp.data())), 0.9 * weighted(round_trip(*f, w, rows, cols))) << s;
  }
}

TEST(FormatsInt, DegenerateInputsStayFinite) {
  for (const char* s : {"int4:g32", "int4:g32:asym", "int2:row:mid", "int8:tensor", "int4:g32:dr8"}) {
    auto f = make_format(s);
    for (float v : {0.0f, 1e-30f, 1e30f, -3.0f}) {
      std::vector<float> w(8 * 40, v);
      w[5] = v * 0.5f;
      auto out = round_trip(*f, w, 8, 40);
      for (float x : out) ASSERT_TRUE(std::isfinite(x)) << s << " " << v;
      if (v == 0.0f) {
        for (float x : out) ASSERT_EQ(x, 0.0f) << s;
      }
    }
  }
}

TEST(FormatsInt, DoubleRoundingDerivesLowerBitsFromOneStoredModel) {
  const int64_t rows = 128, cols = 512;
  auto w = gaussian(size_t(rows * cols), 11);
  formats::IntParams p8;
  p8.bits = 8;
  p8.group = 128;
  auto f8 = formats::make_int_format(p8);
  Packed master = f8->quantize(w.data(), rows, cols, nullptr);
  std::vector<float> m(w.size());
  f8->dequantize(master, m.data());
  for (int b : {6, 4, 3, 2}) {
    Packed derived = formats::derive_lower_bits(master, p8, b);
    auto fdr = make_format(fmt::format("int{}:g128:dr8", b));
    EXPECT_EQ(derived.bits, fdr->storage_bits(rows, cols));
    std::vector<float> q(w.size());
    fdr->dequantize(derived, q.data());
    // Deriving from the stored model equals quantizing with the :dr8 format directly.
    Packed direct = fdr->quantize(w.data(), rows, cols, nullptr);
    EXPECT_EQ(direct.bytes, derived.bytes) << b;
    // Each derived value is a coarser grid point near the master value: within one b-bit step.
    const double direct_sqnr = sqnr_db(w, round_trip(*make_format(fmt::format("int{}:g128", b)), w, rows, cols));
    const double dr_sqnr = sqnr_db(w, q);
    std::printf("int%d:g128 direct %.2f dB, double-rounded from int8 %.2f dB\n", b, direct_sqnr, dr_sqnr);
    EXPECT_GT(dr_sqnr, direct_sqnr - (b <= 2 ? 2.5 : 1.5)) << b;
  }
  formats::IntParams pm = p8;
  pm.mode = formats::IntMode::Asym;
  auto fa = formats::make_int_format(pm);
  Packed ma = fa->quantize(w.data(), rows, cols, nullptr);
  std::vector<float> qa(w.size());
  make_format("int4:g128:asym:dr8")->dequantize(formats::derive_lower_bits(ma, pm, 4), qa.data());
  EXPECT_GT(sqnr_db(w, qa), 15.0);
  EXPECT_THROW(formats::derive_lower_bits(master, p8, 8), Error);
}

TEST(FormatsInt, SymbolsAreTheLevels) {
  auto f = make_format("int2:row:asym:noclip");
  std::vector<float> a = {0, 1, 2, 3};
  Packed p = f->quantize(a.data(), 1, 4, nullptr);
  auto s = f->symbols(p);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].alphabet, 4u);
  EXPECT_EQ(s[0].symbols, (std::vector<uint32_t>{0, 1, 2, 3}));
}
