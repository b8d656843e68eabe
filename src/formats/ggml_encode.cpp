#include "formats/ggml_encode.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <type_traits>

#include <immintrin.h>

#include "io/ggml_blocks.h"
#include "kernels/avx512_state.h"
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

// Whole bytes of levels (Q8_0) or nibble pairs without high bits (Q4_0, Q4_1, IQ4_NL):
// the bits the tables place, written directly (the per-field walk dominates these types).
bool pack_levels_fast(const Layout& l, const BlockCodes& c, uint8_t* out) {
  if (l.values != kQK || l.level[0].high.width) return false;
  uint8_t* qs = out + l.level[0].low.byte;
  if (l.level_bits == 8) {
    for (int j = 0; j < kQK; ++j) qs[j] = uint8_t(c.level[j] + l.level_bias);
    return true;
  }
  if (l.level_bits != 4) return false;
  for (int j = 0; j < kQK / 2; ++j)
    qs[j] = uint8_t(((c.level[j] + l.level_bias) & 15) | ((c.level[j + kQK / 2] + l.level_bias) & 15) << 4);
  return true;
}

void pack_block(const Layout& l, const BlockCodes& c, uint8_t* out) {
  std::memset(out, 0, size_t(l.bytes));
  put_u16(out + l.d_at, c.d);
  if (l.m_at >= 0) put_u16(out + l.m_at, c.m);
  if (!pack_levels_fast(l, c, out))
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
  const float* ones = unit_weights();
  if (!w) return ones;
  const std::less<const float*> before;  // w inside the unit weights (a sub-block of them): no sum needed
  if (!before(w, ones) && !before(ones + kQK_K, w + n)) return w;
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += w[i];
  return sum > 0 ? w : unit_weights();
}

// x scaled by a power of two (exact) so that its largest magnitude is in [0.5, 1): the
// continuous fits then work on numbers of order one whatever the input's magnitude.
// The returned exponent scales results back (ldexp).
// The largest magnitude of x, four lanes at a time (max is exact in any order).
float abs_max(const float* x, int n) {
  const __m128 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  __m128 m = _mm_setzero_ps();
  int i = 0;
  for (; i + 4 <= n; i += 4) m = _mm_max_ps(m, _mm_and_ps(_mm_loadu_ps(x + i), magnitude));
  m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
  m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
  float amax = _mm_cvtss_f32(m);
  for (; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

// The index of the first value of x with the largest magnitude; -1 when all are zero.
int abs_max_index(const float* x, int n) {
  const float amax = abs_max(x, n);
  if (!(amax > 0)) return -1;
  const __m128 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff)), target = _mm_set1_ps(amax);
  int i = 0;
  for (; i + 4 <= n; i += 4)
    if (const int hit = _mm_movemask_ps(_mm_cmpeq_ps(_mm_and_ps(_mm_loadu_ps(x + i), magnitude), target)))
      return i + __builtin_ctz(unsigned(hit));
  for (; i < n; ++i)
    if (std::fabs(x[i]) == amax) return i;
  return -1;
}

// The first value of x with the largest magnitude; +0 when all are zero.
float signed_abs_max(const float* x, int n) {
  const int i = abs_max_index(x, n);
  return i < 0 ? 0.0f : x[i];
}

// amax: the largest magnitude of x.
int normalise(const float* x, int n, float amax, float* out) {
  int e = 0;
  if (amax > 0) std::frexp(amax, &e);
  if (e >= -126 && e <= 126) {  // 2^-e is a float: the float product rounds like the double one
    const float factor = std::ldexp(1.0f, -e);
    for (int i = 0; i < n; ++i) out[i] = x[i] * factor;
    return e;
  }
  const double factor = std::ldexp(1.0, -e);
  for (int i = 0; i < n; ++i) out[i] = float(double(x[i]) * factor);
  return e;
}

int normalise(const float* x, int n, float* out) { return normalise(x, n, abs_max(x, n), out); }

// ---- continuous fits --------------------------------------------------------------------

// Weighted sums of a level assignment: x ≈ d * value(level).
struct LevelSums {
  double sxq = 0, sqq = 0;
  // sum w (x - d q)^2 = sxx - gain() at the least-squares d = sxq / sqq.
  double gain() const { return sqq > 0 ? sxq * sxq / sqq : 0.0; }
  double scale() const { return sqq > 0 ? sxq / sqq : 0.0; }
};

// Accumulates (w v q, w q q) in one SSE2 register, the products formed as the scalar
// expressions double(w) * v * q and double(w) * q * q do. (GCC pairs the two scalar sums
// itself but keeps the pair in memory: a store-to-load stall per weight.)
struct PairSums {
  __m128d acc = _mm_setzero_pd();
  void add(float w, float v, double q) {
    const double wd = double(w);
    acc = _mm_add_pd(acc, _mm_mul_pd(_mm_mul_pd(_mm_set1_pd(wd), _mm_set_pd(q, double(v))), _mm_set1_pd(q)));
  }
  LevelSums sums() const {
    LevelSums s;
    s.sxq = _mm_cvtsd_f64(acc), s.sqq = _mm_cvtsd_f64(_mm_unpackhi_pd(acc, acc));
    return s;
  }
};

template <class Levels>
LevelSums sums_at(const float* x, const float* w, int n, const Levels& lv, float inv_scale) {
  PairSums p;
  for (int i = 0; i < n; ++i) p.add(w[i], x[i], lv.value(lv.nearest(inv_scale * x[i])));
  return p.sums();
}

