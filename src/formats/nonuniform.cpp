// Non-uniform scalar grids.
//
//  nf<b>:<grouping>[:mse]      QLoRA NormalFloat: quantiles of N(0,1) normalised to [-1, 1]
//                              with an exact zero; absmax scale per group, or (:mse) a
//                              weighted scale search.
//  pow2:b<b>:<grouping>        power-of-two grid 0, +-2^-k (sign + exponent code).
//  sqrt2:b<b>:<grouping>       ASQ's POST grid 0, +-(sqrt 2)^-k (sign + exponent code).
//  nupes:b<b>:<grouping>       NUPES power-exponent grid sign(u)|u|^a over a uniform u with 2^b
//                              levels in [-1, 1]; a searched per tensor, stored as fp16.
//  lloyd:b<b>:<grouping>       Lloyd-Max / weighted 1-D k-means codebook of 2^b fp16 levels
//                              per tensor, row or group.
//
// The grid formats store per group an fp16 scale (fp32 per tensor) followed by the b-bit
// codes of the group; decoding is scale * table[code]. Lloyd stores per group its 2^b fp16
// codewords followed by the codes.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "formats/common.h"
#include "formats/scalar_grid.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

using grid::GroupSpan;
using grid::LevelTable;
using grid::ScaleStorage;

// ---- level tables -------------------------------------------------------------------------


// NormalFloat levels as QLoRA builds NF4 (bitsandbytes create_normal_map): 2^(b-1) positive
// quantiles Phi^-1 over linspace(offset, 0.5, 2^(b-1) + 1) without its last point,
// 2^(b-1) - 1 negative ones over linspace(offset, 0.5, 2^(b-1)) without its last point, and
// an exact 0; divided by the largest. offset is the mean of 1 - 1/(2(n-1)) and 1 - 1/(2n)
// for n = 2^b levels (0.9677083 for NF4), which puts the outermost quantile where an
// n-level (resp. n-1 level) symmetric quantile grid would put it.
std::vector<float> normal_float_levels(int bits) {
  const int n = 1 << bits, half = n / 2;
  const double offset = 0.5 * ((1.0 - 1.0 / (2.0 * (n - 1))) + (1.0 - 1.0 / (2.0 * n)));
  auto linspace_point = [&](int i, int count) { return offset + (0.5 - offset) * i / double(count - 1); };
  std::vector<double> v;
  for (int i = 0; i < half; ++i) v.push_back(normal_quantile(linspace_point(i, half + 1)));
  for (int i = 0; i < half - 1; ++i) v.push_back(-normal_quantile(linspace_point(i, half)));
  v.push_back(0.0);
  std::sort(v.begin(), v.end());
  const double top = v.back();
  std::vector<float> levels;
  for (double x : v) levels.push_back(float(x / top));
  return levels;
}

// Sign + exponent code: code = sign << (b-1) | e with e in [0, 2^(b-1)); e = 0 is zero (both
// signs), else the magnitude is base^-(e-1) for base 2 (pow2) or sqrt 2 (POST).
std::vector<float> sign_exponent_levels(int bits, double log2_base) {
  const uint32_t half = 1u << (bits - 1);
  std::vector<float> lut(size_t(1) << bits);
  for (uint32_t code = 0; code < lut.size(); ++code) {
    const uint32_t e = code & (half - 1);
    const float mag = e == 0 ? 0.0f : float(std::exp2(-double(e - 1) * log2_base));
    lut[code] = (code & half) ? -mag : mag;
  }
  return lut;
}

// NUPES: u_k = -1 + 2k/(2^b - 1), level_k = sign(u_k) |u_k|^a (no zero level: 2^b is even).
std::vector<float> power_exponent_levels(int bits, float a) {
  const int n = 1 << bits;
  std::vector<float> lut(static_cast<size_t>(n));
  for (int k = 0; k < n; ++k) {
    const double u = -1.0 + 2.0 * k / double(n - 1);
    lut[size_t(k)] = float(std::copysign(std::pow(std::fabs(u), double(a)), u));
  }
  return lut;
}

