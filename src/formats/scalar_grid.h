// Building blocks of the scalar non-uniform formats (nonuniform.cpp, ternary_binary.cpp):
// the groups of a matrix as contiguous spans, scale storage (fp16 per row/group, fp32 per
// tensor), a decode table with a fast nearest-level encoder, and the weighted scale fit
// of a group onto such a table.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <vector>

#include "formats/common.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats::grid {

// ---- groups as spans ----------------------------------------------------------------------

// One scale group. Its weights are contiguous in the row-major matrix: the whole tensor, a
// row, or part of a row, so a group is [offset, offset + n) of w (and of the codes).
struct GroupSpan {
  int64_t offset = 0, n = 0;
  int64_t col0 = 0;  // first input column
};

// The groups of a rows x cols matrix in storage order (Grouping::for_each order).
inline std::vector<GroupSpan> group_spans(const Grouping& g, int64_t rows, int64_t cols) {
  std::vector<GroupSpan> spans;
  spans.reserve(size_t(g.count(rows, cols)));
  g.for_each(rows, cols, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    spans.push_back({r0 * cols + c0, (r1 - r0) * (c1 - c0), c0});
  });
  return spans;
}

// Calls fit(group_index, span, group_importance) for every group, in parallel. The group's
// importance has one value per weight of the span (null without importance); a tensor
// group spans all rows, so the per-column importance is tiled for it.
inline void for_each_group(const std::vector<GroupSpan>& spans, int64_t rows, int64_t cols, const float* imp,
                           const std::function<void(size_t, const GroupSpan&, const float*)>& fit) {
  std::vector<float> tiled;
  const bool spans_rows = !spans.empty() && spans[0].n > cols;
  if (imp && spans_rows) {
    tiled.resize(size_t(rows * cols));
    for (int64_t r = 0; r < rows; ++r) std::copy(imp, imp + cols, tiled.begin() + r * cols);
  }
  global_pool().parallel_for(int64_t(spans.size()), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const GroupSpan& s = spans[size_t(i)];
      const float* gi = !imp ? nullptr : spans_rows ? tiled.data() + s.offset : imp + s.col0;
      fit(size_t(i), s, gi);
    }
  });
}

// ---- scale storage -------------------------------------------------------------------------

// Scales are fp16 per row or group and fp32 for a single per-tensor scale.
enum class ScaleStorage { F16, F32 };

inline ScaleStorage scale_storage(const Grouping& g) {
  return g.kind == Grouping::Tensor ? ScaleStorage::F32 : ScaleStorage::F16;
}
inline int scale_bits(ScaleStorage st) { return st == ScaleStorage::F16 ? 16 : 32; }

// The value the decoder will see: clamped into the finite fp16 range (weights beyond
// +-65504 are not representable with an fp16 scale, but must stay finite), then rounded.
inline float round_f16(float v) {
  if (!std::isfinite(v)) return 0.0f;
  return f16_to_f32(f32_to_f16(std::clamp(v, -65504.0f, 65504.0f)));
}
inline float round_scale(float s, ScaleStorage st) {
  if (!std::isfinite(s)) return 0.0f;
  return st == ScaleStorage::F16 ? round_f16(s) : s;
}
inline void put_scale(BitWriter& w, float s, ScaleStorage st) {
  if (st == ScaleStorage::F16) w.put_f16(s);
  else w.put_f32(s);
}
inline float get_scale(BitReader& r, ScaleStorage st) { return st == ScaleStorage::F16 ? r.get_f16() : r.get_f32(); }

// The rounded scale of every group: scale_of(group weights, their importance or null, n).
inline std::vector<float> fit_group_scales(const Grouping& g, ScaleStorage st, const float* w, int64_t rows,
                                           int64_t cols, const float* imp,
                                           const std::function<double(const float*, const float*, int64_t)>& scale_of) {
  const auto spans = group_spans(g, rows, cols);
  std::vector<float> scales(spans.size());
  for_each_group(spans, rows, cols, imp, [&](size_t i, const GroupSpan& s, const float* gi) {
    scales[i] = round_scale(float(scale_of(w + s.offset, gi, s.n)), st);
  });
  return scales;
}

