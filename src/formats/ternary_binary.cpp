// Ternary, binary and PTQ1.61 formats.
//
//  ternary:<rule>:<grouping>   {-1, 0, +1} x scale (BitNet b1.58). rule absmean: scale =
//                              mean|W| of the group, trits = clip(round(W / scale), -1, 1);
//                              absmedian: scale = median|W|; opt: scale and threshold that
//                              minimise the weighted squared error (exact). Scales fp16 per
//                              row/group (fp32 per tensor), then all trits packed 5 per byte
//                              (3^5 = 243 <= 256), a last partial chunk of r trits in
//                              ceil(r log2 3) bits.
//  binary:<grouping>           sign x scale, scale = sum imp|w| / sum imp (the weighted
//                              optimum for given signs). Per group: scale, then 1 bit/weight.
//  ptq161:p<P>[:col]           PTQ1.61 (Zhao et al. 2025): a 1-bit per-input-channel mask marks
//                              the P% salient channels (by importance, else column norm);
//                              those are stored as int4 per-row asymmetric, the others
//                              binarised per row as mean +- scale; :col adds the paper's
//                              per-input-channel scaling factor (fp16 per channel).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "formats/common.h"
#include "formats/int_uniform.h"
#include "formats/scalar_grid.h"
#include "quantkit/fp16.h"

namespace quantkit::formats {
namespace {

using grid::GroupSpan;
using grid::ScaleStorage;

std::string per_text(const Grouping& g) {
  return g.kind == Grouping::Group ? fmt::format("{} inputs", g.size) : g.spec();
}

// sum imp|x| / sum imp: the scale s minimising sum imp (|x| - s)^2, i.e. the weighted
// optimum for sign quantization; the plain mean |x| when the group carries no weight.
double weighted_mean_abs(const float* x, const float* imp, int64_t n) {
  double a = 0, b = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double wt = imp ? double(imp[i]) : 1.0;
    a += wt * std::fabs(double(x[i])), b += wt;
  }
  if (!(b > 0)) return imp ? weighted_mean_abs(x, nullptr, n) : 0.0;
  return a / b;
}

// ---- trit packing -------------------------------------------------------------------------

// Bits of a last partial chunk of r < 5 trits: ceil(r log2 3).
constexpr int kTritTailBits[5] = {0, 2, 4, 5, 7};

uint64_t packed_trit_bits(int64_t n) { return uint64_t(n / 5) * 8 + uint64_t(kTritTailBits[n % 5]); }

// Trits are -1, 0, +1; stored as digits t + 1 of a base-3 number, first trit least significant.
void put_trits(BitWriter& w, const int8_t* t, int64_t n) {
  for (int64_t i = 0; i < n; i += 5) {
    const int r = int(std::min<int64_t>(5, n - i));
    uint32_t v = 0;
    for (int j = r - 1; j >= 0; --j) v = v * 3 + uint32_t(t[i + j] + 1);
    w.put(v, r == 5 ? 8 : kTritTailBits[r]);
  }
}

// Trits [t0, t1) of a stream of n trits that starts at the reader's position, into t[0,
// t1 - t0): every chunk but a last partial one is 8 bits, so the first is found directly.
void get_trits(BitReader& rd, int64_t n, int64_t t0, int64_t t1, int8_t* t) {
  static constexpr uint32_t kPow3[6] = {1, 3, 9, 27, 81, 243};
  rd.seek(rd.position() + uint64_t(t0 / 5) * 8);
  for (int64_t i = t0 - t0 % 5; i < t1; i += 5) {
    const int r = int(std::min<int64_t>(5, n - i));
    uint32_t v = uint32_t(rd.get(r == 5 ? 8 : kTritTailBits[r]));
    if (v >= kPow3[r]) fail("corrupt ternary data: chunk value {} >= 3^{}", v, r);
    for (int64_t j = i; j < i + r; ++j, v /= 3)
      if (j >= t0 && j < t1) t[j - t0] = int8_t(int(v % 3) - 1);
  }
}

// ---- ternary -------------------------------------------------------------------------------

enum class TernaryRule { AbsMean, AbsMedian, Opt };
const char* kTernaryRuleNames[] = {"absmean", "absmedian", "opt"};

double median_abs(const float* x, int64_t n) {
  std::vector<float> a(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) a[size_t(i)] = std::fabs(x[i]);
  const size_t mid = size_t(n) / 2;
  std::nth_element(a.begin(), a.begin() + mid, a.end());
  if (n % 2) return a[mid];
  const float below = *std::max_element(a.begin(), a.begin() + mid);
  return 0.5 * (double(below) + double(a[mid]));
}

// The scale s of {-s, 0, s} minimising sum imp (x - Q(x))^2 exactly: with the k largest |x|
// mapped to +-s, the best s is A_k / B_k (A = sum imp|x|, B = sum imp over them) and the
// error is sum imp x^2 - A_k^2 / B_k, so the best k maximises A_k^2 / B_k.
double optimal_ternary_scale(const float* x, const float* imp, int64_t n) {
  std::vector<float> mag(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) mag[size_t(i)] = std::fabs(x[i]);
  const grid::SortedGroup g = grid::sorted_sample(mag.data(), imp, n);  // ascending: the k largest are [m - k, m)
  const int64_t m = g.size();
  double best_gain = 0, best_scale = 0;
  for (int64_t i = m - 1; i >= 0; --i) {
    const double a = g.sum(i, m), b = g.weight(i, m);
    if (b > 0 && a * a / b > best_gain) best_gain = a * a / b, best_scale = a / b;
  }
  return best_scale;
}

int8_t to_trit(float x, float scale) {
  if (scale == 0.0f) return 0;
  return int8_t(std::clamp(std::nearbyint(x / scale), -1.0f, 1.0f));  // BitNet's RoundClip
}

class TernaryFormat : public RowFormat {
 public:
  TernaryFormat(TernaryRule rule, Grouping g) : rule_(rule), grouping_(g), storage_(grid::scale_storage(g)) {}

