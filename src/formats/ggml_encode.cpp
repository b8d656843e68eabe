#include "formats/ggml_encode.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "io/ggml_blocks.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"

namespace quantkit::ggml {
namespace {

// ---- block layouts as bit-field tables -------------------------------------------------
//
// Each integer field of a block (a weight's level, a sub-block's scale or min) is described
// by where its bits live; the packer and the unpacker both walk these tables, so they
// cannot disagree. The tables are written from the layouts documented in io/ggml_blocks.h
// (byte offsets come from those structs); tests prove them against llama.cpp's blocks.

// `width` bits starting at bit `shift` of byte `byte` of a block.
struct BitRun {
  uint16_t byte = 0;
  uint8_t shift = 0, width = 0;
};

// One field: its low bits, and for fields split over two places its remaining high bits.
struct FieldPlace {
  BitRun low, high;
};

void put_field(uint8_t* block, const FieldPlace& f, unsigned value) {
  block[f.low.byte] |= uint8_t((value & ((1u << f.low.width) - 1)) << f.low.shift);
  if (f.high.width)
    block[f.high.byte] |= uint8_t(((value >> f.low.width) & ((1u << f.high.width) - 1)) << f.high.shift);
}

unsigned get_field(const uint8_t* block, const FieldPlace& f) {
  unsigned v = (block[f.low.byte] >> f.low.shift) & ((1u << f.low.width) - 1);
  if (f.high.width) v |= ((block[f.high.byte] >> f.high.shift) & ((1u << f.high.width) - 1)) << f.low.width;
  return v;
}

struct Layout {
  DType type{};
  int values = 0, bytes = 0;
  int sub_len = 0;          // weights per sub-block (K-quants), 0 otherwise
  int d_at = 0, m_at = -1;  // byte offsets of the fp16 scale and of the fp16 offset / min scale
  int level_bits = 0, scale_bits = 0, min_bits = 0;
  int level_bias = 0, scale_bias = 0;   // field = value + bias (masked: two's complement)
  bool signed_levels = false, signed_scales = false;  // int8 fields
  std::vector<FieldPlace> level, scale, min;
};

// 4-bit field of weight j of a 32-weight block (qs at byte `qs`): j < 16 in the low
// nibble of qs[j], j >= 16 in the high nibble of qs[j - 16].
BitRun nibble_of_32(int qs, int j) { return {uint16_t(qs + j % 16), uint8_t(j < 16 ? 0 : 4), 4}; }
// Bit j of the little-endian u32 at byte `qh`.
BitRun bit_of_32(int qh, int j) { return {uint16_t(qh + j / 8), uint8_t(j % 8), 1}; }
// 2-bit field of weight 128h + 32k + l (Q2_K, Q3_K): bits 2k of qs[32h + l].
BitRun crumb_of_256(int qs, int i) {
  const int h = i / 128, k = i % 128 / 32, l = i % 32;
  return {uint16_t(qs + 32 * h + l), uint8_t(2 * k), 2};
}
// 4-bit field of weight 64c + r (Q4_K, Q5_K): qs[32c + r % 32], low nibble for r < 32.
BitRun nibble_of_256(int qs, int i) {
  const int c = i / 64, r = i % 64;
  return {uint16_t(qs + 32 * c + r % 32), uint8_t(r < 32 ? 0 : 4), 4};
}
// High bit of weight 32s + l (Q3_K hmask, Q5_K qh): bit s of bits[l].
BitRun high_bit_of_256(int bits, int i) { return {uint16_t(bits + i % 32), uint8_t(i / 32), 1}; }

// The 6-bit (scale, min) pair of sub-block j of Q4_K/Q5_K in the 12 bytes at `at`.
FieldPlace k4_scale(int at, int j) {
  if (j < 4) return {{uint16_t(at + j), 0, 6}, {}};
  return {{uint16_t(at + j + 4), 0, 4}, {uint16_t(at + j - 4), 6, 2}};
}
FieldPlace k4_min(int at, int j) {
  if (j < 4) return {{uint16_t(at + j + 4), 0, 6}, {}};
  return {{uint16_t(at + j + 4), 4, 4}, {uint16_t(at + j), 6, 2}};
}

template <typename Block>
Layout base_layout(DType type, int d_at) {
  Layout l;
  l.type = type;
  l.values = Block::kValues;
  l.bytes = int(sizeof(Block));
  l.d_at = d_at;
  return l;
}

// Legacy 32-weight types: levels in nibbles at `qs`, optional fifth bits at `qh`.
void add_levels_32(Layout& l, int qs, int qh) {
  for (int j = 0; j < kQK; ++j) l.level.push_back({nibble_of_32(qs, j), qh < 0 ? BitRun{} : bit_of_32(qh, j)});
}

std::vector<Layout> make_layouts() {
  std::vector<Layout> all;
  {
    Layout l = base_layout<BlockQ8_0>(DType::Q8_0, offsetof(BlockQ8_0, d));
    l.level_bits = 8;
    l.signed_levels = true;
    for (int j = 0; j < kQK; ++j) l.level.push_back({{uint16_t(offsetof(BlockQ8_0, qs) + j), 0, 8}, {}});
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ4_0>(DType::Q4_0, offsetof(BlockQ4_0, d));
    l.level_bits = 4, l.level_bias = 8;
    add_levels_32(l, offsetof(BlockQ4_0, qs), -1);
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ4_1>(DType::Q4_1, offsetof(BlockQ4_1, d));
    l.m_at = offsetof(BlockQ4_1, m);
    l.level_bits = 4;
    add_levels_32(l, offsetof(BlockQ4_1, qs), -1);
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ5_0>(DType::Q5_0, offsetof(BlockQ5_0, d));
    l.level_bits = 5, l.level_bias = 16;
    add_levels_32(l, offsetof(BlockQ5_0, qs), offsetof(BlockQ5_0, qh));
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ5_1>(DType::Q5_1, offsetof(BlockQ5_1, d));
    l.m_at = offsetof(BlockQ5_1, m);
    l.level_bits = 5;
    add_levels_32(l, offsetof(BlockQ5_1, qs), offsetof(BlockQ5_1, qh));
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockIQ4_NL>(DType::IQ4_NL, offsetof(BlockIQ4_NL, d));
    l.level_bits = 4;
    add_levels_32(l, offsetof(BlockIQ4_NL, qs), -1);
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ2_K>(DType::Q2_K, offsetof(BlockQ2_K, d));
    l.m_at = offsetof(BlockQ2_K, dmin);
    l.sub_len = 16;
    l.level_bits = 2, l.scale_bits = 4, l.min_bits = 4;
    for (int i = 0; i < kQK_K; ++i) l.level.push_back({crumb_of_256(offsetof(BlockQ2_K, qs), i), {}});
    for (int j = 0; j < 16; ++j) {
      l.scale.push_back({{uint16_t(offsetof(BlockQ2_K, scales) + j), 0, 4}, {}});
      l.min.push_back({{uint16_t(offsetof(BlockQ2_K, scales) + j), 4, 4}, {}});
    }
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ3_K>(DType::Q3_K, offsetof(BlockQ3_K, d));
    l.sub_len = 16;
    l.level_bits = 3, l.level_bias = 4, l.scale_bits = 6, l.scale_bias = 32;
    for (int i = 0; i < kQK_K; ++i)
      l.level.push_back({crumb_of_256(offsetof(BlockQ3_K, qs), i), high_bit_of_256(offsetof(BlockQ3_K, hmask), i)});
    const int sc = offsetof(BlockQ3_K, scales);
    for (int j = 0; j < 16; ++j) {
      const BitRun low = j < 8 ? BitRun{uint16_t(sc + j), 0, 4} : BitRun{uint16_t(sc + j - 8), 4, 4};
      l.scale.push_back({low, {uint16_t(sc + 8 + j % 4), uint8_t(2 * (j / 4)), 2}});
    }
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ4_K>(DType::Q4_K, offsetof(BlockQ4_K, d));
    l.m_at = offsetof(BlockQ4_K, dmin);
    l.sub_len = 32;
    l.level_bits = 4, l.scale_bits = 6, l.min_bits = 6;
    for (int i = 0; i < kQK_K; ++i) l.level.push_back({nibble_of_256(offsetof(BlockQ4_K, qs), i), {}});
    for (int j = 0; j < 8; ++j) {
      l.scale.push_back(k4_scale(offsetof(BlockQ4_K, scales), j));
      l.min.push_back(k4_min(offsetof(BlockQ4_K, scales), j));
    }
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ5_K>(DType::Q5_K, offsetof(BlockQ5_K, d));
    l.m_at = offsetof(BlockQ5_K, dmin);
    l.sub_len = 32;
    l.level_bits = 5, l.scale_bits = 6, l.min_bits = 6;
    for (int i = 0; i < kQK_K; ++i)
      l.level.push_back({nibble_of_256(offsetof(BlockQ5_K, qs), i), high_bit_of_256(offsetof(BlockQ5_K, qh), i)});
    for (int j = 0; j < 8; ++j) {
      l.scale.push_back(k4_scale(offsetof(BlockQ5_K, scales), j));
      l.min.push_back(k4_min(offsetof(BlockQ5_K, scales), j));
    }
    all.push_back(l);
  }
  {
    Layout l = base_layout<BlockQ6_K>(DType::Q6_K, offsetof(BlockQ6_K, d));
    l.sub_len = 16;
    l.level_bits = 6, l.level_bias = 32, l.scale_bits = 8;
    l.signed_scales = true;
    const int ql = offsetof(BlockQ6_K, ql), qh = offsetof(BlockQ6_K, qh);
    for (int i = 0; i < kQK_K; ++i) {
      const int h = i / 128, k = i % 128 / 32, j = i % 32;
      l.level.push_back({{uint16_t(ql + 64 * h + 32 * (k & 1) + j), uint8_t(4 * (k >> 1)), 4},
                         {uint16_t(qh + 32 * h + j), uint8_t(2 * k), 2}});
    }
    for (int j = 0; j < 16; ++j) l.scale.push_back({{uint16_t(offsetof(BlockQ6_K, scales) + j), 0, 8}, {}});
    all.push_back(l);
  }
  return all;
}

const Layout* find_layout(DType type) {
  static const std::vector<Layout> layouts = make_layouts();
  for (const auto& l : layouts)
    if (l.type == type) return &l;
  return nullptr;
}

const Layout& layout_of(DType type) {
  const Layout* l = find_layout(type);
  if (!l) fail("quantkit cannot encode ggml type {}", dtype_name(type));
  return *l;
}

// One block's chosen values before packing.
struct BlockCodes {
  uint16_t d = 0, m = 0;      // fp16 bits: scale; offset (Q4_1, Q5_1) or min scale (K-quants)
  int16_t level[kQK_K] = {};  // per weight: signed level, or codebook index (IQ4_NL)
  int16_t scale[16] = {};     // per sub-block
  int16_t min[16] = {};
};

void put_u16(uint8_t* at, uint16_t v) {
  at[0] = uint8_t(v & 0xff);
  at[1] = uint8_t(v >> 8);
}

void pack_block(const Layout& l, const BlockCodes& c, uint8_t* out) {
  std::memset(out, 0, size_t(l.bytes));
  put_u16(out + l.d_at, c.d);
  if (l.m_at >= 0) put_u16(out + l.m_at, c.m);
  for (int i = 0; i < l.values; ++i) put_field(out, l.level[size_t(i)], unsigned(c.level[i] + l.level_bias));
  for (size_t j = 0; j < l.scale.size(); ++j) put_field(out, l.scale[j], unsigned(c.scale[j] + l.scale_bias));
  for (size_t j = 0; j < l.min.size(); ++j) put_field(out, l.min[j], unsigned(c.min[j]));
}

// ---- numeric helpers ------------------------------------------------------------------

constexpr float kMaxHalf = 65504.0f;

// fp16 bits of v, saturated to the largest finite half: a scale that does not fit stays
// finite (the block clips) instead of decoding to inf.
uint16_t half_saturated(double v) {
  if (std::isnan(v)) return 0;
  if (std::fabs(v) > double(kMaxHalf)) v = std::copysign(double(kMaxHalf), v);
  return f32_to_f16(float(v));
}

// The half `steps` ulps further from zero than h (nearer for negative steps); false when
// that leaves the finite non-negative magnitudes.
bool half_step(uint16_t h, int steps, uint16_t* out) {
  const int magnitude = int(h & 0x7fff) + steps;
  if (magnitude < 0 || magnitude > 0x7bff) return false;
  *out = uint16_t((h & 0x8000) | magnitude);
  return true;
}

// Nearest integer of v clamped to [lo, hi], ties to even. The magic-constant rounding is
// exact for |v| < 2^22, which the clamp guarantees; it avoids a libm call per weight.
inline int round_clamped(float v, int lo, int hi) {
  v = std::min(std::max(v, float(lo)), float(hi));
  return int((v + 12582912.0f) - 12582912.0f);
}

// Uniform integer levels lo..hi (lo <= 0 <= hi); a level's value is itself.
struct UniformLevels {
  int lo, hi;
  int nearest(float u) const { return round_clamped(u, lo, hi); }
  float value(int level) const { return float(level); }
  // Whether level q has a neighbour q + dir (dir = +-1), and the value of u where the
  // nearest level changes from q to it.
  bool has_step(int q, int dir) const { return dir > 0 ? q < hi : q > lo; }
  float boundary(int q, int dir) const { return float(q) + 0.5f * float(dir); }
  int zero() const { return 0; }
  float lowest() const { return float(lo); }
  float highest() const { return float(hi); }
};

// A sorted codebook of integer levels (IQ4_NL); a level is an index into it. The midpoints
// between integer neighbours are multiples of 1/2, so the nearest index of u depends only
// on floor(2u): one table lookup (ties, of measure zero, go either way).
struct CodebookLevels {
  static constexpr int kSpan = 512;  // floor(2u) in [-kSpan/2, kSpan/2) covers int8 levels
  const int8_t* values;
  int count;
  uint8_t by_half_step[kSpan];
  float mid[16];  // mid[i]: between values i and i + 1

