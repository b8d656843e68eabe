// Weighted k-means (Lloyd) for the codebook formats, and the nearest-codeword search their
// encoders share.
//
// Points may carry weights: one per point, or one per coordinate. Per-coordinate weights
// are what importance-weighted vector quantization needs: the error of a sub-vector x
// (columns j of a row) against codeword c is sum_j imp_j (x_j - c_j)^2, and sub-vectors
// from different column positions share one codebook with different imp vectors, so no
// single rescaling of the space makes the problem unweighted. The engine solves the
// weighted problem directly:
//   distance  sum_l w_il (x_il - c_l)^2 = sum_l w_il x_il^2 - 2 (w_i∘x_i)·c + w_i·(c∘c),
//             i.e. one GEMM of [w∘x, w] (n x 2d) against [-2c, c∘c] (k x 2d);
//   update    c_l = sum_i w_il x_il / sum_i w_il over the cluster (coordinate-wise
//             weighted mean; a coordinate whose weights sum to zero keeps its value).
// Unweighted and per-point-weighted points use the cheaper GEMM x·c (n x d by d x k).
//
// Determinism: results depend on the seed only, never on the thread count: work is cut
// into fixed blocks of points/centroids, reductions run in a fixed order, and the random
// numbers come from a counter-based generator.
#pragma once
#include <cstdint>
#include <vector>

namespace quantkit::formats {

// n points of dimension d, row-major, with optional weights.
struct PointSet {
  const float* x = nullptr;
  int64_t n = 0, d = 0;
  enum class Weights { None, PerPoint, PerCoordinate } weighting = Weights::None;
  const float* weights = nullptr;  // n values (PerPoint) or n x d (PerCoordinate); >= 0

  static PointSet unweighted(const float* x, int64_t n, int64_t d) { return {x, n, d, Weights::None, nullptr}; }
  static PointSet per_point(const float* x, int64_t n, int64_t d, const float* w) {
    return {x, n, d, Weights::PerPoint, w};
  }
  static PointSet per_coordinate(const float* x, int64_t n, int64_t d, const float* w) {
    return {x, n, d, Weights::PerCoordinate, w};
  }
};

enum class KMeansInit {
  PlusPlus,  // k-means++ (D^2 sampling; greedy with init_trials > 1)
  Farthest,  // farthest-point traversal: each new centre is the worst-served point
  Random,    // k distinct points drawn uniformly (FAISS's default)
};

// How nearest codewords are found: a GEMM of points against codewords (OpenBLAS sgemm, in
// tiles) then a scan for the minimum, or a fused AVX2/FMA kernel that keeps the scores in
// registers (used when the CPU has it; Fused on a CPU without AVX2 falls back to Gemm).
// Both give the exact argmin up to float rounding. Points and codewords must be finite.
enum class SearchKernel { Auto, Gemm, Fused };

struct KMeansOptions {
  int64_t k = 256;  // 1..65536
  int iterations = 20;  // Lloyd iterations (assignment + update)
  KMeansInit init = KMeansInit::PlusPlus;
  int init_trials = 1;  // k-means++ candidates per centre; the one lowering the cost most wins
  // The initialisation sees at most this many points per centroid (a seeded uniform
  // sample): k-means++ costs O(n k d) sequential work, and a sample of 64 per centroid
  // seeds as well as all of them. 0: all points.
  int64_t init_points_per_centroid = 64;
  // Lloyd iterations see at most this many points per centroid (seeded sample); the
  // returned assignment still covers every point. 0: all points.
  int64_t max_points_per_centroid = 0;
  // Stops when an iteration lowers the cost by less than this fraction of it (0: never).
  double tolerance = 0;
  uint64_t seed = 1;
  SearchKernel kernel = SearchKernel::Auto;
  // Starting centroids (k x d) instead of an initialisation, e.g. to refine a codebook.
  const float* initial = nullptr;
  // Rounds the final centroids to fp16 before the final assignment, so a codebook stored
  // as fp16 is exactly the one searched. (Lloyd itself runs in fp32: rounding every
  // iteration would stall it once the updates drop below half an fp16 ulp.)
  bool fp16_centroids = false;
};

struct KMeansResult {
  std::vector<float> centroids;     // k x d
  std::vector<int32_t> assignment;  // n: nearest final centroid of every point
  double cost = 0;                  // sum over points of the weighted squared distance
  int iterations = 0;               // Lloyd iterations run
  int64_t repaired = 0;             // empty clusters re-seeded over all iterations
};

// Clusters the points. When n <= k every point becomes a centroid (the rest repeat points).
KMeansResult kmeans(const PointSet& points, const KMeansOptions& options);

// For every point, the index of the nearest of the k codewords (k x d, row-major) under
// the points' weighted distance, ties to the lowest index; dist (optional) receives the
// weighted squared distance. Block-wise GEMM + argmin on the global thread pool.
void nearest_codewords(const PointSet& points, const float* codebook, int64_t k, int32_t* index,
                       float* dist = nullptr, SearchKernel kernel = SearchKernel::Auto);

// Weighted squared distance of point i to codeword c (exact, in double).
double point_distance(const PointSet& points, int64_t i, const float* c);

// Weighted mean of the points assigned to each cluster (coordinate-wise for per-coordinate
// weights). Clusters without weight keep their centroid; returns their indices.
std::vector<int64_t> update_centroids(const PointSet& points, const int32_t* assignment, int64_t k,
                                      float* centroids);

}  // namespace quantkit::formats
