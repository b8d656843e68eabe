#include "formats/kmeans.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "quantkit/error.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

// ---- determinism helpers ------------------------------------------------------------------

// splitmix64: a small generator whose sequence depends on the seed only.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  int64_t below(int64_t n) { return int64_t(uniform() * double(n)) % n; }

 private:
  uint64_t state_;
};

// Reductions and per-point work run on blocks of this many points; block boundaries never
// depend on the thread count, so neither do the results.
constexpr int64_t kReduceBlock = 4096;

int64_t block_count(int64_t n, int64_t block) { return (n + block - 1) / block; }

// Calls fn(block, begin, end) for the fixed blocks of [0, n), in parallel.
template <typename Fn>
void for_each_block(int64_t n, int64_t block, Fn&& fn) {
  global_pool().parallel_for(block_count(n, block), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b, b * block, std::min(n, (b + 1) * block));
  });
}

// Sum of per-block partial sums in block order.
double ordered_sum(const std::vector<double>& partial) {
  double s = 0;
  for (double v : partial) s += v;
  return s;
}

// Sum of v in double, blockwise (thread-count independent).
double blocked_sum(const std::vector<float>& v) {
  const int64_t n = int64_t(v.size());
  std::vector<double> sums(size_t(block_count(n, kReduceBlock)));
  for_each_block(n, kReduceBlock, [&](int64_t b, int64_t begin, int64_t end) {
    double s = 0;
    for (int64_t i = begin; i < end; ++i) s += v[size_t(i)];
    sums[size_t(b)] = s;
  });
  return ordered_sum(sums);
}

// ---- distances -----------------------------------------------------------------------------

// Weighted squared distances in float of points [begin, end) to c, for the O(n d) loops of
// the initialisation (the weighting is decided once per block, not per point).
void distances_to(const PointSet& p, int64_t begin, int64_t end, const float* c, float* out) {
  const int64_t d = p.d;
  for (int64_t i = begin; i < end; ++i) {
    const float* x = p.x + i * d;
    float s = 0;
    if (p.weighting == PointSet::Weights::PerCoordinate) {
      const float* w = p.weights + i * d;
      for (int64_t l = 0; l < d; ++l) s += w[l] * (x[l] - c[l]) * (x[l] - c[l]);
    } else {
      for (int64_t l = 0; l < d; ++l) s += (x[l] - c[l]) * (x[l] - c[l]);
      if (p.weighting == PointSet::Weights::PerPoint) s *= p.weights[i];
    }
    out[i - begin] = s;
  }
}

// Total weight of point i (its share in the weighted mean when every coordinate counts).
double point_weight(const PointSet& p, int64_t i) {
  switch (p.weighting) {
    case PointSet::Weights::None: return 1.0;
    case PointSet::Weights::PerPoint: return p.weights[i];
    case PointSet::Weights::PerCoordinate: {
      double s = 0;
      for (int64_t l = 0; l < p.d; ++l) s += p.weights[i * p.d + l];
      return s;
    }
  }
  return 1.0;
}

// ---- nearest-codeword search ---------------------------------------------------------------
//
// Both kernels score codeword j for point i as bias_j + a_i·b_j, which differs from the
// weighted distance by a term of the point alone (so the argmin is exact):
//  unweighted / per point: a = x (width d),          b = -2c,       bias = |c|^2;
//  per coordinate:         a = [w∘x, w] (width 2d),  b = [-2c, c∘c], bias = 0.
// The GEMM kernel computes a tile of scores with OpenBLAS sgemm and scans it; the fused
// kernel (AVX2+FMA) keeps the scores in registers and updates the argmin as it goes, which
// saves writing and re-reading the n x k score matrix (the GEMM's inner dimension here is
// only d or 2d, so that traffic dominates).

struct SearchPlan {
  int64_t k = 0, d = 0, width = 0;
  bool per_coordinate = false, fused = false;
  std::vector<float> b, bias;  // GEMM: k x width, k
  // Fused: groups of 8 codewords, coordinate-major inside a group (bt[g][l][lane]), padded
  // to a multiple of kFusedGroups groups with bias +inf so padding never wins.
  std::vector<float> bt, bias8;
  int64_t groups = 0;
};

constexpr int64_t kFusedGroups = 4;  // groups of 8 codewords scored together

bool cpu_has_avx2_fma() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

