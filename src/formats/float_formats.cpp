// Floating-point element formats with block or group scales.
//
//  fp<b>:e<E>m<M>:<grouping>  a b-bit minifloat (1 sign, E exponent, M mantissa bits, default
//      bias 2^(E-1)-1, subnormals) times one fp16 scale per group (fp32 for :tensor). FP8
//      follows OCP FP8 v1.0: E4M3 is the "FN" variant (max 448, only S.1111.111 is NaN), E5M2
//      is IEEE-like (top exponent reserved for Inf/NaN, max 57344). Every other split uses
//      all its codes as finite numbers, as OCP FP6 (E3M2 max 28, E2M3 max 7.5) and FP4
//      (E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6) do. The scale s of each group is found by a
//      clipping search (ratio of absmax / max_value from 1 down to 0.2, then refined)
//      minimising the importance-weighted squared error. The fp16 field holds s * 2^emax
//      (emax = exponent of the element format's max value, e.g. 15 for E5M2), i.e. about
//      the group's absmax: s itself (absmax / 57344 for E5M2) would fall into fp16's
//      subnormals for ordinary weights and lose its precision.
//  fp<b>:search:<grouping>  LLM-FP4 (Liu et al. 2023): the E/M split (E = 1..b-1, all codes
//      finite) is searched per tensor, each candidate with the per-group clipping search
//      above, keeping the least weighted error. The exponent bias is the other LLM-FP4 search
//      variable; with a free per-group scale a bias change is a power-of-two scale change,
//      so the clipping search covers it and the stored bias is a per-tensor power of two
//      2^shift that multiplies every fp16 group scale, chosen to put the largest scale near
//      the top of the fp16 range (so tiny or huge tensors keep full scale precision).
//      Header: E (3 bits) + shift (9 bits, two's complement).
//  mxfp4[:search]  OCP Microscaling v1.0 MXFP4: blocks of 32 E2M1 elements along a row, one
//      E8M0 scale X = 2^(code-127) per block with shared_exp = floor(log2(absmax)) - 2
//      clamped to [-127, 127], elements RNE(V/X) saturated to +-6. :search (not the spec)
//      may pick shared_exp - 1 or + 1 when that lowers the weighted block error.
//  nvfp4[:search]  NVIDIA NVFP4: blocks of 16 E2M1 elements, an E4M3 scale per block and one
//      fp32 per-tensor scale g = 448*6 / amax(W); block code = E4M3(amax_block / 6 * g),
//      elements RNE(x / (E4M3 value / g)) saturated to +-6. :search (not NVIDIA's recipe)
//      may move each block code by -3..+2 E4M3 steps when that lowers the weighted error.
//
// MX and NV blocks are laid out as hardware expects: when cols is not a multiple of the
// block size the last block of each row is padded with zeros, and the padding codes are
// stored and counted in storage_bits. Zeros are always coded +0 (E2M1 code 0); -0 and +0
// decode to the same value.
//
// Layouts (LSB-first bits): fp: [E:3, shift:9 for :search] then per group (Grouping order)
// its scale and its codes row-major; mxfp4: per block (row-major) E8M0 code:8 then 32 x 4;
// nvfp4: fp32 tensor scale:32 then per block E4M3 code:8 then 16 x 4.
//
// GPTQ: every format encodes column by column (ColumnEncoder): group / block scales are
// fitted when the encoder reaches the group (from the original weights with static groups,
// and always for row / tensor scales, :search's split and nvfp4's tensor scale).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "formats/common.h"
#include "formats/minifloat.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

// ---- shared pieces ------------------------------------------------------------------------

// A rectangle [r0, r1) x [c0, c1) of a row-major matrix: a scale group or a block.
struct Span {
  int64_t r0, r1, c0, c1;
};

float span_absmax(const float* w, int64_t cols, Span s) {
  float m = 0;
  for (int64_t r = s.r0; r < s.r1; ++r)
    for (int64_t c = s.c0; c < s.c1; ++c) m = std::max(m, std::fabs(w[r * cols + c]));
  return m;
}

// Weighted squared error of n values coded on `mf` with element scale `scale` (0 codes
// everything as zero). The difference is taken in units of the scale, y - round(y) with
// y = |x| / scale, and multiplied by scale^2 in double at the end, so that 1e-30 or 1e30
// weights neither underflow nor overflow the float lanes; the Rounder is the table-free
// equivalent of decode(encode(y)).
template <bool kWeighted>
double segment_error_impl(const float* x, const float* imp, int64_t n, const Minifloat& mf, float scale) {
  if (!(scale > 0)) {
    double e = 0;
    for (int64_t i = 0; i < n; ++i) e += (kWeighted ? double(imp[i]) : 1.0) * double(x[i]) * double(x[i]);
    return e;
  }
  // A scale whose largest code would decode past FLT_MAX is unusable (its error is not
  // visible in units of the scale).
  if (!std::isfinite(mf.max_value() * scale)) return INFINITY;
  const Minifloat::Rounder round = mf.rounder();
  auto err = [&](int64_t i) {
    const float y = std::fabs(x[i]) / scale;
    const float d = y - round(y);
    return (kWeighted ? imp[i] : 1.0f) * d * d;
  };
  // Eight independent lanes (the compiler vectorises them), summed in double.
  constexpr int kLanes = 8;
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    float e[kLanes];
    for (int k = 0; k < kLanes; ++k) e[k] = err(i + k);
    for (int k = 0; k < kLanes; ++k) acc[k] += double(e[k]);
  }
  for (; i < n; ++i) acc[0] += double(err(i));
  double total = 0;
  for (double a : acc) total += a;
  return total * double(scale) * double(scale);
}

