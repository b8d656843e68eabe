// Pyramid vector quantization (Fischer 1986; van der Ouderaa et al. 2024, "Pyramid Vector
// Quantization for LLMs"): "pvq:d<D>:k<K>[:n<N>][:row|:g<G>]".
//
// A row is cut into vectors of D consecutive weights (the last one zero-padded; padding has
// no weight in any choice). Each vector is stored as shape x gain:
//  - shape: an integer vector y on the pyramid P(D, K) = {y in Z^D : sum |y_i| = K}, stored
//    as its index in Fischer's enumeration (ceil(log2 N(D, K)) bits; N is the counting
//    recursion, evaluated exactly in 128-bit integers; no codebook is stored);
//  - gain: the reconstruction is g * y / ||y||_2; g is the least-squares gain of the vector
//    on y, stored with N bits on a uniform grid [lo, hi] whose two ends are fp16 numbers per
//    row (or per group of G inputs, G a multiple of D). The grid ends are searched for the
//    least error over the group's gains.
// bits = groups * 32 + rows * ceil(cols / D) * (ceil(log2 N(D, K)) + N).
//
// Search: y maximises the (importance-weighted) cosine (sum w |x| y)^2 / sum w y^2: project
// to the pyramid (floor of |x| * K / ||x||_1), add the missing pulses greedily where the
// cosine grows most (as Opus's PVQ search does), then move single pulses between
// coordinates while that still improves the cosine; signs follow x.
#include <algorithm>
#include <cmath>
#include <limits>

#include "formats/common.h"
#include "formats/lattice_util.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

using u128 = unsigned __int128;

constexpr int kMaxDim = 128;
constexpr int kDefaultGainBits = 4;

int bit_length(u128 v) {
  int n = 0;
  while (v) ++n, v >>= 1;
  return n;
}

// N(n, k): the number of integer vectors of dimension n with L1 norm k:
// N(n, k) = N(n-1, k) + N(n, k-1) + N(n-1, k-1), N(n, 0) = 1, N(0, k > 0) = 0.
class PyramidCount {
 public:
  PyramidCount(int dim, int pulses) : k1_(pulses + 1), table_(size_t((dim + 1) * (pulses + 1)), 0) {
    const u128 limit = u128(1) << 126;
    for (int n = 0; n <= dim; ++n)
      for (int k = 0; k <= pulses; ++k) {
        u128 v = k == 0 ? 1 : n == 0 ? 0 : at(n - 1, k) + at(n, k - 1) + at(n - 1, k - 1);
        if (v >= limit) throw Error(fmt::format("the pyramid P({}, {}) has more than 2^126 points", dim, pulses));
        table_[size_t(n * k1_ + k)] = v;
      }
  }
  u128 operator()(int n, int k) const { return at(n, k); }

 private:
  u128 at(int n, int k) const { return table_[size_t(n * k1_ + k)]; }
  int k1_;
  std::vector<u128> table_;
};

// Fischer's enumeration: vectors are ordered by their first coordinate 0, +1, -1, +2, -2,
// ..., then recursively by the rest. Index in [0, N(d, K)).
u128 pyramid_index(const int* y, int d, int pulses, const PyramidCount& count) {
  u128 index = 0;
  int k = pulses;
  for (int i = 0; i < d && k > 0; ++i) {
    const int rest = d - i - 1;
    const int a = std::abs(y[i]);
    if (a == 0) continue;
    index += count(rest, k);  // the vectors whose coordinate i is 0
    for (int m = 1; m < a; ++m) index += 2 * count(rest, k - m);  // +-m for 0 < m < a
    if (y[i] < 0) index += count(rest, k - a);                     // +a comes before -a
    k -= a;
  }
  return index;
}

void pyramid_vector(u128 index, int d, int pulses, const PyramidCount& count, int* y) {
  int k = pulses;
  for (int i = 0; i < d; ++i) {
    const int rest = d - i - 1;
    y[i] = 0;
    if (k == 0) continue;
    u128 block = count(rest, k);
    if (index < block) continue;
    index -= block;
    int m = 1;
    for (;; ++m) {
      block = count(rest, k - m);
      if (index < 2 * block || m == k) break;
      index -= 2 * block;
    }
    const bool negative = index >= block;
    if (negative) index -= block;
    y[i] = negative ? -m : m;
    k -= m;
  }
  if (k > 0) y[d - 1] += y[d - 1] < 0 ? -k : k;  // only reached for out-of-range indices
}

