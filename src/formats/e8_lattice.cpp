// E8 lattice codebook, like QuIP#'s E8P: "e8:b2[:row|:g<G>]".
//
// E8 = D8 u (D8 + 1/2), D8 = integer vectors with an even sum. The codebook is a ball of E8
// made of whole orbits under coordinate permutations and sign changes (even sign changes
// for the half-integer points, which keeps them in E8): every point of norm^2 <= 10 (56881
// points) plus, from the norm^2 = 12 shell, the largest orbits that still fit in 2^16:
// (3/2^5, 1/2^3) (7168 points) and (2^3, 0^5) (448 points): 64497 points, each stored as a
// 16-bit index (the remaining 1039 indices are unused and decode to zero). The table is
// computed at first use, never stored in the packed data.
//
// A row is cut into vectors of 8 weights (the last one zero-padded; padding has no weight);
// a vector is reconstructed as scale * codeword, one fp16 scale per group of G inputs
// (default 128; G a multiple of 8) or per row. bits = groups * 16 + rows * ceil(cols/8) * 16.
//
// Search. Because the codebook is a union of orbits, the nearest codeword to x is found
// exactly from x's sorted magnitudes: for each orbit leader (the sorted absolute values,
// 21 of them) the best point of the orbit pairs the leader's values with |x| in the same
// order, takes x's signs and, when the sign parity is wrong, flips the coordinate with
// the smallest |x| (Conway & Sloane's rule). All 21 leader scores are one small
// vectorised matrix product, so this exact search (~0.1 us per vector) is faster than
// decoding to the nearest E8 point first (Conway & Sloane's D8 u (D8 + 1/2) decoder,
// lattice::nearest_e8, kept as the reference for the tests): that point lies in the
// codebook for fewer than half of the vectors during the scale search. With non-uniform
// importance inside a vector the pairing is refined by pairwise swaps under the weighted
// error. The group scale is searched on a grid (then refitted by least squares) for the
// least (weighted) error.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>

#include "formats/common.h"
#include "formats/lattice_util.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

constexpr int kDim = 8;
constexpr int kIndexBits = 16;
constexpr int kCodebookSize = 1 << kIndexBits;
constexpr int kMaxNorm2Doubled = 48;  // norm^2 <= 12 in doubled coordinates (z = 2x)
constexpr int kWholeShellsNorm = 40;  // every point up to norm^2 10 is in the codebook

// A lattice point in doubled coordinates z = 2x (all even or all odd, sum = 0 mod 4).
using Point = std::array<int8_t, kDim>;

uint64_t key_of(const Point& z) {
  uint64_t k = 0;
  for (int i = 0; i < kDim; ++i) k |= uint64_t(uint8_t(z[size_t(i)])) << (8 * i);
  return k;
}

int norm2_doubled(const Point& z) {
  int n = 0;
  for (int8_t v : z) n += v * v;
  return n;
}

// The orbit representative: absolute values sorted in decreasing order.
Point leader_of(Point z) {
  for (auto& v : z) v = int8_t(std::abs(v));
  std::sort(z.begin(), z.end(), std::greater<>());
  return z;
}

// All E8 points with norm^2 <= 12, by recursion over the coordinates.
void enumerate_points(Point& z, int i, int parity, int norm_left, int sum, std::vector<Point>& out) {
  if (i == kDim) {
    if (sum % 4 == 0) out.push_back(z);
    return;
  }
  for (int v = -6 + parity; v <= 6; v += 2) {
    if (v * v > norm_left) continue;
    z[size_t(i)] = int8_t(v);
    enumerate_points(z, i + 1, parity, norm_left - v * v, sum + v, out);
  }
}

class E8Codebook {
 public:
  // An orbit leader in weight units (x = z / 2), for the search.
  struct Leader {
    std::array<float, kDim> value;  // decreasing magnitudes
    float norm2;
    bool half;             // half-integer orbit: the number of negative signs has a fixed parity
    int negative_parity;   // that parity
  };