// ---- decode table and nearest-level encoder ------------------------------------------------

// A b-bit decode table: code -> normalised level. Several codes may share a value (e.g. +0
// and -0 of a sign + exponent code); the encoder picks the first code of each value.
class LevelTable {
 public:
  LevelTable() = default;
  explicit LevelTable(std::vector<float> by_code) : by_code_(std::move(by_code)) {
    std::vector<std::pair<float, uint32_t>> order;
    for (uint32_t c = 0; c < by_code_.size(); ++c) order.push_back({by_code_[c], c});
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [v, c] : order)
      if (sorted_.empty() || v != sorted_.back()) sorted_.push_back(v), sorted_code_.push_back(c);
    // Decision bounds padded with +inf to 2^k - 1 entries for a branch-free binary search.
    size_t padded = 1;
    while (padded < sorted_.size()) padded *= 2;
    bounds_.assign(padded - 1, std::numeric_limits<float>::infinity());
    for (size_t i = 0; i + 1 < sorted_.size(); ++i)
      bounds_[i] = float(0.5 * (double(sorted_[i]) + double(sorted_[i + 1])));
    half_ = padded / 2;
    for (float v : sorted_) max_abs_ = std::max(max_abs_, std::fabs(v));
  }

  size_t size() const { return by_code_.size(); }
  float value(uint32_t code) const { return by_code_[code]; }
  float max_abs() const { return max_abs_; }
  const std::vector<float>& sorted_levels() const { return sorted_; }

  // Code of the level nearest to x (a tie goes to the larger level; NaN to the smallest).
  uint32_t nearest(float x) const {
    size_t i = 0;
    for (size_t step = half_; step > 0; step >>= 1) i += (x >= bounds_[i + step - 1]) ? step : 0;
    return sorted_code_[std::min(i, sorted_.size() - 1)];
  }

 private:
  std::vector<float> by_code_, sorted_, bounds_;
  std::vector<uint32_t> sorted_code_;
  size_t half_ = 0;
  float max_abs_ = 0;
};

inline void encode_grid(const LevelTable& t, float scale, const float* x, int64_t n, uint32_t* codes) {
  const float inv = scale == 0.0f ? 0.0f : 1.0f / scale;
  for (int64_t i = 0; i < n; ++i) codes[i] = t.nearest(x[i] * inv);
}