// Greedy-plus-local-search pyramid search (see the file comment). a = |x| scaled to max 1,
// w = importance; returns the pulse counts (non-negative) in y.
class PyramidSearch {
 public:
  PyramidSearch(const float* a, const float* w, int d) : a_(a), w_(w), d_(d) {}

  void run(int pulses, int* y) {
    project(pulses, y);
    int placed = 0;
    for (int i = 0; i < d_; ++i) placed += y[i];
    for (int left = pulses - placed; left > 0; --left) add_best_pulse(y);
    move_pulses(y);
  }

 private:
  // floor(a * K / ||a||_1): at most K pulses.
  void project(int pulses, int* y) {
    double l1 = 0;
    for (int i = 0; i < d_; ++i) l1 += double(w_[i] > 0 ? a_[i] : 0.0f);
    xy_ = yy_ = 0;
    for (int i = 0; i < d_; ++i) {
      y[i] = l1 > 0 && w_[i] > 0 ? int(std::floor(double(a_[i]) * pulses / l1)) : 0;
      xy_ += double(w_[i]) * a_[i] * y[i];
      yy_ += double(w_[i]) * y[i] * y[i];
    }
  }

  // Cosine^2 score xy^2 / yy (higher is better); an empty weighted vector scores -1 so
  // that any informative pulse wins.
  static double score(double xy, double yy) { return yy > 0 ? xy * xy / yy : -1.0; }

  void add_best_pulse(int* y) {
    int best = 0;
    double best_score = -std::numeric_limits<double>::infinity();
    for (int i = 0; i < d_; ++i) {
      const double s = score(xy_ + double(w_[i]) * a_[i], yy_ + double(w_[i]) * (2.0 * y[i] + 1.0));
      if (s > best_score) best_score = s, best = i;
    }
    xy_ += double(w_[best]) * a_[best];
    yy_ += double(w_[best]) * (2.0 * y[best] + 1.0);
    ++y[best];
  }

  // Moves one pulse from i to j while the best such move improves the score.
  void move_pulses(int* y) {
    for (int round = 0; round < 4 * d_; ++round) {
      double best_score = score(xy_, yy_) * (1.0 + 1e-12);
      int from = -1, to = -1;
      for (int i = 0; i < d_; ++i) {
        if (y[i] == 0) continue;
        const double xy_i = xy_ - double(w_[i]) * a_[i], yy_i = yy_ - double(w_[i]) * (2.0 * y[i] - 1.0);
        for (int j = 0; j < d_; ++j) {
          if (j == i) continue;
          const double s = score(xy_i + double(w_[j]) * a_[j], yy_i + double(w_[j]) * (2.0 * y[j] + 1.0));
          if (s > best_score) best_score = s, from = i, to = j;
        }
      }
      if (from < 0) return;
      xy_ += double(w_[to]) * a_[to] - double(w_[from]) * a_[from];
      yy_ += double(w_[to]) * (2.0 * y[to] + 1.0) - double(w_[from]) * (2.0 * y[from] - 1.0);
      --y[from];
      ++y[to];
    }
  }

  const float* a_;
  const float* w_;
  int d_;
  double xy_ = 0, yy_ = 0;
};


struct PvqParams {
  int dim = 8, pulses = 8, gain_bits = kDefaultGainBits;
  Grouping grouping{Grouping::Row, 0};
};

// A group's gain grid: level j of N bits reconstructs lo + (hi - lo) * j / (2^N - 1).
struct GainGrid {
  float lo = 0, hi = 0;
  float level(uint32_t j, int bits) const { return lo + (hi - lo) * float(j) / float((1u << bits) - 1); }
  uint32_t nearest(double g, int bits) const {
    const uint32_t top = (1u << bits) - 1;
    if (!(hi > lo)) return 0;
    const double t = std::nearbyint((g - lo) / (double(hi) - lo) * top);
    return uint32_t(std::clamp(t, 0.0, double(top)));
  }
};

