// SplitQuant wrapper ("split<k>:<spec>"): k value clusters, each quantized by the inner
// format, summed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>

#include "formats/common.h"
#include "formats_test_util.h"
#include "quantkit/error.h"

using namespace quantkit;
using qk_test::gaussian;
using qk_test::round_trip;
using qk_test::sqnr_db;
using qk_test::weighted_error;

namespace {

std::string error_of(const std::string& spec) { return qk_test::spec_error(spec); }

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// N(0,1) weights of which 1% (seeded positions) are outliers: multiplied by 10.
std::vector<float> gaussian_with_outliers(int64_t rows, int64_t cols, uint64_t seed) {
  auto w = gaussian(size_t(rows * cols), seed);
  std::mt19937_64 rng(seed + 1000);
  std::uniform_int_distribution<size_t> pos(0, w.size() - 1);
  for (size_t i = 0; i < w.size() / 100; ++i) w[pos(rng)] *= 10.0f;
  return w;
}

// Student-t weights with nu degrees of freedom (heavy tails for small nu).
std::vector<float> student_t(int64_t rows, int64_t cols, double nu, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> d{static_cast<float>(nu)};
  std::vector<float> w(size_t(rows * cols));
  for (auto& x : w) x = d(rng);
  return w;
}

// The k inner packed matrices of a split packed matrix (their bits back to back).
std::vector<Packed> layers_of(const Packed& p, const Format& inner, int k) {
  const uint64_t bits = inner.storage_bits(p.rows, p.cols);
  formats::BitReader br(p);
  std::vector<Packed> out;
  for (int c = 0; c < k; ++c) {
    formats::BitWriter bw;
    for (uint64_t done = 0; done < bits; done += 32) {
      const int n = int(std::min<uint64_t>(32, bits - done));
      bw.put(br.get(n), n);
    }
    out.push_back(formats::finish_packed(bw, p.rows, p.cols, bits));
  }
  EXPECT_EQ(br.position(), p.bits);
  return out;
}

// The dequantized layers of a split packed matrix, one matrix per cluster.
std::vector<std::vector<float>> decoded_layers(const Packed& p, const std::string& inner_spec, int k) {
  const auto inner = make_format(inner_spec);
  std::vector<std::vector<float>> out;
  for (const Packed& l : layers_of(p, *inner, k)) {
    out.emplace_back(size_t(p.rows * p.cols));
    inner->dequantize(l, out.back().data());
  }
  return out;
}

// Share of the squared error that comes from the layers' values outside their cluster:
// at each position the layer of largest magnitude is taken as the weight's own, every
// other layer should decode to 0 there, and what it decodes to instead is error.
double off_cluster_error_share(const std::vector<float>& w, const std::vector<float>& q,
                               const std::vector<std::vector<float>>& layers) {
  double off = 0, total = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    size_t own = 0;
    for (size_t c = 1; c < layers.size(); ++c)
      if (std::fabs(layers[c][i]) > std::fabs(layers[own][i])) own = c;
    for (size_t c = 0; c < layers.size(); ++c)
      if (c != own) off += double(layers[c][i]) * layers[c][i];
    total += (double(w[i]) - q[i]) * (double(w[i]) - q[i]);
  }
  return off / total;
}

}  // namespace

TEST(FormatsSplitQuant, SpecsRoundTripAndBadSpecsAreClearErrors) {
  for (const char* s : {"split3:int4:row", "split2:int3:g64:asym", "split8:int4:g128", "split2:e8:b2",
                        "split3:rht:int4:g128", "rht:split3:int4:row"})
    EXPECT_EQ(make_format(s)->spec(), s);
  EXPECT_EQ(make_format("split3:int4:row")->describe(), "SplitQuant: 3 value clusters, each int4:row (3x storage)");
  EXPECT_TRUE(contains(error_of("split1:int4:row"), "[2, 8]"));
  EXPECT_TRUE(contains(error_of("split9:int4:row"), "[2, 8]"));
  EXPECT_TRUE(contains(error_of("split03:int4:row"), "[2, 8]"));
  EXPECT_TRUE(contains(error_of("split:int4:row"), "[2, 8]"));
  EXPECT_TRUE(contains(error_of("split3"), "inner format is required"));
  EXPECT_TRUE(contains(error_of("split3:"), "empty field"));
  EXPECT_TRUE(contains(error_of("split3:nosuch"), "unknown format 'nosuch'"));
  EXPECT_TRUE(contains(error_of("split3:int4:asym:g64"), "write 'int4:g64:asym'"));
  EXPECT_TRUE(contains(error_of("split3:int9:row"), "bits 9 out of range"));
  EXPECT_TRUE(contains(error_of("split2:split2:int4:row"), "nested"));
  EXPECT_TRUE(contains(error_of("nosuchformat"), "split<k>:<spec>"));
}

