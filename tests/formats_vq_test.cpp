#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "formats_test_util.h"
#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/thread_pool.h"

using namespace quantkit;
using qk_test::gaussian;
using qk_test::round_trip;
using qk_test::sqnr_db;

namespace {

std::string error_of(const std::string& spec) { return qk_test::spec_error(spec); }

double weighted_error(const std::vector<float>& w, const std::vector<float>& q, const std::vector<float>& imp,
                      int64_t cols) {
  double e = 0;
  for (size_t i = 0; i < w.size(); ++i) e += double(imp[i % size_t(cols)]) * std::pow(double(w[i]) - q[i], 2);
  return e;
}

// Mean over rows of each row's SQNR (dB).
double mean_row_sqnr(const std::vector<float>& w, const std::vector<float>& q, int64_t cols) {
  const int64_t rows = int64_t(w.size()) / cols;
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0, e = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double x = w[size_t(r * cols + c)], d = x - q[size_t(r * cols + c)];
      s += x * x, e += d * d;
    }
    total += 10.0 * std::log10(s / e);
  }
  return total / double(rows);
}

const std::vector<std::string> kEverySpecForm = {
    "vq:d4:k256",       "vq:d8:k65536",        "vq:d2:k16",         "vq:d4:k256:r1024",
    "vq:d4:k256:rs",    "vq:d8:k256:r64:rs:i5", "vq:d1:k4",          "rvq:d8:2x256",
    "rvq:d4:4x16",      "rvq:d8:2x256:r128:rs", "grvq:d8:g2:2x256",  "grvq:d6:g3:2x16:rs",
    "fsq:l8x5x5x5",     "fsq:l5x5x5:row",       "fsq:l3x3x3x3x3:g64", "fsq:l8x8:tensor",
};

}  // namespace

TEST(FormatsVq, SpecsRoundTripAndBadSpecsAreClearErrors) {
  for (const auto& s : kEverySpecForm) EXPECT_EQ(make_format(s)->spec(), s);
  // Non-canonical spellings name the canonical one.
  EXPECT_NE(error_of("vq:k256:d4").find("write 'vq:d4:k256'"), std::string::npos);
  EXPECT_NE(error_of("vq:d4:k256:rs:r1024").find("write 'vq:d4:k256:r1024:rs'"), std::string::npos);
  EXPECT_NE(error_of("fsq:l8x5x5x5:g128").find("write 'fsq:l8x5x5x5'"), std::string::npos);
  EXPECT_NE(error_of("grvq:d8:2x256:g2").find("write 'grvq:d8:g2:2x256'"), std::string::npos);
  // Malformed: the message says what and shows the family's grammar.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"vq:d4", "missing k"},          {"vq:k256", "missing d"},           {"vq:d4:k1", "out of range"},
      {"vq:d0:k16", "out of range"},   {"vq:d65:k16", "out of range"},     {"vq:d4:k65537", "out of range"},
      {"vq:d4:k256:banana", "banana"}, {"vq:d4:k256:r0", "at least 1"},    {"vq:d4:k256:i0", "at least 1"},
      {"rvq:d8:256", "missing <M>x<K>"}, {"rvq:d8:9x256", "out of range"}, {"rvq:d8:2x256x3", "missing <M>x<K>"},
      {"grvq:d8:2x256", "missing g"},  {"grvq:d8:g3:2x256", "must divide"}, {"fsq", "missing l"},
      {"fsq:l1x5", "out of range"},    {"fsq:l8x5:g0", "out of range"},    {"fsq:l05x5", "missing l"},
      {"fsq:l65536x65536x2", "exceeds 2^32"}, {"vq:d4:k0256", "missing k"},
  };
  for (const auto& [spec, what] : bad) {
    const std::string e = error_of(spec);
    EXPECT_NE(e.find(what), std::string::npos) << spec << ": " << e;
    EXPECT_NE(e.find("form: "), std::string::npos) << spec << ": " << e;
  }
  const std::string unknown = error_of("vqq:d4:k256");
  EXPECT_NE(unknown.find("valid forms"), std::string::npos);
  for (const char* grammar : {"vq:d<D>:k<K>", "rvq:d<D>:<M>x<K>", "grvq:d<D>:g<G>:<M>x<K>", "fsq:l<L1>x<L2>"})
    EXPECT_NE(unknown.find(grammar), std::string::npos) << grammar;
}