double segment_error(const float* x, const float* imp, int64_t n, const Minifloat& mf, float scale) {
  return imp ? segment_error_impl<true>(x, imp, n, mf, scale) : segment_error_impl<false>(x, imp, n, mf, scale);
}

void encode_segment(const float* x, int64_t n, const Minifloat& mf, float scale, uint8_t* codes) {
  for (int64_t i = 0; i < n; ++i) codes[i] = uint8_t(scale > 0 ? mf.encode_canonical_zero(x[i] / scale) : 0);
}

// segment_error summed over the rows of a span. `parallel` splits the rows into a fixed
// number of chunks (the sum does not depend on the thread count); only for callers that
// are not already inside the pool.
double span_error(const float* w, int64_t cols, const float* imp, Span s, const Minifloat& mf, float scale,
                  bool parallel) {
  auto rows_error = [&](int64_t r0, int64_t r1) {
    double e = 0;
    for (int64_t r = r0; r < r1; ++r)
      e += segment_error(w + r * cols + s.c0, imp ? imp + s.c0 : nullptr, s.c1 - s.c0, mf, scale);
    return e;
  };
  const int64_t rows = s.r1 - s.r0;
  if (!parallel || rows < 2) return rows_error(s.r0, s.r1);
  const int64_t chunks = std::min<int64_t>(rows, 64);
  std::vector<double> part(size_t(chunks), 0.0);
  global_pool().parallel_for(chunks, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) part[size_t(k)] = rows_error(s.r0 + rows * k / chunks, s.r0 + rows * (k + 1) / chunks);
  });
  double e = 0;
  for (double p : part) e += p;
  return e;
}

// GPTQ column by column for formats that code each weight as an element code times the
// scale of its (row, column group): a group's scale is fitted from the current (error-
// updated) weights when the encoder reaches the group's first column, or comes from the
// original weights up front (static groups: act-order; row and tensor scales, as GPTQ
// does). Subclasses hold the format's state and say how to fit and how to code.
class GroupScaledColumnEncoder : public ColumnEncoder {
 public:
  GroupScaledColumnEncoder(int64_t rows, int64_t cols, const float* imp, int64_t group, bool dynamic)
      : rows_(rows), cols_(cols), group_(group), dynamic_(dynamic) {
    if (imp) imp_.assign(imp, imp + cols);
  }
  int64_t step() const override { return 1; }
  int64_t lookahead() const override { return dynamic_ ? group_ : 1; }

  void encode(int64_t c, const float* cur, int64_t rs, int64_t cs, float* deq) override {
    const int64_t g = c / group_;
    if (dynamic_ && c % group_ == 0) {
      const int64_t n = std::min(group_, cols_ - c);
      global_pool().parallel_for(rows_, [&](int64_t r0, int64_t r1) {
        std::vector<float> x(static_cast<size_t>(n));
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t j = 0; j < n; ++j) x[size_t(j)] = cur[r * rs + j * cs];
          refit(r, g, x.data(), n, imp_.empty() ? nullptr : imp_.data() + c);
        }
      });
    }
    for (int64_t r = 0; r < rows_; ++r) deq[r] = code(r, c, g, cur[r * rs]);
  }

 protected:
  // Fits the scale of group g of row r to its current values x[0, n) (called in parallel
  // over rows).
  virtual void refit(int64_t r, int64_t g, const float* x, int64_t n, const float* imp) = 0;
  // Codes weight (r, c) of group g; returns its dequantized value.
  virtual float code(int64_t r, int64_t c, int64_t g, float x) = 0;

  int64_t rows_, cols_, group_;
  bool dynamic_;
  std::vector<float> imp_;
};

// ---- fp<b>:e<E>m<M> and fp<b>:search: minifloat with a scale per group -------------------

constexpr int kSplitBits = 3;  // header of :search: E in 1..7
constexpr int kShiftBits = 9;  // header of :search: scale exponent shift, two's complement
constexpr int kShiftMin = -(1 << (kShiftBits - 1)), kShiftMax = (1 << (kShiftBits - 1)) - 1;
constexpr float kF16Max = 65504.0f;