// ---- scaled-grid formats (nf, pow2, sqrt2, nupes) ------------------------------------------

enum class GridKind { NormalFloat, Pow2, Sqrt2, Nupes };

struct GridParams {
  GridKind kind;
  int bits;
  Grouping grouping;
  bool mse = false;  // nf only: weighted scale search instead of absmax
};

// NUPES exponent search range: a in [1/2, 4] (a = 1 is the uniform midrise grid).
constexpr double kMinExponent = 0.5, kMaxExponent = 4.0;

class GridFormat : public RowFormat {
 public:
  explicit GridFormat(GridParams p) : p_(p), storage_(grid::scale_storage(p.grouping)) {
    if (p_.bits < 2 || p_.bits > 8) throw Error(fmt::format("bits {} out of range [2, 8]", p_.bits));
    if (p_.kind == GridKind::NormalFloat) table_ = LevelTable(normal_float_levels(p_.bits));
    if (p_.kind == GridKind::Pow2) table_ = LevelTable(sign_exponent_levels(p_.bits, 1.0));
    if (p_.kind == GridKind::Sqrt2) table_ = LevelTable(sign_exponent_levels(p_.bits, 0.5));
  }

  std::string spec() const override {
    const std::string g = p_.grouping.spec();
    switch (p_.kind) {
      case GridKind::NormalFloat: return fmt::format("nf{}:{}{}", p_.bits, g, p_.mse ? ":mse" : "");
      case GridKind::Pow2: return fmt::format("pow2:b{}:{}", p_.bits, g);
      case GridKind::Sqrt2: return fmt::format("sqrt2:b{}:{}", p_.bits, g);
      default: return fmt::format("nupes:b{}:{}", p_.bits, g);
    }
  }

  std::string describe() const override {
    const std::string per = p_.grouping.kind == Grouping::Group ? fmt::format("{} inputs", p_.grouping.size)
                                                                  : p_.grouping.spec();
    switch (p_.kind) {
      case GridKind::NormalFloat:
        return fmt::format("{}-bit NormalFloat (QLoRA), {} scale per {}", p_.bits,
                           p_.mse ? "weighted-MSE" : "absmax", per);
      case GridKind::Pow2: return fmt::format("{}-bit power-of-two grid 0, +-2^-k, scale per {}", p_.bits, per);
      case GridKind::Sqrt2: return fmt::format("{}-bit power-of-sqrt(2) grid 0, +-2^-k/2 (POST), scale per {}", p_.bits, per);
      default: return fmt::format("{}-bit NUPES grid sign(u)|u|^a, a searched per tensor, scale per {}", p_.bits, per);
    }
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(header_bits()) + uint64_t(p_.grouping.count(rows, cols)) * uint64_t(grid::scale_bits(storage_)) +
           uint64_t(rows * cols) * uint64_t(p_.bits);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const Fit f = fit(w, rows, cols, imp);
    std::vector<uint32_t> codes(size_t(rows * cols));
    const auto spans = grid::group_spans(p_.grouping, rows, cols);
    for (size_t i = 0; i < spans.size(); ++i)
      grid::encode_grid(f.table, f.scales[i], w + spans[i].offset, spans[i].n, codes.data() + spans[i].offset);
    return pack(f, codes, rows, cols);
  }