// ---- sweep events -----------------------------------------------------------------------
//
// An event of the scale sweep: at inverse scale t, weight i moves one level outward, from
// level magnitude k (uniform levels; 0 otherwise). It is one 64-bit key, t's bits (made
// order-preserving), then i, then k, then two bits for the sweeps of both signs at once
// (whether the event is in the sweep of d > 0, of d < 0), so that sorting keys orders
// events by t, ties by weight: the same order on every machine and every code path.

constexpr int kMaxEvents = 4096;  // per sweep; more events fall back to a vector

uint64_t event_key(float t, int i, int k, unsigned signs = 0) {
  uint32_t b;
  std::memcpy(&b, &t, 4);
  b ^= uint32_t(int32_t(b) >> 31) | 0x80000000u;  // negatives: all bits flipped; positives: sign set
  return uint64_t(b) << 32 | uint32_t(i) << 16 | uint32_t(k) << 2 | signs;
}
int event_weight(uint64_t key) { return int(uint32_t(key) >> 16); }
int event_level(uint64_t key) { return int(key & 0xffff) >> 2; }
unsigned event_signs(uint64_t key) { return unsigned(key & 3); }  // bit 1: d > 0, bit 0: d < 0

const bool kHaveAvx512 = __builtin_cpu_supports("avx512f");

// GCC 12 flags the self-initialised _mm512_undefined_*() inside the AVX-512 intrinsics as
// uninitialised when they are enabled per function (target attribute): a false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// ---- AVX-512 bitonic sorting networks -------------------------------------------------------
// The sweeps sort ~30-130 events per block, where std::sort spends most of its time in
// mispredicted branches; a network has none (~10x faster). Keys are unique, so the result
// is exactly std::sort's. Keys are 64-bit, or 32-bit (twice as many per register) when a
// block's events fit.

// The lane operations of one key width.
struct Keys64 {
  using Key = uint64_t;
  using Mask = __mmask8;
  static constexpr int kLanes = 8;
  static __attribute__((target("avx512f"), always_inline)) __m512i min(__m512i a, __m512i b) { return _mm512_min_epu64(a, b); }
  static __attribute__((target("avx512f"), always_inline)) __m512i max(__m512i a, __m512i b) { return _mm512_max_epu64(a, b); }
  static __attribute__((target("avx512f"), always_inline)) __m512i mask_max(__m512i src, Mask m, __m512i a, __m512i b) {
    return _mm512_mask_max_epu64(src, m, a, b);
  }
  static __attribute__((target("avx512f"), always_inline)) __m512i partner(__m512i a, int lane_xor) {
    const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_permutexvar_epi64(_mm512_xor_si512(lane, _mm512_set1_epi64(lane_xor)), a);
  }
  static __attribute__((target("avx512f"), always_inline)) __m512i load(const Key* p, int left) {
    const Mask m = left >= kLanes ? Mask(0xff) : left <= 0 ? Mask(0) : Mask((1u << left) - 1);
    return _mm512_mask_loadu_epi64(_mm512_set1_epi64(-1), m, p);
  }
  static __attribute__((target("avx512f"), always_inline)) void store(Key* p, int left, __m512i a) {
    const Mask m = left >= kLanes ? Mask(0xff) : left <= 0 ? Mask(0) : Mask((1u << left) - 1);
    _mm512_mask_storeu_epi64(p, m, a);
  }
};

struct Keys32 {
  using Key = uint32_t;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static __attribute__((target("avx512f"), always_inline)) __m512i min(__m512i a, __m512i b) { return _mm512_min_epu32(a, b); }
  static __attribute__((target("avx512f"), always_inline)) __m512i max(__m512i a, __m512i b) { return _mm512_max_epu32(a, b); }
  static __attribute__((target("avx512f"), always_inline)) __m512i mask_max(__m512i src, Mask m, __m512i a, __m512i b) {
    return _mm512_mask_max_epu32(src, m, a, b);
  }
  static __attribute__((target("avx512f"), always_inline)) __m512i partner(__m512i a, int lane_xor) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_permutexvar_epi32(_mm512_xor_si512(lane, _mm512_set1_epi32(lane_xor)), a);
  }
  static __attribute__((target("avx512f"), always_inline)) __m512i load(const Key* p, int left) {
    const Mask m = left >= kLanes ? Mask(0xffff) : left <= 0 ? Mask(0) : Mask((1u << left) - 1);
    return _mm512_mask_loadu_epi32(_mm512_set1_epi32(-1), m, p);
  }
  static __attribute__((target("avx512f"), always_inline)) void store(Key* p, int left, __m512i a) {
    const Mask m = left >= kLanes ? Mask(0xffff) : left <= 0 ? Mask(0) : Mask((1u << left) - 1);
    _mm512_mask_storeu_epi32(p, m, a);
  }
};

// Lanes of register a that keep the larger key in the step (block k, distance j < lanes).
constexpr unsigned larger_lanes(int lanes, int a, int j, int k) {
  unsigned m = 0;
  for (int lane = 0; lane < lanes; ++lane) {
    const int g = lanes * a + lane;  // position in the sequence
    if (((g & j) != 0) != ((g & k) != 0)) m |= 1u << lane;
  }
  return m;
}

