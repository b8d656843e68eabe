#include "quantkit/kv_cache.h"

#include <algorithm>
#include <bit>
#include <cctype>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <numeric>

#include "kernels/packed_codes.h"
#include "kernels/vec_ops.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"

namespace quantkit {
namespace {

// ---- bit packing (LSB first into a zeroed buffer) ----

struct BitWriter {
  uint8_t* p;
  size_t bit = 0;
  void put(uint32_t v, int n) {
    for (int i = 0; i < n; ++i, ++bit)
      if (v >> i & 1u) p[bit >> 3] |= uint8_t(1u << (bit & 7));
  }
  void put_f16(float x) { put(f32_to_f16(x), 16); }
};

struct BitReader {
  const uint8_t* p;
  size_t bit = 0;
  uint32_t get(int n) {
    uint32_t v = 0;
    for (int i = 0; i < n; ++i, ++bit) v |= uint32_t(p[bit >> 3] >> (bit & 7) & 1u) << i;
    return v;
  }
  float get_f16() { return f16_to_f32(uint16_t(get(16))); }
};

float round_f16(float x) { return f16_to_f32(f32_to_f16(x)); }

// ---- element codecs over n values at a stride ----

// Asymmetric min/max: FP16 offset and step, then n codes of `bits`.
void put_affine(BitWriter& w, const float* x, int n, int stride, int bits) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) lo = std::min(lo, x[i * stride]), hi = std::max(hi, x[i * stride]);
  const int top = (1 << bits) - 1;
  const float off = round_f16(lo), step = round_f16((hi - lo) / float(top));
  w.put_f16(off);
  w.put_f16(step);
  for (int i = 0; i < n; ++i) {
    const float c = step > 0 ? std::nearbyint((x[i * stride] - off) / step) : 0.0f;
    w.put(uint32_t(std::clamp(c, 0.0f, float(top))), bits);
  }
}

void get_affine(BitReader& r, float* out, int n, int stride, int bits) {
  const float off = r.get_f16(), step = r.get_f16();
  for (int i = 0; i < n; ++i) out[i * stride] = off + float(r.get(bits)) * step;
}

// 1 bit: two FP16 levels, the means of the values below / at-or-above the mean; each
// value takes the nearer level.
void put_two_level(BitWriter& w, const float* x, int n, int stride) {
  double mean = 0;
  for (int i = 0; i < n; ++i) mean += x[i * stride];
  mean /= n;
  double s[2] = {0, 0};
  int c[2] = {0, 0};
  for (int i = 0; i < n; ++i) {
    const int up = x[i * stride] >= mean;
    s[up] += x[i * stride], ++c[up];
  }
  const float lo = round_f16(float(c[0] ? s[0] / c[0] : mean)), hi = round_f16(float(c[1] ? s[1] / c[1] : mean));
  w.put_f16(lo);
  w.put_f16(hi);
  for (int i = 0; i < n; ++i) w.put(std::fabs(x[i * stride] - hi) < std::fabs(x[i * stride] - lo), 1);
}

void get_two_level(BitReader& r, float* out, int n, int stride) {
  const float lev[2] = {r.get_f16(), r.get_f16()};
  for (int i = 0; i < n; ++i) out[i * stride] = lev[r.get(1)];
}

// f32 / f16 elements, stored as they are.
void put_plain(BitWriter& w, const KVSideSpec& s, float x) {
  if (s.kind == KVKind::F16) w.put_f16(x);
  else w.put(std::bit_cast<uint32_t>(x), 32);
}

float get_plain(BitReader& r, const KVSideSpec& s) {
  return s.kind == KVKind::F16 ? r.get_f16() : std::bit_cast<float>(r.get(32));
}

int ternary_code(float x, float scale) {
  return scale > 0 ? int(std::clamp(std::nearbyint(x / scale), -1.0f, 1.0f)) : 0;
}