  // Row and tensor scales (and NUPES's per-tensor exponent): GPTQ column by column with the
  // grid and scales fitted up front. Groups: Format's block encoder.
  std::unique_ptr<ColumnEncoder> column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                bool static_groups) const override {
    if (p_.grouping.kind == Grouping::Group) return Format::column_encoder(w, rows, cols, imp, static_groups);
    auto f = std::make_shared<Fit>(fit(w, rows, cols, imp));
    return std::make_unique<grid::FixedScaleColumnEncoder>(
        rows, cols, f->scales,
        [f](float x, float scale) { return f->table.nearest(scale == 0.0f ? 0.0f : x / scale); },
        [f](uint32_t code, float scale) { return scale * f->table.value(code); },
        [this, f, rows, cols](const std::vector<float>&, const std::vector<uint32_t>& codes) {
          return pack(*f, codes, rows, cols);
        });
  }

  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    BitReader head(b);
    LevelTable own;
    const LevelTable& t = read_table(head, own);
    const ScaleStorage st = storage_;
    const int bits = p_.bits;
    decode_grouped_rows(b, p_.grouping, uint64_t(header_bits()), uint64_t(grid::scale_bits(st)), bits, r0, nr, out,
                        [&](BitReader& br) {
                          return [s = grid::get_scale(br, st), &t, bits](BitReader& br, float* o, int64_t n) {
                            for (int64_t i = 0; i < n; ++i) o[i] = s * t.value(uint32_t(br.get(bits)));
                          };
                        });
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    Contents c = read(pk);
    return {SymbolStream{"levels", 1u << p_.bits, std::move(c.codes)}};
  }

  // Groups of inputs are independent, except under NUPES's per-tensor exponent.
  int64_t column_group(int64_t cols) const override {
    return p_.grouping.kind == Grouping::Group && p_.kind != GridKind::Nupes ? p_.grouping.size : 0;
  }

 private:
  struct Contents {
    LevelTable table;
    std::vector<GroupSpan> spans;
    std::vector<float> scales;
    std::vector<uint32_t> codes;
  };

  int header_bits() const { return p_.kind == GridKind::Nupes ? 16 : 0; }

  // The decode table: the fixed grid, or NUPES's from the stored exponent (built in `own`).
  const LevelTable& read_table(BitReader& br, LevelTable& own) const {
    if (p_.kind != GridKind::Nupes) return table_;
    const float a = br.get_f16();
    if (!(a >= kMinExponent / 2 && a <= kMaxExponent * 2)) fail("corrupt {} data: exponent {}", spec(), a);
    own = LevelTable(power_exponent_levels(p_.bits, a));
    return own;
  }

  // The grid (NUPES: its searched exponent) and the scale of every group.
  struct Fit {
    float exponent = 0;
    LevelTable table;
    std::vector<float> scales;
  };

  Fit fit(const float* w, int64_t rows, int64_t cols, const float* imp) const {
    const auto spans = grid::group_spans(p_.grouping, rows, cols);
    Fit f;
    f.table = table_;
    if (p_.kind == GridKind::Nupes) {
      f.exponent = search_exponent(w, spans, cols, imp);
      f.table = LevelTable(power_exponent_levels(p_.bits, f.exponent));
    }
    const bool search = p_.kind != GridKind::NormalFloat || p_.mse;
    // Both fits return scales already rounded to their storage (rounding again is exact).
    f.scales = grid::fit_group_scales(p_.grouping, storage_, w, rows, cols, imp,
                                      [&](const float* x, const float* gi, int64_t n) -> double {
                                        return search ? grid::search_grid_scale(f.table, grid::sorted_sample(x, gi, n),
                                                                                storage_).scale
                                                      : grid::absmax_scale(f.table, x, n, storage_);
                                      });
    return f;
  }

  Packed pack(const Fit& f, const std::vector<uint32_t>& codes, int64_t rows, int64_t cols) const {
    BitWriter bw;
    if (p_.kind == GridKind::Nupes) bw.put_f16(f.exponent);
    const auto spans = grid::group_spans(p_.grouping, rows, cols);
    for (size_t i = 0; i < spans.size(); ++i) {
      grid::put_scale(bw, f.scales[i], storage_);
      grid::put_codes(bw, codes.data() + spans[i].offset, spans[i].n, p_.bits);
    }
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  Contents read(const Packed& pk) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    BitReader br(pk);
    Contents c;
    LevelTable own;
    c.table = read_table(br, own);
    c.spans = grid::group_spans(p_.grouping, pk.rows, pk.cols);
    c.scales.resize(c.spans.size());
    c.codes.resize(size_t(pk.rows * pk.cols));
    for (size_t i = 0; i < c.spans.size(); ++i) {
      c.scales[i] = grid::get_scale(br, storage_);
      grid::get_codes(br, c.codes.data() + c.spans[i].offset, c.spans[i].n, p_.bits);
    }
    return c;
  }

  // The per-tensor exponent a (fp16) minimising the total weighted error with per-group
  // scale search. Evaluated on a sample of at most 256 evenly spread groups, each cut to at
  // most 4096 evenly strided weights, so the search costs the same for any matrix size:
  // a geometric coarse grid over [1/2, 4], then a finer grid around the best.
  float search_exponent(const float* w, const std::vector<GroupSpan>& spans, int64_t cols, const float* imp) const {
    constexpr size_t kGroups = 256;
    constexpr int64_t kPerGroup = 4096;
    const size_t m = std::min(kGroups, spans.size());
    std::vector<grid::SortedGroup> sample;
    for (size_t j = 0; j < m; ++j) {
      const GroupSpan& s = spans[j * spans.size() / m];
      const int64_t stride = (s.n + kPerGroup - 1) / kPerGroup;
      std::vector<float> x, xi;
      for (int64_t i = 0; i < s.n; i += stride) {
        x.push_back(w[s.offset + i]);
        if (imp) xi.push_back(imp[(s.offset + i) % cols]);
      }
      sample.emplace_back(x.data(), imp ? xi.data() : nullptr, int64_t(x.size()));
    }
    auto total_error = [&](float a) {
      const LevelTable t(power_exponent_levels(p_.bits, a));
      double e = 0;
      for (const auto& g : sample) e += grid::search_grid_scale(t, g, storage_).err;
      return e;
    };
    constexpr int kCoarse = 24;
    const double step = std::log(kMaxExponent / kMinExponent) / kCoarse;
    float best_a = grid::round_f16(float(kMinExponent));
    double best = total_error(best_a);
    auto consider = [&](double a) {
      const float af = grid::round_f16(float(a));
      if (af == best_a) return;
      const double e = total_error(af);
      if (e < best) best = e, best_a = af;
    };
    for (int k = 1; k <= kCoarse; ++k) consider(kMinExponent * std::exp(step * k));
    const double center = best_a;
    for (int f = -3; f <= 3; ++f)
      if (f != 0) consider(std::clamp(center * std::exp(step * f / 4.0), kMinExponent, kMaxExponent));
    return best_a;
  }

  GridParams p_;
  ScaleStorage storage_;
  LevelTable table_;  // fixed grids (all but nupes)
};