TEST(FormatsVq, BitAccountingIsExact) {
  const double big = 4096.0 * 4096.0;
  // Indices + fp16 codebook + the fp32 block scale.
  EXPECT_DOUBLE_EQ(make_format("vq:d4:k256")->bits_per_weight(4096, 4096), 8.0 / 4 + (256 * 4 * 16 + 32) / big);
  EXPECT_DOUBLE_EQ(make_format("vq:d8:k65536")->bits_per_weight(4096, 4096), 16.0 / 8 + (65536.0 * 8 * 16 + 32) / big);
  EXPECT_DOUBLE_EQ(make_format("vq:d2:k16")->bits_per_weight(4096, 4096), 4.0 / 2 + (16 * 2 * 16 + 32) / big);
  // One codebook per 1024 rows: 4 of them; rs adds a fp16 per row.
  EXPECT_DOUBLE_EQ(make_format("vq:d4:k256:r1024:rs")->bits_per_weight(4096, 4096),
                   2.0 + 4 * (256 * 4 * 16 + 32) / big + 16.0 / 4096);
  EXPECT_DOUBLE_EQ(make_format("rvq:d8:2x256")->bits_per_weight(4096, 4096), 16.0 / 8 + (2 * 256 * 8 * 16 + 32) / big);
  EXPECT_DOUBLE_EQ(make_format("rvq:d4:4x16")->bits_per_weight(4096, 4096), 16.0 / 4 + (4 * 16 * 4 * 16 + 32) / big);
  // GRVQ: 2 groups x 2 stages of 8-bit indices per 8 weights; 4 codebooks of 4-dim codewords.
  EXPECT_DOUBLE_EQ(make_format("grvq:d8:g2:2x256")->bits_per_weight(4096, 4096),
                   32.0 / 8 + (2 * 2 * 256 * 4 * 16 + 32) / big);
  // FSQ: 8*5*5*5 = 1000 codes -> 10 bits per 4 weights; fp16 scale per 128 + fp32 tensor scale.
  EXPECT_DOUBLE_EQ(make_format("fsq:l8x5x5x5")->bits_per_weight(4096, 4096), 10.0 / 4 + 16.0 / 128 + 32 / big);
  EXPECT_DOUBLE_EQ(make_format("fsq:l3x3x3x3x3:tensor")->bits_per_weight(4095, 4095), 8.0 / 5 + 32 / (4095.0 * 4095));
  // 172 columns: 22 vectors of 8 (the last padded, its padding stored and counted).
  EXPECT_EQ(make_format("vq:d8:k256")->storage_bits(64, 172), uint64_t(64 * 22 * 8 + 256 * 8 * 16 + 32));
  EXPECT_EQ(make_format("rvq:d8:2x256:r32")->storage_bits(64, 172), uint64_t(64 * 22 * 16 + 2 * (2 * 256 * 8 * 16 + 32)));
  // r larger than the matrix: one block; an uneven last block still has a full codebook.
  EXPECT_EQ(make_format("vq:d2:k16:r100")->storage_bits(64, 10), uint64_t(64 * 5 * 4 + 16 * 2 * 16 + 32));
  EXPECT_EQ(make_format("vq:d2:k16:r50")->storage_bits(64, 10), uint64_t(64 * 5 * 4 + 2 * (16 * 2 * 16 + 32)));
  // FSQ tail: 174 = 43*4 + 2, the last vector (levels 8, 5) takes ceil(log2 40) = 6 bits.
  EXPECT_EQ(make_format("fsq:l8x5x5x5:row")->storage_bits(3, 174), uint64_t(32 + 3 * 16 + 3 * (43 * 10 + 6)));
  // Round trips on an awkward shape for every spec form (k65536 on a small matrix: every
  // vector becomes a codeword).
  const auto w = gaussian(64 * 172);
  for (const auto& s : kEverySpecForm) {
    const auto f = make_format(s);
    const auto out = round_trip(*f, w, 64, 172);
    for (float v : out) ASSERT_TRUE(std::isfinite(v)) << s;
  }
}