SearchPlan plan_search(const PointSet& p, const float* codebook, int64_t k, SearchKernel kernel) {
  SearchPlan plan;
  plan.k = k;
  plan.d = p.d;
  plan.per_coordinate = p.weighting == PointSet::Weights::PerCoordinate;
  plan.width = plan.per_coordinate ? 2 * p.d : p.d;
  plan.fused = kernel != SearchKernel::Gemm && cpu_has_avx2_fma();
  const int64_t d = p.d, width = plan.width;
  plan.b.resize(size_t(k * width));
  plan.bias.assign(size_t(k), 0.0f);
  for (int64_t j = 0; j < k; ++j) {
    const float* c = codebook + j * d;
    float* bj = plan.b.data() + j * width;
    float norm = 0;
    for (int64_t l = 0; l < d; ++l) {
      bj[l] = -2.0f * c[l];
      norm += c[l] * c[l];
      if (plan.per_coordinate) bj[d + l] = c[l] * c[l];
    }
    if (!plan.per_coordinate) plan.bias[size_t(j)] = norm;
  }
  if (!plan.fused) return plan;
  plan.groups = (k + 8 * kFusedGroups - 1) / (8 * kFusedGroups) * kFusedGroups;
  plan.bt.assign(size_t(plan.groups * width * 8), 0.0f);
  plan.bias8.assign(size_t(plan.groups * 8), std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < k; ++j) {
    const int64_t g = j / 8, lane = j % 8;
    for (int64_t l = 0; l < width; ++l) plan.bt[size_t((g * width + l) * 8 + lane)] = plan.b[size_t(j * width + l)];
    plan.bias8[size_t(j)] = plan.bias[size_t(j)];
  }
  return plan;
}

// The point side for points [begin, end): x itself, or [w∘x, w] built in `buffer`.
const float* point_operand(const PointSet& p, const SearchPlan& plan, int64_t begin, int64_t end,
                           std::vector<float>& buffer) {
  if (!plan.per_coordinate) return p.x + begin * p.d;
  const int64_t d = p.d, width = plan.width;
  buffer.resize(size_t((end - begin) * width));
  for (int64_t i = begin; i < end; ++i)
    for (int64_t l = 0; l < d; ++l) {
      const float w = p.weights[i * d + l];
      buffer[size_t((i - begin) * width + l)] = w * p.x[i * d + l];
      buffer[size_t((i - begin) * width + d + l)] = w;
    }
  return buffer.data();
}

// GEMM kernel: scores of a tile of points against tiles of codewords, then a scan.
constexpr int64_t kGemmCodeTile = 512;
// OpenBLAS runs a GEMM of m*n*k <= 65536*4 on the calling thread: tiles below that keep
// each pool worker on its own core and every GEMM single-threaded (hence identical for
// any thread count).
constexpr int64_t kGemmBudget = 65536 * 4;

void gemm_search(const float* a, int64_t m, const SearchPlan& plan, std::vector<float>& scores, float* best,
                 int32_t* best_index) {
  const int64_t tile = std::min(plan.k, kGemmCodeTile), width = plan.width;
  scores.resize(size_t(m * tile));
  for (int64_t j0 = 0; j0 < plan.k; j0 += tile) {
    const int64_t nc = std::min(tile, plan.k - j0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(nc), int(width), 1.0f, a, int(width),
                plan.b.data() + j0 * width, int(width), 0.0f, scores.data(), int(nc));
    const float* bias = plan.bias.data() + j0;
    for (int64_t r = 0; r < m; ++r) {
      const float* s = scores.data() + r * nc;
      for (int64_t j = 0; j < nc; ++j) {
        const float v = s[j] + bias[j];
        if (v < best[r]) best[r] = v, best_index[r] = int32_t(j0 + j);
      }
    }
  }
}

#if defined(__x86_64__)
// Merges the 8 lanes of (value, index) into a running best: minimum value, lowest index
// among equals (each lane already holds the first minimum of its codewords).
__attribute__((target("avx2,fma"))) void merge_lanes(__m256 v, __m256i idx, float& best, int32_t& best_index) {
  alignas(32) float vals[8];
  alignas(32) int32_t ids[8];
  _mm256_store_ps(vals, v);
  _mm256_store_si256(reinterpret_cast<__m256i*>(ids), idx);
  for (int lane = 0; lane < 8; ++lane)
    if (vals[lane] < best || (vals[lane] == best && ids[lane] < best_index)) best = vals[lane], best_index = ids[lane];
}

