// Pyramid VQ ("pvq") and the E8 lattice codebook ("e8").
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "formats/common.h"
#include "formats/lattice_util.h"
#include "formats_test_util.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"

using namespace quantkit;
using qk_test::gaussian;
using qk_test::round_trip;
using qk_test::sqnr_db;
using qk_test::weighted_error;

namespace {

std::string error_of(const std::string& spec) { return qk_test::spec_error(spec); }

// A few columns carry almost all the importance: the weighted error must drop when the
// format is told so.
void expect_importance_helps(const std::string& spec) {
  const int64_t rows = 64, cols = 256;
  auto w = gaussian(size_t(rows * cols), 3);
  std::vector<float> imp(cols, 1.0f);
  for (int j = 0; j < cols; j += 16) imp[size_t(j)] = 1000.0f;
  auto f = make_format(spec);
  const double with = weighted_error(w, round_trip(*f, w, rows, cols, imp.data()), cols, imp.data());
  const double without = weighted_error(w, round_trip(*f, w, rows, cols), cols, imp.data());
  EXPECT_LT(with, 0.8 * without) << spec;
}

// All-zero, constant, tiny and huge matrices quantize to finite values (zero stays zero).
void expect_degenerate_inputs_finite(const std::string& spec) {
  auto f = make_format(spec);
  for (float v : {0.0f, 1e-30f, 1e30f, -3.0f}) {
    std::vector<float> w(size_t(6 * 43), v);
    w[5] = v * 0.5f;
    auto out = round_trip(*f, w, 6, 43);
    for (float x : out) ASSERT_TRUE(std::isfinite(x)) << spec << " " << v;
    if (v == 0.0f) {
      for (float x : out) ASSERT_EQ(x, 0.0f) << spec;
    }
    if (v == -3.0f) {
      EXPECT_GT(sqnr_db(w, out), 10.0) << spec;  // a constant is easy
    }
  }
}

using u128 = unsigned __int128;

}  // namespace

// ---- pvq ---------------------------------------------------------------------------------

TEST(FormatsLatticePvq, SpecsRoundTripAndBadSpecsAreClearErrors) {
  for (const char* s : {"pvq:d8:k8", "pvq:d8:k8:n8", "pvq:d32:k20", "pvq:d16:k22:g128", "pvq:d8:k8:n3:g64",
                        "pvq:d32:k96"})
    EXPECT_EQ(make_format(s)->spec(), s);
  EXPECT_NE(error_of("pvq:d8").find("k<K>"), std::string::npos);
  EXPECT_NE(error_of("pvq:d1:k4").find("out of range"), std::string::npos);
  EXPECT_NE(error_of("pvq:d64:k64").find("2^126"), std::string::npos);
  EXPECT_NE(error_of("pvq:d8:k8:g12").find("multiple"), std::string::npos);
  EXPECT_NE(error_of("pvq:d8:k8:n17").find("out of range"), std::string::npos);
  EXPECT_NE(error_of("pvq:d8:k8:tensor").find("per row"), std::string::npos);
  EXPECT_NE(error_of("pvq:d8:k8:banana").find("banana"), std::string::npos);
  EXPECT_NE(error_of("pvq:d8:k8:n4").find("write 'pvq:d8:k8'"), std::string::npos);
  EXPECT_NE(error_of("pvq:k8:d8").find("write 'pvq:d8:k8'"), std::string::npos);
  EXPECT_NE(error_of("pvq:d8:k8:banana").find("pvq:d<D>:k<K>"), std::string::npos);  // lists the form
  const std::string unknown = error_of("nosuchformat");
  EXPECT_NE(unknown.find("valid forms"), std::string::npos);
  EXPECT_NE(unknown.find("pvq:d<D>:k<K>"), std::string::npos);
}