// One vector's shape (pulse counts with signs) and the least-squares fit of its gain:
// error(g) = const - 2 g along + g^2 energy; the best gain is along / energy.
struct ShapeFit {
  std::vector<int> y;
  double along = 0, energy = 0;
  double best_gain() const { return energy > 0 ? along / energy : 0.0; }
  double error(double g) const { return g * (g * energy - 2.0 * along); }
};

class PvqFormat : public RowFormat {
 public:
  explicit PvqFormat(PvqParams p)
      : p_(p), count_(p.dim, p.pulses), index_bits_(bit_length(count_(p.dim, p.pulses) - 1)) {}

  std::string spec() const override {
    std::string s = fmt::format("pvq:d{}:k{}", p_.dim, p_.pulses);
    if (p_.gain_bits != kDefaultGainBits) s += fmt::format(":n{}", p_.gain_bits);
    if (p_.grouping.kind != Grouping::Row) s += fmt::format(":{}", p_.grouping.spec());
    return s;
  }

  std::string describe() const override {
    return fmt::format("pyramid VQ: {}-dim shapes with {} pulses ({}-bit Fischer index) x {}-bit gain on an fp16 grid per {}",
                       p_.dim, p_.pulses, index_bits_, p_.gain_bits,
                       p_.grouping.kind == Grouping::Row ? "row" : fmt::format("{} inputs", p_.grouping.size));
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    const uint64_t vectors = uint64_t(rows) * uint64_t(vectors_per_row(cols));
    return uint64_t(p_.grouping.count(rows, cols)) * 32 + vectors * uint64_t(index_bits_ + p_.gain_bits);
  }