// One compare-exchange step at distance J inside blocks of K, on registers A.. of R.
template <class T, int R, int K, int J, int A>
__attribute__((target("avx512f"), always_inline)) inline void bitonic_step(__m512i* r) {
  if constexpr (A < R) {
    if constexpr (J >= T::kLanes) {  // partners in register A ^ J/lanes, same lane
      constexpr int B = A ^ (J / T::kLanes);
      if constexpr (B > A) {
        const __m512i lo = T::min(r[A], r[B]), hi = T::max(r[A], r[B]);
        const bool ascending = ((T::kLanes * A) & K) == 0;
        r[A] = ascending ? lo : hi;
        r[B] = ascending ? hi : lo;
      }
    } else {  // partners in the same register, lane ^ J
      const __m512i p = T::partner(r[A], J);
      r[A] = T::mask_max(T::min(r[A], p), typename T::Mask(larger_lanes(T::kLanes, A, J, K)), r[A], p);
    }
    bitonic_step<T, R, K, J, A + 1>(r);
  }
}

template <class T, int R, int K, int J>
__attribute__((target("avx512f"), always_inline)) inline void bitonic_merge(__m512i* r) {
  if constexpr (J >= 1) {
    bitonic_step<T, R, K, J, 0>(r);
    bitonic_merge<T, R, K, J / 2>(r);
  }
}

template <class T, int R, int K>
__attribute__((target("avx512f"), always_inline)) inline void bitonic_sort(__m512i* r) {
  if constexpr (K <= T::kLanes * R) {
    bitonic_merge<T, R, K, K / 2>(r);
    bitonic_sort<T, R, 2 * K>(r);
  }
}

// Sorts n <= R * lanes keys in place (missing keys padded with the largest value).
template <class T, int R>
__attribute__((target("avx512f"))) void sort_keys_avx512(typename T::Key* keys, int n) {
  __m512i r[R];
  for (int a = 0; a < R; ++a) r[a] = T::load(keys + T::kLanes * a, n - T::kLanes * a);
  bitonic_sort<T, R, 2>(r);
  for (int a = 0; a < R; ++a) T::store(keys + T::kLanes * a, n - T::kLanes * a, r[a]);
}

// Up to 16 registers (128 64-bit or 256 32-bit keys); more go to std::sort.
template <class T>
void sort_keys(typename T::Key* keys, int n) {
  constexpr int L = T::kLanes;
  if (kHaveAvx512 && n <= 16 * L) {
    if (n <= 2 * L) sort_keys_avx512<T, 2>(keys, n);
    else if (n <= 4 * L) sort_keys_avx512<T, 4>(keys, n);
    else if (n <= 8 * L) sort_keys_avx512<T, 8>(keys, n);
    else sort_keys_avx512<T, 16>(keys, n);
    return kernels::clean_avx512_upper_state();
  }
  std::sort(keys, keys + n);
}

// ---- event generation -----------------------------------------------------------------------

// The events of v = sign * x over (level[i], t_to], level[i] = nearest(t_from v) (stored).
// Returns their number (at most `cap`), or -1 if there are more.
template <class Levels>
int sweep_events(const float* x, int n, const Levels& lv, float sign, float t_from, float t_to, int* level,
                 uint64_t* keys, int cap) {
  int ne = 0;
  for (int i = 0; i < n; ++i) {
    const float v = sign * x[i];
    level[i] = lv.nearest(t_from * v);
    if (v == 0) continue;
    const int dir = v > 0 ? 1 : -1;
    for (int q2 = level[i]; lv.has_step(q2, dir); q2 += dir) {
      const float t = lv.boundary(q2, dir) / v;
      if (t > t_to) break;
      if (ne == cap) return -1;
      keys[ne++] = event_key(t, i, std::is_same_v<Levels, UniformLevels> ? q2 * dir : 0);
    }
  }
  return ne;
}

// The same events for uniform levels, 16 weights at a time: weight i's k-th event outward
// from magnitude level k0 is at t = (k0 + k + 0.5) / |v| (exactly the scalar boundary / v),
// for at most `span` events per weight. Returns -1 if a weight has more (or cap is hit).
__attribute__((target("avx512f"))) int sweep_events_avx512(const float* x, int n, const UniformLevels& lv,
                                                           float sign, float t_from, float t_to, int span,
                                                           int* level, uint64_t* keys, int cap) {
  int ne = 0;
  const __m512 vsign = _mm512_set1_ps(sign), vfrom = _mm512_set1_ps(t_from), vto = _mm512_set1_ps(t_to);
  const __m512 lo = _mm512_set1_ps(float(lv.lo)), hi = _mm512_set1_ps(float(lv.hi)), magic = _mm512_set1_ps(12582912.0f);
  const __m512i top_pos = _mm512_set1_epi32(lv.hi), top_neg = _mm512_set1_epi32(-lv.lo);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int c = 0; c < n; c += 16) {
    const __mmask16 in = n - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1);
    const __m512 v = _mm512_mul_ps(vsign, _mm512_maskz_loadu_ps(in, x + c));
    // nearest(t_from v) as round_clamped computes it
    const __m512 u = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(vfrom, v), lo), hi);
    const __m512i l = _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(u, magic), magic));
    _mm512_mask_storeu_epi32(level + c, in, l);
    const __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512i k0 = _mm512_mask_blend_epi32(pos, _mm512_sub_epi32(_mm512_setzero_si512(), l), l);
    const __m512i top = _mm512_mask_blend_epi32(pos, top_neg, top_pos);
    const __m512 m = _mm512_abs_ps(v);  // 0: t = inf, never an event
    const __m512i idx = _mm512_slli_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(c)), 16);
    for (int k = 0; k <= span; ++k) {
      const __m512i q = _mm512_add_epi32(k0, _mm512_set1_epi32(k));
      const __m512i low = _mm512_or_si512(idx, _mm512_slli_epi32(q, 2));  // i << 16 | level magnitude << 2
      const __m512i low_lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(low));
      const __m512i low_hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(low, 1));
      const __m512 t = _mm512_div_ps(_mm512_add_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(0.5f)), m);
      const __mmask16 ok = _mm512_mask_cmp_ps_mask(_mm512_mask_cmplt_epi32_mask(in, q, top), t, vto, _CMP_LE_OQ);
      if (k == span) {
        if (ok) return -1;  // a weight has more events than span
        break;
      }
      if (ne + 16 > cap) return -1;
      const __m512i tb = _mm512_or_si512(_mm512_castps_si512(t), _mm512_set1_epi32(int(0x80000000u)));  // t > 0
      const __m512i key_lo = _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(tb)), 32), low_lo);
      const __m512i key_hi = _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(tb, 1)), 32), low_hi);
      _mm512_storeu_si512(keys + ne, _mm512_maskz_compress_epi64(__mmask8(ok), key_lo));
      ne += __builtin_popcount(ok & 0xffu);
      _mm512_storeu_si512(keys + ne, _mm512_maskz_compress_epi64(__mmask8(ok >> 8), key_hi));
      ne += __builtin_popcount(ok >> 8);
    }
  }
  return ne;
}