// Lane-wise running argmin over four groups of eight scores (codewords base + 8q + lane),
// first minimum kept.
__attribute__((target("avx2,fma"))) inline void update_lanes(const __m256 (&sc)[4], __m256i base, __m256& best,
                                                             __m256i& idx) {
  for (int q = 0; q < 4; ++q) {
    const __m256i ids = _mm256_add_epi32(base, _mm256_set1_epi32(8 * q));
    const __m256 lt = _mm256_cmp_ps(sc[q], best, _CMP_LT_OQ);
    best = _mm256_blendv_ps(best, sc[q], lt);
    idx = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(idx), _mm256_castsi256_ps(ids), lt));
  }
}

// Fused kernel over codeword groups [g0, g1): two points at a time against four groups of
// eight codewords, i.e. eight independent FMA chains (enough to hide the FMA latency),
// each codeword load shared by both points.
__attribute__((target("avx2,fma"))) void fused_search(const float* a, int64_t m, const SearchPlan& plan, int64_t g0,
                                                      int64_t g1, float* best, int32_t* best_index) {
  const int64_t width = plan.width;
  const __m256i lane_ids = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t i = 0; i < m; i += 2) {
    const float* a0 = a + i * width;
    const float* a1 = a + std::min(i + 1, m - 1) * width;
    const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
    __m256 best0 = inf, best1 = inf;
    __m256i idx0 = _mm256_setzero_si256(), idx1 = _mm256_setzero_si256();
    for (int64_t g = g0; g < g1; g += kFusedGroups) {
      const float* b = plan.bt.data() + g * width * 8;
      const float* bias = plan.bias8.data() + g * 8;
      __m256 s00 = _mm256_loadu_ps(bias), s01 = _mm256_loadu_ps(bias + 8), s02 = _mm256_loadu_ps(bias + 16),
             s03 = _mm256_loadu_ps(bias + 24);
      __m256 s10 = s00, s11 = s01, s12 = s02, s13 = s03;
      for (int64_t l = 0; l < width; ++l) {
        const __m256 x0 = _mm256_broadcast_ss(a0 + l), x1 = _mm256_broadcast_ss(a1 + l);
        const __m256 c0 = _mm256_loadu_ps(b + l * 8), c1 = _mm256_loadu_ps(b + (width + l) * 8),
                     c2 = _mm256_loadu_ps(b + (2 * width + l) * 8), c3 = _mm256_loadu_ps(b + (3 * width + l) * 8);
        s00 = _mm256_fmadd_ps(x0, c0, s00), s01 = _mm256_fmadd_ps(x0, c1, s01);
        s02 = _mm256_fmadd_ps(x0, c2, s02), s03 = _mm256_fmadd_ps(x0, c3, s03);
        s10 = _mm256_fmadd_ps(x1, c0, s10), s11 = _mm256_fmadd_ps(x1, c1, s11);
        s12 = _mm256_fmadd_ps(x1, c2, s12), s13 = _mm256_fmadd_ps(x1, c3, s13);
      }
      // (Testing the minimum of the four first and branching was slower: 27 vs 48 GFlops.)
      const __m256i base = _mm256_add_epi32(lane_ids, _mm256_set1_epi32(int32_t(g * 8)));
      const __m256 sc0[4] = {s00, s01, s02, s03}, sc1[4] = {s10, s11, s12, s13};
      update_lanes(sc0, base, best0, idx0);
      update_lanes(sc1, base, best1, idx1);
    }
    merge_lanes(best0, idx0, best[i], best_index[i]);
    if (i + 1 < m) merge_lanes(best1, idx1, best[i + 1], best_index[i + 1]);
  }
}
#else
void fused_search(const float*, int64_t, const SearchPlan&, int64_t, int64_t, float*, int32_t*) {
  fail("internal: fused k-means kernel without AVX2");
}
#endif

// Groups of codewords per fused tile: about 16 KiB of codebook, so it stays in L1 while a
// tile of points streams past.
int64_t fused_code_tile(int64_t width) {
  return std::max<int64_t>(kFusedGroups, 4096 / (width * 8) / kFusedGroups * kFusedGroups);
}