// ---- Lloyd-Max / weighted 1-D k-means ------------------------------------------------------

using grid::SortedGroup;

// Lloyd iterations from the given codewords: the cells of the codewords are runs of the
// sorted data found by binary search at the midpoints, each codeword moves to its cell's
// weighted mean; stops at a fixed point (no cell boundary moves).
std::vector<double> lloyd_iterate(const SortedGroup& d, std::vector<double> code) {
  const int64_t n = d.size();
  const size_t k = code.size();
  std::vector<int64_t> bounds, next(k + 1);
  constexpr int kMaxIterations = 10000;
  for (int it = 0; it < kMaxIterations; ++it) {
    next[0] = 0, next[k] = n;
    for (size_t c = 1; c < k; ++c) next[c] = d.first_at_least(0.5 * (code[c - 1] + code[c]), next[c - 1]);
    if (next == bounds) break;
    bounds = next;
    for (size_t c = 0; c < k; ++c)
      if (bounds[c + 1] > bounds[c]) code[c] = d.mean(bounds[c], bounds[c + 1]);
    std::sort(code.begin(), code.end());
  }
  return code;
}

// One layer of the k-means dynamic program over cut positions: cur[j] = min over i < j of
// prev[i] + cost(cuts[i], cuts[j]). The minimising i is monotone in j (1-D k-means), so
// divide and conquer solves a layer in O(A log A) cost evaluations for A cut positions.
struct KMeansLayer {
  const SortedGroup& d;
  const std::vector<int64_t>& cuts;
  const std::vector<double>& prev;
  std::vector<double>& cur;
  int32_t* split;
  int64_t first_i;  // the previous layer is finite from this index on