// The window of one sign's sweep.
struct SignWindow {
  float sign, t_from, t_to;
};

// The events of both signs' sweeps (uniform levels) in one list, each generated once: for
// weight i both sweeps step through the same magnitudes k at the same t = (k + 0.5) / |x_i|,
// from their own starting level k0 up to their own top (hi on the side of d, -lo on the
// other) and t_to. The two sign bits of a key say which sweeps have it. The list holds
// every step from the lower start k_from[i] to the last step of either sweep (a step in a
// gap between the two would be in neither: no sign bit), so a weight's steps are counted
// from k_from. level[s][i]: the starting levels nearest(t_from v). Returns -1 if a weight
// has more than `span` (or cap).
__attribute__((target("avx512f"))) int both_signs_events_avx512(const float* x, int n, const UniformLevels& lv,
                                                                const SignWindow* win, int span, int (*level)[kQK_K],
                                                                int* k_from, uint64_t* keys, int cap) {
  int ne = 0;
  const __m512 lo = _mm512_set1_ps(float(lv.lo)), hi = _mm512_set1_ps(float(lv.hi)), magic = _mm512_set1_ps(12582912.0f);
  const __m512i top_pos = _mm512_set1_epi32(lv.hi), top_neg = _mm512_set1_epi32(-lv.lo);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int c = 0; c < n; c += 16) {
    const __mmask16 in = n - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - c)) - 1);
    const __m512 xc = _mm512_maskz_loadu_ps(in, x + c);
    __m512i k0[2], top[2];
    for (int s = 0; s < 2; ++s) {
      const __m512 v = _mm512_mul_ps(_mm512_set1_ps(win[s].sign), xc);
      const __m512 u = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_set1_ps(win[s].t_from), v), lo), hi);
      const __m512i l = _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(u, magic), magic));
      _mm512_mask_storeu_epi32(level[s] + c, in, l);
      const __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
      k0[s] = _mm512_mask_blend_epi32(pos, _mm512_sub_epi32(_mm512_setzero_si512(), l), l);
      top[s] = _mm512_mask_blend_epi32(pos, top_neg, top_pos);
    }
    const __m512i from = _mm512_min_epi32(k0[0], k0[1]), top_any = _mm512_max_epi32(top[0], top[1]);
    _mm512_mask_storeu_epi32(k_from + c, in, from);
    const __m512 m = _mm512_abs_ps(xc);  // 0: t = inf, never an event
    const __m512 to0 = _mm512_set1_ps(win[0].t_to), to1 = _mm512_set1_ps(win[1].t_to);
    const __m512 to_any = _mm512_max_ps(to0, to1);
    const __m512i idx = _mm512_slli_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(c)), 16);
    for (int j = 0; j <= span; ++j) {
      const __m512i q = _mm512_add_epi32(from, _mm512_set1_epi32(j));
      const __m512 t = _mm512_div_ps(_mm512_add_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(0.5f)), m);
      const __mmask16 ok = _mm512_mask_cmp_ps_mask(_mm512_mask_cmplt_epi32_mask(in, q, top_any), t, to_any, _CMP_LE_OQ);
      if (j == span) {
        if (ok) return -1;  // a weight with more events than span
        break;
      }
      // in sweep s: k0[s] <= q < top[s] and t <= t_to[s]
      const __mmask16 in0 = _mm512_mask_cmp_ps_mask(
          _mm512_mask_cmplt_epi32_mask(_mm512_mask_cmpge_epi32_mask(in, q, k0[0]), q, top[0]), t, to0, _CMP_LE_OQ);
      const __mmask16 in1 = _mm512_mask_cmp_ps_mask(
          _mm512_mask_cmplt_epi32_mask(_mm512_mask_cmpge_epi32_mask(in, q, k0[1]), q, top[1]), t, to1, _CMP_LE_OQ);
      if (ne + 16 > cap) return -1;
      __m512i low = _mm512_or_si512(idx, _mm512_slli_epi32(q, 2));
      low = _mm512_mask_or_epi32(low, in0, low, _mm512_set1_epi32(2));
      low = _mm512_mask_or_epi32(low, in1, low, _mm512_set1_epi32(1));
      const __m512i tb = _mm512_or_si512(_mm512_castps_si512(t), _mm512_set1_epi32(int(0x80000000u)));  // t > 0
      const __m512i key_lo = _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm512_castsi512_si256(tb)), 32),
                                             _mm512_cvtepu32_epi64(_mm512_castsi512_si256(low)));
      const __m512i key_hi = _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(tb, 1)), 32),
                                             _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(low, 1)));
      _mm512_storeu_si512(keys + ne, _mm512_maskz_compress_epi64(__mmask8(ok), key_lo));
      ne += __builtin_popcount(ok & 0xffu);
      _mm512_storeu_si512(keys + ne, _mm512_maskz_compress_epi64(__mmask8(ok >> 8), key_hi));
      ne += __builtin_popcount(ok >> 8);
    }
  }
  return ne;
}