// The element format of fp<bits> with `exp_bits` exponent bits. The OCP FP8 formats keep
// their special values in the fixed-split specs; everything else uses every code.
Minifloat element_format(int bits, int exp_bits, bool ocp_specials) {
  if (ocp_specials && bits == 8 && exp_bits == 4) return Minifloat::e4m3();
  if (ocp_specials && bits == 8 && exp_bits == 5) return Minifloat::e5m2();
  return Minifloat(exp_bits, bits - 1 - exp_bits);
}

// How a group scale is stored: fp16 (fp32 for the single :tensor scale), the fp16 value
// multiplied by 2^shift.
struct ScaleCodec {
  bool fp32 = false;
  int shift = 0;

  int bits() const { return fp32 ? 32 : 16; }
  // The storable scale nearest to s (fp16 values clamp to the largest finite half).
  uint32_t encode(float s) const {
    if (fp32) {
      s = std::min(s, FLT_MAX);
      uint32_t u;
      std::memcpy(&u, &s, 4);
      return u;
    }
    return f32_to_f16(std::min(std::ldexp(s, -shift), kF16Max));
  }
  float decode(uint32_t code) const {
    if (!fp32) return std::ldexp(f16_to_f32(uint16_t(code)), shift);
    float s;
    std::memcpy(&s, &code, 4);
    return s;
  }
};

// Fixed-split formats: the fp16 field holds s * 2^emax_elem (see the top of the file).
int fixed_scale_shift(const Minifloat& mf) { return -std::ilogb(mf.max_value()); }

// Shift that puts absmax / max_value (the largest unclipped group scale) in [2^14, 2^15).
int scale_shift_for(float absmax, const Minifloat& mf) {
  const float top = absmax / mf.max_value();
  if (!(top > 0) || !std::isfinite(top)) return 0;
  return std::clamp(std::ilogb(top) - 14, kShiftMin, kShiftMax);
}

struct GroupFit {
  uint32_t scale_code = 0;
  float scale = 0;
  double error = 0;
};

// Clipping search of one group's scale: ratios of absmax / max_value from 1 down to 0.2 in
// 32 steps, then 16 steps across one coarse step around the best; each candidate rounded
// to its stored precision before its error is measured.
GroupFit fit_group(const float* w, int64_t cols, const float* imp, Span sp, const Minifloat& mf, const ScaleCodec& sc,
                   bool parallel) {
  auto fit_at = [&](float s) {
    GroupFit f;
    f.scale_code = sc.encode(s);
    f.scale = sc.decode(f.scale_code);
    f.error = span_error(w, cols, imp, sp, mf, f.scale, parallel);
    return f;
  };
  const float absmax = span_absmax(w, cols, sp);
  if (!(absmax > 0)) return fit_at(0.0f);
  constexpr float kMinRatio = 0.2f;
  constexpr int kCoarseSteps = 32, kFineSteps = 16;
  GroupFit best;
  bool have = false;
  auto err = [&](float s) {  // remembers the first best candidate of both passes
    const GroupFit f = fit_at(s);
    if (!have || f.error < best.error) best = f, have = true;
    return f.error;
  };
  const float full = absmax / mf.max_value();
  const float coarse = search_scale(full, kMinRatio, kCoarseSteps, err);
  const float step = full * (1.0f - kMinRatio) / float(kCoarseSteps);
  const float top = std::min(full, coarse + step);
  search_scale(top, std::max(coarse - step, 0.0f) / top, kFineSteps, err);
  return best;
}

// One candidate coding of a whole matrix.
struct FloatEncoding {
  int exp_bits = 0;
  ScaleCodec scale_codec;
  std::vector<uint32_t> scale_codes;  // per group, in Grouping order
  std::vector<uint8_t> codes;         // rows x cols, row-major
  double error = 0;
};

class ScaledFloatFormat : public RowFormat {
 public:
  // exp_bits 0: search the split (LLM-FP4).
  ScaledFloatFormat(int bits, int exp_bits, Grouping grouping) : bits_(bits), exp_bits_(exp_bits), grouping_(grouping) {
    for (int e : split_candidates()) decoders_.push_back(element(e));
  }

  bool search() const { return exp_bits_ == 0; }

  std::string spec() const override {
    const std::string elem = search() ? "search" : fmt::format("e{}m{}", exp_bits_, bits_ - 1 - exp_bits_);
    return fmt::format("fp{}:{}:{}", bits_, elem, grouping_.spec());
  }