  // cur[j] for j in [lo, hi], knowing the optimal split lies in [ilo, ihi].
  void solve(int64_t lo, int64_t hi, int64_t ilo, int64_t ihi) {
    if (lo > hi) return;
    const int64_t mid = (lo + hi) / 2;
    int64_t best_i = std::max(ilo, first_i);
    double best = std::numeric_limits<double>::infinity();
    for (int64_t i = std::max(ilo, first_i); i <= std::min(ihi, mid - 1); ++i) {
      const double e = prev[size_t(i)] + d.cost(cuts[size_t(i)], cuts[size_t(mid)]);
      if (e < best) best = e, best_i = i;
    }
    cur[size_t(mid)] = best;
    split[mid] = int32_t(best_i);
    solve(lo, mid - 1, ilo, best_i);
    solve(mid + 1, hi, best_i, ihi);
  }
};

// The optimal codebook when cells may only start at the given cut positions (ascending,
// from 0 to n): with every position as a cut, the exact weighted 1-D k-means optimum. Uses
// min(k, cuts - 1) non-empty cells.
std::vector<double> optimal_codebook(const SortedGroup& d, int k, const std::vector<int64_t>& cuts) {
  const int64_t atoms = int64_t(cuts.size()) - 1;
  const int layers = int(std::min<int64_t>(k, atoms));
  std::vector<double> prev(size_t(atoms) + 1), cur(size_t(atoms) + 1);
  std::vector<int32_t> split(size_t(layers) * size_t(atoms + 1), 0);
  for (int64_t j = 0; j <= atoms; ++j) prev[size_t(j)] = d.cost(0, cuts[size_t(j)]);
  for (int c = 1; c < layers; ++c) {
    KMeansLayer layer{d, cuts, prev, cur, split.data() + size_t(c) * size_t(atoms + 1), c};
    layer.solve(c + 1, atoms, c, atoms - 1);
    std::swap(prev, cur);
  }
  std::vector<double> code(static_cast<size_t>(layers));
  int64_t j = atoms;
  for (int c = layers - 1; c >= 0; --c) {
    const int64_t i = c == 0 ? 0 : split[size_t(c) * size_t(atoms + 1) + size_t(j)];
    code[size_t(c)] = d.mean(cuts[size_t(i)], cuts[size_t(j)]);
    j = i;
  }
  return code;
}

// Up to this many weights a group gets the exact optimum (every position a cut). Larger
// groups get the optimum over this many runs of equal count, polished by Lloyd iterations:
// Lloyd alone from quantiles stalls in local optima on sampled data (1 dB worse at 4 bits
// on rows of 1024 Gaussian weights), the coarse optimum starts it next to the global one.
constexpr int64_t kExactLimit = 1024;

std::vector<double> fit_levels(const SortedGroup& d, int k) {
  const int64_t n = d.size();
  const int64_t atoms = std::min(n, kExactLimit);
  std::vector<int64_t> cuts(size_t(atoms) + 1);
  for (int64_t a = 0; a <= atoms; ++a) cuts[size_t(a)] = a * n / atoms;
  std::vector<double> code = optimal_codebook(d, k, cuts);
  return atoms == n ? code : lloyd_iterate(d, std::move(code));
}

// The fp16 codebook of one group, ascending, 2^bits entries (repeated when the group has
// fewer weights than codewords).
std::vector<float> fit_codebook(const float* x, const float* imp, int64_t n, int bits) {
  const int k = 1 << bits;
  const std::vector<double> code = fit_levels(grid::sorted_sample(x, imp, n), k);
  std::vector<float> book(static_cast<size_t>(k));
  for (int c = 0; c < k; ++c) book[size_t(c)] = grid::round_f16(float(code[std::min(size_t(c), code.size() - 1)]));
  std::sort(book.begin(), book.end());
  return book;
}

