// Floating-point formats: the minifloat codec, fp<b>:e<E>m<M>, fp<b>:search (LLM-FP4),
// mxfp4 (OCP MX v1.0) and nvfp4 (NVIDIA).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "formats/minifloat.h"
#include "formats_test_util.h"
#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/gptq.h"
#include "quantkit/thread_pool.h"

using namespace quantkit;
using formats::Minifloat;
using formats::MinifloatSpecials;

namespace {

const std::vector<std::string> kAllSpecs = {
    "fp8:e4m3:g128", "fp8:e5m2:g128", "fp6:e3m2:g128",    "fp6:e2m3:g128",  "fp4:e2m1:g128", "fp4:e2m1:g32",
    "fp4:e2m1:row",  "fp4:e2m1:tensor", "fp3:e1m1:g64",   "fp8:e3m4:g128",  "fp4:search:g128", "fp6:search:row",
    "fp8:search:tensor", "fp3:search:g64", "mxfp4",       "mxfp4:search",   "nvfp4",          "nvfp4:search"};

// scale * N(0,1) from the 32-bit mt19937.
std::vector<float> gaussian(size_t n, uint32_t seed, float scale = 1.0f) {
  return qk_test::gaussian_mt32(n, seed, scale);
}
using qk_test::sqnr_db;
using qk_test::weighted_error;

struct RoundTrip {
  Packed packed;
  std::vector<float> out;
};

RoundTrip round_trip(const std::string& spec, const std::vector<float>& w, int64_t rows, int64_t cols,
                     const float* imp = nullptr) {
  auto f = make_format(spec);
  RoundTrip rt;
  rt.packed = f->quantize(w.data(), rows, cols, imp);
  rt.out.assign(w.size(), NAN);
  make_format(spec)->dequantize(rt.packed, rt.out.data());  // a fresh instance: only the bits
  return rt;
}

std::vector<uint32_t> stream(const std::string& spec, const Packed& p, const std::string& name) {
  for (auto& s : make_format(spec)->symbols(p))
    if (s.name == name) return s.symbols;
  ADD_FAILURE() << spec << " has no symbol stream " << name;
  return {};
}

std::string error_of(const std::string& spec) { return qk_test::spec_error(spec, ""); }

// ---- minifloat codec ---------------------------------------------------------------------

TEST(FormatsFloatMinifloat, OcpRangesAndNames) {
  struct Case {
    Minifloat f;
    float max, min_positive;
    const char* name;
  } cases[] = {{Minifloat::e4m3(), 448.0f, std::ldexp(1.0f, -9), "e4m3"},
               {Minifloat::e5m2(), 57344.0f, std::ldexp(1.0f, -16), "e5m2"},
               {Minifloat::e3m2(), 28.0f, 0.0625f, "e3m2"},
               {Minifloat::e2m3(), 7.5f, 0.125f, "e2m3"},
               {Minifloat::e2m1(), 6.0f, 0.5f, "e2m1"}};
  for (const auto& c : cases) {
    EXPECT_EQ(c.f.max_value(), c.max) << c.name;
    EXPECT_EQ(c.f.min_positive(), c.min_positive) << c.name;
    EXPECT_EQ(c.f.name(), c.name);
  }
  EXPECT_EQ(Minifloat::e4m3().max_code(), 0x7Eu);
  EXPECT_EQ(Minifloat::e5m2().max_code(), 0x7Bu);
  EXPECT_EQ(Minifloat::e4m3().min_normal(), std::ldexp(1.0f, -6));
  // Custom bias: E2M1 with bias 3 is the OCP grid times 2^-2.
  EXPECT_EQ(Minifloat(2, 1, MinifloatSpecials::None, 3).max_value(), 1.5f);
}

TEST(FormatsFloatMinifloat, E2M1TableIsTheOcpGrid) {
  const Minifloat f = Minifloat::e2m1();
  const float grid[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (uint32_t c = 0; c < 8; ++c) {
    EXPECT_EQ(f.decode(c), grid[c]) << c;
    EXPECT_EQ(f.decode(c | 8), -grid[c]) << c;
  }
}

TEST(FormatsFloatMinifloat, SpecialCodes) {
  const Minifloat e4m3 = Minifloat::e4m3(), e5m2 = Minifloat::e5m2();
  EXPECT_TRUE(std::isnan(e4m3.decode(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3.decode(0xFF)));
  EXPECT_EQ(e4m3.decode(0x7E), 448.0f);
  EXPECT_EQ(e5m2.decode(0x7C), INFINITY);
  EXPECT_EQ(e5m2.decode(0xFC), -INFINITY);
  EXPECT_TRUE(std::isnan(e5m2.decode(0x7D)));
  EXPECT_EQ(e5m2.decode(0x7B), 57344.0f);
  EXPECT_EQ(e4m3.encode(NAN), 0x7Fu);
  EXPECT_TRUE(std::isnan(e5m2.decode(e5m2.encode(NAN))));
  EXPECT_EQ(Minifloat::e2m1().encode(NAN), 0u);  // no NaN code: zero
}

TEST(FormatsFloatMinifloat, KnownEncodings) {
  const Minifloat e4m3 = Minifloat::e4m3(), e5m2 = Minifloat::e5m2(), e2m1 = Minifloat::e2m1();
  EXPECT_EQ(e4m3.encode(1.0f), 0x38u);
  EXPECT_EQ(e4m3.encode(-2.0f), 0xC0u);
  EXPECT_EQ(e4m3.encode(448.0f), 0x7Eu);
  EXPECT_EQ(e4m3.encode(464.0f), 0x7Eu);       // saturates (OCP saturating conversion)
  EXPECT_EQ(e4m3.encode(1e30f), 0x7Eu);
  EXPECT_EQ(e4m3.encode(INFINITY), 0x7Eu);
  EXPECT_EQ(e4m3.encode(std::ldexp(1.0f, -10)), 0x00u);     // half the smallest subnormal: tie to 0
  EXPECT_EQ(e4m3.encode(std::ldexp(3.0f, -10)), 0x02u);     // 1.5 subnormal steps: tie to even code 2
  EXPECT_EQ(e4m3.encode(std::ldexp(1.0f, -11)), 0x00u);
  EXPECT_EQ(e4m3.encode(1.0625f), 0x38u);                    // 1 + 1/16: tie between 1 and 1.125 -> 1
  EXPECT_EQ(e4m3.encode(1.1875f), 0x3Au);                    // tie between 1.125 and 1.25 -> 1.25
  EXPECT_EQ(e5m2.encode(57344.0f), 0x7Bu);
  EXPECT_EQ(e5m2.encode(61440.0f), 0x7Bu);                   // would round to Inf: saturates
  EXPECT_EQ(e5m2.encode(std::ldexp(1.0f, -17)), 0x00u);
  EXPECT_EQ(e5m2.encode(std::ldexp(1.0f, -16)), 0x01u);
  // E2M1 ties go to the even mantissa.
  const struct {
    float x, q;
  } e2m1_cases[] = {{0.25f, 0},  {0.26f, 0.5f}, {0.75f, 1}, {1.25f, 1}, {1.75f, 2}, {2.5f, 2},
                    {3.5f, 4},   {5.0f, 4},     {5.1f, 6},  {7.0f, 6},  {100.0f, 6}, {-2.5f, -2}};
  for (const auto& c : e2m1_cases) EXPECT_EQ(e2m1.round(c.x), c.q) << c.x;
  EXPECT_EQ(e2m1.encode(-0.1f), 0x8u);  // IEEE: -0
  EXPECT_EQ(e2m1.encode_canonical_zero(-0.1f), 0x0u);
  EXPECT_EQ(e2m1.encode_canonical_zero(-0.3f), 0x9u);
}

// Reference rounding by brute force over the decode table: nearest value, ties to the even
// magnitude code, saturation at the largest finite value.
uint32_t reference_magnitude(const Minifloat& f, double a) {
  uint32_t best = 0;
  double best_d = INFINITY;
  for (uint32_t c = 0; c <= f.max_code(); ++c) {
    const double d = std::fabs(double(f.decode(c)) - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) best_d = d, best = c;
  }
  return best;
}

TEST(FormatsFloatMinifloat, MatchesBruteForceRoundingEverywhere) {
  const std::vector<Minifloat> formats = {Minifloat::e4m3(), Minifloat::e5m2(), Minifloat::e3m2(), Minifloat::e2m3(),
                                          Minifloat::e2m1(), Minifloat(1, 2),   Minifloat(1, 6),   Minifloat(3, 4),
                                          Minifloat(4, 3, MinifloatSpecials::None, 10)};
  std::mt19937 rng(7);
  for (const auto& f : formats) {
    std::vector<float> probes;
    for (uint32_t c = 0; c <= f.max_code(); ++c) {
      const float v = f.decode(c);
      probes.push_back(v);
      probes.push_back(std::nextafter(v, 0.0f));
      probes.push_back(std::nextafter(v, INFINITY));
      if (c < f.max_code()) {  // midpoints (exact in float) and their neighbours
        const float mid = 0.5f * (v + f.decode(c + 1));
        probes.insert(probes.end(), {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)});
      }
    }
    std::uniform_real_distribution<float> u(0.0f, 1.3f * f.max_value());
    for (int i = 0; i < 2000; ++i) probes.push_back(u(rng));
    for (float a : probes) {
      ASSERT_EQ(f.encode_magnitude(a), reference_magnitude(f, a)) << f.name() << " bias " << f.bias() << " a=" << a;
      ASSERT_EQ(f.encode(-a), f.encode_magnitude(a) | f.sign_bit()) << f.name() << " a=" << a;
      ASSERT_EQ(f.round_magnitude(a), f.decode(f.encode_magnitude(a))) << f.name() << " a=" << a;
    }
    for (uint32_t c = 0; c <= f.max_code(); ++c) ASSERT_EQ(f.encode_magnitude(f.decode(c)), c) << f.name();
  }
}

TEST(FormatsFloatMinifloat, RejectsImpossibleFormats) {
  EXPECT_THROW(Minifloat(0, 3), Error);
  EXPECT_THROW(Minifloat(5, 0, MinifloatSpecials::Ieee), Error);
  EXPECT_THROW(Minifloat(4, 3, MinifloatSpecials::None, 200), Error);
  EXPECT_THROW(Minifloat(8, 8), Error);
  EXPECT_THROW(Minifloat(-1, 3), Error);
  // IEEE half as a minifloat: the codec is not limited to 8 bits.
  const Minifloat half(5, 10, MinifloatSpecials::Ieee);
  EXPECT_EQ(half.max_value(), 65504.0f);
  EXPECT_EQ(half.min_positive(), std::ldexp(1.0f, -24));
}

// ---- specs -------------------------------------------------------------------------------

TEST(FormatsFloatSpec, CanonicalRoundTrip) {
  for (const auto& s : kAllSpecs) EXPECT_EQ(make_format(s)->spec(), s);
}

TEST(FormatsFloatSpec, InvalidSpecsListValidForms) {
  const std::string fp_form = "fp<b>:e<E>m<M>|search:g<G>|row|tensor";
  for (const std::string s : {"fp4", "fp4:e3m1:g128", "fp4:e0m3:g128", "fp4:x:g128", "fp4:e2m1:g0",
                              "fp4:e2m1:g128:row", "fp4:search:g128:sym", "fp4:e2m01:g128"}) {
    const std::string msg = error_of(s);
    EXPECT_NE(msg.find(fp_form), std::string::npos) << s << ": " << msg;
  }
  for (const std::string s : {"mxfp4:g32", "mxfp4:search:search", "mxfp4:foo"})
    EXPECT_NE(error_of(s).find("mxfp4[:search]"), std::string::npos) << s << ": " << error_of(s);
  for (const std::string s : {"nvfp4:g16", "nvfp4:search:x"})
    EXPECT_NE(error_of(s).find("nvfp4[:search]"), std::string::npos) << s;
  // Non-canonical forms name the canonical one; other widths are not this family's.
  EXPECT_NE(error_of("fp4:e2m1").find("fp4:e2m1:g128"), std::string::npos);
  EXPECT_NE(error_of("fp4:g128:e2m1").find(fp_form), std::string::npos);
  const std::string fp9 = error_of("fp9:e4m4:g128");
  EXPECT_NE(fp9.find(fp_form), std::string::npos) << fp9;
}

// ---- packing -----------------------------------------------------------------------------

TEST(FormatsFloatPacking, ExactBitsPerWeight) {
  struct Case {
    std::string spec;
    int64_t rows, cols;
    uint64_t bits;  // by hand
  } cases[] = {
      {"fp4:e2m1:g128", 64, 256, 64 * 2 * 16 + 64 * 256 * 4},          // 4.125 b/w
      {"fp8:e4m3:g128", 64, 256, 64 * 2 * 16 + 64 * 256 * 8},          // 8.125
      {"fp6:e3m2:g128", 7, 172, 7 * 2 * 16 + 7 * 172 * 6},             // tail group of 44
      {"fp4:e2m1:row", 7, 172, 7 * 16 + 7 * 172 * 4},
      {"fp4:e2m1:tensor", 7, 172, 32 + 7 * 172 * 4},                   // one fp32 scale
      {"fp4:search:g128", 64, 256, 12 + 64 * 2 * 16 + 64 * 256 * 4},   // 3-bit E + 9-bit shift header
      {"fp6:search:row", 7, 172, 12 + 7 * 16 + 7 * 172 * 6},
      {"fp8:search:tensor", 3, 33, 12 + 32 + 3 * 33 * 8},
      {"mxfp4", 64, 256, 64 * 8 * (8 + 32 * 4)},                       // 4.25
      {"mxfp4", 7, 172, 7 * 6 * (8 + 32 * 4)},                         // 172 -> 6 padded blocks
      {"mxfp4:search", 1, 1, 8 + 32 * 4},
      {"nvfp4", 64, 256, 32 + 64 * 16 * (8 + 16 * 4)},                 // 4.5 + 32 per tensor
      {"nvfp4", 7, 172, 32 + 7 * 11 * (8 + 16 * 4)},                   // 172 -> 11 padded blocks
      {"nvfp4:search", 1, 1, 32 + 8 + 16 * 4},
  };
  for (const auto& c : cases) {
    auto f = make_format(c.spec);
    EXPECT_EQ(f->check_shape(c.rows, c.cols), "");
    EXPECT_EQ(f->storage_bits(c.rows, c.cols), c.bits) << c.spec << " " << c.rows << "x" << c.cols;
    const auto w = gaussian(size_t(c.rows * c.cols), 1);
    const RoundTrip rt = round_trip(c.spec, w, c.rows, c.cols);
    EXPECT_EQ(rt.packed.bits, c.bits) << c.spec;
    EXPECT_EQ(rt.packed.bytes.size(), (c.bits + 7) / 8) << c.spec;
    EXPECT_DOUBLE_EQ(rt.packed.bits_per_weight(), double(c.bits) / double(c.rows * c.cols)) << c.spec;
  }
  EXPECT_DOUBLE_EQ(make_format("mxfp4")->bits_per_weight(64, 256), 4.25);
  EXPECT_DOUBLE_EQ(make_format("nvfp4")->bits_per_weight(1024, 1024), 4.5 + 32.0 / (1024 * 1024));
  EXPECT_DOUBLE_EQ(make_format("fp4:e2m1:g128")->bits_per_weight(64, 256), 4.125);
}

TEST(FormatsFloatPacking, EveryFormatRoundTripsEveryShape) {
  for (const auto& spec : kAllSpecs)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 33}, {5, 172}, {16, 256}}) {
      const auto w = gaussian(size_t(rows * cols), uint32_t(rows * 1000 + cols));
      const RoundTrip rt = round_trip(spec, w, rows, cols);
      ASSERT_EQ(rt.packed.bits, make_format(spec)->storage_bits(rows, cols)) << spec;
      ASSERT_EQ(rt.packed.rows, rows);
      ASSERT_EQ(rt.packed.cols, cols);
      for (size_t i = 0; i < w.size(); ++i) {
        ASSERT_TRUE(std::isfinite(rt.out[i])) << spec << " " << rows << "x" << cols;
        ASSERT_LE(std::fabs(rt.out[i] - w[i]), 0.75 * std::fabs(w[i]) + 0.5) << spec;  // coarse sanity
      }
      for (const auto& s : make_format(spec)->symbols(rt.packed))
        for (uint32_t v : s.symbols) ASSERT_LT(v, s.alphabet) << spec << " " << s.name;
    }
}