// Points per search tile (the unit of parallel work).
int64_t search_point_tile(const SearchPlan& plan) {
  if (plan.fused) return 256;
  return std::clamp<int64_t>(kGemmBudget / (std::min(plan.k, kGemmCodeTile) * plan.width), 1, 256);
}

// Nearest codeword of points [begin, end), one tile.
void search_tile(const PointSet& p, const SearchPlan& plan, int64_t begin, int64_t end, std::vector<float>& buffer,
                 std::vector<float>& scores, int32_t* index) {
  const int64_t m = end - begin;
  const float* a = point_operand(p, plan, begin, end, buffer);
  float best[256];
  std::fill(best, best + m, std::numeric_limits<float>::infinity());
  std::fill(index, index + m, 0);
  if (!plan.fused) return gemm_search(a, m, plan, scores, best, index);
  const int64_t tile = fused_code_tile(plan.width);
  for (int64_t g0 = 0; g0 < plan.groups; g0 += tile)
    fused_search(a, m, plan, g0, std::min(plan.groups, g0 + tile), best, index);
}

// ---- initialisation ------------------------------------------------------------------------

// A seeded sample of `count` distinct indices of [0, n), in increasing order.
std::vector<int64_t> sample_indices(int64_t n, int64_t count, Rng& rng) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  for (int64_t i = 0; i < count; ++i) std::swap(all[size_t(i)], all[size_t(i + rng.below(n - i))]);
  all.resize(static_cast<size_t>(count));
  std::sort(all.begin(), all.end());
  return all;
}

// A copy of some of the points (with their weights).
struct PointSubset {
  std::vector<float> x, w;
  PointSet set;
};

PointSubset gather(const PointSet& p, const std::vector<int64_t>& idx) {
  PointSubset s;
  const int64_t n = int64_t(idx.size()), d = p.d;
  s.x.resize(size_t(n * d));
  for (int64_t i = 0; i < n; ++i) std::copy(p.x + idx[size_t(i)] * d, p.x + (idx[size_t(i)] + 1) * d, s.x.begin() + i * d);
  const int64_t wpp = p.weighting == PointSet::Weights::PerCoordinate ? d : 1;
  if (p.weighting != PointSet::Weights::None) {
    s.w.resize(size_t(n * wpp));
    for (int64_t i = 0; i < n; ++i)
      std::copy(p.weights + idx[size_t(i)] * wpp, p.weights + (idx[size_t(i)] + 1) * wpp, s.w.begin() + i * wpp);
  }
  s.set = {s.x.data(), n, d, p.weighting, s.w.empty() ? nullptr : s.w.data()};
  return s;
}

// The point set itself, or a seeded sample of `limit` of its points.
struct MaybeSample {
  PointSubset subset;
  bool sampled = false;
  const PointSet& get(const PointSet& all) const { return sampled ? subset.set : all; }
};

MaybeSample maybe_sample(const PointSet& p, int64_t limit, Rng& rng) {
  MaybeSample s;
  if (limit > 0 && p.n > limit) {
    s.subset = gather(p, sample_indices(p.n, limit, rng));
    s.sampled = true;
  }
  return s;
}

// Index drawn with probability proportional to value[i] >= 0 (total = their sum).
int64_t draw_proportional(const std::vector<float>& value, const std::vector<double>& block_sums, double total,
                          Rng& rng) {
  double u = rng.uniform() * total;
  const int64_t n = int64_t(value.size());
  int64_t b = 0;
  const int64_t nb = int64_t(block_sums.size());
  while (b + 1 < nb && u >= block_sums[size_t(b)]) u -= block_sums[size_t(b++)];
  int64_t last_positive = -1;
  for (int64_t i = b * kReduceBlock; i < std::min(n, (b + 1) * kReduceBlock); ++i) {
    if (value[size_t(i)] <= 0) continue;
    last_positive = i;
    if (u < value[size_t(i)]) return i;
    u -= value[size_t(i)];
  }
  return last_positive >= 0 ? last_positive : rng.below(n);  // rounding at the end of the block
}

// Per-point distance to the nearest chosen centre, with per-block sums.
struct MinDistances {
  std::vector<float> value;
  std::vector<double> block_sums;
  double total = 0;