#pragma GCC diagnostic pop

// The same list, one weight at a time.
int both_signs_events(const float* x, int n, const UniformLevels& lv, const SignWindow* win, int (*level)[kQK_K],
                      int* k_from, uint64_t* keys, int cap) {
  int ne = 0;
  for (int i = 0; i < n; ++i) {
    int k0[2], top[2];
    for (int s = 0; s < 2; ++s) {
      const float v = win[s].sign * x[i];
      level[s][i] = lv.nearest(win[s].t_from * v);
      k0[s] = v > 0 ? level[s][i] : -level[s][i];
      top[s] = v > 0 ? lv.hi : -lv.lo;
    }
    const float m = std::fabs(x[i]), to_any = std::max(win[0].t_to, win[1].t_to);
    k_from[i] = std::min(k0[0], k0[1]);
    for (int k = k_from[i]; k < std::max(top[0], top[1]); ++k) {
      const float t = (float(k) + 0.5f) / m;
      if (!(t <= to_any)) break;
      unsigned signs = 0;
      for (int s = 0; s < 2; ++s) signs |= unsigned(k >= k0[s] && k < top[s] && t <= win[s].t_to) << (1 - s);
      if (ne == cap) return -1;
      keys[ne++] = event_key(t, i, k, signs);
    }
  }
  return ne;
}

// ---- the sweep ------------------------------------------------------------------------------

// Scans sorted events from the sums s of the starting assignment; returns the best sums.
template <class Levels>
LevelSums scan_events(const float* x, const float* w, int n, const Levels& lv, float sign, const uint64_t* keys,
                      int ne, int* level, LevelSums s, const double* dxq) {
  LevelSums best = s;
  double best_gain = best.gain();
  if constexpr (std::is_same_v<Levels, UniformLevels>) {
    // The exact increments of the scalar form below: sxq grows by dxq[i] = w |v| per step
    // (double(w) v is exact), sqq by w ((k+1)^2 - k^2) = w (2k + 1) from magnitude level k.
    // Only the best event's index is tracked (no branch on the division's result), then its
    // sums are replayed.
    auto step = [&](LevelSums& t, uint64_t key) {
      const int i = event_weight(key);
      t.sxq += dxq[i];
      t.sqq += double(w[i]) * double(2 * event_level(key) + 1);
    };
    int best_e = -1;
    for (int e = 0; e < ne; ++e) {
      step(s, keys[e]);
      const double g = s.gain();
      best_e = g > best_gain ? e : best_e;
      best_gain = g > best_gain ? g : best_gain;
    }
    for (int e = 0; e <= best_e; ++e) step(best, keys[e]);
    return best;
  }
  for (int e = 0; e < ne; ++e) {
    const int i = event_weight(keys[e]), dir = x[i] * sign > 0 ? 1 : -1;
    const double v = sign * x[i], before = lv.value(level[i]), after = lv.value(level[i] + dir);
    level[i] += dir;
    s.sxq += double(w[i]) * v * (after - before);
    s.sqq += double(w[i]) * (after * after - before * before);
    const double g = s.gain();
    if (g > best_gain) best = s, best_gain = g;
  }
  return best;
}

// The sums of the assignment level[] of v = sign * x.
template <class Levels>
LevelSums start_sums(const float* x, const float* w, int n, const Levels& lv, float sign, const int* level) {
  PairSums p;
  for (int i = 0; i < n; ++i) p.add(w[i], sign * x[i], lv.value(level[i]));
  return p.sums();
}

// Exact search over inverse scales t in [t_from, t_to] (t > 0) for v = sign * x: the level
// assignment nearest(t v) changes only where some t v_i crosses a boundary between levels,
// so visiting those crossings in order (one weight moving one level each) sees every
// assignment of the window; each is scored with its least-squares scale. Returns the
// sums of the best (in v's terms). `span` bounds the events of one weight (uniform levels;
// a larger count takes the general path).
template <class Levels>
LevelSums sweep_scales(const float* x, const float* w, int n, const Levels& lv, float sign, float t_from,
                       float t_to, int span, const double* dxq) {
  uint64_t keys[kMaxEvents];
  int level[kQK_K];
  int ne = -1;
  if constexpr (std::is_same_v<Levels, UniformLevels>)
    if (kHaveAvx512) {
      ne = sweep_events_avx512(x, n, lv, sign, t_from, t_to, span, level, keys, kMaxEvents);
      kernels::clean_avx512_upper_state();
    }
  if (ne < 0) ne = sweep_events(x, n, lv, sign, t_from, t_to, level, keys, kMaxEvents);
  std::vector<uint64_t> many;
  uint64_t* events = keys;
  if (ne < 0) {  // more than kMaxEvents: only with extreme windows
    many.resize(size_t(n) * 512);
    ne = sweep_events(x, n, lv, sign, t_from, t_to, level, many.data(), int(many.size()));
    events = many.data();
  }
  const LevelSums s = start_sums(x, w, n, lv, sign, level);
  sort_keys<Keys64>(events, ne);
  return scan_events(x, w, n, lv, sign, events, ne, level, s, dxq);
}