// ---- units: a key block [rows, width] or one value row [width] ----

int outlier_channels(const KVSideSpec& s, int width) {
  return std::clamp(int(std::lround(s.outliers * width)), 0, width);
}

int value_group(const KVSideSpec& s, int head_dim) { return s.group > 0 ? s.group : head_dim; }

size_t key_block_bits(const KVSideSpec& s, int rows, int width) {
  const size_t n = size_t(rows) * width;
  switch (s.kind) {
    case KVKind::F32: return 32 * n;
    case KVKind::F16: return 16 * n;
    case KVKind::Int: return size_t(width) * 32 + n * s.bits;
    case KVKind::VidKV: {
      const int out = outlier_channels(s, width);
      return size_t(width) * (1 + 32) + size_t(rows) * (2 * out + (width - out));
    }
    case KVKind::Ternary: break;
  }
  fail("kv cache: ternary is a value format, not a key format");
}

size_t value_row_bits(const KVSideSpec& s, int width, int head_dim) {
  const size_t groups = size_t(width / value_group(s, head_dim));
  switch (s.kind) {
    case KVKind::F32: return 32 * size_t(width);
    case KVKind::F16: return 16 * size_t(width);
    case KVKind::Int: return groups * 32 + size_t(width) * s.bits;
    case KVKind::Ternary: return groups * 16 + 8 * size_t((width + 4) / 5);
    case KVKind::VidKV: break;
  }
  fail("kv cache: vidkv is a key format, not a value format");
}

size_t bytes_of(size_t bits) { return (bits + 7) / 8; }

// The VidKV outlier channels of a block: the largest max |x|, ties to the lower index.
std::vector<uint8_t> outlier_mask(const KVSideSpec& s, const float* x, int rows, int width) {
  std::vector<float> mag(static_cast<size_t>(width), 0.0f);
  for (int t = 0; t < rows; ++t)
    for (int c = 0; c < width; ++c) mag[c] = std::max(mag[c], std::fabs(x[size_t(t) * width + c]));
  std::vector<int> idx(static_cast<size_t>(width));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return mag[a] > mag[b]; });
  std::vector<uint8_t> mask(static_cast<size_t>(width), 0);
  for (int i = 0; i < outlier_channels(s, width); ++i) mask[idx[i]] = 1;
  return mask;
}

void encode_key_block(const KVSideSpec& s, const float* x, int rows, int width, uint8_t* dst) {
  BitWriter w{dst};
  if (s.kind == KVKind::F32 || s.kind == KVKind::F16) {
    for (size_t i = 0; i < size_t(rows) * width; ++i) put_plain(w, s, x[i]);
    return;
  }
  std::vector<uint8_t> mask;
  if (s.kind == KVKind::VidKV) {
    mask = outlier_mask(s, x, rows, width);
    for (uint8_t m : mask) w.put(m, 1);
  }
  for (int c = 0; c < width; ++c) {
    if (s.kind == KVKind::Int) put_affine(w, x + c, rows, width, s.bits);
    else if (mask[c]) put_affine(w, x + c, rows, width, 2);
    else put_two_level(w, x + c, rows, width);
  }
}

void decode_key_block(const KVSideSpec& s, const uint8_t* src, int rows, int width, float* out) {
  BitReader r{src};
  if (s.kind == KVKind::F32 || s.kind == KVKind::F16) {
    for (size_t i = 0; i < size_t(rows) * width; ++i) out[i] = get_plain(r, s);
    return;
  }
  std::vector<uint8_t> mask(static_cast<size_t>(width), 0);
  if (s.kind == KVKind::VidKV)
    for (auto& m : mask) m = uint8_t(r.get(1));
  for (int c = 0; c < width; ++c) {
    if (s.kind == KVKind::Int) get_affine(r, out + c, rows, width, s.bits);
    else if (mask[c]) get_affine(r, out + c, rows, width, 2);
    else get_two_level(r, out + c, rows, width);
  }
}