TEST(FormatsFloatPacking, RejectsPackedOfTheWrongSize) {
  for (const std::string spec : {"fp4:e2m1:g128", "fp4:search:g128", "mxfp4", "nvfp4"}) {
    const auto w = gaussian(64, 3);
    Packed p = make_format(spec)->quantize(w.data(), 2, 32, nullptr);
    p.bits -= 1;
    std::vector<float> out(64);
    EXPECT_THROW(make_format(spec)->dequantize(p, out.data()), Error) << spec;
  }
}

TEST(FormatsFloatPacking, SymbolStreams) {
  const auto w = gaussian(5 * 172, 4);
  for (const std::string spec : {"fp4:e2m1:g128", "fp6:e3m2:g128", "fp8:e4m3:g128", "fp6:search:row"}) {
    const RoundTrip rt = round_trip(spec, w, 5, 172);
    const auto streams = make_format(spec)->symbols(rt.packed);
    ASSERT_EQ(streams.size(), 1u);
    EXPECT_EQ(streams[0].name, "codes");
    EXPECT_EQ(streams[0].alphabet, 1u << (spec[2] - '0'));
    EXPECT_EQ(streams[0].symbols.size(), 5u * 172u);
  }
  const RoundTrip mx = round_trip("mxfp4", w, 5, 172), nv = round_trip("nvfp4", w, 5, 172);
  EXPECT_EQ(stream("mxfp4", mx.packed, "codes").size(), 5u * 6 * 32);
  EXPECT_EQ(stream("mxfp4", mx.packed, "scales").size(), 5u * 6);
  EXPECT_EQ(stream("nvfp4", nv.packed, "codes").size(), 5u * 11 * 16);
  EXPECT_EQ(stream("nvfp4", nv.packed, "scales").size(), 5u * 11);
  for (const auto& s : make_format("mxfp4")->symbols(mx.packed)) EXPECT_EQ(s.alphabet, s.name == "codes" ? 16u : 256u);
}