  std::string describe() const override {
    const std::string scope = grouping_.kind == Grouping::Group ? fmt::format("{} inputs", grouping_.size) : grouping_.spec();
    if (search())
      return fmt::format("{}-bit minifloat, E/M split searched per tensor (LLM-FP4), scale per {}, clipping search", bits_, scope);
    return fmt::format("{}-bit minifloat {}, scale per {}, clipping search", bits_,
                       element_format(bits_, exp_bits_, true).name(), scope);
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return header_bits() + uint64_t(grouping_.count(rows, cols)) * uint64_t(scale_bits()) +
           uint64_t(rows * cols) * uint64_t(bits_);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    return pack(best_encoding(w, rows, cols, imp), rows, cols);
  }

  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    BitReader br(b);
    FloatEncoding head;
    read_header(br, head);
    // The element format of the split (the decode tables are built once, with the format).
    const Minifloat& mf = decoders_[size_t(search() ? head.exp_bits - 1 : 0)];
    const int bits = bits_, sbits = scale_bits();
    decode_grouped_rows(b, grouping_, header_bits(), uint64_t(sbits), bits, r0, nr, out, [&](BitReader& br) {
      return [s = head.scale_codec.decode(uint32_t(br.get(sbits))), &mf, bits](BitReader& br, float* o, int64_t n) {
        for (int64_t i = 0; i < n; ++i) o[i] = mf.decode(uint32_t(br.get(bits))) * s;
      };
    });
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    const FloatEncoding enc = unpack(pk);
    SymbolStream s{"codes", 1u << bits_, std::vector<uint32_t>(enc.codes.begin(), enc.codes.end())};
    return {s};
  }

  // Groups of the fixed-split formats are independent; :search shares its split and shift.
  int64_t column_group(int64_t cols) const override {
    return !search() && grouping_.kind == Grouping::Group ? grouping_.size : 0;
  }

  std::unique_ptr<ColumnEncoder> column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                bool static_groups) const override;

  // The coding of w with the least weighted error over the element formats tried.
  FloatEncoding best_encoding(const float* w, int64_t rows, int64_t cols, const float* imp) const {
    FloatEncoding best;
    bool have = false;
    const float absmax = span_absmax(w, cols, {0, rows, 0, cols});
    for (int e : split_candidates()) {
      const Minifloat mf = element(e);
      ScaleCodec sc{grouping_.kind == Grouping::Tensor, 0};
      if (!sc.fp32) sc.shift = search() ? scale_shift_for(absmax, mf) : fixed_scale_shift(mf);
      FloatEncoding enc = encode(w, rows, cols, imp, mf, sc);
      enc.exp_bits = e;
      if (!have || enc.error < best.error) best = std::move(enc), have = true;
    }
    return best;
  }

  Minifloat element(int exp_bits) const { return element_format(bits_, exp_bits, !search()); }
  const Grouping& grouping() const { return grouping_; }

  // Index of the scale of group g (column group, 0 for row/tensor) of row r.
  size_t scale_index(int64_t r, int64_t g, int64_t cols) const {
    return grouping_.kind == Grouping::Tensor ? 0 : size_t(r * grouping_.count(1, cols) + g);
  }

  Packed pack(const FloatEncoding& enc, int64_t rows, int64_t cols) const {
    BitWriter bw;
    if (search()) {
      bw.put(uint64_t(enc.exp_bits), kSplitBits);
      bw.put(uint64_t(int64_t(enc.scale_codec.shift)), kShiftBits);
    }
    size_t gi = 0;
    grouping_.for_each(rows, cols, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      bw.put(enc.scale_codes[gi++], scale_bits());
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) bw.put(enc.codes[size_t(r * cols + c)], bits_);
    });
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

 private:
  uint64_t header_bits() const { return search() ? kSplitBits + kShiftBits : 0; }
  int scale_bits() const { return grouping_.kind == Grouping::Tensor ? 32 : 16; }

  std::vector<int> split_candidates() const {
    if (!search()) return {exp_bits_};
    std::vector<int> e;
    for (int k = 1; k <= bits_ - 1; ++k) e.push_back(k);
    return e;
  }

  FloatEncoding encode(const float* w, int64_t rows, int64_t cols, const float* imp, const Minifloat& mf,
                       const ScaleCodec& sc) const {
    FloatEncoding enc;
    enc.scale_codec = sc;
    enc.codes.assign(size_t(rows * cols), 0);
    enc.scale_codes.assign(size_t(grouping_.count(rows, cols)), 0);
    auto code_group = [&](Span sp, size_t gi, bool parallel) {
      const GroupFit f = fit_group(w, cols, imp, sp, mf, sc, parallel);
      enc.scale_codes[gi] = f.scale_code;
      for (int64_t r = sp.r0; r < sp.r1; ++r)
        encode_segment(w + r * cols + sp.c0, sp.c1 - sp.c0, mf, f.scale, enc.codes.data() + r * cols + sp.c0);
      return f.error;
    };
    if (grouping_.kind == Grouping::Tensor) {
      enc.error = code_group({0, rows, 0, cols}, 0, true);
      return enc;
    }
    const int64_t per_row = grouping_.count(1, cols);
    const int64_t gsize = grouping_.kind == Grouping::Row ? cols : grouping_.size;
    std::vector<double> row_error(size_t(rows), 0.0);
    global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g = 0; g < per_row; ++g)
          row_error[size_t(r)] += code_group({r, r + 1, g * gsize, std::min(cols, (g + 1) * gsize)},
                                             size_t(r * per_row + g), false);
    });
    for (double e : row_error) enc.error += e;
    return enc;
  }

  // The element split and the scale coding (the :search header, or the spec's).
  void read_header(BitReader& br, FloatEncoding& enc) const {
    enc.exp_bits = exp_bits_;
    enc.scale_codec.fp32 = grouping_.kind == Grouping::Tensor;
    if (!search() && !enc.scale_codec.fp32) enc.scale_codec.shift = fixed_scale_shift(decoders_[0]);
    if (search()) {
      enc.exp_bits = int(br.get(kSplitBits));
      if (enc.exp_bits < 1 || enc.exp_bits > bits_ - 1) fail("packed {}: corrupt exponent width {}", spec(), enc.exp_bits);
      const int raw = int(br.get(kShiftBits));
      enc.scale_codec.shift = raw > kShiftMax ? raw - (1 << kShiftBits) : raw;
    }
  }

  FloatEncoding unpack(const Packed& pk) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    BitReader br(pk);
    FloatEncoding enc;
    read_header(br, enc);
    enc.codes.assign(size_t(pk.rows * pk.cols), 0);
    grouping_.for_each(pk.rows, pk.cols, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      enc.scale_codes.push_back(uint32_t(br.get(scale_bits())));
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) enc.codes[size_t(r * pk.cols + c)] = uint8_t(br.get(bits_));
    });
    return enc;
  }

  int bits_;
  int exp_bits_;
  Grouping grouping_;
  std::vector<Minifloat> decoders_;  // element(e) for each split_candidates() entry
};