// Index of the codeword nearest to x in an ascending codebook.
uint32_t nearest_codeword(const float* book, int k, float x) {
  int lo = 0, hi = k - 1;  // invariant: answer in [lo, hi]
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (x - book[mid] > book[mid + 1] - x) lo = mid + 1;
    else hi = mid;
  }
  return uint32_t(lo);
}

class LloydFormat : public RowFormat {
 public:
  LloydFormat(int bits, Grouping g) : bits_(bits), grouping_(g) {
    if (bits_ < 1 || bits_ > 8) throw Error(fmt::format("bits {} out of range [1, 8]", bits_));
  }

  std::string spec() const override { return fmt::format("lloyd:b{}:{}", bits_, grouping_.spec()); }
  std::string describe() const override {
    return fmt::format("{}-bit Lloyd-Max codebook ({} fp16 levels, weighted 1-D k-means) per {}", bits_,
                       1 << bits_,
                       grouping_.kind == Grouping::Group ? fmt::format("{} inputs", grouping_.size) : grouping_.spec());
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(grouping_.count(rows, cols)) * (uint64_t(16) << bits_) + uint64_t(rows * cols) * uint64_t(bits_);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const int k = 1 << bits_;
    const auto spans = grid::group_spans(grouping_, rows, cols);
    std::vector<float> books(spans.size() * size_t(k));
    std::vector<uint32_t> codes(size_t(rows * cols));
    grid::for_each_group(spans, rows, cols, imp, [&](size_t i, const GroupSpan& s, const float* gi) {
      const std::vector<float> book = fit_codebook(w + s.offset, gi, s.n, bits_);
      std::copy(book.begin(), book.end(), books.begin() + i * size_t(k));
      for (int64_t j = 0; j < s.n; ++j) codes[size_t(s.offset + j)] = nearest_codeword(book.data(), k, w[s.offset + j]);
    });
    BitWriter bw;
    for (size_t i = 0; i < spans.size(); ++i) {
      for (int c = 0; c < k; ++c) bw.put_f16(books[i * size_t(k) + size_t(c)]);
      grid::put_codes(bw, codes.data() + spans[i].offset, spans[i].n, bits_);
    }
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  // Per group: its 2^b fp16 codewords, then its codes.
  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    std::vector<float> book(size_t(1) << bits_);
    const int bits = bits_;
    decode_grouped_rows(b, grouping_, 0, uint64_t(16) << bits_, bits, r0, nr, out, [&](BitReader& br) {
      for (float& v : book) v = br.get_f16();
      return [&book, bits](BitReader& br, float* o, int64_t n) {
        for (int64_t i = 0; i < n; ++i) o[i] = book[size_t(br.get(bits))];
      };
    });
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    std::vector<float> books;
    std::vector<uint32_t> codes;
    read(pk, books, codes);
    return {SymbolStream{"indices", 1u << bits_, std::move(codes)}};
  }

  int64_t column_group(int64_t cols) const override { return grouping_.kind == Grouping::Group ? grouping_.size : 0; }

 private:
  std::vector<GroupSpan> read(const Packed& pk, std::vector<float>& books, std::vector<uint32_t>& codes) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    const int k = 1 << bits_;
    auto spans = grid::group_spans(grouping_, pk.rows, pk.cols);
    BitReader br(pk);
    books.resize(spans.size() * size_t(k));
    codes.resize(size_t(pk.rows * pk.cols));
    for (size_t i = 0; i < spans.size(); ++i) {
      for (int c = 0; c < k; ++c) books[i * size_t(k) + size_t(c)] = br.get_f16();
      grid::get_codes(br, codes.data() + spans[i].offset, spans[i].n, bits_);
    }
    return spans;
  }

  int bits_;
  Grouping grouping_;
};