void encode_value_row(const KVSideSpec& s, const float* x, int width, int head_dim, uint8_t* dst) {
  BitWriter w{dst};
  const int g = value_group(s, head_dim);
  if (s.kind == KVKind::F32 || s.kind == KVKind::F16) {
    for (int i = 0; i < width; ++i) put_plain(w, s, x[i]);
  } else if (s.kind == KVKind::Int) {
    for (int c = 0; c < width; c += g) put_affine(w, x + c, g, 1, s.bits);
  } else {  // ternary: absmean scales per group, then trits 5 per byte
    std::vector<float> scale(static_cast<size_t>(width / g));
    for (size_t k = 0; k < scale.size(); ++k) {
      double a = 0;
      for (int i = 0; i < g; ++i) a += std::fabs(x[k * g + i]);
      scale[k] = round_f16(float(a / g));
      w.put_f16(scale[k]);
    }
    for (int c = 0; c < width; c += 5) {
      uint32_t byte = 0;
      for (int i = std::min(c + 4, width - 1); i >= c; --i) byte = byte * 3 + uint32_t(ternary_code(x[i], scale[i / g]) + 1);
      w.put(byte, 8);
    }
  }
}

void decode_value_row(const KVSideSpec& s, const uint8_t* src, int width, int head_dim, float* out) {
  BitReader r{src};
  const int g = value_group(s, head_dim);
  if (s.kind == KVKind::F32 || s.kind == KVKind::F16) {
    for (int i = 0; i < width; ++i) out[i] = get_plain(r, s);
  } else if (s.kind == KVKind::Int) {
    for (int c = 0; c < width; c += g) get_affine(r, out + c, g, 1, s.bits);
  } else {
    std::vector<float> scale(static_cast<size_t>(width / g));
    for (float& sc : scale) sc = r.get_f16();
    for (int c = 0; c < width; c += 5) {
      uint32_t byte = r.get(8);
      for (int i = c; i < std::min(c + 5, width); ++i, byte /= 3) out[i] = float(int(byte % 3) - 1) * scale[i / g];
    }
  }
}

void check_group(const KVSideSpec& s, bool key, int width, int head_dim) {
  if (!key && width % value_group(s, head_dim) != 0)
    fail("kv cache: value group {} does not divide the KV width {}", value_group(s, head_dim), width);
}

// ---- spec text ----

const char* kind_name(const KVSideSpec& s) {
  switch (s.kind) {
    case KVKind::F32: return "f32";
    case KVKind::F16: return "f16";
    case KVKind::Int: return s.bits == 8 ? "int8" : s.bits == 4 ? "int4" : "int2";
    case KVKind::VidKV: return "vidkv";
    case KVKind::Ternary: return "ternary";
  }
  return "?";
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out(1);
  for (char c : s) {
    if (c == sep) out.emplace_back();
    else out.back().push_back(c);
  }
  return out;
}

int parse_int(const std::string& spec, const std::string& tok) {
  const std::string digits = tok.substr(1);
  if (digits.empty() || digits.size() > 6 || !std::all_of(digits.begin(), digits.end(), ::isdigit))
    fail("--kv {}: option '{}' needs a whole number", spec, tok);
  return std::stoi(digits);
}