TEST(FormatsFloatPacking, SameBitsForAnyThreadCount) {
  const auto w = gaussian(64 * 300, 5);
  std::vector<float> imp(300, 1.0f);
  imp[7] = 50;
  for (const std::string spec : {"fp4:e2m1:tensor", "fp4:search:g128", "nvfp4:search", "fp6:e3m2:row"}) {
    set_num_threads(1);
    const Packed a = make_format(spec)->quantize(w.data(), 64, 300, imp.data());
    set_num_threads(3);
    const Packed b = make_format(spec)->quantize(w.data(), 64, 300, imp.data());
    set_num_threads(0);
    EXPECT_EQ(a.bytes, b.bytes) << spec;
  }
}

// ---- known answers -----------------------------------------------------------------------

// Rows whose values lie on the element grid times 1: scale 1 (exact in fp16) has zero
// error, so the clipping search must keep it and the reconstruction is exact.
TEST(FormatsFloatKnown, GridValuesAreExact) {
  const struct {
    std::string spec;
    std::vector<float> row;
  } cases[] = {
      {"fp4:e2m1:g128", {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.5f, -1, -1.5f, -2, -3, -4, -6}},
      {"fp6:e3m2:g128", {28, -28, 0.0625f, 0.125f, 0.1875f, 1.25f, -1.75f, 20, 24, 0}},
      {"fp6:e2m3:g128", {7.5f, -7.5f, 0.125f, 0.875f, 1.125f, 5.5f, -6.5f, 0}},
      {"fp8:e4m3:g128", {448, -448, std::ldexp(1.0f, -9), 1.0f, 1.125f, -0.5f, 240, 0}},
      {"fp8:e5m2:g128", {57344, -57344, std::ldexp(1.0f, -16), 1.0f, 1.25f, -0.75f, 1024, 0}},
  };
  for (const auto& c : cases) {
    const int64_t cols = int64_t(c.row.size());
    const RoundTrip rt = round_trip(c.spec, c.row, 1, cols);
    for (int64_t i = 0; i < cols; ++i) EXPECT_EQ(rt.out[size_t(i)], c.row[size_t(i)]) << c.spec << " col " << i;
  }
  // The codes of the E2M1 row are the OCP encodings 0..7 and 8+1..8+7.
  const RoundTrip rt = round_trip("fp4:e2m1:g128", cases[0].row, 1, 15);
  const std::vector<uint32_t> want = {0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15};
  EXPECT_EQ(stream("fp4:e2m1:g128", rt.packed, "codes"), want);
}