  explicit MinDistances(int64_t n) : value(static_cast<size_t>(n)), block_sums(size_t(block_count(n, kReduceBlock))) {}
  // value = min(value, distance to c) (first: value = distance to c).
  void update(const PointSet& p, const float* c, bool first = false) {
    for_each_block(p.n, kReduceBlock, [&](int64_t b, int64_t begin, int64_t end) {
      float dist[kReduceBlock];
      distances_to(p, begin, end, c, dist);
      double s = 0;
      for (int64_t i = begin; i < end; ++i) {
        float& v = value[size_t(i)];
        v = first ? dist[i - begin] : std::min(v, dist[i - begin]);
        s += v;
      }
      block_sums[size_t(b)] = s;
    });
    total = ordered_sum(block_sums);
  }
  // The total if c were added (without adding it).
  double total_with(const PointSet& p, const float* c) const {
    std::vector<double> sums(block_sums.size());
    for_each_block(p.n, kReduceBlock, [&](int64_t b, int64_t begin, int64_t end) {
      float dist[kReduceBlock];
      distances_to(p, begin, end, c, dist);
      double s = 0;
      for (int64_t i = begin; i < end; ++i) s += std::min(value[size_t(i)], dist[i - begin]);
      sums[size_t(b)] = s;
    });
    return ordered_sum(sums);
  }
};

void round_to_fp16(std::vector<float>& v) {
  for (float& x : v) x = f16_to_f32(f32_to_f16(x));
}

void copy_point(const PointSet& p, int64_t i, float* dst) { std::copy(p.x + i * p.d, p.x + (i + 1) * p.d, dst); }

// First centre: drawn with probability proportional to the point's weight.
int64_t first_centre(const PointSet& p, Rng& rng) {
  std::vector<float> w(size_t(p.n));
  std::vector<double> sums(size_t(block_count(p.n, kReduceBlock)));
  for_each_block(p.n, kReduceBlock, [&](int64_t b, int64_t begin, int64_t end) {
    double s = 0;
    for (int64_t i = begin; i < end; ++i) s += (w[size_t(i)] = float(point_weight(p, i)));
    sums[size_t(b)] = s;
  });
  const double total = ordered_sum(sums);
  return total > 0 ? draw_proportional(w, sums, total, rng) : rng.below(p.n);
}

// k-means++ (Arthur & Vassilvitskii 2007): each centre is drawn with probability
// proportional to its weighted squared distance to the nearest chosen one; with trials > 1
// the candidate lowering the total most is kept (greedy k-means++).
void init_plus_plus(const PointSet& p, int64_t k, int trials, Rng& rng, float* centroids) {
  const int64_t d = p.d;
  copy_point(p, first_centre(p, rng), centroids);
  MinDistances md(p.n);
  md.update(p, centroids, /*first=*/true);
  for (int64_t c = 1; c < k; ++c) {
    float* centre = centroids + c * d;
    if (md.total <= 0) {  // every point already coincides with a centre: repeat points
      copy_point(p, rng.below(p.n), centre);
      continue;
    }
    int64_t pick = draw_proportional(md.value, md.block_sums, md.total, rng);
    if (trials > 1) {
      double best = md.total_with(p, p.x + pick * d);
      for (int t = 1; t < trials; ++t) {
        const int64_t cand = draw_proportional(md.value, md.block_sums, md.total, rng);
        const double tot = md.total_with(p, p.x + cand * d);
        if (tot < best) best = tot, pick = cand;
      }
    }
    copy_point(p, pick, centre);
    md.update(p, centre);
  }
}

// Farthest-point traversal: each new centre is the point worst served so far.
void init_farthest(const PointSet& p, int64_t k, Rng& rng, float* centroids) {
  const int64_t d = p.d;
  copy_point(p, first_centre(p, rng), centroids);
  MinDistances md(p.n);
  md.update(p, centroids, /*first=*/true);
  for (int64_t c = 1; c < k; ++c) {
    const auto far = std::max_element(md.value.begin(), md.value.end());  // first of the maxima
    copy_point(p, int64_t(far - md.value.begin()), centroids + c * d);
    md.update(p, centroids + c * d);
  }
}

void init_random(const PointSet& p, int64_t k, Rng& rng, float* centroids) {
  std::vector<int64_t> idx = sample_indices(p.n, k, rng);
  // sample_indices sorts; shuffle back so the centroid order carries no position bias.
  for (int64_t i = k - 1; i > 0; --i) std::swap(idx[size_t(i)], idx[size_t(rng.below(i + 1))]);
  for (int64_t c = 0; c < k; ++c) copy_point(p, idx[size_t(c)], centroids + c * p.d);
}