// `lenient`: one spec for both sides, options of the other side are skipped.
KVSideSpec parse_side(const std::string& spec, const std::string& text, bool key, bool lenient) {
  const std::vector<std::string> parts = split(text, ':');
  KVSideSpec s;
  const std::string& kind = parts[0];
  if (kind == "f32") s.kind = KVKind::F32;
  else if (kind == "f16") s.kind = KVKind::F16;
  else if (kind == "int8" || kind == "int4" || kind == "int2") s.kind = KVKind::Int, s.bits = kind[3] - '0';
  else if (kind == "vidkv") s.kind = key ? KVKind::VidKV : KVKind::Ternary;
  else if (kind == "ternary") s.kind = KVKind::Ternary;
  else fail("--kv {}: unknown KV format '{}' (f32, f16, int8, int4, int2, vidkv, ternary)", spec, kind);
  if (key && s.kind == KVKind::Ternary) fail("--kv {}: ternary is a value format (keys: vidkv)", spec);
  if (!key && kind == "vidkv" && !lenient) fail("--kv {}: vidkv is a key format (values: ternary)", spec);
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& tok = parts[i];
    const char o = tok.empty() ? '\0' : tok[0];
    const bool mine = o == 'r' || (key ? o == 'b' || o == 'o' : o == 'g');
    if (!mine && lenient && (o == 'b' || o == 'o' || o == 'g')) continue;
    if (s.kind == KVKind::F32 || s.kind == KVKind::F16) fail("--kv {}: {} takes no options ('{}')", spec, kind, tok);
    if (!mine) fail("--kv {}: option '{}' does not apply to {}", spec, tok, key ? "keys" : "values");
    if (o == 'b' && (s.block = parse_int(spec, tok)) < 1) fail("--kv {}: key block must be >= 1", spec);
    if (o == 'g' && (s.group = parse_int(spec, tok)) < 1) fail("--kv {}: value group must be >= 1", spec);
    if (o == 'r') s.residual = parse_int(spec, tok);
    if (o == 'o') {
      if (s.kind != KVKind::VidKV) fail("--kv {}: option '{}' applies to vidkv keys only", spec, tok);
      char* end = nullptr;
      s.outliers = std::strtod(tok.c_str() + 1, &end);
      if (tok.size() < 2 || *end != '\0' || !(s.outliers >= 0 && s.outliers <= 1))
        fail("--kv {}: outlier fraction '{}' must be a number in [0, 1]", spec, tok.substr(1));
    }
  }
  return s;
}

}  // namespace

std::string kv_side_str(const KVSideSpec& s) {
  const KVSideSpec d;
  std::string out = kind_name(s);
  if (s.block != d.block) out += ":b" + std::to_string(s.block);
  if (s.group != d.group) out += ":g" + std::to_string(s.group);
  if (s.residual != d.residual) out += ":r" + std::to_string(s.residual);
  if (s.outliers != d.outliers) out += fmt::format(":o{}", s.outliers);
  return out;
}

std::string KVSpec::str() const { return kv_side_str(k) + "," + kv_side_str(v); }

KVSpec parse_kv_spec(const std::string& spec) {
  const std::vector<std::string> sides = split(spec, ',');
  if (sides.size() > 2) fail("--kv {}: expected K_SPEC,V_SPEC", spec);
  const bool both = sides.size() == 1;
  return {parse_side(spec, sides[0], true, both), parse_side(spec, sides.back(), false, both)};
}

double kv_bits_per_element(const KVSideSpec& s, bool key, int kv_dim, int head_dim) {
  if (s.kind == KVKind::F32) return 32;
  if (s.kind == KVKind::F16) return 16;
  check_group(s, key, kv_dim, head_dim);
  if (key) return 8.0 * double(bytes_of(key_block_bits(s, s.block, kv_dim))) / (double(s.block) * kv_dim);
  return 8.0 * double(bytes_of(value_row_bits(s, kv_dim, head_dim))) / kv_dim;
}

std::string kv_describe(const KVSpec& spec, int kv_dim, int head_dim) {
  return fmt::format("K {} ({:.3f} bits/element), V {} ({:.3f} bits/element)", kv_side_str(spec.k),
                     kv_bits_per_element(spec.k, true, kv_dim, head_dim), kv_side_str(spec.v),
                     kv_bits_per_element(spec.v, false, kv_dim, head_dim));
}