  CodebookLevels(const int8_t* v, int n) : values(v), count(n) {
    for (int i = 0; i + 1 < n; ++i) mid[i] = 0.5f * (float(v[i]) + float(v[i + 1]));
    for (int k = 0; k < kSpan; ++k) {
      const float u = (float(k - kSpan / 2) + 0.5f) / 2.0f;  // inside [k/2, (k+1)/2)
      int i = 0;
      while (i + 1 < n && u > 0.5f * (float(v[i]) + float(v[i + 1]))) ++i;
      by_half_step[k] = uint8_t(i);
    }
  }
  int nearest(float u) const {
    const float h = std::min(std::max(2.0f * u, float(-kSpan / 2)), float(kSpan / 2 - 1));
    int k = int(h);  // truncation; floor for negative non-integers below
    k -= float(k) > h;
    return by_half_step[k + kSpan / 2];
  }
  float value(int level) const { return float(values[level]); }
  bool has_step(int q, int dir) const { return dir > 0 ? q + 1 < count : q > 0; }
  float boundary(int q, int dir) const { return dir > 0 ? mid[q] : mid[q - 1]; }
  int zero() const {  // the index of the smallest magnitude (any decodes to 0 when d = 0)
    int best = 0;
    for (int i = 1; i < count; ++i)
      if (std::abs(values[i]) < std::abs(values[best])) best = i;
    return best;
  }
  float lowest() const { return float(values[0]); }
  float highest() const { return float(values[count - 1]); }
};

// Unit weights for blocks fitted without importance (and blocks whose importance is all 0).
const float* unit_weights() {
  static const std::vector<float> ones(kQK_K, 1.0f);
  return ones.data();
}

// w, or unit weights when w is null or sums to zero over the n weights.
const float* usable_weights(const float* w, int n) {
  if (!w) return unit_weights();
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += w[i];
  return sum > 0 ? w : unit_weights();
}

// x scaled by a power of two (exact) so that its largest magnitude is in [0.5, 1): the
// continuous fits then work on numbers of order one whatever the input's magnitude.
// The returned exponent scales results back (ldexp).
int normalise(const float* x, int n, float* out) {
  float amax = 0;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  int e = 0;
  if (amax > 0) std::frexp(amax, &e);
  const double factor = std::ldexp(1.0, -e);  // in double: 2^-e may not fit a float
  for (int i = 0; i < n; ++i) out[i] = float(double(x[i]) * factor);
  return e;
}

// ---- continuous fits --------------------------------------------------------------------

// Weighted sums of a level assignment: x ≈ d * value(level).
struct LevelSums {
  double sxq = 0, sqq = 0;
  // sum w (x - d q)^2 = sxx - gain() at the least-squares d = sxq / sqq.
  double gain() const { return sqq > 0 ? sxq * sxq / sqq : 0.0; }
  double scale() const { return sqq > 0 ? sxq / sqq : 0.0; }
};

template <class Levels>
LevelSums sums_at(const float* x, const float* w, int n, const Levels& lv, float inv_scale) {
  LevelSums s;
  for (int i = 0; i < n; ++i) {
    const double q = lv.value(lv.nearest(inv_scale * x[i]));
    s.sxq += double(w[i]) * x[i] * q, s.sqq += double(w[i]) * q * q;
  }
  return s;
}

// At inverse scale t, weight i moves one level outward.
struct SweepEvent {
  float t;
  int i;
  bool operator<(const SweepEvent& o) const { return t < o.t; }
};

// Exact search over inverse scales t in [t_from, t_to] (t > 0) for v = sign * x: the level
// assignment nearest(t v) changes only where some t v_i crosses a boundary between levels,
// so visiting those crossings in order (one weight moving one level each) sees every
// assignment of the window; each is scored with its least-squares scale. Returns the
// sums of the best (in v's terms).
template <class Levels>
LevelSums sweep_scales(const float* x, const float* w, int n, const Levels& lv, float sign, float t_from,
                       float t_to) {
  thread_local std::vector<SweepEvent> events;
  events.clear();
  int level[kQK_K];
  LevelSums s;
  for (int i = 0; i < n; ++i) {
    const float v = sign * x[i];
    level[i] = lv.nearest(t_from * v);
    const double q = lv.value(level[i]);
    s.sxq += double(w[i]) * v * q, s.sqq += double(w[i]) * q * q;
    if (v == 0) continue;
    const int dir = v > 0 ? 1 : -1;
    for (int q2 = level[i]; lv.has_step(q2, dir); q2 += dir) {
      const float t = lv.boundary(q2, dir) / v;
      if (t > t_to) break;
      events.push_back({t, i});
    }
  }
  std::sort(events.begin(), events.end());
  LevelSums best = s;
  for (const SweepEvent& ev : events) {
    const int i = ev.i, dir = x[i] * sign > 0 ? 1 : -1;
    const double v = sign * x[i], before = lv.value(level[i]), after = lv.value(level[i] + dir);
    level[i] += dir;
    s.sxq += double(w[i]) * v * (after - before);
    s.sqq += double(w[i]) * (after * after - before * before);
    if (s.gain() > best.gain()) best = s;
  }
  return best;
}

// Inverse scales searched by fit_scale: the largest-magnitude weight lands between `from`
// and `to` levels beyond the extreme level of its side (positive: it is clipped).
struct ScaleWindow {
  float from, to;
};

// The scale d minimising sum w (x - d * value(nearest(x / d)))^2: an exact sweep over the
// window for both signs of d (a negative d lets the longer side of an asymmetric range
// serve the sign of the largest weight), then refined by alternating nearest levels and
// least squares. Returns 0 for an all-zero block. x should be normalised.
template <class Levels>
double fit_scale(const float* x, const float* w, int n, const Levels& lv, const ScaleWindow& window) {
  w = usable_weights(w, n);
  float xmax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > std::fabs(xmax)) xmax = x[i];
  if (xmax == 0) return 0.0;
  LevelSums best;
  double d = 0;
  for (const float sign : {1.0f, -1.0f}) {
    const float anchor = sign * xmax > 0 ? lv.highest() : -lv.lowest();  // extreme level of xmax's side
    if (anchor <= 0) continue;
    const float a = std::fabs(xmax);
    const float t_from = std::max(anchor + window.from, 0.5f * anchor) / a, t_to = (anchor + window.to) / a;
    const LevelSums s = sweep_scales(x, w, n, lv, sign, t_from, t_to);
    if (s.gain() > best.gain()) best = s, d = sign * s.scale();
  }
  for (int iter = 0; iter < 8 && d != 0; ++iter) {
    const LevelSums s = sums_at(x, w, n, lv, float(1.0 / d));
    if (!(s.gain() > best.gain() * (1 + 1e-12))) break;
    best = s;
    d = s.scale();
  }
  return d;
}

// Candidate inverse scales of an affine fit: the block's range [min, max] spread over
// nmax + delta levels, delta in [from, to] by step (positive delta clips the ends).
struct ScaleGrid {
  float from, to, step;
};

// x ≈ scale * l + offset with l in [0, nmax].
struct AffineFit {
  double scale = 0, offset = 0, error = 0;
};

// Weighted sums for the 2x2 least squares of (scale, offset): the moments of x (fixed for
// a block) and those involving the levels l (one set per candidate).
struct AffineSums {
  double sw = 0, sx = 0, sxx = 0, sl = 0, sll = 0, sxl = 0;