  E8Codebook() {
    std::vector<Point> all;
    Point z{};
    for (int parity = 0; parity < 2; ++parity) enumerate_points(z, 0, parity, kMaxNorm2Doubled, 0, all);
    const std::vector<Point> chosen = choose_orbits(all);
    points_.assign(kCodebookSize, Point{});
    for (size_t i = 0; i < chosen.size(); ++i) {
      points_[i] = chosen[i];
      by_key_.emplace_back(key_of(chosen[i]), uint16_t(i));
    }
    used_ = int(chosen.size());
    std::sort(by_key_.begin(), by_key_.end());
    build_score_table();
  }

  // The leaders transposed for the plain search: score_l = 2 <|x|sorted, leader_l> - norm2_l
  // - |x|min * penalty_l[parity of x's negatives] (the parity flip of half-integer orbits).
  static constexpr int kLanes = 24;  // >= the number of leaders, a multiple of 8
  struct ScoreTable {
    alignas(32) float twice_value[kDim][kLanes];
    alignas(32) float norm2[kLanes];
    alignas(32) float penalty[2][kLanes];
  };

  const Point& point(uint32_t index) const { return points_[index]; }
  const std::vector<Leader>& leaders() const { return leaders_; }
  const ScoreTable& scores() const { return scores_; }
  int used() const { return used_; }

  // Index of a codebook point, or -1 when z is not in the codebook.
  int index_of(const Point& z) const {
    const uint64_t k = key_of(z);
    auto it = std::lower_bound(by_key_.begin(), by_key_.end(), std::make_pair(k, uint16_t(0)));
    return it != by_key_.end() && it->first == k ? int(it->second) : -1;
  }

 private:
  // Whole shells up to norm^2 10, then the largest norm^2-12 orbits that fit; codebook
  // order is (norm, leader, point) so that the index 0 is the origin.
  std::vector<Point> choose_orbits(const std::vector<Point>& all) {
    std::map<std::pair<int, uint64_t>, std::vector<Point>> orbits;  // (norm, leader key) -> points
    for (const Point& p : all) orbits[{norm2_doubled(p), key_of(leader_of(p))}].push_back(p);
    std::vector<const std::vector<Point>*> take;
    size_t total = 0;
    for (const auto& [k, pts] : orbits)
      if (k.first <= kWholeShellsNorm) take.push_back(&pts), total += pts.size();
    std::vector<const std::vector<Point>*> outer;
    for (const auto& [k, pts] : orbits)
      if (k.first > kWholeShellsNorm) outer.push_back(&pts);
    std::stable_sort(outer.begin(), outer.end(), [](auto* a, auto* b) { return a->size() > b->size(); });
    for (auto* pts : outer)
      if (total + pts->size() <= size_t(kCodebookSize)) take.push_back(pts), total += pts->size();
    std::vector<Point> chosen;
    for (auto* pts : take) {
      add_leader(pts->front());
      std::vector<Point> sorted = *pts;
      std::sort(sorted.begin(), sorted.end(), [](const Point& a, const Point& b) { return key_of(a) < key_of(b); });
      chosen.insert(chosen.end(), sorted.begin(), sorted.end());
    }
    std::stable_sort(chosen.begin(), chosen.end(),
                     [](const Point& a, const Point& b) { return norm2_doubled(a) < norm2_doubled(b); });
    return chosen;
  }

  void add_leader(const Point& any_member) {
    const Point l = leader_of(any_member);
    Leader leader{};
    int abs_sum = 0;
    for (int i = 0; i < kDim; ++i) {
      leader.value[size_t(i)] = 0.5f * float(l[size_t(i)]);
      abs_sum += l[size_t(i)];
    }
    leader.norm2 = 0.25f * float(norm2_doubled(l));
    leader.half = (l[0] & 1) != 0;
    // sum z = sum|z| - 2 sum_{negative}|z| must be 0 mod 4; each odd |z| contributes 2 mod 4.
    leader.negative_parity = (abs_sum / 2) & 1;
    leaders_.push_back(leader);
  }