std::vector<float> kv_roundtrip(const KVSideSpec& s, bool key, const float* x, int rows, int width, int head_dim,
                                size_t* bits) {
  check_group(s, key, width, head_dim);
  std::vector<float> out(size_t(rows) * width);
  const size_t unit = key ? bytes_of(key_block_bits(s, rows, width)) : bytes_of(value_row_bits(s, width, head_dim));
  std::vector<uint8_t> buf(key ? unit : unit * rows, 0);
  if (key) {
    encode_key_block(s, x, rows, width, buf.data());
    decode_key_block(s, buf.data(), rows, width, out.data());
  } else {
    for (int t = 0; t < rows; ++t) {
      encode_value_row(s, x + size_t(t) * width, width, head_dim, &buf[t * unit]);
      decode_value_row(s, &buf[t * unit], width, head_dim, &out[size_t(t) * width]);
    }
  }
  if (bits) *bits = 8 * buf.size();
  return out;
}

QuantizedKV::QuantizedKV(const KVSpec& spec, int n_layers, int kv_dim, int head_dim, int capacity)
    : spec_(spec), kv_dim_(kv_dim), head_dim_(head_dim), capacity_(capacity), layers_(static_cast<size_t>(n_layers)) {
  check_group(spec.v, false, kv_dim, head_dim);
  key_unit_bytes_ = bytes_of(key_block_bits(spec.k, spec.k.block, kv_dim));
  value_unit_bytes_ = bytes_of(value_row_bits(spec.v, kv_dim, head_dim));
}

int QuantizedKV::quantized_keys(int len) const {
  if (spec_.k.kind == KVKind::F32) return 0;
  return std::max(0, len - spec_.k.residual) / spec_.k.block * spec_.k.block;
}

int QuantizedKV::quantized_values(int len) const {
  return spec_.v.kind == KVKind::F32 ? 0 : std::max(0, len - spec_.v.residual);
}

// Appends positions [len, new_len) to the tail, then moves every whole unit that has left
// the FP32 window into `packed`.
void QuantizedKV::store(Side& s, const KVSideSpec& spec, bool key, int pos, int new_len, const float* rows_new) {
  s.tail.insert(s.tail.end(), rows_new, rows_new + size_t(new_len - pos) * kv_dim_);
  const int target = key ? quantized_keys(new_len) : quantized_values(new_len);
  const int unit_rows = key ? spec.block : 1;
  const size_t unit_bytes = key ? key_unit_bytes_ : value_unit_bytes_;
  size_t done = 0;  // tail elements moved out (erased once: a prompt moves many units)
  while (s.quantized + unit_rows <= target) {
    const size_t at = s.packed.size();
    s.packed.resize(at + unit_bytes, 0);
    if (key) encode_key_block(spec, s.tail.data() + done, unit_rows, kv_dim_, &s.packed[at]);
    else encode_value_row(spec, s.tail.data() + done, kv_dim_, head_dim_, &s.packed[at]);
    done += size_t(unit_rows) * kv_dim_;
    s.quantized += unit_rows;
  }
  s.tail.erase(s.tail.begin(), s.tail.begin() + std::ptrdiff_t(done));
}

// ---- attention straight on the packed units ----
//
// Every quantized element is an affine code: off + code * step (int keys and values, VidKV's
// 2-bit outlier channels) or one of two levels (VidKV's 1-bit channels), or a trit times a
// scale (ternary values). Attention reads a head's slice of each unit and accumulates
// weight * element in FP32 straight from the codes (kernels/packed_codes; only records that
// do not start on a byte are unpacked first): no FP32 copy of the cache exists. Against a
// dot product over decode_key_block / decode_value_row's rows, the sums differ in order and
// in rounding (w * off + w * step * code instead of w * (off + code * step)), not in value.