  std::string spec() const override {
    return fmt::format("ternary:{}:{}", kTernaryRuleNames[int(rule_)], grouping_.spec());
  }
  std::string describe() const override {
    static const char* how[] = {"mean|W| scale (BitNet b1.58)", "median|W| scale", "weighted-MSE optimal scale"};
    return fmt::format("ternary {{-1,0,+1}} x {} per {}, 5 trits per byte", how[int(rule_)], per_text(grouping_));
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(grouping_.count(rows, cols)) * uint64_t(grid::scale_bits(storage_)) + packed_trit_bits(rows * cols);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const auto spans = grid::group_spans(grouping_, rows, cols);
    const std::vector<float> scales = fit_scales(w, rows, cols, imp);
    std::vector<int8_t> trits(size_t(rows * cols));
    for (size_t i = 0; i < spans.size(); ++i)
      for (int64_t j = spans[i].offset; j < spans[i].offset + spans[i].n; ++j) trits[size_t(j)] = to_trit(w[j], scales[i]);
    return pack(scales, trits, rows, cols);
  }

  // Row and tensor scales: GPTQ column by column with the scales fitted up front.
  std::unique_ptr<ColumnEncoder> column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                bool static_groups) const override {
    if (grouping_.kind == Grouping::Group) return Format::column_encoder(w, rows, cols, imp, static_groups);
    return std::make_unique<grid::FixedScaleColumnEncoder>(
        rows, cols, fit_scales(w, rows, cols, imp),
        [](float x, float scale) { return uint32_t(to_trit(x, scale) + 1); },
        [](uint32_t code, float scale) { return scale * float(int(code) - 1); },
        [this, rows, cols](const std::vector<float>& scales, const std::vector<uint32_t>& codes) {
          std::vector<int8_t> trits(codes.size());
          for (size_t i = 0; i < codes.size(); ++i) trits[i] = int8_t(int(codes[i]) - 1);
          return pack(scales, trits, rows, cols);
        });
  }

