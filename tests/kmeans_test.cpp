#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "formats/kmeans.h"
#include "formats_test_util.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

using namespace quantkit;
using namespace quantkit::formats;

namespace {

using qk_test::gaussian;

// `per` points around each of the given centres (d = centres[0].size()), noise sigma.
std::vector<float> blobs(const std::vector<std::vector<float>>& centres, int per, float sigma, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<float> x;
  for (int i = 0; i < per; ++i)
    for (const auto& c : centres)
      for (float v : c) x.push_back(v + nd(rng));
  return x;
}

double sqnr_db(const std::vector<float>& x, double cost) {
  double s = 0;
  for (float v : x) s += double(v) * v;
  return 10.0 * std::log10(s / cost);
}

// Brute-force weighted distance of every codeword; returns the minimum.
double brute_min(const PointSet& p, int64_t i, const std::vector<float>& cb, int64_t k) {
  double best = std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < k; ++j) best = std::min(best, point_distance(p, i, cb.data() + j * p.d));
  return best;
}

// Restores the default thread count when a test changes it.
struct ThreadCountGuard {
  ~ThreadCountGuard() { set_num_threads(0); }
};

}  // namespace

TEST(KMeans, TinyKnownAnswers) {
  // Three exact groups in 1-D: centroids are the group values, cost 0, for every init.
  const std::vector<float> x = {0, 0, 1, 1, 10, 10, 10};
  for (KMeansInit init : {KMeansInit::PlusPlus, KMeansInit::Farthest, KMeansInit::Random}) {
    KMeansOptions o;
    o.k = 3;
    o.init = init;
    o.iterations = 10;
    KMeansResult r = kmeans(PointSet::unweighted(x.data(), 7, 1), o);
    std::vector<float> c = r.centroids;
    std::sort(c.begin(), c.end());
    EXPECT_EQ(c, (std::vector<float>{0, 1, 10})) << int(init);
    EXPECT_EQ(r.cost, 0.0);
    EXPECT_EQ(r.assignment[0], r.assignment[1]);
    EXPECT_NE(r.assignment[1], r.assignment[2]);
  }
  // k = 1 is the (weighted) mean: (1*0 + 3*10) / 4 = 7.5.
  const std::vector<float> two = {0, 10}, w = {1, 3};
  KMeansOptions one;
  one.k = 1;
  EXPECT_FLOAT_EQ(kmeans(PointSet::per_point(two.data(), 2, 1, w.data()), one).centroids[0], 7.5f);
  EXPECT_FLOAT_EQ(kmeans(PointSet::unweighted(two.data(), 2, 1), one).centroids[0], 5.0f);
  // Per-coordinate weights: each coordinate is its own weighted mean; a coordinate whose
  // weight is zero for a point ignores that point.
  const std::vector<float> pts = {0, 0, 2, 4, 4, 8}, cw = {1, 0, 1, 1, 2, 1};
  KMeansResult pc = kmeans(PointSet::per_coordinate(pts.data(), 3, 2, cw.data()), one);
  EXPECT_FLOAT_EQ(pc.centroids[0], (0 + 2 + 2 * 4) / 4.0f);
  EXPECT_FLOAT_EQ(pc.centroids[1], (4 + 8) / 2.0f);
  EXPECT_DOUBLE_EQ(pc.cost, point_distance(PointSet::per_coordinate(pts.data(), 3, 2, cw.data()), 0, pc.centroids.data()) +
                                point_distance(PointSet::per_coordinate(pts.data(), 3, 2, cw.data()), 1, pc.centroids.data()) +
                                point_distance(PointSet::per_coordinate(pts.data(), 3, 2, cw.data()), 2, pc.centroids.data()));
}