// ---- spec parsing -------------------------------------------------------------------------

// "b<bits>" is required by the pow2/sqrt2/nupes/lloyd families.
int take_bits(SpecTokens& t) {
  const auto b = t.take_int("b");
  if (!b) throw Error("missing the bit width b<bits>");
  return int(*b);
}

std::unique_ptr<Format> parse_nf(const std::vector<std::string>& tokens) {
  const auto bits = int_after(tokens[0], "nf");
  if (!bits) return nullptr;
  SpecTokens t(tokens);
  GridParams p{GridKind::NormalFloat, int(*bits), Grouping::parse(t, {Grouping::Group, 64})};
  p.mse = t.take_flag("mse");
  t.finish();
  return std::make_unique<GridFormat>(p);
}

// Parser of a "<name>:b<bits>:<grouping>" grid family.
std::function<std::unique_ptr<Format>(const std::vector<std::string>&)> grid_parser(const std::string& name,
                                                                                   GridKind kind) {
  return [name, kind](const std::vector<std::string>& tokens) -> std::unique_ptr<Format> {
    if (tokens[0] != name) return nullptr;
    SpecTokens t(tokens);
    const int bits = take_bits(t);
    GridParams p{kind, bits, Grouping::parse(t, {Grouping::Group, 128})};
    t.finish();
    return std::make_unique<GridFormat>(p);
  };
}

std::unique_ptr<Format> parse_lloyd(const std::vector<std::string>& tokens) {
  if (tokens[0] != "lloyd") return nullptr;
  SpecTokens t(tokens);
  const int bits = take_bits(t);
  const Grouping g = Grouping::parse(t, {Grouping::Group, 128});
  t.finish();
  return std::make_unique<LloydFormat>(bits, g);
}

Registrar reg_nf{FormatFamily{
    "nf", "nf<b>:g<G>|row|tensor[:mse] (b = 2..8)",
    "QLoRA NormalFloat grid (N(0,1) quantiles with exact zero), absmax or weighted-MSE scale per group",
    {"nf4:g64", "nf3:g64", "nf4:g64:mse", "nf4:g128"},
    parse_nf}};

Registrar reg_pow2{FormatFamily{"pow2", "pow2:b<b>:g<G>|row|tensor (b = 2..8)",
                                "power-of-two grid 0, +-2^-k (sign + exponent code), weighted scale search",
                                {"pow2:b4:g128", "pow2:b3:g128"},
                                grid_parser("pow2", GridKind::Pow2)}};

Registrar reg_sqrt2{FormatFamily{"sqrt2", "sqrt2:b<b>:g<G>|row|tensor (b = 2..8)",
                                 "ASQ POST grid 0, +-(sqrt 2)^-k (sign + exponent code), weighted scale search",
                                 {"sqrt2:b4:g128", "sqrt2:b3:g128"},
                                 grid_parser("sqrt2", GridKind::Sqrt2)}};

Registrar reg_nupes{FormatFamily{"nupes", "nupes:b<b>:g<G>|row|tensor (b = 2..8)",
                                 "NUPES power-exponent grid sign(u)|u|^a, a per tensor (fp16), weighted scale search",
                                 {"nupes:b4:g128", "nupes:b3:g128", "nupes:b2:g128"},
                                 grid_parser("nupes", GridKind::Nupes)}};

Registrar reg_lloyd{FormatFamily{"lloyd", "lloyd:b<b>:g<G>|row|tensor (b = 1..8)",
                                 "Lloyd-Max codebook of 2^b fp16 levels per tensor/row/group (weighted 1-D k-means)",
                                 {"lloyd:b2:tensor", "lloyd:b3:tensor", "lloyd:b4:tensor", "lloyd:b3:g128", "lloyd:b2:row"},
                                 parse_lloyd}};

}  // namespace
}  // namespace quantkit::formats