  void build_score_table() {
    if (leaders_.size() > size_t(kLanes)) throw Error("internal: too many E8 orbit leaders");
    for (int l = 0; l < kLanes; ++l) {
      const bool real = l < int(leaders_.size());
      for (int k = 0; k < kDim; ++k) scores_.twice_value[k][l] = real ? 2.0f * leaders_[size_t(l)].value[size_t(k)] : 0.0f;
      scores_.norm2[l] = real ? leaders_[size_t(l)].norm2 : 1e30f;  // padding lanes never win
      for (int parity = 0; parity < 2; ++parity) {
        const bool flip = real && leaders_[size_t(l)].half && parity != leaders_[size_t(l)].negative_parity;
        scores_.penalty[parity][l] = flip ? 4.0f * leaders_[size_t(l)].value[kDim - 1] : 0.0f;
      }
    }
  }

  std::vector<Point> points_;
  ScoreTable scores_{};
  std::vector<std::pair<uint64_t, uint16_t>> by_key_;
  std::vector<Leader> leaders_;
  int used_ = 0;
};

const E8Codebook& codebook() {
  static const E8Codebook book;
  return book;
}

// x's magnitudes in decreasing order with their coordinates and the count of negatives.
struct SortedInput {
  std::array<float, kDim> magnitude;
  std::array<int, kDim> coord;
  int negatives = 0;

  explicit SortedInput(const float* x) {
    for (int i = 0; i < kDim; ++i) {
      float a = std::fabs(x[i]);
      int j = i;
      for (; j > 0 && magnitude[size_t(j - 1)] < a; --j) {
        magnitude[size_t(j)] = magnitude[size_t(j - 1)];
        coord[size_t(j)] = coord[size_t(j - 1)];
      }
      magnitude[size_t(j)] = a;
      coord[size_t(j)] = i;
      negatives += x[i] < 0;
    }
  }
};

// The orbit point built from a leader: values[i] is the magnitude given to coordinate i;
// signs follow x, and `flip` (or -1) is the coordinate whose sign is turned for parity.
Point orbit_point(const float* x, const std::array<float, kDim>& values, int flip) {
  Point z;
  for (int i = 0; i < kDim; ++i) {
    const int v = int(2.0f * values[size_t(i)] + 0.5f);  // values are non-negative halves
    const bool negative = (x[i] < 0) != (i == flip);
    z[size_t(i)] = int8_t(negative ? -v : v);
  }
  return z;
}

// Exact nearest codeword under the plain squared distance: the best orbit by its score
// (all leaders at once, in lanes the compiler vectorises), then that orbit's best point.
Point nearest_codeword(const float* x) {
  const SortedInput s(x);
  const auto& t = codebook().scores();
  constexpr int kLanes = E8Codebook::kLanes;
  const int parity = s.negatives & 1;
  float score[kLanes];
  for (int l = 0; l < kLanes; ++l) score[l] = -t.norm2[l] - s.magnitude[kDim - 1] * t.penalty[parity][l];
  for (int k = 0; k < kDim; ++k)
    for (int l = 0; l < kLanes; ++l) score[l] += s.magnitude[size_t(k)] * t.twice_value[k][l];
  const int best = int(std::max_element(score, score + kLanes) - score);
  const auto& leader = codebook().leaders()[size_t(best)];
  std::array<float, kDim> values;
  for (int k = 0; k < kDim; ++k) values[size_t(s.coord[size_t(k)])] = leader.value[size_t(k)];
  return orbit_point(x, values, t.penalty[parity][best] > 0 ? s.coord[kDim - 1] : -1);
}

// Round to nearest (ties to even) without a libm call: adding and subtracting 1.5 * 2^52
// leaves the integer part for |v| < 2^51 (IEEE arithmetic: the compiler may not fold it).
inline double round_nearest(double v) {
  constexpr double kMagic = 6755399441055744.0;
  return (v + kMagic) - kMagic;
}

// Conway & Sloane's decoder for D8 in doubled coordinates: the nearest even integers with
// a sum = 0 mod 4 to z, or the nearest odd ones when `odd`; returns the squared distance.
double nearest_d8_doubled(const double* z, bool odd, int* out) {
  int sum = 0, worst = 0;
  double worst_gap = -1, dist = 0;
  const double shift = odd ? 1.0 : 0.0;
  for (int i = 0; i < kDim; ++i) {
    const double r = 2.0 * round_nearest((z[i] - shift) * 0.5);
    out[i] = int(r + shift);
    sum += out[i];
    const double gap = std::fabs(z[i] - shift - r);
    if (gap > worst_gap) worst_gap = gap, worst = i;
  }
  if (sum % 4 != 0) out[worst] += z[worst] >= double(out[worst]) ? 2 : -2;  // re-round it the other way
  for (int i = 0; i < kDim; ++i) dist += (z[i] - double(out[i])) * (z[i] - double(out[i]));
  return dist;
}