// One MX row: the scale code is floor(log2(absmax)) - 2 + 127, elements RNE(x / X).
std::pair<uint32_t, std::vector<float>> mx_block(const std::vector<float>& x) {
  const RoundTrip rt = round_trip("mxfp4", x, 1, int64_t(x.size()));
  return {stream("mxfp4", rt.packed, "scales")[0], rt.out};
}

TEST(FormatsFloatKnown, MxFp4FollowsTheOcpRule) {
  {  // absmax 6: X = 2^0, grid values exact
    auto [code, out] = mx_block({6, -4, 3, 1.5f, 0.5f, 0, -6, 2});
    EXPECT_EQ(code, 127u);
    EXPECT_EQ(out, (std::vector<float>{6, -4, 3, 1.5f, 0.5f, 0, -6, 2}));
  }
  {  // absmax 1: shared_exp = 0 - 2, X = 0.25; x/X = 4, 0.4, -1.2, 0.25 (tie), 0.75 (tie), 2.5 (tie), 3.5 (tie)
    auto [code, out] = mx_block({1.0f, 0.1f, -0.3f, 0.0625f, 0.1875f, 0.625f, 0.875f});
    EXPECT_EQ(code, 125u);
    EXPECT_EQ(out, (std::vector<float>{1.0f, 0.125f, -0.25f, 0.0f, 0.25f, 0.5f, 1.0f}));
  }
  {  // absmax 7: shared_exp = 2 - 2 = 0, 7 saturates to 6 (the spec's known clipping), 5 -> 4 (tie)
    auto [code, out] = mx_block({7, 5, -5.5f});
    EXPECT_EQ(code, 127u);
    EXPECT_EQ(out, (std::vector<float>{6, 4, -6}));
  }
  {  // absmax 0.75: floor(log2 0.75) = -1, X = 2^-3; 0.75 * 8 = 6
    auto [code, out] = mx_block({0.75f, -0.1f});
    EXPECT_EQ(code, 124u);
    EXPECT_EQ(out, (std::vector<float>{0.75f, -0.125f}));  // -0.8 -> -1 step of 1/8
  }
  {  // all zero: smallest scale (code 0, X = 2^-127), zero codes
    auto [code, out] = mx_block(std::vector<float>(32, 0.0f));
    EXPECT_EQ(code, 0u);
    EXPECT_EQ(out, std::vector<float>(32, 0.0f));
  }
  {  // 1e-30: floor(log2) = -100, shared_exp = -102; 1e-30 * 2^102 = 5.07 rounds up to 6
    auto [code, out] = mx_block({1e-30f});
    EXPECT_EQ(code, uint32_t(-102 + 127));
    EXPECT_EQ(out[0], 6.0f * std::ldexp(1.0f, -102));
  }
  {  // a tail block: 40 columns = one full block and one block of 8 padded with 24 zero codes
    const auto w = gaussian(40, 9);
    const RoundTrip rt = round_trip("mxfp4", w, 1, 40);
    const auto codes = stream("mxfp4", rt.packed, "codes");
    ASSERT_EQ(codes.size(), 64u);
    for (size_t i = 40; i < 64; ++i) EXPECT_EQ(codes[i], 0u);
  }
}