namespace {

// n codes of `bits` from bit `bit` of p (LSB first).
void unpack_codes(const uint8_t* p, size_t bit, int n, int bits, uint8_t* out) {
  BitReader r{p, bit};
  for (int i = 0; i < n; ++i) out[i] = uint8_t(r.get(bits));
}

[[gnu::noinline]] float f16_at_bits(const uint8_t* p, size_t bit) {
  BitReader r{p, bit};
  return r.get_f16();
}

// The FP16 value at bit `bit` (a record's scale or offset: on a byte in the usual layouts).
inline float f16_at(const uint8_t* p, size_t bit) {
  if (bit % 8 == 0) return f16_to_f32(uint16_t(p[bit / 8] | p[bit / 8 + 1] << 8));
  return f16_at_bits(p, bit);
}

// One record of affine codes: acc[j] += a * off + a * step * code[j], j < n. Records that do
// not start on a byte (key blocks of an odd token count) are unpacked first.
void affine_record(const uint8_t* unit, size_t bit, int bits, float a, float off, float step, int n, float* acc,
                   std::vector<uint8_t>& code) {
  if (bit % 8 == 0 && (bits == 8 || bits == 4 || bits == 2 || bits == 1))
    return kernels::affine_codes_acc(bits, a * off, a * step, unit + bit / 8, n, acc);
  code.resize(size_t(n));
  unpack_codes(unit, bit, n, bits, code.data());
  for (int j = 0; j < n; ++j) acc[j] += a * off + a * step * float(code[size_t(j)]);
}

// Base-3 digits of a ternary byte (5 trits, the first channel least significant), minus 1,
// as floats; padded to 8 so a byte's digits go out in one 8-float copy.
struct TritTable {
  float t[243][8] = {};
  TritTable() {
    for (int b = 0; b < 243; ++b)
      for (int i = 0, v = b; i < 5; ++i, v /= 3) t[b][i] = float(v % 3 - 1);
  }
};
const TritTable& trits() {
  static const TritTable table;
  return table;
}

}  // namespace

// Channels [h0, h0 + hd) of a quantized key block of B tokens (int or VidKV): channel c adds
// w[c - h0] * k_j[c] (w null: 1) to acc[(c - h0) * ld + j], j < B (ld 0: one sum per token).
void QuantizedKV::key_block_acc(const uint8_t* unit, int h0, const float* w, float* acc, size_t ld) const {
  const KVSideSpec& sp = spec_.k;
  const int B = sp.block, hd = head_dim_;
  thread_local std::vector<uint8_t> code;
  size_t bit;
  if (sp.kind == KVKind::VidKV) {  // the outlier mask, then records of 32 + B * (1 or 2) bits
    int outliers_before = 0;
    for (int c = 0; c < h0; ++c) outliers_before += unit[c / 8] >> (c % 8) & 1;
    bit = size_t(kv_dim_) + size_t(h0) * (32 + B) + size_t(B) * outliers_before;
    if (ld == 0 && w && B % 8 == 0 && kv_dim_ % 8 == 0)  // every record on a byte: one pass per block
      return kernels::two_width_records_acc(unit, h0, w, unit + bit / 8, hd, B, acc);
  } else {
    bit = size_t(h0) * (32 + size_t(B) * sp.bits);
    if (ld == 0 && w && (size_t(B) * sp.bits) % 8 == 0)  // whole-byte records: one pass per block
      return kernels::affine_records_acc(sp.bits, w, unit + bit / 8, (32 + size_t(B) * sp.bits) / 8, hd, B, acc);
  }
  for (int c = h0; c < h0 + hd; ++c) {
    const bool two_level = sp.kind == KVKind::VidKV && !(unit[c / 8] >> (c % 8) & 1);
    const int bits = sp.kind == KVKind::Int ? sp.bits : two_level ? 1 : 2;
    const float a = f16_at(unit, bit), b = f16_at(unit, bit + 16), wc = w ? w[c - h0] : 1.0f;
    float* o = acc + size_t(c - h0) * ld;
    if (two_level && (bit + 32) % 8 == 0) {
      kernels::select_codes_acc(wc * a, wc * b, unit + (bit + 32) / 8, B, o);
    } else if (two_level) {  // lo + 1 * (hi - lo) need not round to hi: select, as decoding does
      code.resize(size_t(B));
      unpack_codes(unit, bit + 32, B, 1, code.data());
      for (int j = 0; j < B; ++j) o[j] += code[size_t(j)] ? wc * b : wc * a;
    } else {
      affine_record(unit, bit + 32, bits, wc, a, b, B, o, code);
    }
    bit += 32 + size_t(B) * bits;
  }
}