// The nearest E8 point in doubled coordinates (z = 2x, |z_i| small enough for int).
void nearest_e8_doubled(const double* z, int* out) {
  int odd[kDim];
  const double de = nearest_d8_doubled(z, false, out), dodd = nearest_d8_doubled(z, true, odd);
  if (dodd < de) std::copy(odd, odd + kDim, out);
}

// Nearest codeword under sum_i w_i (x_i - c_i)^2: per orbit, the sorted pairing refined by
// pairwise swaps of the assigned magnitudes, then the cheapest parity flip.
Point nearest_weighted(const float* x, const float* w) {
  const SortedInput s(x);
  auto cost = [&](int i, float v) {
    const float d = std::fabs(x[i]) - v;
    return w[i] * d * d;
  };
  double best_err = std::numeric_limits<double>::infinity();
  Point best_point{};
  for (const auto& L : codebook().leaders()) {
    std::array<float, kDim> values;
    for (int k = 0; k < kDim; ++k) values[size_t(s.coord[size_t(k)])] = L.value[size_t(k)];
    for (bool improved = true; improved;) {
      improved = false;
      for (int i = 0; i < kDim; ++i)
        for (int j = i + 1; j < kDim; ++j) {
          const float vi = values[size_t(i)], vj = values[size_t(j)];
          if (vi == vj) continue;
          if (cost(i, vj) + cost(j, vi) < cost(i, vi) + cost(j, vj) - 1e-12f) {
            std::swap(values[size_t(i)], values[size_t(j)]);
            improved = true;
          }
        }
    }
    double err = 0;
    for (int i = 0; i < kDim; ++i) err += cost(i, values[size_t(i)]);
    int flip = -1;
    if (L.half && (s.negatives & 1) != L.negative_parity) {
      float flip_cost = std::numeric_limits<float>::infinity();
      for (int i = 0; i < kDim; ++i) {
        const float c = 4.0f * w[i] * std::fabs(x[i]) * values[size_t(i)];
        if (c < flip_cost) flip_cost = c, flip = i;
      }
      err += flip_cost;
    }
    if (err < best_err) best_err = err, best_point = orbit_point(x, values, flip);
  }
  return best_point;
}

// One group of vectors (8 weights each, padded) with their importance.
struct GroupVectors {
  std::vector<float> x, w;  // n * 8
  bool weighted = false;    // importance varies inside some vector (or padding)
  size_t count() const { return x.size() / kDim; }
};

// The codewords of every vector of the group at scale s (the origin when s = 0); returns
// the weighted error.
double points_at_scale(const GroupVectors& g, float s, bool weighted_search, Point* points) {
  double err = 0;
  float y[kDim];
  for (size_t v = 0; v < g.count(); ++v) {
    const float* x = &g.x[v * kDim];
    const float* w = &g.w[v * kDim];
    if (s > 0) {
      for (int i = 0; i < kDim; ++i) y[i] = x[i] / s;
      points[v] = weighted_search ? nearest_weighted(y, w) : nearest_codeword(y);
    } else {
      points[v] = Point{};
    }
    for (int i = 0; i < kDim; ++i) {
      const double d = double(x[i]) - double(s) * 0.5 * points[v][size_t(i)];
      err += double(w[i]) * d * d;
    }
  }
  return err;
}

// Least-squares scale for fixed codewords.
double refit_scale(const GroupVectors& g, const Point* points) {
  std::vector<float> c(g.x.size());
  for (size_t v = 0; v < g.count(); ++v)
    for (int i = 0; i < kDim; ++i) c[v * kDim + size_t(i)] = 0.5f * float(points[v][size_t(i)]);
  return lattice::least_squares_gain(g.x.data(), c.data(), g.w.data(), int64_t(c.size()));
}