TEST(FormatsLatticePvq, BitAccountingIsExact) {
  // N(8, 8) = 157184 -> 18 index bits; 172 columns = 22 vectors (the last padded); one
  // fp16 pair (the gain grid) per row.
  EXPECT_EQ(make_format("pvq:d8:k8")->storage_bits(64, 172), uint64_t(64 * 32 + 64 * 22 * (18 + 4)));
  // N(32, 20) needs 60 bits: (60 + 4) / 32 = 2 bits/weight plus the grid.
  EXPECT_DOUBLE_EQ(make_format("pvq:d32:k20")->bits_per_weight(4096, 4096), 2.0 + 32.0 / 4096);
  // N(32, 96) needs 124 bits (two 64-bit words in the writer).
  EXPECT_DOUBLE_EQ(make_format("pvq:d32:k96")->bits_per_weight(4096, 4096), 4.0 + 32.0 / 4096);
  // Groups of 128 with 8 gain bits: 172 columns -> 2 groups per row.
  EXPECT_EQ(make_format("pvq:d16:k22:n8:g128")->storage_bits(3, 172), uint64_t(3 * 2 * 32 + 3 * 11 * (44 + 8)));
  auto w = gaussian(64 * 172);
  for (const char* s : {"pvq:d8:k8", "pvq:d32:k20", "pvq:d32:k96", "pvq:d16:k22:n8:g128", "pvq:d2:k1:n1"})
    round_trip(*make_format(s), w, 64, 172);
}

TEST(FormatsLatticePvq, FischerEnumerationKnownAnswers) {
  namespace L = formats::lattice;
  // N(n, k) = sum_i 2^i C(n, i) C(k-1, i-1).
  EXPECT_EQ(uint64_t(L::pyramid_count(3, 2)), 18u);
  EXPECT_EQ(uint64_t(L::pyramid_count(8, 8)), 157184u);
  EXPECT_EQ(uint64_t(L::pyramid_count(16, 10)), 387328512u);
  // Order: first coordinate 0, +1, -1, +2, -2, ..., then the rest recursively.
  int y[3];
  L::pyramid_vector(0, 3, 2, y);
  EXPECT_EQ(std::vector<int>(y, y + 3), (std::vector<int>{0, 0, 2}));
  L::pyramid_vector(1, 3, 2, y);
  EXPECT_EQ(std::vector<int>(y, y + 3), (std::vector<int>{0, 0, -2}));
  L::pyramid_vector(17, 3, 2, y);
  EXPECT_EQ(std::vector<int>(y, y + 3), (std::vector<int>{-2, 0, 0}));
  // A bijection onto P(3, 2).
  std::set<std::vector<int>> seen;
  for (int i = 0; i < 18; ++i) {
    L::pyramid_vector(u128(i), 3, 2, y);
    EXPECT_EQ(std::abs(y[0]) + std::abs(y[1]) + std::abs(y[2]), 2);
    EXPECT_EQ(uint64_t(L::pyramid_index(y, 3, 2)), uint64_t(i));
    seen.insert(std::vector<int>(y, y + 3));
  }
  EXPECT_EQ(seen.size(), 18u);
  // 124-bit indices round trip exactly.
  std::mt19937_64 rng(5);
  const u128 n = L::pyramid_count(32, 96);
  EXPECT_GT(n, u128(1) << 123);
  for (int t = 0; t < 100; ++t) {
    const u128 index = ((u128(rng()) << 64) | rng()) % n;
    int v[32];
    L::pyramid_vector(index, 32, 96, v);
    int l1 = 0;
    for (int x : v) l1 += std::abs(x);
    EXPECT_EQ(l1, 96);
    EXPECT_TRUE(L::pyramid_index(v, 32, 96) == index);
  }
  EXPECT_THROW(L::pyramid_count(64, 64), Error);
}