// The element format (and :search's split and shift) and the static scales come from the
// original weights; dynamic group scales are refitted with the same clipping search.
class FloatColumnEncoder : public GroupScaledColumnEncoder {
 public:
  FloatColumnEncoder(const ScaledFloatFormat& f, const float* w, int64_t rows, int64_t cols, const float* imp,
                     bool static_groups)
      : GroupScaledColumnEncoder(rows, cols, imp, f.grouping().kind == Grouping::Group ? f.grouping().size : cols,
                                 f.grouping().kind == Grouping::Group && !static_groups),
        f_(f), enc_(f.best_encoding(w, rows, cols, imp)), mf_(f.element(enc_.exp_bits)) {}

  Packed finish() override { return f_.pack(enc_, rows_, cols_); }

 protected:
  void refit(int64_t r, int64_t g, const float* x, int64_t n, const float* imp) override {
    enc_.scale_codes[f_.scale_index(r, g, cols_)] = fit_group(x, n, imp, {0, 1, 0, n}, mf_, enc_.scale_codec, false).scale_code;
  }
  float code(int64_t r, int64_t c, int64_t g, float x) override {
    const float s = enc_.scale_codec.decode(enc_.scale_codes[f_.scale_index(r, g, cols_)]);
    const uint32_t q = s > 0 ? mf_.encode_canonical_zero(x / s) : 0;
    enc_.codes[size_t(r * cols_ + c)] = uint8_t(q);
    return mf_.decode(q) * s;
  }

 private:
  const ScaledFloatFormat& f_;
  FloatEncoding enc_;
  Minifloat mf_;
};

std::unique_ptr<ColumnEncoder> ScaledFloatFormat::column_encoder(const float* w, int64_t rows, int64_t cols,
                                                                 const float* imp, bool static_groups) const {
  return std::make_unique<FloatColumnEncoder>(*this, w, rows, cols, imp, static_groups);
}

// "e<E>m<M>" -> (E, M); nullopt when the token has another form.
std::optional<std::pair<int, int>> parse_split(const std::string& token) {
  const size_t m = token.find('m');
  if (m == std::string::npos) return std::nullopt;
  const auto e = int_after(token.substr(0, m), "e");
  const auto mant = int_after(token.substr(m), "m");
  if (!e || !mant) return std::nullopt;
  return std::pair<int, int>{int(*e), int(*mant)};
}

std::unique_ptr<Format> parse_fp(const std::vector<std::string>& tokens) {
  const auto bits = int_after(tokens[0], "fp");
  if (!bits || *bits < 3 || *bits > 8) return nullptr;  // fp16, fp32... belong to other families
  if (tokens.size() < 2) throw Error("missing element format: e<E>m<M> or search");
  int exp_bits = 0;
  if (tokens[1] != "search") {
    const auto split = parse_split(tokens[1]);
    if (!split) throw Error(fmt::format("'{}' is not an element format e<E>m<M> or search", tokens[1]));
    if (split->first < 1 || 1 + split->first + split->second != *bits)
      throw Error(fmt::format("e{}m{} is not a {}-bit format: need E >= 1 and 1 + E + M = {}", split->first,
                              split->second, *bits, *bits));
    exp_bits = split->first;
  }
  SpecTokens t(tokens, 2);
  const Grouping g = Grouping::parse(t, {Grouping::Group, 128});
  t.finish();
  return std::make_unique<ScaledFloatFormat>(int(*bits), exp_bits, g);
}