// Scale search: a grid of multiples of the group's RMS, a finer grid around the best,
// then a least-squares refit; the scale is fp16 throughout. Writes the codeword indices.
float fit_group(const GroupVectors& g, uint32_t* codes) {
  double sw = 0, swx = 0;
  for (size_t i = 0; i < g.x.size(); ++i) sw += g.w[i], swx += double(g.w[i]) * g.x[i] * g.x[i];
  const double rms = sw > 0 ? std::sqrt(swx / sw) : 0.0;
  std::vector<Point> best(g.count()), trial(g.count());
  float best_s = 0;
  double best_err = points_at_scale(g, 0.0f, false, best.data());
  auto consider = [&](double s_raw, bool weighted) {
    const float s = lattice::round_scale_f16(s_raw);
    if (s <= 0) return;
    const double err = points_at_scale(g, s, weighted, trial.data());
    if (err < best_err) best_err = err, best_s = s, best.swap(trial);
  };
  if (rms > 0) {
    // Coarse: ratio 0.2 .. 2.0 of the RMS (Gaussian groups pick ~0.95; vectors that sit on
    // the smallest shells, with per-coordinate RMS 0.5, need 2); fine: +-10% in 2.5% steps.
    for (int k = 0; k < 16; ++k) consider(rms * (0.2 + 1.8 * k / 15.0), false);
    const double center = best_s;
    for (int k = -4; k <= 4; ++k)
      if (k != 0) consider(center * (1.0 + 0.025 * k), false);
    consider(refit_scale(g, best.data()), false);
  }
  if (g.weighted && best_s > 0) {  // the final codewords under the weighted metric
    best_err = points_at_scale(g, best_s, true, best.data());
    consider(refit_scale(g, best.data()), true);
  }
  for (size_t v = 0; v < g.count(); ++v) codes[v] = uint32_t(codebook().index_of(best[v]));
  return best_s;
}

struct E8Params {
  Grouping grouping{Grouping::Group, 128};
};

class E8Format : public RowFormat {
 public:
  explicit E8Format(E8Params p) : p_(p) {}

  std::string spec() const override {
    return p_.grouping.kind == Grouping::Group && p_.grouping.size == 128 ? "e8:b2"
                                                                           : fmt::format("e8:b2:{}", p_.grouping.spec());
  }

  std::string describe() const override {
    return fmt::format("E8 lattice ball codebook ({} points of norm^2 <= 12), 16-bit index per 8 weights, fp16 scale per {}",
                       codebook().used(),
                       p_.grouping.kind == Grouping::Row ? "row" : fmt::format("{} inputs", p_.grouping.size));
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(p_.grouping.count(rows, cols)) * 16 + uint64_t(rows) * uint64_t(vectors_per_row(cols)) * kIndexBits;
  }