TEST(FormatsSplitQuant, BitsAreExactlyKTimesTheInnerFormat) {
  for (const char* inner : {"int4:row", "int3:g64:asym", "e8:b2", "q4_0", "lloyd:b2:row"})
    for (int k : {2, 3, 8}) {
      auto f = make_format(fmt::format("split{}:{}", k, inner));
      auto g = make_format(inner);
      EXPECT_EQ(f->storage_bits(64, 256), uint64_t(k) * g->storage_bits(64, 256)) << f->spec();
      EXPECT_EQ(f->check_shape(64, 100), g->check_shape(64, 100)) << f->spec();
    }
  EXPECT_DOUBLE_EQ(make_format("split3:int4:row")->bits_per_weight(4096, 4096), 3 * (4.0 + 16.0 / 4096));
  // Odd shapes: inner strings that are not whole bytes are packed back to back.
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{3, 5}, {1, 1}, {7, 33}, {64, 172}}) {
    auto w = gaussian(size_t(rows * cols), uint64_t(rows * 100 + cols));
    for (const char* s : {"split3:int3:row", "split2:int3:g16:asym", "split5:lloyd:b2:row"}) {
      auto out = round_trip(*make_format(s), w, rows, cols);
      for (float x : out) ASSERT_TRUE(std::isfinite(x)) << s;
    }
  }
  EXPECT_NE(make_format("split3:q4_0")->check_shape(4, 33), "");
  std::vector<float> w(4 * 33, 1.0f);
  EXPECT_THROW(make_format("split3:q4_0")->quantize(w.data(), 4, 33, nullptr), Error);
}

TEST(FormatsSplitQuant, PackedBitsAreTheInnerMatricesAndDecodeToTheirSum) {
  const int64_t rows = 32, cols = 96;
  auto w = gaussian_with_outliers(rows, cols, 3);
  for (const char* inner : {"int4:row", "int3:g32:asym"}) {
    const std::string spec = std::string("split3:") + inner;
    auto r = round_trip(spec, w, rows, cols);
    auto layers = decoded_layers(r.p, inner, 3);
    for (size_t i = 0; i < w.size(); ++i) {
      float sum = 0.0f;
      for (const auto& l : layers) sum += l[i];
      ASSERT_EQ(sum, r.q[i]) << spec << " " << i;
    }
    // A symmetric grid has an exact 0, so each weight is decoded by one layer only
    // (membership is implied by the decoded values); the clusters are value ranges.
    if (std::string(inner) == "int4:row") {
      std::vector<float> lo(3, INFINITY), hi(3, -INFINITY);
      for (size_t i = 0; i < w.size(); ++i) {
        int nonzero = 0;
        for (size_t c = 0; c < 3; ++c)
          if (layers[c][i] != 0.0f) ++nonzero, lo[c] = std::min(lo[c], w[i]), hi[c] = std::max(hi[c], w[i]);
        ASSERT_LE(nonzero, 1) << i;
      }
      EXPECT_LT(hi[0], lo[1]);
      EXPECT_LT(hi[1], lo[2]);
    }
  }
  // Symbol streams: the inner streams of every layer, renamed.
  auto f = make_format("split3:int4:row");
  Packed p = f->quantize(w.data(), rows, cols, nullptr);
  auto inner_streams = make_format("int4:row")->symbols(layers_of(p, *make_format("int4:row"), 3)[1]);
  auto streams = f->symbols(p);
  ASSERT_EQ(streams.size(), 3 * inner_streams.size());
  ASSERT_FALSE(inner_streams.empty());
  const size_t m = inner_streams.size();
  EXPECT_EQ(streams[m].name, "split1_" + inner_streams[0].name);
  EXPECT_EQ(streams[m].symbols, inner_streams[0].symbols);
  EXPECT_EQ(streams[m].alphabet, inner_streams[0].alphabet);
  // A packed matrix of the wrong size is refused.
  p.bits -= 1;
  std::vector<float> out(w.size());
  EXPECT_THROW(f->dequantize(p, out.data()), Error);
}