TEST(KMeans, RecoversSeparatedClusters) {
  const std::vector<std::vector<float>> centres = {{-5, -5, 0}, {5, 5, 0}, {-5, 5, 3}, {5, -5, -3}, {0, 0, 8}};
  const std::vector<float> x = blobs(centres, 200, 0.1f, 3);
  const int64_t n = int64_t(x.size() / 3);
  for (KMeansInit init : {KMeansInit::PlusPlus, KMeansInit::Farthest}) {
    KMeansOptions o;
    o.k = 5;
    o.init = init;
    KMeansResult r = kmeans(PointSet::unweighted(x.data(), n, 3), o);
    for (const auto& c : centres) {
      double best = 1e9;
      for (int64_t j = 0; j < 5; ++j) {
        double d2 = 0;
        for (int l = 0; l < 3; ++l) d2 += std::pow(r.centroids[size_t(j * 3 + l)] - c[size_t(l)], 2);
        best = std::min(best, d2);
      }
      EXPECT_LT(best, 0.01) << "init " << int(init);
    }
    EXPECT_NEAR(r.cost / double(n * 3), 0.01, 0.002);  // sigma^2 per coordinate
  }
}

TEST(KMeans, NearestCodewordsMatchBruteForceForBothKernels) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> uw(0.0f, 2.0f);
  for (int64_t d : {1, 3, 8, 17, 40})
    for (int64_t k : {1, 5, 37, 300})
      for (auto weighting : {PointSet::Weights::None, PointSet::Weights::PerPoint, PointSet::Weights::PerCoordinate}) {
        const int64_t n = 301;
        const std::vector<float> x = gaussian(size_t(n * d), uint64_t(d * 1000 + k)), cb = gaussian(size_t(k * d), 9);
        std::vector<float> w(size_t(weighting == PointSet::Weights::PerCoordinate ? n * d : n));
        for (auto& v : w) v = uw(rng);
        w[3] = 0.0f;  // a zero weight is legal
        const PointSet p{x.data(), n, d, weighting, weighting == PointSet::Weights::None ? nullptr : w.data()};
        for (SearchKernel kernel : {SearchKernel::Gemm, SearchKernel::Fused}) {
          std::vector<int32_t> idx(static_cast<size_t>(n));
          std::vector<float> dist(static_cast<size_t>(n));
          nearest_codewords(p, cb.data(), k, idx.data(), dist.data(), kernel);
          for (int64_t i = 0; i < n; ++i) {
            ASSERT_GE(idx[size_t(i)], 0);
            ASSERT_LT(idx[size_t(i)], k);
            const double best = brute_min(p, i, cb, k);
            const double got = point_distance(p, i, cb.data() + idx[size_t(i)] * d);
            // Exact argmin up to float rounding of the expanded distance.
            ASSERT_LE(got, best + 1e-4 * (1.0 + best)) << "d " << d << " k " << k << " point " << i;
            ASSERT_NEAR(dist[size_t(i)], got, 1e-4 * (1.0 + got));
          }
        }
      }
}

TEST(KMeans, TiesGoToTheLowestIndex) {
  const std::vector<float> cb = {1, 1, 0, 0, 1, 1, 0, 0};  // codewords 0 and 2, 1 and 3 equal
  const std::vector<float> x = {1, 1, 0, 0, 0.5f, 0.5f};
  for (SearchKernel kernel : {SearchKernel::Gemm, SearchKernel::Fused}) {
    std::vector<int32_t> idx(3);
    nearest_codewords(PointSet::unweighted(x.data(), 3, 2), cb.data(), 4, idx.data(), nullptr, kernel);
    EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 0}));
  }
}