  // Groups are independent (their own scale, whole vectors).
  int64_t column_group(int64_t) const override {
    return p_.grouping.kind == Grouping::Group ? p_.grouping.size : 0;
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const int64_t per_row = vectors_per_row(cols), groups_per_row = p_.grouping.count(1, cols);
    std::vector<float> scales(size_t(rows * groups_per_row));
    std::vector<uint32_t> codes(size_t(rows * per_row));
    global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g = 0; g < groups_per_row; ++g) {
          const int64_t c0 = g * group_cols(cols), c1 = std::min(cols, c0 + group_cols(cols));
          const GroupVectors vecs = gather(w + r * cols, imp, cols, c0, c1);
          scales[size_t(r * groups_per_row + g)] = fit_group(vecs, &codes[size_t(r * per_row + c0 / kDim)]);
        }
    });
    BitWriter bw;
    size_t gi = 0;
    p_.grouping.for_each(rows, cols, [&](int64_t r, int64_t, int64_t c0, int64_t c1) {
      bw.put_f16(scales[gi++]);
      for (int64_t c = c0; c < c1; c += kDim) bw.put(codes[size_t(r * per_row + c / kDim)], kIndexBits);
    });
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    read_vectors(b, r0, nr, [&](int64_t r, int64_t c0, float scale, uint32_t index) {
      const Point& z = codebook().point(index);
      for (int i = 0; i < kDim && c0 + i < b.cols; ++i) out[r * b.cols + c0 + i] = scale * 0.5f * float(z[size_t(i)]);
    });
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    SymbolStream s{"index", uint32_t(kCodebookSize), {}};
    read_vectors(PackedBits::of(pk), 0, pk.rows,
                 [&](int64_t, int64_t, float, uint32_t index) { s.symbols.push_back(index); });
    return {s};
  }

 private:
  static int64_t vectors_per_row(int64_t cols) { return (cols + kDim - 1) / kDim; }
  int64_t group_cols(int64_t cols) const { return p_.grouping.kind == Grouping::Row ? cols : p_.grouping.size; }

  static GroupVectors gather(const float* row, const float* imp, int64_t cols, int64_t c0, int64_t c1) {
    GroupVectors g;
    const size_t n = size_t((c1 - c0 + kDim - 1) / kDim);
    g.x.resize(n * kDim);
    g.w.resize(n * kDim);
    for (size_t v = 0; v < n; ++v) {
      float* x = &g.x[v * kDim];
      float* w = &g.w[v * kDim];
      lattice::gather_vector(row, imp, cols, c0 + int64_t(v) * kDim, kDim, x, w);
      for (int i = 1; i < kDim; ++i) g.weighted |= w[i] != w[0];
    }
    // Only relative importance matters: scale it to at most 1 so float costs cannot overflow.
    const float wmax = *std::max_element(g.w.begin(), g.w.end());
    if (wmax > 0 && std::isfinite(wmax))
      for (float& w : g.w) w /= wmax;
    return g;
  }

  // fn(row - r0, first column, scale, index) for every vector of rows [r0, r0 + nr) in
  // storage order (every row takes the same bits: its groups' scales and indices).
  template <typename Fn>
  void read_vectors(const PackedBits& b, int64_t r0, int64_t nr, Fn&& fn) const {
    if (b.bits != storage_bits(b.rows, b.cols))
      fail("packed {} holds {} bits, expected {}", spec(), b.bits, storage_bits(b.rows, b.cols));
    BitReader br = row_reader(b, 0, storage_bits(1, b.cols), r0);
    p_.grouping.for_each(nr, b.cols, [&](int64_t r, int64_t, int64_t c0, int64_t c1) {
      const float scale = br.get_f16();
      for (int64_t c = c0; c < c1; c += kDim) fn(r, c, scale, uint32_t(br.get(kIndexBits)));
    });
  }

  E8Params p_;
};

std::unique_ptr<Format> parse_e8(const std::vector<std::string>& tokens) {
  if (tokens[0] != "e8") return nullptr;
  SpecTokens t(tokens);
  const auto bits = t.take_int("b");
  if (!bits) throw Error("the rate b2 is required");
  if (*bits != 2) throw Error(fmt::format("only b2 (16 bits per 8 weights) is implemented, not b{}", *bits));
  E8Params p;
  p.grouping = Grouping::parse(t, {Grouping::Group, 128});
  if (p.grouping.kind == Grouping::Tensor) throw Error("the scale is per row or per group, not per tensor");
  if (p.grouping.kind == Grouping::Group && p.grouping.size % kDim != 0)
    throw Error(fmt::format("group size {} is not a multiple of 8", p.grouping.size));
  t.finish();
  return std::make_unique<E8Format>(p);
}

Registrar reg{FormatFamily{"e8", "e8:b2[:row|:g<G>] (fp16 scale per G inputs, G a multiple of 8, default 128, or per row)",
                           "E8 lattice codebook of 2^16 points (QuIP# E8P-like): 16 bits per 8 weights",
                           {"e8:b2", "e8:b2:row", "e8:b2:g256"},
                           parse_e8}};

}  // namespace

namespace lattice {

void nearest_e8(const double* x, double* out) {
  double z[kDim];
  for (int i = 0; i < kDim; ++i) z[i] = 2.0 * x[i];
  int best[kDim];
  nearest_e8_doubled(z, best);
  for (int i = 0; i < kDim; ++i) out[i] = 0.5 * best[i];
}

}  // namespace lattice
}  // namespace quantkit::formats