  // All scales come first, then one trit stream: a row's trits start inside a chunk.
  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    const int64_t cols = b.cols;
    const uint64_t sbits = uint64_t(grid::scale_bits(storage_));
    std::vector<int8_t> trits(size_t(nr * cols));
    BitReader br(b);
    br.seek(uint64_t(grouping_.count(b.rows, cols)) * sbits);
    get_trits(br, b.rows * cols, r0 * cols, (r0 + nr) * cols, trits.data());
    const int64_t per_row = grouping_.kind == Grouping::Tensor ? 0 : grouping_.count(1, cols);
    const int64_t size = grouping_.kind == Grouping::Group ? grouping_.size : cols;
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t c0 = 0; c0 < cols; c0 += size) {
        br.seek(uint64_t((r0 + r) * per_row + (per_row ? c0 / size : 0)) * sbits);
        const float scale = grid::get_scale(br, storage_);
        for (int64_t c = c0; c < std::min(cols, c0 + size); ++c)
          out[r * cols + c] = scale * float(trits[size_t(r * cols + c)]);
      }
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    std::vector<float> scales;
    std::vector<int8_t> trits;
    read(pk, scales, trits);
    SymbolStream s{"trits", 3, {}};
    s.symbols.reserve(trits.size());
    for (int8_t t : trits) s.symbols.push_back(uint32_t(t + 1));
    return {s};
  }

  int64_t column_group(int64_t cols) const override { return grouping_.kind == Grouping::Group ? grouping_.size : 0; }

 private:
  // absmean / absmedian are the papers' fixed rules (importance does not enter them); opt
  // minimises the importance-weighted error.
  double scale_of(const float* x, const float* imp, int64_t n) const {
    switch (rule_) {
      case TernaryRule::AbsMean: return weighted_mean_abs(x, nullptr, n);
      case TernaryRule::AbsMedian: return median_abs(x, n);
      default: return optimal_ternary_scale(x, imp, n);
    }
  }

  std::vector<float> fit_scales(const float* w, int64_t rows, int64_t cols, const float* imp) const {
    return grid::fit_group_scales(grouping_, storage_, w, rows, cols, imp,
                                  [this](const float* x, const float* gi, int64_t n) { return scale_of(x, gi, n); });
  }

  Packed pack(const std::vector<float>& scales, const std::vector<int8_t>& trits, int64_t rows, int64_t cols) const {
    BitWriter bw;
    for (float s : scales) grid::put_scale(bw, s, storage_);
    put_trits(bw, trits.data(), rows * cols);
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  std::vector<GroupSpan> read(const Packed& pk, std::vector<float>& scales, std::vector<int8_t>& trits) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    auto spans = grid::group_spans(grouping_, pk.rows, pk.cols);
    BitReader br(pk);
    scales.resize(spans.size());
    for (float& s : scales) s = grid::get_scale(br, storage_);
    trits.resize(size_t(pk.rows * pk.cols));
    get_trits(br, pk.rows * pk.cols, 0, pk.rows * pk.cols, trits.data());
    return spans;
  }

  TernaryRule rule_;
  Grouping grouping_;
  ScaleStorage storage_;
};

// ---- binary --------------------------------------------------------------------------------

class BinaryFormat : public RowFormat {
 public:
  explicit BinaryFormat(Grouping g) : grouping_(g), storage_(grid::scale_storage(g)) {}

  std::string spec() const override { return "binary:" + grouping_.spec(); }
  std::string describe() const override {
    return fmt::format("binary sign x weighted-optimal scale per {}", per_text(grouping_));
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(grouping_.count(rows, cols)) * uint64_t(grid::scale_bits(storage_)) + uint64_t(rows * cols);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    std::vector<uint32_t> signs(size_t(rows * cols));
    for (int64_t j = 0; j < rows * cols; ++j) signs[size_t(j)] = w[j] >= 0.0f ? 1 : 0;
    return pack(fit_scales(w, rows, cols, imp), signs, rows, cols);
  }