// scan_events for both sweeps at once over the merged sorted list: lane 0 is the sweep of
// d > 0, lane 1 of d < 0; an event not in a sweep adds +0 to its sums (no change, and its
// unchanged gain does not count as better). Per lane the arithmetic is scan_events'.
// event(e, &i, &k): event e's weight and level magnitude; returns its sign bits.
template <class Event>
void scan_both_signs(const float* w, int ne, const Event& event, const double* dxq, LevelSums* best) {
  __m128d s1 = _mm_set_pd(best[1].sxq, best[0].sxq), s2 = _mm_set_pd(best[1].sqq, best[0].sqq);
  __m128d b1 = s1, b2 = s2;
  auto gain = [](__m128d a, __m128d b) {  // sqq > 0 ? sxq^2 / sqq : 0, per lane
    return _mm_and_pd(_mm_cmpgt_pd(b, _mm_setzero_pd()), _mm_div_pd(_mm_mul_pd(a, a), b));
  };
  __m128d bg = gain(s1, s2);
  static const __m128d kIn[4] = {_mm_castsi128_pd(_mm_set_epi64x(0, 0)), _mm_castsi128_pd(_mm_set_epi64x(-1, 0)),
                                 _mm_castsi128_pd(_mm_set_epi64x(0, -1)), _mm_castsi128_pd(_mm_set_epi64x(-1, -1))};
  for (int e = 0; e < ne; ++e) {
    int i, k;
    const __m128d in = kIn[event(e, &i, &k)];
    s1 = _mm_add_pd(s1, _mm_and_pd(in, _mm_set1_pd(dxq[i])));
    s2 = _mm_add_pd(s2, _mm_and_pd(in, _mm_set1_pd(double(w[i]) * double(2 * k + 1))));
    const __m128d g = gain(s1, s2), up = _mm_cmpgt_pd(g, bg);
    bg = _mm_max_pd(g, bg);  // g where g > bg
    b1 = _mm_or_pd(_mm_and_pd(up, s1), _mm_andnot_pd(up, b1));
    b2 = _mm_or_pd(_mm_and_pd(up, s2), _mm_andnot_pd(up, b2));
  }
  best[0].sxq = _mm_cvtsd_f64(b1), best[1].sxq = _mm_cvtsd_f64(_mm_unpackhi_pd(b1, b1));
  best[0].sqq = _mm_cvtsd_f64(b2), best[1].sqq = _mm_cvtsd_f64(_mm_unpackhi_pd(b2, b2));
}

// The merged list in 32-bit keys when a block allows (n <= 32 weights, events' t within
// 2^25 float steps of each other): t's order bits above the smallest, the weight, the sign
// bits; the same order as the 64-bit keys, in half the bits, so sorting costs half. The
// level is then counted per weight from k_from. Returns false if the block does not fit.
bool compact_events(const uint64_t* keys, int ne, int n, uint32_t* out) {
  if (n > 32 || ne == 0) return false;
  uint32_t lo = ~0u, hi = 0;
  for (int e = 0; e < ne; ++e) lo = std::min(lo, uint32_t(keys[e] >> 32)), hi = std::max(hi, uint32_t(keys[e] >> 32));
  if (hi - lo >= (1u << 25)) return false;
  for (int e = 0; e < ne; ++e)
    out[e] = (uint32_t(keys[e] >> 32) - lo) << 7 | uint32_t(event_weight(keys[e])) << 2 | event_signs(keys[e]);
  return true;
}