  // Groups are independent (their own scale, whole vectors).
  int64_t column_group(int64_t) const override {
    return p_.grouping.kind == Grouping::Group ? p_.grouping.size : 0;
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const int64_t per_row = vectors_per_row(cols), groups_per_row = p_.grouping.count(1, cols);
    std::vector<GainGrid> grids(size_t(rows * groups_per_row));
    std::vector<u128> indices(size_t(rows * per_row));
    std::vector<uint32_t> levels(size_t(rows * per_row));
    global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g = 0; g < groups_per_row; ++g) {
          const int64_t c0 = g * group_cols(cols), c1 = std::min(cols, c0 + group_cols(cols));
          const size_t v0 = size_t(r * per_row + c0 / p_.dim);
          grids[size_t(r * groups_per_row + g)] =
              encode_group(w + r * cols, imp, cols, c0, c1, &indices[v0], &levels[v0]);
        }
    });
    BitWriter bw;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t g = 0; g < groups_per_row; ++g) {
        const GainGrid& grid = grids[size_t(r * groups_per_row + g)];
        bw.put_f16(grid.lo);
        bw.put_f16(grid.hi);
        const int64_t c0 = g * group_cols(cols), c1 = std::min(cols, c0 + group_cols(cols));
        for (int64_t v = r * per_row + c0 / p_.dim, end = v + (c1 - c0 + p_.dim - 1) / p_.dim; v < end; ++v) {
          put_index(bw, indices[size_t(v)]);
          bw.put(levels[size_t(v)], p_.gain_bits);
        }
      }
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    std::vector<float> shape(size_t(p_.dim));
    read_vectors(b, r0, nr, [&](int64_t r, int64_t c0, const std::vector<int>& y, float gain, uint32_t) {
      unit_shape(y, shape.data());
      for (int i = 0; i < p_.dim && c0 + i < b.cols; ++i) out[r * b.cols + c0 + i] = gain * shape[size_t(i)];
    });
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    SymbolStream pulses{"pulses", uint32_t(2 * p_.pulses + 1), {}}, gains{"gain", 1u << p_.gain_bits, {}};
    const PackedBits bits = PackedBits::of(pk);
    read_vectors(bits, 0, pk.rows, [&](int64_t, int64_t, const std::vector<int>& y, float, uint32_t level) {
      for (int v : y) pulses.symbols.push_back(uint32_t(v + p_.pulses));
      gains.symbols.push_back(level);
    });
    return {pulses, gains};
  }

 private:
  int64_t vectors_per_row(int64_t cols) const { return (cols + p_.dim - 1) / p_.dim; }
  int64_t group_cols(int64_t cols) const { return p_.grouping.kind == Grouping::Row ? cols : p_.grouping.size; }

  void put_index(BitWriter& bw, u128 index) const {
    bw.put(uint64_t(index), std::min(index_bits_, 64));
    if (index_bits_ > 64) bw.put(uint64_t(index >> 64), index_bits_ - 64);
  }
  u128 get_index(BitReader& br) const {
    u128 index = br.get(std::min(index_bits_, 64));
    if (index_bits_ > 64) index |= u128(br.get(index_bits_ - 64)) << 64;
    return index;
  }

  // y / ||y||_2 (y is never zero: it holds K >= 1 pulses).
  void unit_shape(const std::vector<int>& y, float* shape) const {
    double norm2 = 0;
    for (int v : y) norm2 += double(v) * v;
    const double inv = norm2 > 0 ? 1.0 / std::sqrt(norm2) : 0.0;
    for (int i = 0; i < p_.dim; ++i) shape[i] = float(y[size_t(i)] * inv);
  }

  // The shape of one padded vector and the least-squares fit of its gain.
  ShapeFit fit_vector(const float* x, const float* w) const {
    const int d = p_.dim;
    ShapeFit fit;
    fit.y.assign(size_t(d), 0);
    float amax = 0;
    for (int i = 0; i < d; ++i) amax = std::max(amax, std::fabs(x[i]));
    std::vector<float> a(static_cast<size_t>(d)), shape(static_cast<size_t>(d));
    for (int i = 0; i < d; ++i) a[size_t(i)] = amax > 0 ? std::fabs(x[i]) / amax : 0.0f;
    PyramidSearch(a.data(), w, d).run(p_.pulses, fit.y.data());
    for (int i = 0; i < d; ++i)
      if (x[i] < 0) fit.y[size_t(i)] = -fit.y[size_t(i)];
    unit_shape(fit.y, shape.data());
    for (int i = 0; i < d; ++i) {
      fit.along += double(w[i]) * x[i] * shape[size_t(i)];
      fit.energy += double(w[i]) * shape[size_t(i)] * shape[size_t(i)];
    }
    return fit;
  }

  // Encodes the vectors of columns [c0, c1) of a row; returns the group's gain grid.
  GainGrid encode_group(const float* row, const float* imp, int64_t cols, int64_t c0, int64_t c1, u128* indices,
                        uint32_t* levels) const {
    std::vector<ShapeFit> fits;
    std::vector<float> x(size_t(p_.dim)), w(size_t(p_.dim));
    for (int64_t c = c0; c < c1; c += p_.dim) {
      lattice::gather_vector(row, imp, cols, c, p_.dim, x.data(), w.data());
      fits.push_back(fit_vector(x.data(), w.data()));
    }
    const GainGrid grid = search_grid(fits);
    for (size_t v = 0; v < fits.size(); ++v) {
      indices[v] = pyramid_index(fits[v].y.data(), p_.dim, p_.pulses, count_);
      levels[v] = grid.nearest(fits[v].best_gain(), p_.gain_bits);
    }
    return grid;
  }

  // The grid ends: from [min, max] of the best gains, each end moved inwards by a fraction
  // of the range (a small clipping search), stored as fp16; least total error wins.
  GainGrid search_grid(const std::vector<ShapeFit>& fits) const {
    double gmin = std::numeric_limits<double>::infinity(), gmax = 0;
    for (const auto& f : fits) gmin = std::min(gmin, f.best_gain()), gmax = std::max(gmax, f.best_gain());
    if (!(gmax > 0)) return {};
    const double range = gmax - gmin;
    static constexpr double kInset[] = {0.0, 1.0 / 64, 1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4};
    GainGrid best;
    double best_err = std::numeric_limits<double>::infinity();
    for (double a : kInset)
      for (double b : kInset) {
        GainGrid grid{lattice::round_scale_f16(gmin + a * range), lattice::round_scale_f16(gmax - b * range)};
        if (grid.hi < grid.lo) continue;
        double err = 0;
        for (const auto& f : fits) err += f.error(grid.level(grid.nearest(f.best_gain(), p_.gain_bits), p_.gain_bits));
        if (err < best_err) best_err = err, best = grid;
      }
    return best;
  }

  // Reads the vectors of rows [r0, r0 + nr) in storage order (every row takes the same
  // bits): fn(row - r0, first column, y, gain, gain level).
  template <typename Fn>
  void read_vectors(const PackedBits& b, int64_t r0, int64_t nr, Fn&& fn) const {
    if (b.bits != storage_bits(b.rows, b.cols))
      fail("packed {} holds {} bits, expected {}", spec(), b.bits, storage_bits(b.rows, b.cols));
    BitReader br = row_reader(b, 0, storage_bits(1, b.cols), r0);
    std::vector<int> y(size_t(p_.dim));
    p_.grouping.for_each(nr, b.cols, [&](int64_t r, int64_t, int64_t c0, int64_t c1) {
      GainGrid grid;
      grid.lo = br.get_f16();
      grid.hi = br.get_f16();
      for (int64_t c = c0; c < c1; c += p_.dim) {
        pyramid_vector(get_index(br), p_.dim, p_.pulses, count_, y.data());
        const uint32_t level = uint32_t(br.get(p_.gain_bits));
        fn(r, c, y, grid.level(level, p_.gain_bits), level);
      }
    });
  }

  PvqParams p_;
  PyramidCount count_;
  int index_bits_;
};