// ---- centroid update -----------------------------------------------------------------------

// Per-cluster weighted sums of coordinates and of weights (k x d each).
struct CentroidSums {
  std::vector<double> sum, weight;
  void reset(int64_t k, int64_t d) {
    sum.assign(size_t(k * d), 0.0);
    weight.assign(size_t(k * d), 0.0);
  }
  void add(const CentroidSums& o) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += o.sum[i], weight[i] += o.weight[i];
  }
};

// The update sums over this many fixed chunks of points (a fixed count keeps the result
// independent of the thread count; the k x d partial sums per chunk bound the memory).
constexpr int64_t kUpdateChunks = 16;

void accumulate(const PointSet& p, const int32_t* assign, int64_t begin, int64_t end, CentroidSums& acc) {
  const int64_t d = p.d;
  for (int64_t i = begin; i < end; ++i) {
    const float* x = p.x + i * d;
    double* s = acc.sum.data() + int64_t(assign[i]) * d;
    double* w = acc.weight.data() + int64_t(assign[i]) * d;
    switch (p.weighting) {
      case PointSet::Weights::None:
        for (int64_t l = 0; l < d; ++l) s[l] += x[l], w[l] += 1.0;
        break;
      case PointSet::Weights::PerPoint: {
        const double pw = p.weights[i];
        for (int64_t l = 0; l < d; ++l) s[l] += pw * x[l], w[l] += pw;
        break;
      }
      case PointSet::Weights::PerCoordinate: {
        const float* cw = p.weights + i * d;
        for (int64_t l = 0; l < d; ++l) s[l] += double(cw[l]) * x[l], w[l] += cw[l];
        break;
      }
    }
  }
}

// ---- Lloyd ---------------------------------------------------------------------------------

// Re-seeds each empty cluster with the point farthest from its centroid among those whose
// cluster keeps other members (the classic repair; the farthest point is the one the
// current codebook serves worst). Returns the number re-seeded.
int64_t repair_empty(const PointSet& p, const std::vector<int64_t>& empty, const std::vector<float>& dist,
                     std::vector<int32_t>& assign, int64_t k, float* centroids) {
  if (empty.empty()) return 0;
  std::vector<int64_t> members(size_t(k), 0);
  for (int32_t a : assign) ++members[size_t(a)];
  std::vector<int64_t> order(size_t(p.n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return dist[size_t(a)] != dist[size_t(b)] ? dist[size_t(a)] > dist[size_t(b)] : a < b;
  });
  int64_t repaired = 0;
  size_t next = 0;
  for (int64_t e : empty) {
    while (next < order.size() && members[size_t(assign[size_t(order[next])])] < 2) ++next;
    if (next == order.size() || dist[size_t(order[next])] <= 0) break;  // nothing left to split
    const int64_t i = order[next++];
    --members[size_t(assign[size_t(i)])];
    assign[size_t(i)] = int32_t(e);
    ++members[size_t(e)];
    copy_point(p, i, centroids + e * p.d);
    ++repaired;
  }
  return repaired;
}


std::vector<float> initial_centroids(const PointSet& all, const KMeansOptions& opt, Rng& rng) {
  const int64_t k = opt.k, d = all.d;
  std::vector<float> c(size_t(k * d));
  if (opt.initial) {
    std::copy(opt.initial, opt.initial + k * d, c.begin());
  } else if (all.n <= k) {  // every point is a centroid; the rest repeat them
    for (int64_t j = 0; j < k; ++j) copy_point(all, j % all.n, c.data() + j * d);
  } else {
    const MaybeSample init_set = maybe_sample(all, opt.init_points_per_centroid * opt.k, rng);
    const PointSet& ip = init_set.get(all);
    switch (opt.init) {
      case KMeansInit::PlusPlus: init_plus_plus(ip, k, std::max(1, opt.init_trials), rng, c.data()); break;
      case KMeansInit::Farthest: init_farthest(ip, k, rng, c.data()); break;
      case KMeansInit::Random: init_random(ip, k, rng, c.data()); break;
    }
  }
  return c;
}