  // Row and tensor scales: GPTQ column by column with the scales fitted up front.
  std::unique_ptr<ColumnEncoder> column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                bool static_groups) const override {
    if (grouping_.kind == Grouping::Group) return Format::column_encoder(w, rows, cols, imp, static_groups);
    return std::make_unique<grid::FixedScaleColumnEncoder>(
        rows, cols, fit_scales(w, rows, cols, imp), [](float x, float) { return x >= 0.0f ? 1u : 0u; },
        [](uint32_t code, float scale) { return code ? scale : -scale; },
        [this, rows, cols](const std::vector<float>& scales, const std::vector<uint32_t>& codes) {
          return pack(scales, codes, rows, cols);
        });
  }

  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    const ScaleStorage st = storage_;
    decode_grouped_rows(b, grouping_, 0, uint64_t(grid::scale_bits(st)), 1, r0, nr, out, [st](BitReader& br) {
      return [s = grid::get_scale(br, st)](BitReader& br, float* o, int64_t n) {
        for (int64_t i = 0; i < n; ++i) o[i] = br.get(1) ? s : -s;
      };
    });
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    SymbolStream s{"signs", 2, std::vector<uint32_t>(size_t(pk.rows * pk.cols))};
    read(pk, [&](int64_t j, float, bool positive) { s.symbols[size_t(j)] = positive ? 1 : 0; });
    return {s};
  }

  int64_t column_group(int64_t cols) const override { return grouping_.kind == Grouping::Group ? grouping_.size : 0; }

 private:
  std::vector<float> fit_scales(const float* w, int64_t rows, int64_t cols, const float* imp) const {
    return grid::fit_group_scales(grouping_, storage_, w, rows, cols, imp, weighted_mean_abs);
  }

  // Scale of each group, then its signs (1: non-negative).
  Packed pack(const std::vector<float>& scales, const std::vector<uint32_t>& signs, int64_t rows, int64_t cols) const {
    BitWriter bw;
    const auto spans = grid::group_spans(grouping_, rows, cols);
    for (size_t i = 0; i < spans.size(); ++i) {
      grid::put_scale(bw, scales[i], storage_);
      for (int64_t j = spans[i].offset; j < spans[i].offset + spans[i].n; ++j) bw.put(signs[size_t(j)], 1);
    }
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  void read(const Packed& pk, const std::function<void(int64_t, float, bool)>& weight) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    BitReader br(pk);
    for (const GroupSpan& s : grid::group_spans(grouping_, pk.rows, pk.cols)) {
      const float scale = grid::get_scale(br, storage_);
      for (int64_t j = s.offset; j < s.offset + s.n; ++j) weight(j, scale, br.get(1) != 0);
    }
  }

  Grouping grouping_;
  ScaleStorage storage_;
};

// ---- PTQ1.61 -------------------------------------------------------------------------------

// Two levels mean +- scale fitted to a row of binarised weights (the paper's shifted
// binarisation: sign(w - mean) * scale + mean).
struct TwoLevels {
  float mean = 0, scale = 0;  // as stored (fp16)
  float lo() const { return mean - scale; }
  float hi() const { return mean + scale; }
  // Whether x is nearer to factor * hi than to factor * lo (factor: :col's channel factor).
  bool upper(float x, float factor) const { return std::fabs(x - factor * hi()) <= std::fabs(x - factor * lo()); }
};

// The weighted-optimal two levels (exact 2-means of sorted values): the split maximising
// S_L^2 / W_L + S_R^2 / W_R, whose levels are the weighted means of both sides.
TwoLevels fit_two_levels(const float* x, const float* imp, int64_t n) {
  const grid::SortedGroup g = grid::sorted_sample(x, imp, n);
  n = g.size();
  const auto& v = g.values();
  double lo = g.mean(0, n), hi = lo, best = -1;
  for (int64_t i = 1; i < n; ++i) {
    const double wl = g.weight(0, i), wr = g.weight(i, n);
    if (v[size_t(i) - 1] == v[size_t(i)] || !(wl > 0) || !(wr > 0)) continue;
    const double gain = g.sum(0, i) * g.sum(0, i) / wl + g.sum(i, n) * g.sum(i, n) / wr;
    if (gain > best) best = gain, lo = g.mean(0, i), hi = g.mean(i, n);
  }
  return {grid::round_f16(float(0.5 * (lo + hi))), grid::round_f16(float(0.5 * (hi - lo)))};
}

// Copies nbits from a reader to a writer (embedding one packed matrix into another).
void copy_bits(BitReader& from, BitWriter& to, uint64_t nbits) {
  for (uint64_t done = 0; done < nbits;) {
    const int n = int(std::min<uint64_t>(64, nbits - done));
    to.put(from.get(n), n);
    done += uint64_t(n);
  }
}

// Columns [0, cols) of a row-major matrix, selected, as a rows x sel.size() matrix.
std::vector<float> gather_columns(const float* w, int64_t rows, int64_t cols, const std::vector<int64_t>& sel) {
  std::vector<float> out(size_t(rows) * sel.size());
  for (int64_t r = 0; r < rows; ++r)
    for (size_t j = 0; j < sel.size(); ++j) out[size_t(r) * sel.size() + j] = w[r * cols + sel[j]];
  return out;
}

struct Ptq161Params {
  int percent = 20;             // salient input channels, % of cols (rounded half up)
  bool column_scales = false;   // :col, one fp16 factor per binarised input channel
};