std::unique_ptr<Format> parse_pvq(const std::vector<std::string>& tokens) {
  if (tokens[0] != "pvq") return nullptr;
  SpecTokens t(tokens);
  PvqParams p;
  const auto dim = t.take_int("d"), pulses = t.take_int("k");
  if (!dim || !pulses) throw Error("the vector dimension d<D> and the pulse count k<K> are required");
  if (*dim < 2 || *dim > kMaxDim) throw Error(fmt::format("dimension {} out of range [2, {}]", *dim, kMaxDim));
  if (*pulses < 1 || *pulses > 4096) throw Error(fmt::format("pulse count {} out of range [1, 4096]", *pulses));
  p.dim = int(*dim);
  p.pulses = int(*pulses);
  if (auto n = t.take_int("n")) {
    if (*n < 1 || *n > 16) throw Error(fmt::format("gain bits {} out of range [1, 16]", *n));
    p.gain_bits = int(*n);
  }
  p.grouping = Grouping::parse(t, {Grouping::Row, 0});
  if (p.grouping.kind == Grouping::Tensor) throw Error("the gain grid is per row or per group, not per tensor");
  if (p.grouping.kind == Grouping::Group && p.grouping.size % p.dim != 0)
    throw Error(fmt::format("group size {} is not a multiple of the dimension {}", p.grouping.size, p.dim));
  t.finish();
  return std::make_unique<PvqFormat>(p);
}

Registrar reg{FormatFamily{
    "pvq",
    "pvq:d<D>:k<K>[:n<N>][:row|:g<G>] (D = 2..128 weights per vector, K pulses with N(D,K) < 2^126, "
    "N = 1..16 gain bits (default 4), gain grid per row (default) or per G inputs, G a multiple of D)",
    "pyramid vector quantization: Fischer-indexed integer shape on the L1 pyramid x quantized gain",
    {"pvq:d8:k8", "pvq:d32:k20", "pvq:d32:k45", "pvq:d32:k96", "pvq:d16:k22:g128"},
    parse_pvq}};

}  // namespace

namespace lattice {

u128 pyramid_count(int d, int k) { return PyramidCount(d, k)(d, k); }
u128 pyramid_index(const int* y, int d, int k) { return formats::pyramid_index(y, d, k, PyramidCount(d, k)); }
void pyramid_vector(u128 index, int d, int k, int* y) { formats::pyramid_vector(index, d, k, PyramidCount(d, k), y); }

}  // namespace lattice
}  // namespace quantkit::formats