Registrar reg_fp{FormatFamily{
    "fp", "fp<b>:e<E>m<M>|search:g<G>|row|tensor (b = 3..8, E >= 1, 1+E+M = b)",
    "minifloat (OCP FP8/FP6/FP4) with per-group fp16 scale and clipping search; :search picks the E/M split per tensor (LLM-FP4)",
    {"fp8:e4m3:g128", "fp8:e5m2:g128", "fp6:e3m2:g128", "fp6:e2m3:g128", "fp4:e2m1:g128", "fp4:search:g128",
     "fp6:search:row"},
    parse_fp}};

// ---- mxfp4 and nvfp4: E2M1 blocks with an 8-bit scale per block ------------------------

constexpr int kFp4Bits = 4, kBlockScaleBits = 8;

const Minifloat& e2m1() {
  static const Minifloat f = Minifloat::e2m1();
  return f;
}

const Minifloat& e4m3() {
  static const Minifloat f = Minifloat::e4m3();
  return f;
}

// Blocks of `block` E2M1 codes along each row, one 8-bit scale code per block. The last
// block of a row is zero-padded to full length; the padding codes (0) are stored.
struct Fp4Blocks {
  int64_t rows, cols, block, per_row;
  std::vector<uint8_t> scale_codes;  // rows * per_row
  std::vector<uint8_t> elem_codes;   // rows * per_row * block

  Fp4Blocks(int64_t rows_, int64_t cols_, int64_t block_)
      : rows(rows_), cols(cols_), block(block_), per_row((cols_ + block_ - 1) / block_),
        scale_codes(size_t(rows_ * per_row), 0), elem_codes(size_t(rows_ * per_row * block_), 0) {}

  static uint64_t storage_bits(int64_t rows, int64_t cols, int64_t block) {
    return uint64_t(rows) * uint64_t((cols + block - 1) / block) * uint64_t(kBlockScaleBits + kFp4Bits * block);
  }
  int64_t index(int64_t r, int64_t b) const { return r * per_row + b; }
  int64_t first_col(int64_t b) const { return b * block; }
  int64_t length(int64_t b) const { return std::min(cols, (b + 1) * block) - b * block; }  // unpadded
  uint8_t* codes(int64_t r, int64_t b) { return elem_codes.data() + index(r, b) * block; }

  void write(BitWriter& bw) const {
    for (size_t i = 0; i < scale_codes.size(); ++i) {
      bw.put(scale_codes[i], kBlockScaleBits);
      for (int64_t k = 0; k < block; ++k) bw.put(elem_codes[i * size_t(block) + size_t(k)], kFp4Bits);
    }
  }
  void read(BitReader& br) {
    for (size_t i = 0; i < scale_codes.size(); ++i) {
      scale_codes[i] = uint8_t(br.get(kBlockScaleBits));
      for (int64_t k = 0; k < block; ++k) elem_codes[i * size_t(block) + size_t(k)] = uint8_t(br.get(kFp4Bits));
    }
  }
};