TEST(FormatsVq, KnownAnswers) {
  // At most k distinct vectors, values exact in fp16 relative to max|w| = 1: VQ is exact.
  const std::vector<float> four = {1, -0.5f, 0.25f, 0, -1, 0.5f, 0.75f, 0.125f};
  std::vector<float> w;
  for (int r = 0; r < 16; ++r)
    for (int v = 0; v < 8; ++v) w.insert(w.end(), four.begin() + (r + v) % 2 * 4, four.begin() + (r + v) % 2 * 4 + 4);
  for (const char* s : {"vq:d4:k2", "vq:d4:k16", "rvq:d4:2x2", "grvq:d4:g2:1x2", "vq:d2:k4:r4"})
    EXPECT_EQ(round_trip(*make_format(s), w, 16, 32), w) << s;
  // The symbols are the indices: two distinct vectors alternate.
  const auto f = make_format("vq:d4:k2");
  const Packed p = f->quantize(w.data(), 16, 32, nullptr);
  const auto streams = f->symbols(p);
  ASSERT_EQ(streams.size(), 1u);
  EXPECT_EQ(streams[0].alphabet, 2u);
  ASSERT_EQ(streams[0].symbols.size(), 16u * 8);
  EXPECT_NE(streams[0].symbols[0], streams[0].symbols[1]);
  EXPECT_EQ(streams[0].symbols[0], streams[0].symbols[2]);
  // RVQ: one stream per stage, GRVQ one per group and stage.
  EXPECT_EQ(make_format("rvq:d4:3x16")->symbols(make_format("rvq:d4:3x16")->quantize(w.data(), 16, 32, nullptr)).size(), 3u);
  const auto g = make_format("grvq:d4:g2:2x4");
  const auto gs = g->symbols(g->quantize(w.data(), 16, 32, nullptr));
  ASSERT_EQ(gs.size(), 4u);
  EXPECT_EQ(gs[3].name, "index.g1.s1");
  EXPECT_EQ(gs[3].symbols.size(), 16u * 8);

  // FSQ l3x3, one row: levels {-2, 0, 2} at scale 2 reproduce the grid exactly, and the
  // codes are mixed radix, first dimension least significant: (0,2) -> 6, (1,0) -> 1.
  const std::vector<float> grid = {-2, 2, 0, -2};
  const auto fsq = make_format("fsq:l3x3:row");
  EXPECT_EQ(round_trip(*fsq, grid, 1, 4), grid);
  const auto codes = fsq->symbols(fsq->quantize(grid.data(), 1, 4, nullptr));
  ASSERT_EQ(codes.size(), 1u);
  EXPECT_EQ(codes[0].alphabet, 9u);
  EXPECT_EQ(codes[0].symbols, (std::vector<uint32_t>{6, 1}));
  // Even level counts have no zero: l4 at scale 3 is {-3, -1, 1, 3}.
  const std::vector<float> even = {-3, -1, 1, 3};
  EXPECT_EQ(round_trip(*make_format("fsq:l4:row"), even, 1, 4), even);
  // Rounding to the nearest level: 0.4 -> 0 (the scale stays 2: shrinking it costs more
  // on the two extremes than it saves on 0.4).
  const std::vector<float> r = {-2, 2, 0.4f};
  EXPECT_EQ(round_trip(*make_format("fsq:l3:row"), r, 1, 3), (std::vector<float>{-2, 2, 0}));
}