// Channels [h0, h0 + hd) of a quantized value row (int or ternary): out[i] += a * v[h0 + i].
void QuantizedKV::value_row_acc(const uint8_t* unit, int h0, float a, float* out) const {
  const KVSideSpec& sp = spec_.v;
  const int hd = head_dim_, g = value_group(sp, hd), groups = kv_dim_ / g;
  thread_local std::vector<uint8_t> code;
  thread_local std::vector<float> trit;
  if (sp.kind == KVKind::Int) {  // records of 32 + g * bits per group
    for (int gi = h0 / g; gi * g < h0 + hd; ++gi) {
      const int c0 = std::max(h0, gi * g), c1 = std::min(h0 + hd, (gi + 1) * g);
      const size_t rec = size_t(gi) * (32 + size_t(g) * sp.bits);
      affine_record(unit, rec + 32 + size_t(c0 - gi * g) * sp.bits, sp.bits, a, f16_at(unit, rec), f16_at(unit, rec + 16),
                    c1 - c0, out + (c0 - h0), code);
    }
    return;
  }
  // Ternary: FP16 scales per group, then 5 trits per byte.
  const TritTable& tt = trits();
  const uint8_t* packed_trits = unit + 2 * size_t(groups);
  const int c_first = h0 - h0 % 5;  // the first channel of the byte holding h0
  trit.resize(size_t(h0 + hd - c_first + 8));
  for (int c = c_first; c < h0 + hd; c += 5)
    std::memcpy(&trit[size_t(c - c_first)], tt.t[packed_trits[c / 5]], sizeof(tt.t[0]));
  for (int gi = h0 / g; gi * g < h0 + hd; ++gi) {
    const int c0 = std::max(h0, gi * g), c1 = std::min(h0 + hd, (gi + 1) * g);
    const float as = a * f16_at(unit, size_t(gi) * 16);
    kernels::mix_rows_f32(&as, 1.0f, &trit[size_t(c0 - c_first)], 0, 1, out + (c0 - h0), c1 - c0);
  }
}

void QuantizedKV::key_scores(int layer, int kvh, const float* q, float scale, int upto, float* out) const {
  const Side& s = layers_[size_t(layer)].k;
  const int B = spec_.k.block, hd = head_dim_, h0 = kvh * hd;
  thread_local std::vector<float> acc;
  acc.resize(size_t(B));
  for (int u = 0; u * B < upto; ++u) {
    const uint8_t* unit = &s.packed[size_t(u) * key_unit_bytes_];
    float* o = out + size_t(u) * B;
    if (spec_.k.kind == KVKind::F16) {  // rows [B, kv_dim] of FP16 (2-byte aligned: whole units)
      kernels::dot_rows_f16(q, reinterpret_cast<const uint16_t*>(unit) + h0, kv_dim_, B, hd, scale, o);
      continue;
    }
    std::fill(acc.begin(), acc.end(), 0.0f);
    key_block_acc(unit, h0, q, acc.data(), 0);
    for (int j = 0; j < B; ++j) o[j] = scale * acc[size_t(j)];
  }
}