TEST(FormatsLatticePvq, KnownAnswers) {
  // A vector on the pyramid's ray (3, -1, 0, ...) with K = 4 is found exactly; its gain
  // sqrt(10) / 4 is the only one in the row, so the grid holds it up to fp16 rounding.
  std::vector<float> w = {0.75f, -0.25f, 0, 0, 0, 0, 0, 0};
  auto f = make_format("pvq:d8:k4");
  Packed p = f->quantize(w.data(), 1, 8, nullptr);
  std::vector<float> out(8);
  f->dequantize(p, out.data());
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(out[size_t(i)], w[size_t(i)], 1e-3) << i;
  auto s = f->symbols(p);
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].alphabet, 9u);  // pulses -4..4
  EXPECT_EQ(s[0].symbols, (std::vector<uint32_t>{7, 3, 4, 4, 4, 4, 4, 4}));
  EXPECT_EQ(s[1].alphabet, 16u);
  // The search picks the best of the 3-pulse points for (0.9, 0.35, 0.3): (2, 1, 0) has
  // cosine 0.951, better than (2, 0, 1) (0.929), (3, 0, 0) (0.890) or (1, 1, 1) (0.885).
  std::vector<float> x = {0.9f, 0.35f, 0.3f, 0, 0, 0, 0, 0};
  auto f3 = make_format("pvq:d8:k3");
  auto s3 = f3->symbols(f3->quantize(x.data(), 1, 8, nullptr));
  EXPECT_EQ(std::vector<uint32_t>(s3[0].symbols.begin(), s3[0].symbols.begin() + 3), (std::vector<uint32_t>{5, 4, 3}));
}

TEST(FormatsLatticePvq, GaussianSqnrNear2To4Bits) {
  // 2^18 samples: the SQNR estimate varies by ~0.01 dB between seeds; the bounds leave
  // room around the measured values (9.71, 15.82, 22.13 dB at 2.0, 3.0 and 4.0 bits).
  auto w = gaussian(1 << 18, 9);
  struct Case {
    const char* spec;
    double bpw, lo, hi;
  } cases[] = {{"pvq:d32:k20", 2.0, 9.5, 9.95}, {"pvq:d32:k45", 3.0, 15.6, 16.05}, {"pvq:d32:k96", 4.0, 21.9, 22.35}};
  for (const auto& c : cases) {
    auto f = make_format(c.spec);
    const double db = sqnr_db(w, round_trip(*f, w, 256, 1024));
    std::printf("%s: %.4f bits/weight, SQNR %.2f dB\n", c.spec, f->bits_per_weight(256, 1024), db);
    EXPECT_NEAR(f->bits_per_weight(256, 1024), c.bpw, 0.04);
    EXPECT_GT(db, c.lo) << c.spec;
    EXPECT_LT(db, c.hi) << c.spec;
  }
}

TEST(FormatsLatticePvq, ImportanceLowersWeightedError) {
  expect_importance_helps("pvq:d8:k8");
  expect_importance_helps("pvq:d16:k22:g128");
}

TEST(FormatsLatticePvq, DegenerateInputsStayFinite) {
  expect_degenerate_inputs_finite("pvq:d8:k8");
  expect_degenerate_inputs_finite("pvq:d16:k22:n8:g32");
}

// ---- e8 ----------------------------------------------------------------------------------

namespace {

// The 240 roots of E8: (+-1, +-1, 0^6) and (+-1/2)^8 with an even number of minus signs.
std::vector<std::array<double, 8>> e8_roots() {
  std::vector<std::array<double, 8>> roots;
  for (int i = 0; i < 8; ++i)
    for (int j = i + 1; j < 8; ++j)
      for (int si : {-1, 1})
        for (int sj : {-1, 1}) {
          std::array<double, 8> r{};
          r[size_t(i)] = si, r[size_t(j)] = sj;
          roots.push_back(r);
        }
  for (int m = 0; m < 256; ++m)
    if (__builtin_popcount(m) % 2 == 0) {
      std::array<double, 8> r;
      for (int i = 0; i < 8; ++i) r[size_t(i)] = (m >> i) & 1 ? -0.5 : 0.5;
      roots.push_back(r);
    }
  return roots;
}

bool in_e8(const double* p) {
  const bool integer = std::floor(p[0]) == p[0];
  double sum = 0;
  for (int i = 0; i < 8; ++i) {
    if ((std::floor(p[i]) == p[i]) != integer) return false;
    if (!integer && std::floor(p[i] + 0.5) != p[i] + 0.5) return false;
    sum += p[i];
  }
  return std::fmod(std::fabs(sum), 2.0) == 0.0;
}

// The decoded codebook: all 2^16 indices through a 1 x 8 "e8:b2:row" matrix of scale 1.
std::vector<std::array<float, 8>> decoded_codebook() {
  auto f = make_format("e8:b2:row");
  std::vector<std::array<float, 8>> book;
  for (uint32_t i = 0; i < 65536; ++i) {
    formats::BitWriter bw;
    bw.put(f32_to_f16(1.0f), 16);
    bw.put(i, 16);
    Packed p = formats::finish_packed(bw, 1, 8, 32);
    std::array<float, 8> v;
    f->dequantize(p, v.data());
    book.push_back(v);
  }
  return book;
}

}  // namespace