TEST(FormatsFloatKnown, NvFp4FollowsNvidiasRecipe) {
  // Tensor amax 2688 = 448 * 6: global scale 1. Block 0: amax 2688 -> E4M3 448 (code 0x7E),
  // elements x / 448. Block 1: amax 6.6 -> 6.6 / 6 = 1.1 -> E4M3 1.125 (code 0x39); elements
  // 6.6 / 1.125 = 5.87 -> 6, 1 / 1.125 = 0.89 -> 1, -2 / 1.125 = -1.78 -> -2, 0.28125 / 1.125 =
  // 0.25 -> 0 (tie to even).
  std::vector<float> w(32, 0.0f);
  w[0] = 2688, w[1] = -896, w[2] = 224;
  w[16] = 6.6f, w[17] = 1.0f, w[18] = -2.0f, w[19] = 0.28125f;
  const RoundTrip rt = round_trip("nvfp4", w, 1, 32);
  float global;
  std::memcpy(&global, rt.packed.bytes.data(), 4);
  EXPECT_EQ(global, 1.0f);
  EXPECT_EQ(stream("nvfp4", rt.packed, "scales"), (std::vector<uint32_t>{0x7E, 0x39}));
  EXPECT_EQ(rt.out[0], 2688.0f);
  EXPECT_EQ(rt.out[1], -896.0f);
  EXPECT_EQ(rt.out[2], 224.0f);
  EXPECT_EQ(rt.out[16], 6.75f);
  EXPECT_EQ(rt.out[17], 1.125f);
  EXPECT_EQ(rt.out[18], -2.25f);
  EXPECT_EQ(rt.out[19], 0.0f);

  // Tensor amax 6: global 448, block scale 6 / 6 * 448 = 448, element scale 1: the grid.
  const std::vector<float> grid = {6, -4, 3, 1.5f, 0.5f, 0, -1, 2};
  const RoundTrip g = round_trip("nvfp4", grid, 1, 8);
  std::memcpy(&global, g.packed.bytes.data(), 4);
  EXPECT_EQ(global, 448.0f);
  EXPECT_EQ(g.out, grid);
  EXPECT_EQ(stream("nvfp4", g.packed, "codes"),
            (std::vector<uint32_t>{7, 14, 5, 3, 1, 0, 10, 4, 0, 0, 0, 0, 0, 0, 0, 0}));
}