// sweep_scales for both signs of d at once (uniform levels): one list of events, generated
// and sorted once, scanned for both. best[s]: the result of sweep_scales(win[s]).
void sweep_both_signs(const float* x, const float* w, int n, const UniformLevels& lv, const SignWindow* win,
                      int span, const double* dxq, LevelSums* best) {
  uint64_t keys[kMaxEvents];
  int level[2][kQK_K], k_from[kQK_K];
  int ne = -1;
  if (kHaveAvx512) {
    ne = both_signs_events_avx512(x, n, lv, win, span, level, k_from, keys, kMaxEvents);
    kernels::clean_avx512_upper_state();
  }
  if (ne < 0) ne = both_signs_events(x, n, lv, win, level, k_from, keys, kMaxEvents);
  std::vector<uint64_t> many;
  uint64_t* events = keys;
  if (ne < 0) {  // more than kMaxEvents: only with extreme windows
    many.resize(size_t(n) * 512);
    ne = both_signs_events(x, n, lv, win, level, k_from, many.data(), int(many.size()));
    events = many.data();
  }
  PairSums start[2];  // both in one loop: two independent chains
  for (int i = 0; i < n; ++i)
    for (int s = 0; s < 2; ++s) start[s].add(w[i], win[s].sign * x[i], lv.value(level[s][i]));
  for (int s = 0; s < 2; ++s) best[s] = start[s].sums();
  uint32_t compact[kMaxEvents];
  if (ne <= kMaxEvents && compact_events(events, ne, n, compact)) {
    sort_keys<Keys32>(compact, ne);
    scan_both_signs(w, ne, [&](int e, int* i, int* k) {
      *i = int(compact[e] >> 2 & 31);
      *k = k_from[*i]++;
      return unsigned(compact[e] & 3);
    }, dxq, best);
    return;
  }
  sort_keys<Keys64>(events, ne);
  scan_both_signs(w, ne, [&](int e, int* i, int* k) {
    *i = event_weight(events[e]);
    *k = event_level(events[e]);
    return event_signs(events[e]);
  }, dxq, best);
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
double fit_scale(const float* x, const float* w, int n, const Levels& lv, const ScaleWindow& window, float xmax) {
  w = usable_weights(w, n);
  if (xmax == 0) return 0.0;
  double dxq[kQK_K];  // a uniform-level step's sxq increment, w |x| (the same for both signs)
  if constexpr (std::is_same_v<Levels, UniformLevels>)
    for (int i = 0; i < n; ++i) dxq[i] = double(w[i]) * double(std::fabs(x[i]));
  SignWindow win[2];
  int active = 0;
  const float a = std::fabs(xmax);
  for (const float sign : {1.0f, -1.0f}) {
    const float anchor = sign * xmax > 0 ? lv.highest() : -lv.lowest();  // extreme level of xmax's side
    if (anchor <= 0) continue;
    win[active++] = {sign, std::max(anchor + window.from, 0.5f * anchor) / a, (anchor + window.to) / a};
  }
  LevelSums swept[2];
  bool both = false;
  if constexpr (std::is_same_v<Levels, UniformLevels>) {
    if (active == 2) {
      // events of the largest weight over both windows, + rounding
      const int span = int((std::max(win[0].t_to, win[1].t_to) - std::min(win[0].t_from, win[1].t_from)) * a) + 2;
      sweep_both_signs(x, w, n, lv, win, span, dxq, swept);
      both = true;
    }
  }
  if (!both)
    for (int s = 0; s < active; ++s) {
      const int span = int((win[s].t_to - win[s].t_from) * a) + 2;  // events of the largest weight, + rounding
      swept[s] = sweep_scales(x, w, n, lv, win[s].sign, win[s].t_from, win[s].t_to, span, dxq);
    }
  LevelSums best;
  double d = 0;
  for (int s = 0; s < active; ++s)
    if (swept[s].gain() > best.gain()) best = swept[s], d = win[s].sign * swept[s].scale();
  for (int iter = 0; iter < 8 && d != 0; ++iter) {
    const LevelSums s = sums_at(x, w, n, lv, float(1.0 / d));
    if (!(s.gain() > best.gain() * (1 + 1e-12))) break;
    best = s;
    d = s.scale();
  }
  return d;
}

template <class Levels>
double fit_scale(const float* x, const float* w, int n, const Levels& lv, const ScaleWindow& window) {
  return fit_scale(x, w, n, lv, window, signed_abs_max(x, n));
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

// The levels requantize(x, ., n, lv, a, 0, levels) writes, without the error.
template <class Levels>
void nearest_levels(const float* x, int n, const Levels& lv, float a, int16_t* levels) {
  const float inv = a != 0 ? float(1.0 / double(a)) : 0.0f;
  const int zero = a != 0 ? 0 : lv.zero();
  for (int i = 0; i < n; ++i) levels[i] = int16_t(a != 0 ? lv.nearest(x[i] * inv) : zero);
}

// Scale search over stored values: each candidate scale rounded to fp16 and its fp16
// neighbours within `radius` ulps, judged by the exact error of requantizing x.
struct HalfCandidates {
  static constexpr int kMax = 16;
  uint16_t bits[kMax];
  int count = 0;

  void add(double candidate, int radius) {
    const uint16_t base = half_saturated(candidate);
    for (int k = -radius; k <= radius; ++k)
      if (count < kMax && half_step(base, k, &bits[count])) ++count;
  }
};

// err[c] = requantize(x, w, n, lv, a[c], 0, nullptr) for count <= 16 candidate scales,
// in one pass: each error is still summed in weight order (the same doubles), but the
// candidates' independent sums overlap instead of waiting on each other.
template <class Levels>
void scale_errors(const float* x, const float* w, int n, const Levels& lv, const float* a, int count, double* err) {
  float inv[16];
  int zero[16];
  for (int c = 0; c < count; ++c) {
    inv[c] = a[c] != 0 ? float(1.0 / double(a[c])) : 0.0f;
    zero[c] = a[c] != 0 ? 0 : lv.zero();
    err[c] = 0;
  }
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < count; ++c) {
      const int q = a[c] != 0 ? lv.nearest(x[i] * inv[c]) : zero[c];
      const double r = double(x[i]) - double(a[c] * lv.value(q));
      err[c] += double(w[i]) * r * r;
    }
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// ROUNDED(v): hides the vector v from the optimiser, so that a product is rounded before it
// is added: GCC would otherwise fuse vector multiply-adds (-ffp-contract=fast) where the
// scalar code rounds twice.
#define ROUNDED(v) __asm__("" : "+v"(v))

// The same for uniform levels with candidates in the lanes of one vector, the arithmetic
// of requantize lane by lane (float levels and products, double residuals and sums; no
// fused multiply-add). A zero scale has inverse 0, so its level is 0 as in requantize.
// The callers' scales are fp16 values (>= 2^-24) or their small multiples, so no inverse
// overflows (an infinite inverse would clamp differently: NaN levels).
__attribute__((target("avx512f"))) void scale_errors_avx512(const float* x, const float* w, int n,
                                                           const UniformLevels& lv, const float* scales, int count,
                                                           double* err) {
  alignas(64) float a[16] = {}, inv[16] = {};
  for (int c = 0; c < count; ++c) {
    a[c] = scales[c];
    inv[c] = a[c] != 0 ? float(1.0 / double(a[c])) : 0.0f;
  }
  __m512d e0 = _mm512_setzero_pd(), e1 = _mm512_setzero_pd();
  if (count <= 8) {  // one vector of floats, one of doubles
    const __m256 va = _mm256_load_ps(a), vinv = _mm256_load_ps(inv);
    const __m256 lo = _mm256_set1_ps(float(lv.lo)), hi = _mm256_set1_ps(float(lv.hi)), magic = _mm256_set1_ps(12582912.0f);
    for (int i = 0; i < n; ++i) {
      const __m256 u = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_set1_ps(x[i]), vinv), lo), hi);
      const __m256 y = _mm256_mul_ps(va, _mm256_sub_ps(_mm256_add_ps(u, magic), magic));
      const __m512d r = _mm512_sub_pd(_mm512_set1_pd(double(x[i])), _mm512_cvtps_pd(y));
      __m512d p = _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(double(w[i])), r), r);
      ROUNDED(p);
      e0 = _mm512_add_pd(e0, p);
    }
  } else {
    const __m512 va = _mm512_load_ps(a), vinv = _mm512_load_ps(inv);
    const __m512 lo = _mm512_set1_ps(float(lv.lo)), hi = _mm512_set1_ps(float(lv.hi)), magic = _mm512_set1_ps(12582912.0f);
    for (int i = 0; i < n; ++i) {
      const __m512 u = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_set1_ps(x[i]), vinv), lo), hi);
      const __m512 y = _mm512_mul_ps(va, _mm512_sub_ps(_mm512_add_ps(u, magic), magic));
      const __m512d xd = _mm512_set1_pd(double(x[i])), wd = _mm512_set1_pd(double(w[i]));
      const __m512d r0 = _mm512_sub_pd(xd, _mm512_cvtps_pd(_mm512_castps512_ps256(y)));
      const __m512d r1 = _mm512_sub_pd(xd, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(y), 1))));
      __m512d p0 = _mm512_mul_pd(_mm512_mul_pd(wd, r0), r0), p1 = _mm512_mul_pd(_mm512_mul_pd(wd, r1), r1);
      ROUNDED(p0);
      ROUNDED(p1);
      e0 = _mm512_add_pd(e0, p0);
      e1 = _mm512_add_pd(e1, p1);
    }
  }
  alignas(64) double out[16];
  _mm512_store_pd(out, e0);
  _mm512_store_pd(out + 8, e1);
  std::copy(out, out + count, err);
}