// Number of alternations of row levels and column factors for :col.
constexpr int kColumnIterations = 4;

class Ptq161Format : public RowFormat {
 public:
  explicit Ptq161Format(Ptq161Params p) : p_(p), salient_(make_int_format(salient_params())) {
    if (p_.percent < 0 || p_.percent > 100) throw Error(fmt::format("salient percentage {} out of range [0, 100]", p_.percent));
  }

  std::string spec() const override { return fmt::format("ptq161:p{}{}", p_.percent, p_.column_scales ? ":col" : ""); }
  std::string describe() const override {
    return fmt::format("PTQ1.61: {}% salient input channels (1-bit channel mask) at int4 per-row asym, rest binary "
                       "mean+-scale per row{}",
                       p_.percent, p_.column_scales ? " x fp16 factor per channel" : "");
  }

  int64_t salient_count(int64_t cols) const { return (cols * p_.percent + 50) / 100; }

  // mask (cols) + int4:row:asym of the salient columns + per row fp16 mean and scale of the
  // binarised part + its sign bits [+ fp16 factor per binarised column].
  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    const int64_t k = salient_count(cols), m = cols - k;
    uint64_t bits = uint64_t(cols);
    if (k > 0) bits += salient_->storage_bits(rows, k);
    if (m > 0) bits += uint64_t(rows) * 32 + uint64_t(rows * m) + (p_.column_scales ? uint64_t(m) * 16 : 0);
    return bits;
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const std::vector<bool> mask = choose_mask(w, rows, cols, imp);
    std::vector<int64_t> sal, rest;
    for (int64_t c = 0; c < cols; ++c) (mask[size_t(c)] ? sal : rest).push_back(c);
    BitWriter bw;
    for (int64_t c = 0; c < cols; ++c) bw.put(mask[size_t(c)] ? 1 : 0, 1);
    if (!sal.empty()) {
      const std::vector<float> ws = gather_columns(w, rows, cols, sal);
      const std::vector<float> is = imp ? gather_columns(imp, 1, cols, sal) : std::vector<float>{};
      const Packed sp = salient_->quantize(ws.data(), rows, int64_t(sal.size()), imp ? is.data() : nullptr);
      BitReader br(sp);
      copy_bits(br, bw, sp.bits);
    }
    if (!rest.empty()) write_binary_part(bw, gather_columns(w, rows, cols, rest), rows, imp, rest);
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  // Layout: mask, salient int4 matrix (rows x k), [factors], per row (mean, scale), signs
  // (rows x m): every part but the mask and the factors is row-major.
  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    const int64_t rows = b.rows, cols = b.cols;
    BitReader br(b);
    std::vector<int64_t> salient, rest;
    read_mask(br, cols, salient, rest);
    const int64_t k = int64_t(salient.size()), m = int64_t(rest.size());
    uint64_t at = uint64_t(cols);
    if (k > 0) {
      const uint64_t bits = salient_->storage_bits(rows, k);
      std::vector<float> values(size_t(nr * k));
      row_format(*salient_)->decode(b.sub(at, bits, rows, k), r0, nr, values.data());
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t j = 0; j < k; ++j) out[r * cols + salient[size_t(j)]] = values[size_t(r * k + j)];
      at += bits;
    }
    if (m == 0) return;
    std::vector<float> factors;
    br.seek(at);
    if (p_.column_scales)
      for (int64_t j = 0; j < m; ++j) factors.push_back(br.get_f16());
    const uint64_t levels = br.position(), signs = levels + uint64_t(rows) * 32;
    for (int64_t r = 0; r < nr; ++r) {
      br.seek(levels + uint64_t(r0 + r) * 32);
      TwoLevels lv;
      lv.mean = br.get_f16(), lv.scale = br.get_f16();
      br.seek(signs + uint64_t((r0 + r) * m));
      for (int64_t j = 0; j < m; ++j) {
        const float v = br.get(1) ? lv.hi() : lv.lo();
        out[r * cols + rest[size_t(j)]] = p_.column_scales ? factors[size_t(j)] * v : v;
      }
    }
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    Contents c = read(pk);
    std::vector<SymbolStream> out;
    for (auto& s : c.salient_symbols) out.push_back({"salient_" + s.name, s.alphabet, std::move(s.symbols)});
    SymbolStream signs{"signs", 2, {}};
    signs.symbols.assign(c.signs.begin(), c.signs.end());
    out.push_back(std::move(signs));
    return out;
  }

 private:
  static IntParams salient_params() {
    IntParams ip;
    ip.bits = 4;
    ip.group = 0;  // per row
    ip.mode = IntMode::Asym;
    return ip;
  }

  // The salient input channels: the largest importance (activation energy), else the
  // largest column norm; ties to the lower index.
  std::vector<bool> choose_mask(const float* w, int64_t rows, int64_t cols, const float* imp) const {
    std::vector<double> score(size_t(cols), 0.0);
    for (int64_t c = 0; c < cols; ++c) {
      if (imp) score[size_t(c)] = imp[c];
      else
        for (int64_t r = 0; r < rows; ++r) score[size_t(c)] += double(w[r * cols + c]) * double(w[r * cols + c]);
    }
    std::vector<int64_t> order(static_cast<size_t>(cols));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[size_t(a)] > score[size_t(b)]; });
    std::vector<bool> mask(size_t(cols), false);
    for (int64_t i = 0; i < salient_count(cols); ++i) mask[size_t(order[size_t(i)])] = true;
    return mask;
  }

  // Row levels for the binarised columns x (rows x m) given the per-column factors f:
  // w ~ f_j (mean_r +- scale_r), i.e. a two-level fit of w/f_j with weights imp_j f_j^2.
  std::vector<TwoLevels> fit_rows(const std::vector<float>& x, int64_t rows, int64_t m, const float* imp_rest,
                                  const std::vector<float>& f) const {
    std::vector<TwoLevels> lv(static_cast<size_t>(rows));
    global_pool().parallel_for(rows, [&](int64_t b, int64_t e) {
      std::vector<float> y(static_cast<size_t>(m)), wt(static_cast<size_t>(m));
      for (int64_t r = b; r < e; ++r) {
        for (int64_t j = 0; j < m; ++j) {
          const float fj = f[size_t(j)];
          y[size_t(j)] = fj == 0.0f ? 0.0f : x[size_t(r * m + j)] / fj;
          wt[size_t(j)] = (imp_rest ? imp_rest[j] : 1.0f) * fj * fj;
        }
        lv[size_t(r)] = fit_two_levels(y.data(), wt.data(), m);
      }
    });
    return lv;
  }

  void write_binary_part(BitWriter& bw, const std::vector<float>& x, int64_t rows, const float* imp,
                         const std::vector<int64_t>& rest) const {
    const int64_t m = int64_t(rest.size());
    std::vector<float> imp_rest;
    for (int64_t j = 0; imp && j < m; ++j) imp_rest.push_back(imp[rest[size_t(j)]]);
    const float* ip = imp ? imp_rest.data() : nullptr;
    std::vector<float> f(size_t(m), 1.0f);
    std::vector<TwoLevels> lv = fit_rows(x, rows, m, ip, f);
    if (p_.column_scales) {
      for (int it = 0; it < kColumnIterations; ++it) {
        f = fit_column_factors(x, rows, m, lv, f);
        lv = fit_rows(x, rows, m, ip, f);
      }
      for (float v : f) bw.put_f16(v);
    }
    for (const TwoLevels& l : lv) bw.put_f16(l.mean), bw.put_f16(l.scale);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < m; ++j) bw.put(lv[size_t(r)].upper(x[size_t(r * m + j)], f[size_t(j)]) ? 1 : 0, 1);
  }

  // Given row levels (and the signs they imply), the least-squares factor of each column:
  // f_j = sum_r w_rj b_rj / sum_r b_rj^2 (the column's importance cancels), as fp16.
  static std::vector<float> fit_column_factors(const std::vector<float>& x, int64_t rows, int64_t m,
                                               const std::vector<TwoLevels>& lv, const std::vector<float>& f) {
    std::vector<double> num(size_t(m), 0.0), den(size_t(m), 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const TwoLevels& l = lv[size_t(r)];
      for (int64_t j = 0; j < m; ++j) {
        const float xv = x[size_t(r * m + j)];
        const double b = l.upper(xv, f[size_t(j)]) ? l.hi() : l.lo();
        num[size_t(j)] += double(xv) * b, den[size_t(j)] += b * b;
      }
    }
    std::vector<float> out(static_cast<size_t>(m));
    for (int64_t j = 0; j < m; ++j) out[size_t(j)] = den[size_t(j)] > 0 ? grid::round_f16(float(num[size_t(j)] / den[size_t(j)])) : 0.0f;
    return out;
  }

  // The channel mask: salient and binarised input channels, ascending.
  void read_mask(BitReader& br, int64_t cols, std::vector<int64_t>& salient, std::vector<int64_t>& rest) const {
    for (int64_t j = 0; j < cols; ++j) (br.get(1) ? salient : rest).push_back(j);
    if (int64_t(salient.size()) != salient_count(cols))
      fail("corrupt {} data: mask marks {} salient channels, expected {}", spec(), salient.size(), salient_count(cols));
  }

  // The symbol streams' contents: the salient part's streams and the signs.
  struct Contents {
    std::vector<SymbolStream> salient_symbols;
    std::vector<uint8_t> signs;  // rows x m
  };

  Contents read(const Packed& pk) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    const int64_t rows = pk.rows, cols = pk.cols;
    BitReader br(pk);
    Contents c;
    std::vector<int64_t> salient, rest;
    read_mask(br, cols, salient, rest);
    const int64_t k = int64_t(salient.size()), m = int64_t(rest.size());
    if (k > 0) {
      BitWriter sw;
      copy_bits(br, sw, salient_->storage_bits(rows, k));
      c.salient_symbols = salient_->symbols(finish_packed(sw, rows, k, salient_->storage_bits(rows, k)));
    }
    if (m > 0) {
      br.seek(br.position() + (p_.column_scales ? uint64_t(m) * 16 : 0) + uint64_t(rows) * 32);  // factors, levels
      c.signs.resize(size_t(rows * m));
      for (auto& s : c.signs) s = uint8_t(br.get(1));
    }
    return c;
  }

  Ptq161Params p_;
  std::unique_ptr<Format> salient_;
};