// LLM-FP4: the stored exponent width (first 3 bits) is the split that fits the data.
int stored_split(const Packed& p) { return p.bytes[0] & 7; }

TEST(FormatsFloatKnown, SearchPicksTheSplitThatFitsTheData) {
  auto tile = [](std::vector<float> base, int times) {
    std::vector<float> v;
    for (int i = 0; i < times; ++i) v.insert(v.end(), base.begin(), base.end());
    return v;
  };
  // Uniform levels 0..7 (x 0.5): only e1m2 (0, 0.25, ..., 1.75) is exact.
  std::vector<float> uniform;
  for (int k = -7; k <= 7; ++k) uniform.push_back(0.5f * float(k));
  // Powers of two 2^-2..2^4: e3m0 (bias 3) is exact.
  std::vector<float> pow2 = {0};
  for (int k = -2; k <= 4; ++k) pow2.insert(pow2.end(), {std::ldexp(1.0f, k), -std::ldexp(1.0f, k)});
  // The E2M1 grid.
  const std::vector<float> e2m1 = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.5f, -1, -1.5f, -2, -3, -4, -6, 6};
  const struct {
    std::vector<float> row;
    int exp_bits;
  } cases[] = {{tile(uniform, 2), 1}, {tile(pow2, 2), 3}, {tile(e2m1, 2), 2}};
  for (const auto& c : cases) {
    const int64_t cols = int64_t(c.row.size());
    const auto w = tile(c.row, 4);  // 4 rows
    const RoundTrip rt = round_trip("fp4:search:g128", w, 4, cols);
    EXPECT_EQ(stored_split(rt.packed), c.exp_bits);
    EXPECT_LT(weighted_error(w, rt.out, cols, nullptr), 1e-9 * weighted_error(w, std::vector<float>(w.size()), cols, nullptr))
        << "e" << c.exp_bits;
  }
}

// ---- error on N(0,1) ---------------------------------------------------------------------

// SQNR of 256 x 512 N(0,1) weights (131072 samples). The expected values were measured on
// 2^20 samples (1024 x 1024, other seed; see the report). Windows are +-0.25 dB: the
// estimate over 2^17 samples differs from the 2^20 one by < 0.05 dB (error energy is a mean
// of 2^17 nearly independent terms, relative spread ~0.3%), so only a real change of the
// quantizer (a different scale rule, rounding or search) moves it out.
TEST(FormatsFloatError, GaussianSqnr) {
  const struct {
    std::string spec;
    double sqnr;
  } cases[] = {
      {"fp4:e2m1:g128", 19.767}, {"fp4:search:g128", 19.767}, {"mxfp4", 18.793},         {"mxfp4:search", 19.049},
      {"nvfp4", 20.450},         {"nvfp4:search", 21.329},    {"fp6:e3m2:g128", 26.221}, {"fp6:e2m3:g128", 31.923},
      {"fp6:search:g128", 31.923}, {"fp8:e4m3:g128", 32.197}, {"fp8:e5m2:g128", 26.221}, {"fp8:search:g128", 44.035},
      {"fp3:e1m1:g128", 13.527}, {"fp3:e2m0:g128", 13.644},   {"fp3:search:g128", 13.644},
  };
  const auto w = gaussian(256 * 512, 11);
  std::map<std::string, double> got;
  for (const auto& c : cases) {
    const RoundTrip rt = round_trip(c.spec, w, 256, 512);
    got[c.spec] = sqnr_db(w, rt.out);
    EXPECT_NEAR(got[c.spec], c.sqnr, 0.25) << c.spec;
  }
  // On the same data a search never loses to the choice it contains (fp16 scale rounding
  // differs between fp4:e2m1 and the searched e2m1 by the stored shift: 0.01 dB slack).
  EXPECT_GE(got["fp4:search:g128"], got["fp4:e2m1:g128"] - 0.01);
  EXPECT_GE(got["fp6:search:g128"], std::max(got["fp6:e3m2:g128"], got["fp6:e2m3:g128"]) - 0.01);
  EXPECT_GE(got["fp3:search:g128"], std::max(got["fp3:e1m1:g128"], got["fp3:e2m0:g128"]) - 0.01);
  EXPECT_GE(got["mxfp4:search"], got["mxfp4"]);
  EXPECT_GE(got["nvfp4:search"], got["nvfp4"]);
}