void QuantizedKV::mix_values(int layer, int kvh, const float* w, float div, int upto, float* out) const {
  const Side& s = layers_[size_t(layer)].v;
  const int h0 = kvh * head_dim_;
  if (spec_.v.kind == KVKind::F16) {  // rows of kv_dim FP16, one after the other
    kernels::mix_rows_f16(w, div, reinterpret_cast<const uint16_t*>(s.packed.data()) + h0, kv_dim_, upto, out, head_dim_);
    return;
  }
  for (int j = 0; j < upto; ++j) value_row_acc(&s.packed[size_t(j) * value_unit_bytes_], h0, w[j] / div, out);
}

void QuantizedKV::decode_head_keys(int layer, int kvh, int upto, float* out, size_t ld) const {
  const Side& s = layers_[size_t(layer)].k;
  const int B = spec_.k.block, hd = head_dim_, h0 = kvh * hd;
  for (int c = 0; c < hd; ++c) std::fill(out + size_t(c) * ld, out + size_t(c) * ld + upto, 0.0f);
  for (int u = 0; u * B < upto; ++u) {
    const uint8_t* unit = &s.packed[size_t(u) * key_unit_bytes_];
    if (spec_.k.kind == KVKind::F16) {
      const auto* rows = reinterpret_cast<const uint16_t*>(unit) + h0;
      for (int j = 0; j < B; ++j)
        for (int c = 0; c < hd; ++c) out[size_t(c) * ld + size_t(u) * B + j] = f16_to_f32(rows[size_t(j) * kv_dim_ + c]);
      continue;
    }
    key_block_acc(unit, h0, nullptr, out + size_t(u) * B, ld);
  }
}

void QuantizedKV::decode_head_values(int layer, int kvh, int upto, float* out) const {
  const Side& s = layers_[size_t(layer)].v;
  const int hd = head_dim_, h0 = kvh * hd;
  std::fill(out, out + size_t(upto) * hd, 0.0f);
  for (int j = 0; j < upto; ++j) {
    const uint8_t* unit = &s.packed[size_t(j) * value_unit_bytes_];
    if (spec_.v.kind == KVKind::F16) kernels::f16_to_f32_row(reinterpret_cast<const uint16_t*>(unit) + h0, out + size_t(j) * hd, hd);
    else value_row_acc(unit, h0, 1.0f, out + size_t(j) * hd);
  }
}

void QuantizedKV::append(int layer, int pos, int n, const float* k, const float* v, KVRows& rows) {
  Layer& L = layers_[size_t(layer)];
  if (pos + n > capacity_) fail("kv cache: positions up to {} exceed the capacity {}", pos + n - 1, capacity_);
  if (pos == 0) {
    L = Layer{};
  } else if (pos != L.len) {
    if (pos > L.len || pos < L.k.quantized || pos < L.v.quantized)
      fail("kv cache: cannot continue at position {} (cached {}, quantized {})", pos, L.len,
           std::max(L.k.quantized, L.v.quantized));
    L.k.tail.resize(size_t(pos - L.k.quantized) * kv_dim_);
    L.v.tail.resize(size_t(pos - L.v.quantized) * kv_dim_);
  }
  // FP32 rows from the first position not yet quantized: the tail, then the new rows. A
  // query of this batch reads them above its own cut, even when storing the batch
  // quantizes them for later steps.
  auto exact = [&](const Side& s, const float* fresh, std::vector<float>& out, int& first) {
    first = s.quantized;
    out.assign(s.tail.begin(), s.tail.end());
    out.insert(out.end(), fresh, fresh + size_t(n) * kv_dim_);
  };
  exact(L.k, k, rows.k, rows.k_first);
  exact(L.v, v, rows.v, rows.v_first);
  store(L.k, spec_.k, true, pos, pos + n, k);
  store(L.v, spec_.v, false, pos, pos + n, v);
  L.len = pos + n;
}

size_t QuantizedKV::bytes() const {
  size_t b = 0;
  for (const Layer& L : layers_)
    for (const Side* s : {&L.k, &L.v}) b += s->packed.size() + s->tail.size() * sizeof(float);
  return b;
}

}  // namespace quantkit