// ---- spec parsing -------------------------------------------------------------------------

std::unique_ptr<Format> parse_ternary(const std::vector<std::string>& tokens) {
  if (tokens[0] != "ternary") return nullptr;
  SpecTokens t(tokens);
  const auto rule = t.take_one_of({"absmean", "absmedian", "opt"});
  if (!rule) throw Error("missing the scale rule absmean|absmedian|opt");
  const Grouping g = Grouping::parse(t, {Grouping::Group, 128});
  t.finish();
  const TernaryRule r = *rule == "absmean" ? TernaryRule::AbsMean : *rule == "absmedian" ? TernaryRule::AbsMedian
                                                                                           : TernaryRule::Opt;
  return std::make_unique<TernaryFormat>(r, g);
}

std::unique_ptr<Format> parse_binary(const std::vector<std::string>& tokens) {
  if (tokens[0] != "binary") return nullptr;
  SpecTokens t(tokens);
  const Grouping g = Grouping::parse(t, {Grouping::Group, 128});
  t.finish();
  return std::make_unique<BinaryFormat>(g);
}

std::unique_ptr<Format> parse_ptq161(const std::vector<std::string>& tokens) {
  if (tokens[0] != "ptq161") return nullptr;
  SpecTokens t(tokens);
  Ptq161Params p;
  if (auto pct = t.take_int("p")) p.percent = int(*pct);
  p.column_scales = t.take_flag("col");
  t.finish();
  return std::make_unique<Ptq161Format>(p);
}

Registrar reg_ternary{FormatFamily{
    "ternary", "ternary:absmean|absmedian|opt:g<G>|row|tensor",
    "{-1,0,+1} x scale (BitNet b1.58 absmean, absmedian, or weighted-MSE optimal), 5 trits per byte",
    {"ternary:absmean:row", "ternary:absmedian:row", "ternary:opt:g128", "ternary:absmean:tensor"},
    parse_ternary}};

Registrar reg_binary{FormatFamily{"binary", "binary:g<G>|row|tensor",
                                  "sign x weighted-optimal scale (sum imp|w| / sum imp), 1 bit per weight",
                                  {"binary:row", "binary:g128"},
                                  parse_binary}};

Registrar reg_ptq161{FormatFamily{
    "ptq161", "ptq161:p<P>[:col] (P = 0..100 % salient input channels)",
    "PTQ1.61: channel mask, salient channels int4 per-row asym, rest binary mean+-scale per row (:col per-channel factor)",
    {"ptq161:p20", "ptq161:p20:col"},
    parse_ptq161}};

}  // namespace
}  // namespace quantkit::formats