// Formats whose choices react to importance, and those that must ignore it (the published
// recipes are deterministic functions of the weights).
TEST(FormatsFloatImportance, ImportanceLowersTheWeightedError) {
  const int64_t rows = 64, cols = 256;
  const auto w = gaussian(size_t(rows * cols), 21);
  std::vector<float> imp(size_t(cols), 1.0f);
  for (int64_t c : {3, 40, 77, 130, 131, 200, 222, 250}) imp[size_t(c)] = 1000.0f;
  for (const std::string spec : {"fp4:e2m1:g128", "fp4:e2m1:row", "fp4:e2m1:tensor", "fp6:e3m2:g128", "fp8:e4m3:g128",
                                 "fp4:search:g128", "fp3:search:g64", "mxfp4:search", "nvfp4:search"}) {
    const double plain = weighted_error(w, round_trip(spec, w, rows, cols).out, cols, imp.data());
    const double aware = weighted_error(w, round_trip(spec, w, rows, cols, imp.data()).out, cols, imp.data());
    std::printf("%-18s weighted error %.4g -> %.4g (%.1f%%)\n", spec.c_str(), plain, aware, 100.0 * (aware / plain - 1));
    // One scale per tensor (or a power-of-two step per block) leaves little room; a scale
    // per group of 128 must gain a lot.
    const bool coarse = spec == "fp4:e2m1:tensor" || spec == "mxfp4:search";
    EXPECT_LT(aware, (coarse ? 0.99 : 0.7) * plain) << spec;
  }
  for (const std::string spec : {"mxfp4", "nvfp4"}) {
    auto f = make_format(spec);
    EXPECT_EQ(f->quantize(w.data(), rows, cols, imp.data()).bytes, f->quantize(w.data(), rows, cols, nullptr).bytes)
        << spec;
  }
}

// ---- degenerate inputs -------------------------------------------------------------------

TEST(FormatsFloatDegenerate, ZerosConstantsTinyAndHuge) {
  const int64_t rows = 3, cols = 172;
  const size_t n = size_t(rows * cols);
  const auto g = gaussian(n, 31);
  std::vector<float> mixed = g;
  mixed[5] = 1e30f, mixed[200] = -1e-30f, mixed[300] = 3e38f;
  std::vector<float> one_hot(n, 0.0f);
  one_hot[77] = -2.5f;
  auto scaled = [&](float k) {
    std::vector<float> v = g;
    for (auto& x : v) x *= k;
    return v;
  };
  const std::vector<std::pair<std::string, std::vector<float>>> inputs = {
      {"zeros", std::vector<float>(n, 0.0f)}, {"constant", std::vector<float>(n, 0.37f)},
      {"tiny", scaled(1e-30f)},               {"huge", scaled(1e30f)},
      {"mixed", mixed},                       {"one-hot", one_hot}};
  for (const auto& spec : kAllSpecs)
    for (const auto& [name, w] : inputs) {
      const RoundTrip rt = round_trip(spec, w, rows, cols);
      for (size_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(rt.out[i])) << spec << " " << name << " " << i;
      if (name == "zeros") {
        EXPECT_EQ(rt.out, w) << spec;
      } else if (name == "one-hot") {
        EXPECT_NEAR(rt.out[77], -2.5f, 0.25f * 2.5f) << spec;
      } else if (name == "constant") {
        // E8M0 power-of-two scales: 0.37 * 16 = 5.92 -> 6 (1.4%); everything else within fp16/E4M3 rounding.
        const float tol = spec.rfind("mxfp4", 0) == 0 ? 0.02f : 1e-3f;
        for (size_t i = 0; i < n; ++i) ASSERT_NEAR(rt.out[i], 0.37f, 0.37f * tol) << spec;
      }
    }
}

// Formats with a per-tensor exponent (fp<b>:search's shift, mxfp4's E8M0, nvfp4's fp32) code
// 1e-30 and 1e30 times N(0,1) as well as N(0,1) itself; fp16 group scales cannot (they
// underflow to 0 or saturate), which is only required to stay finite (test above).
TEST(FormatsFloatDegenerate, TensorExponentKeepsTinyAndHugeAccurate) {
  const int64_t rows = 32, cols = 256;
  const auto g = gaussian(size_t(rows * cols), 41);
  for (const std::string spec : {"fp4:search:g128", "fp6:search:row", "fp8:search:tensor", "mxfp4", "nvfp4"}) {
    const double base = sqnr_db(g, round_trip(spec, g, rows, cols).out);
    for (float k : {1e-30f, 1e30f, 1e-38f}) {
      std::vector<float> w = g;
      for (auto& x : w) x *= k;
      const double s = sqnr_db(w, round_trip(spec, w, rows, cols).out);
      EXPECT_NEAR(s, base, 0.5) << spec << " x" << k;
    }
  }
}

// Not run by default: speed on 4096 x 4096 and SQNR on 2^20 samples, for the report.
TEST(FormatsFloatBench, DISABLED_SpeedAndSqnr) {
  const auto big = gaussian(size_t(4096) * 4096, 51);
  const auto w20 = gaussian(size_t(1) << 20, 52);
  for (const std::string spec : {"fp4:e2m1:g128", "fp4:search:g128", "mxfp4", "mxfp4:search", "nvfp4", "nvfp4:search",
                                 "fp6:e3m2:g128", "fp6:e2m3:g128", "fp6:search:g128", "fp8:e4m3:g128", "fp8:e5m2:g128",
                                 "fp8:search:g128", "fp3:e1m1:g128", "fp3:e2m0:g128", "fp3:search:g128",
                                 "fp4:e2m1:tensor", "fp4:e2m1:g32"}) {
    auto f = make_format(spec);
    const auto t0 = std::chrono::steady_clock::now();
    const Packed p = f->quantize(big.data(), 4096, 4096, nullptr);
    const auto t1 = std::chrono::steady_clock::now();
    std::vector<float> out(big.size());
    f->dequantize(p, out.data());
    const auto t2 = std::chrono::steady_clock::now();
    const double s20 = sqnr_db(w20, round_trip(spec, w20, 1024, 1024).out);
    std::printf("%-18s %.4f b/w  quantize %.2f s  dequantize %.2f s  SQNR(2^20) %.3f dB\n", spec.c_str(),
                p.bits_per_weight(), std::chrono::duration<double>(t1 - t0).count(),
                std::chrono::duration<double>(t2 - t1).count(), s20);
  }
}