#pragma GCC diagnostic pop

template <class Levels>
void candidate_errors(const float* x, const float* w, int n, const Levels& lv, const float* a, int count,
                      double* err) {
  if constexpr (std::is_same_v<Levels, UniformLevels>)
    if (kHaveAvx512) {
      scale_errors_avx512(x, w, n, lv, a, count, err);
      return kernels::clean_avx512_upper_state();
    }
  scale_errors(x, w, n, lv, a, count, err);
}

// The first candidate with the smallest error.
template <class Levels>
uint16_t best_half_scale(const float* x, const float* w, int n, const Levels& lv, const HalfCandidates& cands) {
  float a[HalfCandidates::kMax];
  for (int c = 0; c < cands.count; ++c) a[c] = f16_to_f32(cands.bits[c]);
  double err[HalfCandidates::kMax];
  candidate_errors(x, w, n, lv, a, cands.count, err);
  uint16_t best = 0;
  double best_err = HUGE_VAL;
  for (int c = 0; c < cands.count; ++c)
    if (err[c] < best_err) best = cands.bits[c], best_err = err[c];
  return best;
}

// ---- legacy 32-weight types -------------------------------------------------------------

// Q8_0, Q4_0, Q5_0 (x = d * l) and IQ4_NL (x = d * codebook[l]). Candidates: our fitted
// scale, and the simple absmax scales of llama.cpp's reference quantizer (so no block is
// ever worse than it), each with fp16 neighbours.
template <class Levels>
void encode_scaled(const float* x, const float* w, const Levels& lv, const ScaleWindow& window, int radius,
                   BlockCodes& c) {
  float xn[kQK];
  const int top = abs_max_index(x, kQK);
  const float xmax = top < 0 ? 0.0f : x[top];
  const int e = normalise(x, kQK, std::fabs(xmax), xn);
  const float* wu = usable_weights(w, kQK);
  HalfCandidates cands;
  // Scaling by 2^-e is exact down to the subnormals, so xn's largest magnitude is at top too.
  cands.add(std::ldexp(fit_scale(xn, wu, kQK, lv, window, top < 0 ? 0.0f : xn[top]), e), radius);
  cands.add(double(xmax) / lv.lowest(), 0);
  cands.add(std::fabs(double(xmax)) / lv.highest(), 0);
  c.d = best_half_scale(x, wu, kQK, lv, cands);
  nearest_levels(x, kQK, lv, f16_to_f32(c.d), c.level);
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
    const int sc_lo = std::max(k.scales.lo, sc0 - k.radius), sc_hi = std::min(k.scales.hi, sc0 + k.radius);
    double best = HUGE_VAL;
    if (!k.affine() && sc_hi - sc_lo < 16) {
      // Symmetric types: the offset -(dmin * 0) is -0, which requantizes exactly as 0, so
      // the candidate scales are judged in one pass.
      float a[16];
      double err[16];
      for (int sc = sc_lo; sc <= sc_hi; ++sc) a[sc - sc_lo] = d * float(sc);
      candidate_errors(xs, ws, k.sub_len, k.levels, a, sc_hi - sc_lo + 1, err);
      for (int sc = sc_lo; sc <= sc_hi; ++sc)
        if (err[sc - sc_lo] < best) best = err[sc - sc_lo], c.scale[j] = int16_t(sc), c.min[j] = 0;
      c.error += best;
      continue;
    }
    for (int sc = sc_lo; sc <= sc_hi; ++sc)
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
  float sf[16] = {}, mf[16] = {}, swf[16] = {}, mwf[16] = {};
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