TEST(KMeans, GaussianSqnrInAndOutOfSample) {
  // 4-dim N(0,1) vectors, 256 codewords: 2 bits per value. 2^16 vectors train (256 per
  // codeword), 2^16 others test. Measured with this engine: in sample 10.23 dB, out of
  // sample 10.05 dB (10.08 dB asymptotically, training on 2^18); far above the 9.30 dB of
  // 2-bit Lloyd-Max, i.e. the vector gain is real and not overfitting.
  const int64_t n = 1 << 16, d = 4;
  const std::vector<float> x = gaussian(size_t(2 * n * d), 11);
  KMeansOptions o;
  o.k = 256;
  const std::vector<float> train(x.begin(), x.begin() + n * d), test(x.begin() + n * d, x.end());
  KMeansResult r = kmeans(PointSet::unweighted(train.data(), n, d), o);
  EXPECT_EQ(r.iterations, 20);
  EXPECT_NEAR(sqnr_db(train, r.cost), 10.23, 0.1);
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::vector<float> dist(static_cast<size_t>(n));
  nearest_codewords(PointSet::unweighted(test.data(), n, d), r.centroids.data(), 256, idx.data(), dist.data());
  double cost = 0;
  for (float v : dist) cost += v;
  EXPECT_NEAR(sqnr_db(test, cost), 10.05, 0.1);
  // Scalar k-means with 4 levels is Lloyd-Max: 9.30 dB.
  KMeansOptions s;
  s.k = 4;
  s.iterations = 50;
  const std::vector<float> scalar(x.begin(), x.begin() + (1 << 17));
  EXPECT_NEAR(sqnr_db(scalar, kmeans(PointSet::unweighted(scalar.data(), 1 << 17, 1), s).cost), 9.30, 0.02);
}

TEST(KMeans, PlusPlusBeatsRandomInitAndGreedyTrialsHelp) {
  const std::vector<float> x = gaussian(size_t(20000 * 2), 4);
  auto cost_after_init = [&](KMeansInit init, int trials) {
    KMeansOptions o;
    o.k = 64;
    o.iterations = 0;
    o.init = init;
    o.init_trials = trials;
    return kmeans(PointSet::unweighted(x.data(), 20000, 2), o).cost;
  };
  const double random = cost_after_init(KMeansInit::Random, 1), pp = cost_after_init(KMeansInit::PlusPlus, 1),
               greedy = cost_after_init(KMeansInit::PlusPlus, 4);
  EXPECT_LT(pp, 0.8 * random);
  EXPECT_LT(greedy, pp);
  // And Lloyd lowers the cost from there.
  KMeansOptions o;
  o.k = 64;
  EXPECT_LT(kmeans(PointSet::unweighted(x.data(), 20000, 2), o).cost, greedy);
}

TEST(KMeans, DeterministicForASeedWhateverTheThreadCount) {
  ThreadCountGuard guard;
  const int64_t n = 30000, d = 5;
  const std::vector<float> x = gaussian(size_t(n * d), 8);
  std::vector<float> w(size_t(n * d));
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(1 + i % 7);
  KMeansOptions o;
  o.k = 100;
  o.iterations = 8;
  o.init_trials = 3;
  o.max_points_per_centroid = 200;  // 20000 of the 30000 points train
  auto run = [&](int threads, uint64_t seed, PointSet::Weights weighting) {
    set_num_threads(threads);
    o.seed = seed;
    return kmeans({x.data(), n, d, weighting, weighting == PointSet::Weights::None ? nullptr : w.data()}, o);
  };
  for (auto weighting : {PointSet::Weights::None, PointSet::Weights::PerCoordinate}) {
    const KMeansResult a = run(1, 3, weighting), b = run(2, 3, weighting), c = run(2, 4, weighting);
    EXPECT_EQ(a.centroids, b.centroids);
    EXPECT_EQ(a.assignment, b.assignment);
    EXPECT_EQ(a.cost, b.cost);
    EXPECT_NE(a.centroids, c.centroids);  // the seed matters
  }
}