// ---- column encoders (GPTQ) ----------------------------------------------------------------

// Without error feedback (every column fed its original values) the column encoder must
// reproduce quantize() bit for bit, in order and, with static groups, in any order; what it
// reports as dequantized must be what the packed matrix decodes to.
TEST(FormatsFloatGptq, ColumnEncoderWithoutFeedbackIsQuantize) {
  const int64_t rows = 6, cols = 172;
  const auto w = gaussian(size_t(rows * cols), 61);
  std::vector<float> imp(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) imp[size_t(c)] = 0.5f + float(c % 5);
  for (const auto& spec : kAllSpecs)
    for (bool static_groups : {false, true}) {
      auto f = make_format(spec);
      const Packed want = f->quantize(w.data(), rows, cols, imp.data());
      std::vector<float> want_out(w.size());
      f->dequantize(want, want_out.data());
      auto enc = f->column_encoder(w.data(), rows, cols, imp.data(), static_groups);
      ASSERT_EQ(enc->step(), 1) << spec;
      std::vector<int64_t> order;
      for (int64_t c = 0; c < cols; ++c) order.push_back(static_groups ? cols - 1 - c : c);
      std::vector<float> deq(static_cast<size_t>(rows));
      for (int64_t c : order) {
        enc->encode(c, w.data() + c, cols, 1, deq.data());
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(deq[size_t(r)], want_out[size_t(r * cols + c)]) << spec << " static " << static_groups << " col " << c;
      }
      EXPECT_EQ(enc->finish().bytes, want.bytes) << spec << " static " << static_groups;
    }
  EXPECT_EQ(make_format("fp4:e2m1:g128")->column_group(256), 128);
  EXPECT_EQ(make_format("mxfp4")->column_group(256), 32);
  EXPECT_EQ(make_format("nvfp4")->column_group(256), 0);        // per-tensor fp32 scale
  EXPECT_EQ(make_format("fp4:search:g128")->column_group(256), 0);  // per-tensor split
  EXPECT_EQ(make_format("fp4:e2m1:row")->column_group(256), 0);
}

// X^T X of samples whose inputs are mixed (correlated) and of unequal size.
std::vector<double> correlated_hessian(int64_t n, int64_t samples, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  std::vector<double> mix(static_cast<size_t>(n * n)), h(static_cast<size_t>(n * n), 0.0), x(static_cast<size_t>(n)), z(static_cast<size_t>(n));
  for (auto& m : mix) m = nd(rng) / std::sqrt(double(n));
  for (int64_t i = 0; i < n; ++i) mix[size_t(i * n + i)] += 1.0;
  for (int64_t s = 0; s < samples; ++s) {
    for (auto& v : z) v = nd(rng);
    for (int64_t i = 0; i < n; ++i) {
      double acc = 0;
      for (int64_t k = 0; k < n; ++k) acc += mix[size_t(i * n + k)] * z[size_t(k)];
      x[size_t(i)] = acc * (i % 9 == 0 ? 4.0 : 1.0);
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) h[size_t(i * n + j)] += x[size_t(i)] * x[size_t(j)];
  }
  return h;
}

TEST(FormatsFloatGptq, BeatsRoundToNearest) {
  const int64_t rows = 64, cols = 192;
  const auto w = gaussian(size_t(rows * cols), 71);
  const auto h = correlated_hessian(cols, 768, 72);
  for (const std::string spec : {"fp4:e2m1:g32", "fp4:search:g128", "fp6:e3m2:row", "fp8:e4m3:g128", "mxfp4",
                                 "mxfp4:search", "nvfp4", "nvfp4:search"}) {
    auto f = make_format(spec);
    std::vector<float> rtn(w.size());
    f->dequantize(f->quantize(w.data(), rows, cols, nullptr), rtn.data());
    const double obj_rtn = hessian_objective(w.data(), rtn.data(), rows, cols, h.data());
    for (bool act : {false, true}) {
      GptqOptions opt;
      opt.act_order = act;
      opt.compute_objective = true;
      const GptqResult g = gptq_quantize(*f, w.data(), rows, cols, h.data(), opt);
      EXPECT_EQ(g.packed.bits, f->storage_bits(rows, cols));
      std::printf("%-16s act %d  GPTQ/RTN objective %.3f\n", spec.c_str(), int(act), g.objective / obj_rtn);
      EXPECT_LT(g.objective, 0.9 * obj_rtn) << spec << " act " << act;
    }
  }
}

}  // namespace