TEST(FormatsVq, GaussianSqnr) {
  // 512 x 512 N(0,1) weights (2^18). The codebooks are fit in sample (they are stored), so
  // VQ is a little above its out-of-sample figure; measured values, +-0.15 dB for seeds.
  const auto w = gaussian(512 * 512, 7);
  auto sqnr = [&](const char* s) { return sqnr_db(w, round_trip(*make_format(s), w, 512, 512)); };
  // Scalar k-means with 4 levels is the Lloyd-Max quantizer: 9.30 dB.
  EXPECT_NEAR(sqnr("vq:d1:k4"), 9.30, 0.03);
  const double vq4 = sqnr("vq:d4:k256"), vq2 = sqnr("vq:d2:k16");
  EXPECT_NEAR(vq4, 10.25, 0.15);
  EXPECT_NEAR(vq2, 9.67, 0.15);
  EXPECT_GT(vq2, 9.30 + 0.2);  // the 2-dim vector gain over Lloyd-Max at 2 bits
  EXPECT_GT(vq4, vq2 + 0.3);   // and more at 4 dims
  EXPECT_NEAR(sqnr("rvq:d8:2x256"), 10.28, 0.15);
  EXPECT_NEAR(sqnr("rvq:d4:4x16"), 17.55, 0.15);
  EXPECT_NEAR(sqnr("grvq:d8:g2:2x256"), 20.46, 0.15);
  // FSQ is a uniform grid: l4x4 with row scales is the optimal 2-bit uniform quantizer
  // (9.25 dB) plus a little from per-row scales; 5*5*5 levels pack into 7 bits.
  EXPECT_NEAR(sqnr("fsq:l4x4:row"), 9.30, 0.1);
  EXPECT_NEAR(sqnr("fsq:l8x5x5x5"), 11.57, 0.1);
  EXPECT_NEAR(sqnr("fsq:l5x5x5"), 11.02, 0.1);
}

TEST(FormatsVq, RefinementAndOptionsPayOff) {
  const auto w = gaussian(256 * 256, 3);
  auto sqnr = [&](const std::vector<float>& x, const char* s) {
    return sqnr_db(x, round_trip(*make_format(s), x, 256, 256));
  };
  // More stages, more accuracy; more Lloyd iterations never hurt much and usually help.
  EXPECT_GT(sqnr(w, "rvq:d4:3x16"), sqnr(w, "rvq:d4:2x16") + 3.0);
  EXPECT_GT(sqnr(w, "vq:d4:k64:i40"), sqnr(w, "vq:d4:k64:i1"));
  // Rows of very different norms (1e-1.5 .. 1e1.5): without a row scale the codebook
  // serves the largest rows and the small ones decode to noise larger than themselves;
  // with rs every row gets the same relative accuracy.
  std::vector<float> uneven = w;
  for (int64_t r = 0; r < 256; ++r)
    for (int64_t c = 0; c < 256; ++c) uneven[size_t(r * 256 + c)] *= std::pow(10.0f, float(r % 4) - 1.5f);
  const auto plain = round_trip(*make_format("vq:d4:k64"), uneven, 256, 256);
  const auto scaled = round_trip(*make_format("vq:d4:k64:rs"), uneven, 256, 256);
  EXPECT_GT(mean_row_sqnr(uneven, scaled, 256), 7.0);
  EXPECT_LT(mean_row_sqnr(uneven, plain, 256), 0.0);
  EXPECT_GT(sqnr_db(uneven, scaled), sqnr_db(uneven, plain));  // and overall too
  // Two halves of different shapes (Gaussian, and tight clusters at the corners of the
  // cube): a codebook per half fits each better.
  std::vector<float> halves = w;
  for (size_t i = halves.size() / 2; i < halves.size(); ++i) halves[i] = (halves[i] > 0 ? 1.0f : -1.0f) + 0.1f * w[i - halves.size() / 2];
  const auto shared = round_trip(*make_format("vq:d4:k64"), halves, 256, 256);
  const auto own = round_trip(*make_format("vq:d4:k64:r128"), halves, 256, 256);
  EXPECT_GT(mean_row_sqnr(halves, own, 256), mean_row_sqnr(halves, shared, 256) + 1.0);
}

TEST(FormatsVq, ImportanceLowersTheWeightedError) {
  const int64_t rows = 64, cols = 256;
  const auto w = gaussian(size_t(rows * cols), 5);
  std::vector<float> imp(size_t(cols), 1.0f);
  for (int c = 0; c < cols; c += 37) imp[size_t(c)] = 1000.0f;  // a few columns matter a lot
  for (const char* s : {"vq:d4:k64", "vq:d4:k64:rs", "rvq:d4:2x16", "grvq:d8:g2:2x16", "fsq:l5x5x5:row", "fsq:l4x4"}) {
    const auto f = make_format(s);
    const double plain = weighted_error(w, round_trip(*f, w, rows, cols), imp, cols);
    const double weighted = weighted_error(w, round_trip(*f, w, rows, cols, imp.data()), imp, cols);
    EXPECT_LT(weighted, 0.8 * plain) << s;
  }
}