// Lloyd iterations on (a sample of) the points, updating res.centroids.
void lloyd(const PointSet& all, const KMeansOptions& opt, Rng& rng, KMeansResult& res) {
  const MaybeSample train_set = maybe_sample(all, opt.max_points_per_centroid * opt.k, rng);
  const PointSet& tp = train_set.get(all);
  std::vector<int32_t> assign(size_t(tp.n));
  std::vector<float> dist(size_t(tp.n));
  double previous = std::numeric_limits<double>::infinity();
  for (int it = 0; it < opt.iterations; ++it) {
    nearest_codewords(tp, res.centroids.data(), opt.k, assign.data(), dist.data(), opt.kernel);
    const double cost = blocked_sum(dist);
    if (opt.tolerance > 0 && std::isfinite(previous) && previous - cost <= opt.tolerance * previous) break;
    previous = cost;
    const std::vector<int64_t> empty = update_centroids(tp, assign.data(), opt.k, res.centroids.data());
    res.repaired += repair_empty(tp, empty, dist, assign, opt.k, res.centroids.data());
    ++res.iterations;
  }
}

}  // namespace

double point_distance(const PointSet& p, int64_t i, const float* c) {
  const float* x = p.x + i * p.d;
  double s = 0;
  for (int64_t l = 0; l < p.d; ++l) {
    const double diff = double(x[l]) - double(c[l]);
    const double w = p.weighting == PointSet::Weights::PerCoordinate ? double(p.weights[i * p.d + l]) : 1.0;
    s += w * diff * diff;
  }
  return p.weighting == PointSet::Weights::PerPoint ? s * double(p.weights[i]) : s;
}

void nearest_codewords(const PointSet& p, const float* codebook, int64_t k, int32_t* index, float* dist,
                       SearchKernel kernel) {
  if (k < 1) fail("nearest_codewords: empty codebook");
  const SearchPlan plan = plan_search(p, codebook, k, kernel);
  const int64_t tile = search_point_tile(plan);
  global_pool().parallel_for(block_count(p.n, tile), [&](int64_t t0, int64_t t1) {
    std::vector<float> buffer, scores;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t begin = t * tile, end = std::min(p.n, begin + tile);
      search_tile(p, plan, begin, end, buffer, scores, index + begin);
      if (dist)
        for (int64_t i = begin; i < end; ++i) dist[i] = float(point_distance(p, i, codebook + index[i] * p.d));
    }
  });
}

std::vector<int64_t> update_centroids(const PointSet& p, const int32_t* assign, int64_t k, float* centroids) {
  const int64_t d = p.d;
  // Weighted sums per fixed chunk of points (sequential reads), added up in chunk order.
  const int64_t chunks = std::min<int64_t>(kUpdateChunks, block_count(p.n, kReduceBlock));
  std::vector<CentroidSums> part(static_cast<size_t>(chunks));
  global_pool().parallel_for(chunks, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      part[size_t(c)].reset(k, d);
      accumulate(p, assign, p.n * c / chunks, p.n * (c + 1) / chunks, part[size_t(c)]);
    }
  });
  for (int64_t c = 1; c < chunks; ++c) part[0].add(part[size_t(c)]);
  const CentroidSums& total = part[0];
  std::vector<int64_t> empty;
  for (int64_t j = 0; j < k; ++j) {
    bool any = false;
    for (int64_t l = 0; l < d; ++l) {
      const double w = total.weight[size_t(j * d + l)];
      if (w > 0) {
        centroids[j * d + l] = float(total.sum[size_t(j * d + l)] / w);
        any = true;
      }
    }
    if (!any) empty.push_back(j);
  }
  return empty;
}

KMeansResult kmeans(const PointSet& all, const KMeansOptions& opt) {
  if (opt.k < 1 || opt.k > 65536) fail("k-means: k = {} is out of range [1, 65536]", opt.k);
  if (all.n < 1 || all.d < 1) fail("k-means: no points ({} x {})", all.n, all.d);
  KMeansResult res;
  Rng rng(opt.seed);
  res.centroids = initial_centroids(all, opt, rng);
  if (all.n > opt.k || opt.initial) lloyd(all, opt, rng, res);
  if (opt.fp16_centroids) round_to_fp16(res.centroids);
  std::vector<float> dist(size_t(all.n));
  res.assignment.resize(size_t(all.n));
  nearest_codewords(all, res.centroids.data(), opt.k, res.assignment.data(), dist.data(), opt.kernel);
  res.cost = blocked_sum(dist);
  return res;
}

}  // namespace quantkit::formats