// Shared body of mxfp4 and nvfp4; the subclasses say how block scales are chosen and what
// they mean.
class BlockFp4Format : public RowFormat {
 public:
  BlockFp4Format(int64_t block, bool tensor_scale, bool search)
      : block_(block), tensor_scale_(tensor_scale), search_(search) {}

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return (tensor_scale_ ? 32 : 0) + Fp4Blocks::storage_bits(rows, cols, block_);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const float ts = tensor_scale_of(w, rows, cols);
    return pack(ts, encode_blocks(w, rows, cols, imp, ts));
  }

  // Blocks are row-major: after the tensor scale, every row takes per_row blocks.
  void decode_rows(const PackedBits& bits, int64_t r0, int64_t nr, float* out) const override {
    const Fp4Blocks shape(0, bits.cols, block_);
    const uint64_t header = tensor_scale_ ? 32 : 0;
    const float ts = tensor_scale_ ? row_reader(bits, 0, 0, 0).get_f32() : 1.0f;
    BitReader br = row_reader(bits, header, Fp4Blocks::storage_bits(1, bits.cols, block_), r0);
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t b = 0; b < shape.per_row; ++b) {
        const float s = element_scale(uint8_t(br.get(kBlockScaleBits)), ts);
        float* o = out + r * bits.cols + shape.first_col(b);
        const int64_t n = shape.length(b);
        for (int64_t k = 0; k < block_; ++k) {
          const uint32_t code = uint32_t(br.get(kFp4Bits));
          if (k < n) o[k] = e2m1().decode(code) * s;  // padding codes are stored, not decoded
        }
      }
  }

  // MX blocks are independent; NV blocks share the per-tensor scale.
  int64_t column_group(int64_t cols) const override { return tensor_scale_ ? 0 : block_; }

  std::unique_ptr<ColumnEncoder> column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                bool static_groups) const override;

  int64_t block() const { return block_; }

  float tensor_scale_of(const float* w, int64_t rows, int64_t cols) const {
    return tensor_scale_ ? choose_tensor_scale(span_absmax(w, cols, {0, rows, 0, cols})) : 1.0f;
  }

  Fp4Blocks encode_blocks(const float* w, int64_t rows, int64_t cols, const float* imp, float ts) const {
    Fp4Blocks blk(rows, cols, block_);
    global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t b = 0; b < blk.per_row; ++b) {
          const int64_t c0 = blk.first_col(b), n = blk.length(b);
          const float* x = w + r * cols + c0;
          const uint8_t code = choose_block_code(x, imp ? imp + c0 : nullptr, n, ts);
          blk.scale_codes[size_t(blk.index(r, b))] = code;
          encode_segment(x, n, e2m1(), element_scale(code, ts), blk.codes(r, b));
        }
    });
    return blk;
  }

  Packed pack(float ts, const Fp4Blocks& blk) const {
    BitWriter bw;
    if (tensor_scale_) bw.put_f32(ts);
    blk.write(bw);
    return finish_packed(bw, blk.rows, blk.cols, storage_bits(blk.rows, blk.cols));
  }

  // The block's scale code: the recipe's, or with :search the least weighted error among
  // the recipe's and its neighbours.
  uint8_t choose_block_code(const float* x, const float* imp, int64_t n, float ts) const {
    const uint8_t recipe = recipe_code(span_absmax(x, n, {0, 1, 0, n}), ts);
    if (!search_) return recipe;
    uint8_t best = recipe;
    double best_err = segment_error(x, imp, n, e2m1(), element_scale(recipe, ts));
    for (int c : search_neighbours(recipe)) {
      const double e = segment_error(x, imp, n, e2m1(), element_scale(uint8_t(c), ts));
      if (e < best_err) best_err = e, best = uint8_t(c);
    }
    return best;
  }

  // The element scale of a block: value = E2M1(code) * element_scale.
  virtual float element_scale(uint8_t code, float tensor_scale) const = 0;

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    float ts = 1.0f;
    const Fp4Blocks blk = unpack(pk, ts);
    return {SymbolStream{"codes", 1u << kFp4Bits, std::vector<uint32_t>(blk.elem_codes.begin(), blk.elem_codes.end())},
            SymbolStream{"scales", 1u << kBlockScaleBits,
                         std::vector<uint32_t>(blk.scale_codes.begin(), blk.scale_codes.end())}};
  }

 protected:
  // The per-tensor scale (nvfp4) from the tensor's absmax.
  virtual float choose_tensor_scale(float absmax) const { return 1.0f; }
  // The block scale code of the published recipe.
  virtual uint8_t recipe_code(float block_absmax, float tensor_scale) const = 0;
  // Codes :search tries besides the recipe's.
  virtual std::vector<int> search_neighbours(uint8_t recipe) const = 0;

  bool search() const { return search_; }

 private:
  Fp4Blocks unpack(const Packed& pk, float& ts) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    BitReader br(pk);
    if (tensor_scale_) ts = br.get_f32();
    Fp4Blocks blk(pk.rows, pk.cols, block_);
    blk.read(br);
    return blk;
  }

  int64_t block_;
  bool tensor_scale_, search_;
};

// The tensor scale (nvfp4) comes from the original weights; block scales are chosen from
// the current weights when a block is reached (from the original ones with static groups).
class Fp4BlockColumnEncoder : public GroupScaledColumnEncoder {
 public:
  Fp4BlockColumnEncoder(const BlockFp4Format& f, const float* w, int64_t rows, int64_t cols, const float* imp,
                        bool static_groups)
      : GroupScaledColumnEncoder(rows, cols, imp, f.block(), !static_groups), f_(f), ts_(f.tensor_scale_of(w, rows, cols)),
        blk_(static_groups ? f.encode_blocks(w, rows, cols, imp, ts_) : Fp4Blocks(rows, cols, f.block())) {}

  Packed finish() override { return f_.pack(ts_, blk_); }

 protected:
  void refit(int64_t r, int64_t b, const float* x, int64_t n, const float* imp) override {
    blk_.scale_codes[size_t(blk_.index(r, b))] = f_.choose_block_code(x, imp, n, ts_);
  }
  float code(int64_t r, int64_t c, int64_t b, float x) override {
    const float s = f_.element_scale(blk_.scale_codes[size_t(blk_.index(r, b))], ts_);
    const uint32_t q = s > 0 ? e2m1().encode_canonical_zero(x / s) : 0;
    blk_.codes(r, b)[c - blk_.first_col(b)] = uint8_t(q);
    return e2m1().decode(q) * s;
  }

 private:
  const BlockFp4Format& f_;
  float ts_;
  Fp4Blocks blk_;
};

std::unique_ptr<ColumnEncoder> BlockFp4Format::column_encoder(const float* w, int64_t rows, int64_t cols,
                                                              const float* imp, bool static_groups) const {
  return std::make_unique<Fp4BlockColumnEncoder>(*this, w, rows, cols, imp, static_groups);
}