TEST(FormatsVq, DegenerateInputsStayFinite) {
  const int64_t rows = 8, cols = 13;
  const auto g = gaussian(size_t(rows * cols), 9);
  std::vector<std::pair<std::string, std::vector<float>>> inputs = {
      {"zeros", std::vector<float>(size_t(rows * cols), 0.0f)},
      {"constant", std::vector<float>(size_t(rows * cols), -0.75f)},
  };
  for (float mag : {1e-30f, 1e30f}) {
    std::vector<float> v = g;
    for (auto& x : v) x *= mag;
    inputs.push_back({mag < 1 ? "tiny" : "huge", v});
  }
  std::vector<float> zero_row = g;
  std::fill(zero_row.begin(), zero_row.begin() + cols, 0.0f);
  inputs.push_back({"zero row", zero_row});
  std::vector<float> zero_imp(size_t(cols), 0.0f);
  for (const auto& s : kEverySpecForm)
    for (const auto& [name, x] : inputs) {
      const auto f = make_format(s);
      for (const float* imp : {static_cast<const float*>(nullptr), static_cast<const float*>(zero_imp.data())}) {
        const auto out = round_trip(*f, x, rows, cols, imp);
        for (float v : out) ASSERT_TRUE(std::isfinite(v)) << s << " " << name;
        if (imp) continue;
        if (name == "zeros") {
          for (float v : out) ASSERT_EQ(v, 0.0f) << s;
        }
        if (name == "constant" && s.rfind("fsq", 0) != 0) {
          for (float v : out) ASSERT_EQ(v, -0.75f) << s;  // one vector, one codeword
        }
        if (name == "huge" || name == "tiny") {
          EXPECT_GT(sqnr_db(x, out), 3.0) << s << " " << name;
        }
      }
    }
  // 1 x 1 and a row narrower than the vector.
  for (const auto& s : kEverySpecForm) {
    const std::vector<float> one = {0.3f}, narrow = {1, -2, 3};
    EXPECT_NEAR(round_trip(*make_format(s), one, 1, 1)[0], 0.3f, 0.3f * 0.01f) << s;
    const auto out = round_trip(*make_format(s), narrow, 1, 3);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(out[size_t(i)], narrow[size_t(i)], 1.2) << s;
  }
}

TEST(FormatsVq, SameBytesWhateverTheThreadCount) {
  const auto w = gaussian(128 * 96, 13);
  std::vector<float> imp(96);
  for (int c = 0; c < 96; ++c) imp[size_t(c)] = 0.5f + float(c % 5);
  for (const char* s : {"vq:d4:k64:rs", "rvq:d4:2x16", "grvq:d8:g2:2x16", "fsq:l8x5x5x5"}) {
    set_num_threads(1);
    const Packed a = make_format(s)->quantize(w.data(), 128, 96, imp.data());
    set_num_threads(2);
    const Packed b = make_format(s)->quantize(w.data(), 128, 96, imp.data());
    EXPECT_EQ(a.bytes, b.bytes) << s;
  }
  set_num_threads(0);
}

TEST(FormatsVq, CorruptPackedDataIsAnError) {
  const auto w = gaussian(16 * 16, 2);
  for (const char* s : {"vq:d4:k16", "fsq:l5x5:row"}) {
    const auto f = make_format(s);
    Packed p = f->quantize(w.data(), 16, 16, nullptr);
    p.bits -= 1;
    std::vector<float> out(256);
    EXPECT_THROW(f->dequantize(p, out.data()), Error) << s;
  }
  // An index past k (k = 10 leaves 4-bit values 10..15 unused).
  const auto f = make_format("vq:d4:k10");
  Packed p = f->quantize(w.data(), 16, 16, nullptr);
  p.bytes.back() = 0xFF;
  std::vector<float> out(256);
  EXPECT_THROW(f->dequantize(p, out.data()), Error);
}