TEST(FormatsLatticeE8, SpecsRoundTripAndBadSpecsAreClearErrors) {
  for (const char* s : {"e8:b2", "e8:b2:row", "e8:b2:g256", "e8:b2:g8"}) EXPECT_EQ(make_format(s)->spec(), s);
  EXPECT_NE(error_of("e8").find("b2"), std::string::npos);
  EXPECT_NE(error_of("e8:b3").find("only b2"), std::string::npos);
  EXPECT_NE(error_of("e8:b2:g12").find("multiple of 8"), std::string::npos);
  EXPECT_NE(error_of("e8:b2:tensor").find("per row"), std::string::npos);
  EXPECT_NE(error_of("e8:b2:g128").find("write 'e8:b2'"), std::string::npos);
  EXPECT_NE(error_of("e8:b2:x").find("e8:b2[:row|:g<G>]"), std::string::npos);
  EXPECT_NE(error_of("nosuchformat").find("e8:b2[:row|:g<G>]"), std::string::npos);
}

TEST(FormatsLatticeE8, BitAccountingIsExact) {
  // 172 columns: 22 vectors of 16 bits, 2 groups of 128 (fp16 scale each) per row.
  EXPECT_EQ(make_format("e8:b2")->storage_bits(64, 172), uint64_t(64 * 2 * 16 + 64 * 22 * 16));
  EXPECT_DOUBLE_EQ(make_format("e8:b2")->bits_per_weight(4096, 4096), 2.0 + 16.0 / 128);
  EXPECT_DOUBLE_EQ(make_format("e8:b2:row")->bits_per_weight(4096, 4096), 2.0 + 16.0 / 4096);
  auto w = gaussian(64 * 172);
  for (const char* s : {"e8:b2", "e8:b2:row", "e8:b2:g8"}) round_trip(*make_format(s), w, 64, 172);
}

TEST(FormatsLatticeE8, NearestLatticePointIsExact) {
  // p is the nearest E8 point to x iff no Voronoi-relevant vector (for E8: the 240 roots)
  // leads to a closer point.
  const auto roots = e8_roots();
  ASSERT_EQ(roots.size(), 240u);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd(0.0, 2.0);
  for (int t = 0; t < 2000; ++t) {
    double x[8], p[8];
    for (double& v : x) v = nd(rng);
    formats::lattice::nearest_e8(x, p);
    ASSERT_TRUE(in_e8(p));
    double d = 0;
    for (int i = 0; i < 8; ++i) d += (x[i] - p[i]) * (x[i] - p[i]);
    for (const auto& r : roots) {
      double dr = 0;
      for (int i = 0; i < 8; ++i) dr += (x[i] - p[i] - r[size_t(i)]) * (x[i] - p[i] - r[size_t(i)]);
      ASSERT_GE(dr, d - 1e-9);
    }
  }
  const double on_lattice[8] = {1.5, 0.5, 0.5, -0.5, 0.5, 0.5, 0.5, 0.5};
  double p[8];
  formats::lattice::nearest_e8(on_lattice, p);
  EXPECT_EQ(std::vector<double>(p, p + 8), std::vector<double>(on_lattice, on_lattice + 8));
}