TEST(FormatsSplitQuant, ImprovesHeavyTailedMatrices) {
  const int64_t rows = 256, cols = 512;
  struct Source {
    const char* name;
    std::vector<float> w;
  };
  const Source sources[] = {{"gaussian + 1% outliers x10", gaussian_with_outliers(rows, cols, 7)},
                            {"student-t nu=3", student_t(rows, cols, 3.0, 8)}};
  // 1-D k-means with k = 3 puts the cluster boundaries inside the bulk (about +-0.7 sigma
  // on the outlier source), so the outer clusters still reach the outliers and keep a
  // coarse grid: the gain is mostly the middle cluster's. A symmetric inner grid also
  // spends half its levels on the sign the outer clusters never have, which a zero-point
  // grid does not; with k = 5 the outliers get clusters of their own.
  struct Pair {
    const char *plain, *split;
    double min_gain_db;
  };
  for (const auto& src : sources)
    for (const Pair& c : {Pair{"int4:row", "split3:int4:row", 2.0}, Pair{"int4:row:asym", "split3:int4:row:asym", 5.0},
                          Pair{"int4:row", "split5:int4:row", 8.0}}) {
      const double plain = sqnr_db(src.w, round_trip(*make_format(c.plain), src.w, rows, cols));
      const double split = sqnr_db(src.w, round_trip(*make_format(c.split), src.w, rows, cols));
      std::printf("%s: %s %.2f dB, %s %.2f dB\n", src.name, c.plain, plain, c.split, split);
      EXPECT_GT(split, plain + c.min_gain_db) << src.name << " " << c.split;
    }
  // On Gaussian weights without outliers the gain is smaller but still there.
  auto g = gaussian(size_t(rows * cols), 9);
  const double plain = sqnr_db(g, round_trip(*make_format("int4:row"), g, rows, cols));
  const double split = sqnr_db(g, round_trip(*make_format("split3:int4:row"), g, rows, cols));
  std::printf("gaussian: int4:row %.2f dB, split3:int4:row %.2f dB\n", plain, split);
  EXPECT_GT(split, plain);
}

TEST(FormatsSplitQuant, ErrorOfZerosOutsideTheClusters) {
  // A grid without an exact 0 (midrise) decodes the zeros outside each cluster to +-s/2:
  // measured and printed, the method does not hide it. Symmetric and zero-point grids
  // represent 0 exactly.
  const int64_t rows = 256, cols = 512;
  auto w = gaussian_with_outliers(rows, cols, 7);
  for (const char* inner : {"int4:row", "int4:row:asym", "int4:row:mid"}) {
    auto r = round_trip(std::string("split3:") + inner, w, rows, cols);
    const double share = off_cluster_error_share(w, r.q, decoded_layers(r.p, inner, 3));
    const double plain = sqnr_db(w, round_trip(*make_format(inner), w, rows, cols));
    std::printf("split3:%s %.2f dB (%s alone %.2f dB), error from zeros outside the clusters %.1f%%\n", inner,
                sqnr_db(w, r.q), inner, plain, 100.0 * share);
    if (std::string(inner) == "int4:row:mid") {
      EXPECT_GT(share, 0.1);
    } else {
      EXPECT_EQ(share, 0.0) << inner;
    }
  }
}

TEST(FormatsSplitQuant, Deterministic) {
  const int64_t rows = 64, cols = 256;
  auto w = student_t(rows, cols, 3.0, 11);
  for (const char* s : {"split3:int4:row", "split2:int3:g64:asym"}) {
    auto f = make_format(s);
    Packed a = f->quantize(w.data(), rows, cols, nullptr), b = f->quantize(w.data(), rows, cols, nullptr);
    EXPECT_EQ(a.bytes, b.bytes) << s;
    std::vector<float> qa(w.size()), qb(w.size());
    f->dequantize(a, qa.data());
    f->dequantize(b, qb.data());
    EXPECT_EQ(qa, qb) << s;
  }
}

TEST(FormatsSplitQuant, ImportanceLowersTheWeightedError) {
  const int64_t rows = 128, cols = 256;
  auto w = gaussian_with_outliers(rows, cols, 12);
  std::mt19937_64 rng(13);
  std::lognormal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> imp(static_cast<size_t>(cols));
  for (auto& x : imp) x = d(rng);
  for (const char* s : {"split3:int4:row", "split3:int3:g64:asym", "split2:int3:row"}) {
    auto f = make_format(s);
    const double with = weighted_error(w, round_trip(*f, w, rows, cols, imp.data()), cols, imp.data());
    const double without = weighted_error(w, round_trip(*f, w, rows, cols), cols, imp.data());
    std::printf("%s weighted error: %.4g with importance, %.4g without (%.1f%%)\n", s, with, without,
                100.0 * (with / without - 1.0));
    EXPECT_LT(with, 0.97 * without) << s;
  }
}

TEST(FormatsSplitQuant, DegenerateInputsStayFinite) {
  for (const char* s : {"split3:int4:row", "split8:int3:g16:asym", "split2:e8:b2"}) {
    auto f = make_format(s);
    for (float v : {0.0f, 1e-30f, 1e30f, -3.0f}) {
      std::vector<float> w(size_t(6 * 48), v);
      w[5] = v * 0.5f;  // two distinct values: fewer than k clusters hold weights
      auto out = round_trip(*f, w, 6, 48);
      for (float x : out) ASSERT_TRUE(std::isfinite(x)) << s << " " << v;
      if (v == 0.0f) {
        for (float x : out) ASSERT_EQ(x, 0.0f) << s;
      }
    }
    std::vector<float> one{2.5f};
    if (f->check_shape(1, 1).empty()) {
      auto out = round_trip(*f, one, 1, 1);
      EXPECT_TRUE(std::isfinite(out[0])) << s;
    }
  }
}