inline float max_abs(const float* x, int64_t n) {
  float m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// ---- second-order (GPTQ) encoding with row or tensor scales ------------------------------

// GPTQ column by column for formats that decode weight (r, c) as a function of one code and
// its row's (or the tensor's) scale: the scales are fitted once on the initial weights
// (with importance), then each column's codes are chosen from the current, error-updated
// values. (Group formats use Format's default block encoder instead: their groups' scales
// are chosen when GPTQ reaches the group.)
class FixedScaleColumnEncoder : public ColumnEncoder {
 public:
  using Code = std::function<uint32_t(float x, float scale)>;
  using Value = std::function<float(uint32_t code, float scale)>;
  // Packs the scales (one per row, or one) and the codes (rows x cols, row-major).
  using Pack = std::function<Packed(const std::vector<float>& scales, const std::vector<uint32_t>& codes)>;

  FixedScaleColumnEncoder(int64_t rows, int64_t cols, std::vector<float> scales, Code code, Value value, Pack pack)
      : rows_(rows), cols_(cols), scales_(std::move(scales)), codes_(size_t(rows * cols)), code_(std::move(code)),
        value_(std::move(value)), pack_(std::move(pack)) {}

  int64_t step() const override { return 1; }
  void encode(int64_t c, const float* cur, int64_t rs, int64_t, float* deq) override {
    for (int64_t r = 0; r < rows_; ++r) {
      const float scale = scales_.size() == 1 ? scales_[0] : scales_[size_t(r)];
      const uint32_t code = code_(cur[r * rs], scale);
      codes_[size_t(r * cols_ + c)] = code;
      deq[r] = value_(code, scale);
    }
  }
  Packed finish() override { return pack_(scales_, codes_); }

 private:
  int64_t rows_, cols_;
  std::vector<float> scales_;
  std::vector<uint32_t> codes_;
  Code code_;
  Value value_;
  Pack pack_;
};

// ---- sorted groups -------------------------------------------------------------------------

// A group's values sorted ascending with prefix sums of weight, weight*x, weight*x^2 and x:
// the weighted count, mean and squared error of any run [i, j) of the sorted values cost
// O(1), so a scale or codebook candidate is scored in O(levels * log n) instead of O(n).
// A group whose importance is all zero is fitted unweighted (every fit is optimal for it).
class SortedGroup {
 public:
  SortedGroup(const float* x, const float* imp, int64_t n) {
    double total = 0;
    for (int64_t i = 0; imp && i < n; ++i) total += imp[i];
    if (!(total > 0)) imp = nullptr;
    std::vector<std::pair<float, float>> vw(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) vw[size_t(i)] = {x[i], imp ? imp[i] : 1.0f};
    std::sort(vw.begin(), vw.end());
    v_.resize(size_t(n));
    w_.assign(size_t(n) + 1, 0.0);
    wx_ = w_, wxx_ = w_, x_ = w_;
    for (size_t i = 0; i < vw.size(); ++i) {
      const double v = vw[i].first, wt = vw[i].second;
      v_[i] = v;
      w_[i + 1] = w_[i] + wt, wx_[i + 1] = wx_[i] + wt * v, wxx_[i + 1] = wxx_[i] + wt * v * v;
      x_[i + 1] = x_[i] + v;
    }
  }

  int64_t size() const { return int64_t(v_.size()); }
  const std::vector<double>& values() const { return v_; }
  double max_abs() const { return v_.empty() ? 0.0 : std::max(std::fabs(v_.front()), std::fabs(v_.back())); }

  double weight(int64_t i, int64_t j) const { return w_[size_t(j)] - w_[size_t(i)]; }
  double sum(int64_t i, int64_t j) const { return wx_[size_t(j)] - wx_[size_t(i)]; }      // sum w x
  double sum_sq(int64_t i, int64_t j) const { return wxx_[size_t(j)] - wxx_[size_t(i)]; }  // sum w x^2
  // Weighted mean of run [i, j), i < j (the plain mean when the run carries no weight).
  double mean(int64_t i, int64_t j) const {
    const double w = weight(i, j);
    return w > 0 ? sum(i, j) / w : (x_[size_t(j)] - x_[size_t(i)]) / double(j - i);
  }
  // Weighted squared error of run [i, j) around its weighted mean.
  double cost(int64_t i, int64_t j) const {
    const double w = weight(i, j);
    if (!(w > 0)) return 0.0;
    const double s = sum(i, j);
    return std::max(0.0, sum_sq(i, j) - s * s / w);
  }
  // First index in [from, n) whose value is >= t (n if none).
  int64_t first_at_least(double t, int64_t from) const {
    return std::lower_bound(v_.begin() + from, v_.end(), t) - v_.begin();
  }

 private:
  std::vector<double> v_, w_, wx_, wxx_, x_;
};

// Fits (scales, codebooks) of a group use at most this many of its weights: a tensor-wide
// group of a large matrix is represented by an evenly strided sample, which bounds the
// memory of its SortedGroup (~48 bytes per weight) and the sort time; a handful of
// parameters estimated from 2^20 weights is as good as from all of them.
constexpr int64_t kMaxFitSamples = int64_t(1) << 20;

// The SortedGroup of x (with its importance), or of an evenly strided sample of it.
inline SortedGroup sorted_sample(const float* x, const float* imp, int64_t n) {
  if (n <= kMaxFitSamples) return SortedGroup(x, imp, n);
  const int64_t stride = (n + kMaxFitSamples - 1) / kMaxFitSamples;
  std::vector<float> xs, is;
  for (int64_t i = 0; i < n; i += stride) {
    xs.push_back(x[i]);
    if (imp) is.push_back(imp[i]);
  }
  return SortedGroup(xs.data(), imp ? is.data() : nullptr, int64_t(xs.size()));
}

// ---- scale fit -----------------------------------------------------------------------------

// The weighted error of the nearest-level assignment of a sorted group at scale s > 0, and
// the least-squares scale for that assignment (sum w x l / sum w l^2).
struct GridScore {
  double err = 0, refit = 0;
};

inline GridScore score_grid(const LevelTable& t, const SortedGroup& g, double s) {
  const auto& lv = t.sorted_levels();
  GridScore r;
  double xl = 0, ll = 0;
  int64_t i = 0;
  for (size_t k = 0; k < lv.size(); ++k) {
    const int64_t j = k + 1 < lv.size() ? g.first_at_least(s * 0.5 * (double(lv[k]) + lv[k + 1]), i) : g.size();
    if (j > i) {
      const double l = lv[k], w = g.weight(i, j), sx = g.sum(i, j);
      r.err += g.sum_sq(i, j) - 2 * s * l * sx + s * s * l * l * w;
      xl += l * sx, ll += l * l * w;
    }
    i = j;
  }
  r.err = std::max(0.0, r.err);
  r.refit = ll > 0 ? xl / ll : 0.0;
  return r;
}

// absmax scale: the largest |x| maps to the largest |level| (QLoRA's rule).
inline float absmax_scale(const LevelTable& t, const float* x, int64_t n, ScaleStorage st) {
  return round_scale(max_abs(x, n) / t.max_abs(), st);
}

struct ScaleFit {
  float scale = 0;  // as stored
  double err = 0;   // weighted squared error at that scale
};

// Weighted scale search of a group on table t: a geometric coarse grid of clipping ratios
// in [0.05, 1] of the absmax scale (low ratios matter for big groups at few bits), a finer
// grid around the best, then least-squares refits for the chosen levels while they help.
// Every candidate is scored as stored (rounded), so the choice is exact for the decoder.
inline ScaleFit search_grid_scale(const LevelTable& t, const SortedGroup& g, ScaleStorage st) {
  const double s_max = g.max_abs() / t.max_abs();
  ScaleFit best{round_scale(float(s_max), st), 0};
  if (!(best.scale > 0.0f)) {
    best.err = score_grid(t, g, 0.0).err;  // all weights decode to 0
    return best;
  }
  GridScore at_best = score_grid(t, g, best.scale);
  best.err = at_best.err;
  auto consider = [&](double s) {
    const float sr = round_scale(float(s), st);
    if (!(sr > 0.0f) || sr == best.scale) return false;
    const GridScore sc = score_grid(t, g, sr);
    if (sc.err >= best.err) return false;
    best = {sr, sc.err}, at_best = sc;
    return true;
  };
  constexpr int kCoarse = 40, kFine = 8;
  const double step = std::log(0.05) / kCoarse;  // log of the coarse ratio step
  int best_k = 0;
  for (int k = 1; k <= kCoarse; ++k)
    if (consider(s_max * std::exp(step * k))) best_k = k;
  const double center = s_max * std::exp(step * best_k);
  for (int f = -kFine / 2; f <= kFine / 2; ++f)
    if (f != 0) consider(center * std::exp(step * f / (kFine / 2 + 1)));
  for (int it = 0; it < 8; ++it)
    if (!consider(at_best.refit)) break;
  return best;
}

// ---- code streams --------------------------------------------------------------------------

// Fixed-width codes of one group, LSB-first.
inline void put_codes(BitWriter& w, const uint32_t* codes, int64_t n, int bits) {
  for (int64_t i = 0; i < n; ++i) w.put(codes[i], bits);
}
inline void get_codes(BitReader& r, uint32_t* codes, int64_t n, int bits) {
  for (int64_t i = 0; i < n; ++i) codes[i] = uint32_t(r.get(bits));
}

}  // namespace quantkit::formats::grid