  // Least-squares (scale, offset) and its error; offset clamped to <= 0 if asked (the
  // K-quants store the offset as -dmin * m with m >= 0). scale < 0 marks no solution.
  AffineFit solve(bool offset_nonpositive) const {
    AffineFit f{-1, 0, 0};
    const double det = sw * sll - sl * sl;
    if (det > 0) {
      f.scale = (sw * sxl - sx * sl) / det;
      f.offset = (sll * sx - sl * sxl) / det;
    }
    if ((offset_nonpositive && f.offset > 0) || det <= 0) {
      f.offset = 0;
      f.scale = sll > 0 ? sxl / sll : -1;
    }
    f.error = sxx - 2 * f.scale * sxl - 2 * f.offset * sx + f.scale * f.scale * sll +
              2 * f.scale * f.offset * sl + f.offset * f.offset * sw;
    return f;
  }
};

AffineSums x_moments(const float* x, const float* w, int n) {
  AffineSums s;
  for (int i = 0; i < n; ++i) s.sw += w[i], s.sx += double(w[i]) * x[i], s.sxx += double(w[i]) * x[i] * x[i];
  return s;
}

// Adds the level moments of l = nearest((x - offset) * inv_scale) in [0, nmax] to the x
// moments. Float accumulation is enough to rank candidates of one block.
AffineSums with_levels(AffineSums s, const float* x, const float* w, int n, int nmax, float inv_scale, float offset) {
  float sl = 0, sll = 0, sxl = 0;
  for (int i = 0; i < n; ++i) {
    const float l = float(round_clamped((x[i] - offset) * inv_scale, 0, nmax));
    const float wl = w[i] * l;
    sl += wl, sll += wl * l, sxl += wl * x[i];
  }
  s.sl = sl, s.sll = sll, s.sxl = sxl;
  return s;
}

// Weighted (scale, offset) fit of x ≈ scale * l + offset, l in [0, nmax]: each inverse
// scale of the grid (levels counted from the block minimum) refitted by 2x2 least squares,
// then refined by alternating nearest levels and least squares. x should be normalised.
AffineFit fit_affine(const float* x, const float* w, int n, int nmax, bool offset_nonpositive, const ScaleGrid& grid) {
  w = usable_weights(w, n);
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  if (offset_nonpositive) lo = std::min(lo, 0.0f);
  if (hi <= lo) return {0, lo, 0};
  const AffineSums moments = x_moments(x, w, n);
  AffineFit best{0, lo, HUGE_VAL};
  for (float delta = grid.from; delta <= grid.to + 1e-6f; delta += grid.step) {
    const AffineFit f =
        with_levels(moments, x, w, n, nmax, (float(nmax) + delta) / (hi - lo), lo).solve(offset_nonpositive);
    if (f.scale > 0 && f.error < best.error) best = f;
  }
  for (int iter = 0; iter < 8 && best.scale > 0; ++iter) {
    const AffineFit f =
        with_levels(moments, x, w, n, nmax, float(1.0 / best.scale), float(best.offset)).solve(offset_nonpositive);
    if (!(f.scale > 0 && f.error < best.error)) break;
    best = f;
  }
  if (!(best.scale > 0)) best = {0, lo, 0};
  return best;
}

// ---- exact evaluation of stored parameters ----------------------------------------------

// Levels of x for decoded value a * value(level) + b (a and b as the decoder computes
// them, in float) and the exact weighted error. levels may be null.
template <class Levels>
double requantize(const float* x, const float* w, int n, const Levels& lv, float a, float b, int16_t* levels) {
  const float inv = a != 0 ? float(1.0 / double(a)) : 0.0f;  // 1/a may overflow float: inf is fine
  const int zero = a != 0 ? 0 : lv.zero();
  double err = 0;
  for (int i = 0; i < n; ++i) {
    const int q = a != 0 ? lv.nearest((x[i] - b) * inv) : zero;
    const float y = a * lv.value(q) + b;
    const double r = double(x[i]) - double(y);
    err += double(w[i]) * r * r;
    if (levels) levels[i] = int16_t(q);
  }
  return err;
}

// Scale search over stored values: each candidate scale rounded to fp16 and its fp16
// neighbours within `radius` ulps, judged by the exact error of requantizing x.
struct HalfChoice {
  uint16_t bits = 0;
  double error = HUGE_VAL;
};

template <class Levels>
void try_half_scales(const float* x, const float* w, int n, const Levels& lv, double candidate, int radius,
                     HalfChoice& best) {
  const uint16_t base = half_saturated(candidate);
  for (int k = -radius; k <= radius; ++k) {
    uint16_t h;
    if (!half_step(base, k, &h)) continue;
    const double e = requantize(x, w, n, lv, f16_to_f32(h), 0.0f, nullptr);
    if (e < best.error) best = {h, e};
  }
}

// ---- legacy 32-weight types -------------------------------------------------------------

// Q8_0, Q4_0, Q5_0 (x = d * l) and IQ4_NL (x = d * codebook[l]). Candidates: our fitted
// scale, and the simple absmax scales of llama.cpp's reference quantizer (so no block is
// ever worse than it), each with fp16 neighbours.
template <class Levels>
void encode_scaled(const float* x, const float* w, const Levels& lv, const ScaleWindow& window, int radius,
                   BlockCodes& c) {
  float xn[kQK];
  const int e = normalise(x, kQK, xn);
  const float* wu = usable_weights(w, kQK);
  float xmax = 0;
  for (int i = 0; i < kQK; ++i)
    if (std::fabs(x[i]) > std::fabs(xmax)) xmax = x[i];
  HalfChoice best;
  try_half_scales(x, wu, kQK, lv, std::ldexp(fit_scale(xn, wu, kQK, lv, window), e), radius, best);
  try_half_scales(x, wu, kQK, lv, double(xmax) / lv.lowest(), 0, best);
  try_half_scales(x, wu, kQK, lv, std::fabs(double(xmax)) / lv.highest(), 0, best);
  c.d = best.bits;
  requantize(x, wu, kQK, lv, f16_to_f32(c.d), 0.0f, c.level);
}

// Q4_1, Q5_1: x = d * l + m with fp16 d and m. Candidates: our fit and the reference's
// min/max one; for each, fp16 neighbours of d, with m as stored and m refitted to the
// levels (the least-squares offset given d).
void encode_affine_32(const float* x, const float* w, int nmax, const ScaleGrid& grid, BlockCodes& c) {
  float xn[kQK];
  const int e = normalise(x, kQK, xn);
  const float* wu = usable_weights(w, kQK);
  const UniformLevels lv{0, nmax};
  const AffineFit fit = fit_affine(xn, wu, kQK, nmax, false, grid);
  float lo = x[0], hi = x[0];
  for (int i = 1; i < kQK; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);

  double best = HUGE_VAL;
  int16_t levels[kQK];
  auto consider = [&](uint16_t d, uint16_t m) {
    const double err = requantize(x, wu, kQK, lv, f16_to_f32(d), f16_to_f32(m), levels);
    if (err < best) best = err, c.d = d, c.m = m;
    return err;
  };
  auto consider_with_refit = [&](double scale, double offset, int radius) {
    const uint16_t base = half_saturated(scale);
    for (int k = -radius; k <= radius; ++k) {
      uint16_t d;
      if (!half_step(base, k, &d)) continue;
      consider(d, half_saturated(offset));
      // Least-squares offset for these levels: sum w (x - d l) / sum w.
      double sw = 0, sr = 0;
      const float df = f16_to_f32(d);
      for (int i = 0; i < kQK; ++i) sw += wu[i], sr += wu[i] * (double(x[i]) - double(df * float(levels[i])));
      consider(d, half_saturated(sr / sw));
    }
  };
  consider_with_refit(std::ldexp(fit.scale, e), std::ldexp(fit.offset, e), 1);
  consider_with_refit((hi - lo) / float(nmax), lo, 0);  // llama.cpp's reference choice, in float as it computes it
  requantize(x, wu, kQK, lv, f16_to_f32(c.d), f16_to_f32(c.m), c.level);
}

// ---- K-quant super-blocks ---------------------------------------------------------------

// A K-quant type's shape and search ranges: 256 weights in sub-blocks of sub_len, each with
// an integer scale (and for affine types a min) times the super-block's fp16 d (and dmin).
struct KQuant {
  int sub_len;
  UniformLevels levels;  // of a weight: [lo, hi] symmetric, [0, nmax] affine
  UniformLevels scales;  // of a sub-block scale
  int min_max;           // affine: sub-block mins in [0, min_max]; 0: symmetric type
  ScaleGrid affine_grid;  // sub-block (scale, min) fits of affine types
  ScaleWindow window;     // sub-block scale fits of symmetric types, and the d / dmin fits
  int radius;             // local search radius over integer sub-block scales (and mins)
  bool affine() const { return min_max > 0; }
};

// Targets of one super-block: the continuous per-sub-block fits and their sensitivities.
struct SubBlockTargets {
  double scale[16], min[16];        // continuous sub-block scale and min (normalised units)
  double scale_weight[16], min_weight[16];  // d(error)/d(param)^2: sum w l^2 and sum w
};

// Result of choosing the integers for a given (d, dmin).
struct KChoice {
  uint16_t d = 0, dmin = 0;
  int16_t scale[16] = {}, min[16] = {};
  double error = HUGE_VAL;
};

// For fixed stored d and dmin, each sub-block's integer scale (and min) from a local search
// around its target, judged by the exact requantization error.
KChoice choose_sub_blocks(const KQuant& k, const float* x, const float* w, const double* target_scale,
                          const double* target_min, uint16_t d16, uint16_t dmin16) {
  KChoice c;
  c.d = d16, c.dmin = dmin16;
  c.error = 0;
  const float d = f16_to_f32(d16), dmin = f16_to_f32(dmin16);
  const int n_sub = kQK_K / k.sub_len;
  for (int j = 0; j < n_sub; ++j) {
    const float* xs = x + j * k.sub_len;
    const float* ws = w + j * k.sub_len;
    const int sc0 = d != 0 ? round_clamped(float(target_scale[j] / d), k.scales.lo, k.scales.hi) : 0;
    const int m0 = k.affine() && dmin != 0 ? round_clamped(float(target_min[j] / dmin), 0, k.min_max) : 0;
    const int m_radius = k.affine() && dmin != 0 ? k.radius : 0;
    double best = HUGE_VAL;
    for (int sc = std::max(k.scales.lo, sc0 - k.radius); sc <= std::min(k.scales.hi, sc0 + k.radius); ++sc)
      for (int m = std::max(0, m0 - m_radius); m <= std::min(std::max(k.min_max, 0), m0 + m_radius); ++m) {
        const double e = requantize(xs, ws, k.sub_len, k.levels, d * float(sc), -(dmin * float(m)), nullptr);
        if (e < best) best = e, c.scale[j] = int16_t(sc), c.min[j] = int16_t(m);
      }
    c.error += best;
  }
  return c;
}

// Least-squares (d, dmin) for fixed integer sub-block scales, mins and levels:
// x ≈ d * (sc_j * l_i) - dmin * m_j.
void refit_super_scales(const KQuant& k, const float* x, const float* w, const KChoice& c, double* d,
                        double* dmin) {
  double saa = 0, sab = 0, sbb = 0, sxa = 0, sxb = 0;
  int16_t levels[kQK_K];
  const float df = f16_to_f32(c.d), dminf = f16_to_f32(c.dmin);
  for (int j = 0; j < kQK_K / k.sub_len; ++j) {
    const int at = j * k.sub_len;
    requantize(x + at, w + at, k.sub_len, k.levels, df * float(c.scale[j]), -(dminf * float(c.min[j])), levels + at);
    for (int i = at; i < at + k.sub_len; ++i) {
      const double a = double(c.scale[j]) * levels[i], b = -double(c.min[j]);
      saa += w[i] * a * a, sab += w[i] * a * b, sbb += w[i] * b * b;
      sxa += w[i] * a * x[i], sxb += w[i] * b * x[i];
    }
  }
  *d = double(df), *dmin = double(dminf);
  if (!k.affine()) {
    if (saa > 0) *d = sxa / saa;
    return;
  }
  const double det = saa * sbb - sab * sab;
  if (det > 0) {
    *d = (sxa * sbb - sxb * sab) / det;
    *dmin = (saa * sxb - sab * sxa) / det;
  }
}

void encode_kquant(const KQuant& k, const float* x, const float* w, BlockCodes& out) {
  float xn[kQK_K];
  const int e = normalise(x, kQK_K, xn);
  w = usable_weights(w, kQK_K);
  const int n_sub = kQK_K / k.sub_len;

  // 1. Continuous scale (and min) of each sub-block, with the weight of each parameter's
  //    error in the block's error: a scale error ds costs ds^2 * sum w l^2, a min error
  //    dm costs dm^2 * sum w.
  SubBlockTargets t;
  for (int j = 0; j < n_sub; ++j) {
    const float* xs = xn + j * k.sub_len;
    const float* ws = usable_weights(w + j * k.sub_len, k.sub_len);
    int16_t levels[32];
    if (k.affine()) {
      const AffineFit f = fit_affine(xs, ws, k.sub_len, k.levels.hi, true, k.affine_grid);
      t.scale[j] = f.scale, t.min[j] = -f.offset;
      requantize(xs, ws, k.sub_len, k.levels, float(f.scale), float(f.offset), levels);
    } else {
      t.scale[j] = fit_scale(xs, ws, k.sub_len, k.levels, k.window);
      t.min[j] = 0;
      requantize(xs, ws, k.sub_len, k.levels, float(t.scale[j]), 0.0f, levels);
    }
    // The sensitivities use the true weights: a sub-block nobody cares about should not
    // pull d and dmin.
    const float* wt = w + j * k.sub_len;
    t.scale_weight[j] = t.min_weight[j] = 0;
    for (int i = 0; i < k.sub_len; ++i) {
      t.scale_weight[j] += double(wt[i]) * levels[i] * levels[i];
      t.min_weight[j] += wt[i];
    }
  }

  // 2. Super-block d (and dmin): weighted fit of the sub-block targets onto the integer
  //    scale grid.
  //    (Sensitivities are divided by their largest so that float holds them.)
  float sf[16], mf[16], swf[16], mwf[16];
  double max_sw = 0, max_mw = 0;
  for (int j = 0; j < n_sub; ++j) max_sw = std::max(max_sw, t.scale_weight[j]), max_mw = std::max(max_mw, t.min_weight[j]);
  for (int j = 0; j < n_sub; ++j) {
    sf[j] = float(t.scale[j]), mf[j] = float(t.min[j]);
    swf[j] = max_sw > 0 ? float(t.scale_weight[j] / max_sw) : 1.0f;
    mwf[j] = max_mw > 0 ? float(t.min_weight[j] / max_mw) : 1.0f;
  }
  const double d = fit_scale(sf, swf, n_sub, k.scales, k.window);
  const double dmin = k.affine() ? fit_scale(mf, mwf, n_sub, UniformLevels{0, k.min_max}, k.window) : 0.0;

  // 3. Store d and dmin in fp16 and pick the integers by exact error; then refit d and
  //    dmin to those integers once and keep the refit if it is better.
  double target_scale[16], target_min[16];
  for (int j = 0; j < n_sub; ++j) target_scale[j] = std::ldexp(t.scale[j], e), target_min[j] = std::ldexp(t.min[j], e);
  KChoice best = choose_sub_blocks(k, x, w, target_scale, target_min, half_saturated(std::ldexp(d, e)),
                                   half_saturated(std::ldexp(dmin, e)));
  double d2, dmin2;
  refit_super_scales(k, x, w, best, &d2, &dmin2);
  const KChoice refit = choose_sub_blocks(k, x, w, target_scale, target_min, half_saturated(d2), half_saturated(dmin2));
  if (refit.error < best.error) best = refit;

  out.d = best.d, out.m = best.dmin;
  const float df = f16_to_f32(best.d), dminf = f16_to_f32(best.dmin);
  for (int j = 0; j < n_sub; ++j) {
    out.scale[j] = best.scale[j], out.min[j] = best.min[j];
    const int at = j * k.sub_len;
    requantize(x + at, w + at, k.sub_len, k.levels, df * float(best.scale[j]), -(dminf * float(best.min[j])),
               out.level + at);
  }
}

// ---- per-type parameters ------------------------------------------------------------------
//
// Search ranges in level units (ScaleGrid, ScaleWindow). Low-bit types want clipping
// (positive deltas), which importance-weighted blocks push further; at 5 bits and more a
// wider range on both sides mostly buys "lucky" scales whose grid happens to fit the
// block's values well, worth up to ~1 dB at 8 bits (q8_0) for ~30% more time.
constexpr ScaleWindow kNarrowWindow{-1.0f, 4.0f};
constexpr ScaleWindow kWideWindow{-4.0f, 4.0f};
constexpr ScaleWindow kCodebookWindow{-24.0f, 48.0f};  // IQ4_NL codebook units (levels -127..113)
constexpr ScaleGrid kNarrowGrid{-1.0f, 2.0f, 0.1f};
constexpr ScaleGrid kWideGrid{-3.0f, 4.0f, 0.1f};

const KQuant kQ2K{16, {0, 3}, {0, 15}, 15, kNarrowGrid, kNarrowWindow, 2};
const KQuant kQ3K{16, {-4, 3}, {-32, 31}, 0, kNarrowGrid, kNarrowWindow, 1};
const KQuant kQ4K{32, {0, 15}, {0, 63}, 63, kWideGrid, kNarrowWindow, 1};
const KQuant kQ5K{32, {0, 31}, {0, 63}, 63, kWideGrid, kNarrowWindow, 1};
const KQuant kQ6K{16, {-32, 31}, {-128, 127}, 0, kNarrowGrid, kWideWindow, 2};

void encode_block(DType type, const float* x, const float* w, BlockCodes& c) {
  switch (type) {
    case DType::Q8_0: return encode_scaled(x, w, UniformLevels{-128, 127}, kWideWindow, 4, c);
    case DType::Q4_0: return encode_scaled(x, w, UniformLevels{-8, 7}, kNarrowWindow, 1, c);
    case DType::Q5_0: return encode_scaled(x, w, UniformLevels{-16, 15}, kWideWindow, 2, c);
    case DType::Q4_1: return encode_affine_32(x, w, 15, kWideGrid, c);
    case DType::Q5_1: return encode_affine_32(x, w, 31, kWideGrid, c);
    case DType::IQ4_NL: {
      static const CodebookLevels codebook(kIQ4NLValues, 16);
      return encode_scaled(x, w, codebook, kCodebookWindow, 1, c);
    }
    case DType::Q2_K: return encode_kquant(kQ2K, x, w, c);
    case DType::Q3_K: return encode_kquant(kQ3K, x, w, c);
    case DType::Q4_K: return encode_kquant(kQ4K, x, w, c);
    case DType::Q5_K: return encode_kquant(kQ5K, x, w, c);
    case DType::Q6_K: return encode_kquant(kQ6K, x, w, c);
    default: fail("quantkit cannot encode ggml type {}", dtype_name(type));
  }
}

}  // namespace