// OCP MX v1.0: E8M0 scale code = shared_exp + 127; 0xFF is NaN.
constexpr int kMxBlock = 32, kE8M0Bias = 127, kE8M0Nan = 0xFF;
constexpr int kE2M1Emax = 2;  // exponent of E2M1's largest normal, 6 = 1.5 * 2^2

class MxFp4Format : public BlockFp4Format {
 public:
  explicit MxFp4Format(bool search) : BlockFp4Format(kMxBlock, false, search) {}
  std::string spec() const override { return search() ? "mxfp4:search" : "mxfp4"; }
  std::string describe() const override {
    return search() ? "MXFP4 layout (32 x E2M1 + E8M0 scale), scale exponent searched +-1 around the OCP rule"
                    : "OCP MXFP4: blocks of 32 E2M1 with a shared E8M0 power-of-two scale (OCP MX v1.0)";
  }

 protected:
  uint8_t recipe_code(float absmax, float) const override {
    // shared_exp = floor(log2(absmax)) - emax_elem; an all-zero block takes the smallest
    // scale, as the OCP reference code does (log2 of FP32_MIN_NORMAL, then clamped).
    const int e = absmax > 0 ? (std::isfinite(absmax) ? std::ilogb(absmax) : 127) : -126;
    return uint8_t(std::clamp(e - kE2M1Emax, -kE8M0Bias, kE8M0Bias) + kE8M0Bias);
  }
  std::vector<int> search_neighbours(uint8_t recipe) const override {
    std::vector<int> c;
    for (int d : {+1, -1})
      if (recipe + d >= 0 && recipe + d < kE8M0Nan) c.push_back(recipe + d);
    return c;
  }
  float element_scale(uint8_t code, float) const override {
    return code == kE8M0Nan ? NAN : std::ldexp(1.0f, int(code) - kE8M0Bias);
  }
};

// NVFP4: 16 E2M1 per block, E4M3 block scale, fp32 tensor scale.
constexpr int kNvBlock = 16;
constexpr float kNvRange = 448.0f * 6.0f;  // E4M3 max times E2M1 max

class NvFp4Format : public BlockFp4Format {
 public:
  explicit NvFp4Format(bool search) : BlockFp4Format(kNvBlock, true, search) {}
  std::string spec() const override { return search() ? "nvfp4:search" : "nvfp4"; }
  std::string describe() const override {
    return search() ? "NVFP4 layout (16 x E2M1 + E4M3 scale, fp32 tensor scale), block scales searched"
                    : "NVIDIA NVFP4: blocks of 16 E2M1 with an E4M3 scale, fp32 per-tensor scale";
  }

 protected:
  float choose_tensor_scale(float absmax) const override {
    // global_scale = 448 * 6 / amax, kept a finite positive float (1 for an all-zero tensor).
    if (!(absmax > 0)) return 1.0f;
    return std::clamp(kNvRange / absmax, FLT_MIN, FLT_MAX);
  }
  uint8_t recipe_code(float absmax, float ts) const override {
    return uint8_t(e4m3().encode_magnitude(absmax / 6.0f * ts));
  }
  std::vector<int> search_neighbours(uint8_t recipe) const override {
    std::vector<int> c;
    for (int d = -3; d <= 2; ++d)
      if (d != 0 && int(recipe) + d >= 0 && uint32_t(int(recipe) + d) <= e4m3().max_code()) c.push_back(recipe + d);
    return c;
  }
  float element_scale(uint8_t code, float ts) const override { return e4m3().decode(code) / ts; }
};

std::unique_ptr<Format> parse_block_fp4(const std::vector<std::string>& tokens, const std::string& name,
                                        std::unique_ptr<Format> (*make)(bool)) {
  if (tokens[0] != name) return nullptr;
  SpecTokens t(tokens);
  const bool search = t.take_flag("search");
  t.finish();
  return make(search);
}

Registrar reg_mx{FormatFamily{"mxfp4", "mxfp4[:search]",
                              "OCP MXFP4 (32 x E2M1, E8M0 scale; 4.25 bits/weight); :search tries scale exponent +-1",
                              {"mxfp4", "mxfp4:search"},
                              [](const std::vector<std::string>& t) {
                                return parse_block_fp4(t, "mxfp4", [](bool s) -> std::unique_ptr<Format> {
                                  return std::make_unique<MxFp4Format>(s);
                                });
                              }}};

Registrar reg_nv{FormatFamily{"nvfp4", "nvfp4[:search]",
                              "NVIDIA NVFP4 (16 x E2M1, E4M3 scale, fp32 tensor scale; 4.5 bits/weight); :search tunes block scales",
                              {"nvfp4", "nvfp4:search"},
                              [](const std::vector<std::string>& t) {
                                return parse_block_fp4(t, "nvfp4", [](bool s) -> std::unique_ptr<Format> {
                                  return std::make_unique<NvFp4Format>(s);
                                });
                              }}};

}  // namespace
}  // namespace quantkit::formats