TEST(FormatsLatticeE8, CodebookIsTheE8BallAndTheSearchIsExact) {
  const auto book = decoded_codebook();
  std::set<std::array<float, 8>> distinct;
  size_t shell[13] = {};
  for (const auto& v : book) {
    double p[8], n2 = 0;
    for (int i = 0; i < 8; ++i) p[i] = v[size_t(i)], n2 += p[i] * p[i];
    ASSERT_TRUE(in_e8(p));
    ASSERT_LE(n2, 12.0);
    ++shell[int(n2)];
    distinct.insert(v);
  }
  // Every point of norm^2 <= 10 (theta series of E8: 1, 240, 2160, 6720, 17520, 30240),
  // plus 7616 of the 60480 of norm^2 12; the 1039 unused indices decode to the origin.
  EXPECT_EQ(distinct.size(), 64497u);
  EXPECT_EQ(shell[2], 240u);
  EXPECT_EQ(shell[4], 2160u);
  EXPECT_EQ(shell[6], 6720u);
  EXPECT_EQ(shell[8], 17520u);
  EXPECT_EQ(shell[10], 30240u);
  EXPECT_EQ(shell[12], 7616u);
  EXPECT_EQ(shell[0], 1u + 1039u);
  for (const auto& v : distinct) {  // closed under negation
    std::array<float, 8> neg;
    for (int i = 0; i < 8; ++i) neg[size_t(i)] = -v[size_t(i)] + 0.0f;
    ASSERT_TRUE(distinct.count(neg));
  }
  // At the scale it chose, the encoder's codeword is the nearest of all 64497 (brute force).
  auto f = make_format("e8:b2:row");
  std::mt19937_64 rng(4);
  std::normal_distribution<float> nd;
  for (int t = 0; t < 40; ++t) {
    std::vector<float> x(8);
    for (auto& v : x) v = nd(rng) * (t % 2 ? 1.0f : 3.0f);
    Packed p = f->quantize(x.data(), 1, 8, nullptr);
    std::vector<float> q(8);
    f->dequantize(p, q.data());
    formats::BitReader br(p);
    const float scale = br.get_f16();
    double got = 0, best = 1e300;
    for (int i = 0; i < 8; ++i) got += std::pow(double(x[size_t(i)]) - q[size_t(i)], 2);
    for (const auto& c : distinct) {
      double d = 0;
      for (int i = 0; i < 8; ++i) d += std::pow(double(x[size_t(i)]) - double(scale) * c[size_t(i)], 2);
      best = std::min(best, d);
    }
    EXPECT_LE(got, best * (1 + 1e-5) + 1e-12) << t;
  }
}

TEST(FormatsLatticeE8, KnownAnswers) {
  // A lattice point times 0.75 is reproduced exactly (the least-squares scale refit lands
  // on 0.75, an fp16 number).
  std::vector<float> w = {1.5f, 0.5f, 0.5f, -0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  for (float& v : w) v *= 0.75f;
  auto out = round_trip(*make_format("e8:b2:row"), w, 1, 8);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(out[size_t(i)], w[size_t(i)]) << i;
  // The all-zero vector is index 0 (the origin comes first in the codebook).
  std::vector<float> z(16, 0.0f);
  auto f = make_format("e8:b2");
  auto s = f->symbols(f->quantize(z.data(), 1, 16, nullptr));
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].alphabet, 65536u);
  EXPECT_EQ(s[0].symbols, (std::vector<uint32_t>{0, 0}));
}

TEST(FormatsLatticeE8, GaussianSqnrBeatsLloydMax2Bit) {
  // The 2-bit Lloyd-Max scalar quantizer reaches 9.30 dB; QuIP#'s E8P about 10.5 dB. We
  // measure 10.54 dB (g128, 2.125 bits) and 10.42 dB (per row, 2.004 bits) on 2^18
  // samples; the bounds allow for the seed.
  auto w = gaussian(1 << 18, 10);
  const double g128 = sqnr_db(w, round_trip(*make_format("e8:b2"), w, 64, 4096));
  const double row = sqnr_db(w, round_trip(*make_format("e8:b2:row"), w, 64, 4096));
  std::printf("e8:b2 %.2f dB, e8:b2:row %.2f dB\n", g128, row);
  EXPECT_GT(g128, 10.4);
  EXPECT_LT(g128, 10.7);
  EXPECT_GT(row, 10.3);
  EXPECT_LT(row, 10.6);
}

TEST(FormatsLatticeE8, ImportanceLowersWeightedError) {
  expect_importance_helps("e8:b2");
  expect_importance_helps("e8:b2:row");
}

TEST(FormatsLatticeE8, DegenerateInputsStayFinite) {
  expect_degenerate_inputs_finite("e8:b2");
  expect_degenerate_inputs_finite("e8:b2:row");
  expect_degenerate_inputs_finite("e8:b2:g8");
}