bool can_encode(DType type) { return find_layout(type) != nullptr; }

void encode_row(DType type, const float* x, int64_t n, const float* weight, uint8_t* out) {
  const Layout& l = layout_of(type);
  if (n < 0 || n % l.values != 0)
    fail("{} weights are not a multiple of the {} block size {}", n, dtype_name(type), l.values);
  BlockCodes codes;
  for (int64_t b = 0; b < n / l.values; ++b) {
    codes = BlockCodes{};
    const int64_t at = b * l.values;
    encode_block(type, x + at, weight ? weight + at : nullptr, codes);
    pack_block(l, codes, out + b * l.bytes);
  }
}

BlockFields unpack_fields(DType type, const uint8_t* blocks, int64_t n) {
  const Layout& l = layout_of(type);
  if (n < 0 || n % l.values != 0)
    fail("{} weights are not a multiple of the {} block size {}", n, dtype_name(type), l.values);
  BlockFields f;
  f.level_bits = l.level_bits, f.scale_bits = l.scale_bits, f.min_bits = l.min_bits;
  const unsigned level_flip = l.signed_levels ? 0x80 : 0, scale_flip = l.signed_scales ? 0x80 : 0;
  const int64_t n_blocks = n / l.values;
  f.levels.reserve(size_t(n));
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* block = blocks + b * l.bytes;
    for (const auto& p : l.level) f.levels.push_back(get_field(block, p) ^ level_flip);
    for (const auto& p : l.scale) f.scales.push_back(get_field(block, p) ^ scale_flip);
    for (const auto& p : l.min) f.mins.push_back(get_field(block, p));
  }
  return f;
}

}  // namespace quantkit::ggml