TEST(KMeans, RepairsEmptyClusters) {
  // 900 copies of one point and 100 spread ones: a random init picks the copy several times,
  // and the duplicates (all but the lowest index) lose every point.
  std::vector<float> x(1000 * 2, 0.0f);
  const std::vector<float> spread = gaussian(200, 2);
  std::copy(spread.begin(), spread.end(), x.begin() + 900 * 2);
  KMeansOptions o;
  o.k = 20;
  o.init = KMeansInit::Random;
  KMeansResult r = kmeans(PointSet::unweighted(x.data(), 1000, 2), o);
  EXPECT_GT(r.repaired, 0);
  std::vector<int> members(20, 0);
  for (int32_t a : r.assignment) ++members[size_t(a)];
  for (int j = 0; j < 20; ++j) EXPECT_GT(members[size_t(j)], 0) << "cluster " << j;
  // Fewer distinct points than k: nothing can be split, and nothing breaks.
  std::vector<float> same(50 * 3, 1.5f);
  KMeansResult s = kmeans(PointSet::unweighted(same.data(), 50, 3), o);
  EXPECT_EQ(s.cost, 0.0);
  for (float c : s.centroids) EXPECT_TRUE(std::isfinite(c));
}

TEST(KMeans, FewerPointsThanCodewordsAndOptions) {
  const std::vector<float> x = gaussian(10 * 4, 6);
  KMeansOptions o;
  o.k = 16;
  KMeansResult r = kmeans(PointSet::unweighted(x.data(), 10, 4), o);
  EXPECT_EQ(r.cost, 0.0);  // every point is a codeword
  EXPECT_EQ(r.centroids.size(), 16u * 4);
  // fp16 centroids are exactly representable, and the assignment searched them.
  const std::vector<float> g = gaussian(5000 * 3, 7);
  o.fp16_centroids = true;
  o.max_points_per_centroid = 60;  // 960 points train; every point is still assigned
  KMeansResult h = kmeans(PointSet::unweighted(g.data(), 5000, 3), o);
  for (float c : h.centroids) EXPECT_EQ(c, f16_to_f32(f32_to_f16(c)));
  EXPECT_EQ(h.assignment.size(), 5000u);
  std::vector<int32_t> idx(5000);
  nearest_codewords(PointSet::unweighted(g.data(), 5000, 3), h.centroids.data(), 16, idx.data());
  EXPECT_EQ(idx, h.assignment);
  // Starting from given centroids with no iterations returns them unchanged.
  KMeansOptions fixed;
  fixed.k = 16;
  fixed.iterations = 0;
  fixed.initial = h.centroids.data();
  EXPECT_EQ(kmeans(PointSet::unweighted(g.data(), 5000, 3), fixed).centroids, h.centroids);
  // Bad arguments are errors.
  KMeansOptions bad;
  bad.k = 0;
  EXPECT_THROW(kmeans(PointSet::unweighted(g.data(), 5000, 3), bad), Error);
  bad.k = 65537;
  EXPECT_THROW(kmeans(PointSet::unweighted(g.data(), 5000, 3), bad), Error);
}

TEST(KMeans, WeightsSteerTheCodebook) {
  // Two coordinates; the second matters 1000x more. Weighted k-means spends its codewords
  // on the second coordinate and its weighted error is far below the unweighted fit's.
  const int64_t n = 4000;
  const std::vector<float> x = gaussian(size_t(n * 2), 12);
  std::vector<float> w(size_t(n * 2));
  for (int64_t i = 0; i < n; ++i) w[size_t(2 * i)] = 1.0f, w[size_t(2 * i + 1)] = 1000.0f;
  KMeansOptions o;
  o.k = 8;
  const PointSet weighted = PointSet::per_coordinate(x.data(), n, 2, w.data());
  const KMeansResult fit_w = kmeans(weighted, o), fit_u = kmeans(PointSet::unweighted(x.data(), n, 2), o);
  // The unweighted codebook, even with codes chosen under the weighted distance:
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::vector<float> dist(static_cast<size_t>(n));
  nearest_codewords(weighted, fit_u.centroids.data(), 8, idx.data(), dist.data());
  double cost_u = 0;
  for (float v : dist) cost_u += v;
  EXPECT_LT(fit_w.cost, 0.5 * cost_u);
}
