#include "formats/int_uniform.h"

#include <algorithm>
#include <cmath>

#include "formats/common.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

// Integer range of the codes of a b-bit group.
struct Levels {
  int lo, hi;
};
Levels levels(const IntParams& p) {
  if (p.mode == IntMode::Sym) return {-(1 << (p.bits - 1)), (1 << (p.bits - 1)) - 1};
  return {0, (1 << p.bits) - 1};
}

// One group's parameters: w ≈ scale * (q - offset).
struct GroupParams {
  float scale = 0;
  float offset = 0;  // 0 (sym), zero point (asym), (2^b-1)/2 (mid)
  int zero = 0;      // stored zero point (asym)
};

// Nearest integer of x within [lo, hi] (integers), ties to even as nearbyint rounds by
// default. Clamping first keeps |x| small, where adding and removing 1.5 * 2^23 rounds
// exactly; unlike nearbyint this needs no library call, so loops over it vectorise.
inline float round_clamped(float x, float lo, float hi) {
  constexpr float kMagic = 12582912.0f;
  x = std::min(std::max(x, lo), hi);
  return (x + kMagic) - kMagic;
}

int quantize_one(float w, const GroupParams& g, Levels lv) {
  if (g.scale == 0.0f) return std::clamp(int(std::lround(g.offset)), lv.lo, lv.hi);
  return int(round_clamped(w / g.scale + g.offset, float(lv.lo), float(lv.hi)));
}

// The error sum runs in this many interleaved partial sums: a fixed order, so every
// instruction set below gives the same bits.
constexpr int kErrLanes = 16;

// No FMA contraction (AVX-512 would fuse the products): contraction would change the
// rounding between instruction sets.
#define QK_NO_CONTRACT gnu::optimize("fp-contract=off")

template <bool Weighted>
[[gnu::always_inline, QK_NO_CONTRACT]] inline double grid_error_lanes(const float* w, const float* imp, int64_t n,
                                                                      float scale, float offset, float lo, float hi) {
  double acc[kErrLanes] = {};
  const double s = scale, off = offset;
  auto term = [&](int64_t i) {
    const double d = double(w[i]) - s * (double(round_clamped(w[i] / scale + offset, lo, hi)) - off);
    return Weighted ? double(imp[i]) * d * d : d * d;
  };
  int64_t i = 0;
  for (; i + kErrLanes <= n; i += kErrLanes)
    for (int j = 0; j < kErrLanes; ++j) acc[j] += term(i + j);
  for (int j = 0; i + j < n; ++j) acc[j] += term(i + j);
  double e = 0;
  for (double a : acc) e += a;
  return e;
}

// sum_i imp_i (w_i - scale (q_i - offset))^2 with q_i the grid code of w_i (scale != 0):
// the clipping search's inner loop, built for AVX-512 and AVX2 too (picked at run time).
[[gnu::target_clones("avx512f", "avx2", "default"), QK_NO_CONTRACT]] double grid_error(
    const float* w, const float* imp, int64_t n, float scale, float offset, float lo, float hi) {
  return imp ? grid_error_lanes<true>(w, imp, n, scale, offset, lo, hi)
             : grid_error_lanes<false>(w, imp, n, scale, offset, lo, hi);
}

double group_error(const float* w, const float* imp, int64_t n, const GroupParams& g, Levels lv) {
  if (g.scale != 0.0f) return grid_error(w, imp, n, g.scale, g.offset, float(lv.lo), float(lv.hi));
  double e = 0;  // every weight decodes to 0
  for (int64_t i = 0; i < n; ++i) e += (imp ? double(imp[i]) : 1.0) * double(w[i]) * double(w[i]);
  return e;
}

class IntFormat;

// Chooses the parameters of one group: the clipping range shrinks from the full range
// (absmax / min..max) over a coarse grid, then a fine grid around the best.
GroupParams fit_group(const float* w, const float* imp, int64_t n, const IntParams& p, bool fp16_scale) {
  const Levels lv = levels(p);
  float lo = 0, hi = 0, absmax = 0, signed_max = 0;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
    if (std::fabs(w[i]) > absmax) absmax = std::fabs(w[i]), signed_max = w[i];
  }
  auto round_scale = [&](float s) { return fp16_scale ? f16_to_f32(f32_to_f16(s)) : s; };
  // Parameters for clipping ratio r of the full range.
  auto params_at = [&](float r) {
    GroupParams g;
    switch (p.mode) {
      case IntMode::Sym:  // the extreme weight maps to the most negative level
        g.scale = round_scale(signed_max * r / float(lv.lo));
        break;
      case IntMode::Mid:
        g.scale = round_scale(absmax * r / (float(lv.hi) / 2.0f));
        g.offset = float(lv.hi) / 2.0f;
        break;
      case IntMode::Asym: {
        g.scale = round_scale((hi - lo) * r / float(lv.hi));
        const float center = 0.5f * (hi + lo);
        if (g.scale != 0.0f) g.zero = std::clamp(int(std::lround(float(lv.hi) / 2.0f - center / g.scale)), 0, lv.hi);
        g.offset = float(g.zero);
        break;
      }
    }
    if (!std::isfinite(g.scale)) g.scale = 0.0f;
    return g;
  };
  if (!p.clip_search || absmax == 0.0f) return params_at(1.0f);
  auto err = [&](float r) { return group_error(w, imp, n, params_at(r), lv); };
  // Coarse: r in [0.1, 1] in 30 steps; fine: +-1 coarse step in 16 steps.
  float best_r = 1.0f;
  double best = err(1.0f);
  for (int k = 1; k < 30; ++k) {
    const float r = 1.0f - 0.9f * float(k) / 29.0f;
    const double e = err(r);
    if (e < best) best = e, best_r = r;
  }
  const float step = 0.9f / 29.0f;
  float prev = -1.0f;
  for (int k = -8; k <= 8; ++k) {
    const float r = std::min(1.0f, best_r + step * float(k) / 8.0f);
    if (r <= 0.0f || r == best_r || r == prev) continue;  // a ratio already tried cannot win
    prev = r;
    const double e = err(r);
    if (e < best) best = e, best_r = r;
  }
  return params_at(best_r);
}

class IntFormat : public RowFormat {
 public:
  explicit IntFormat(IntParams p) : p_(p) {
    if (p_.bits < 1 || p_.bits > 8) throw Error(fmt::format("bits {} out of range [1, 8]", p_.bits));
    if (p_.bits == 1 && p_.mode == IntMode::Sym) throw Error("int1 has no symmetric midtread grid: use asym or mid");
    if (p_.master_bits && (p_.master_bits <= p_.bits || p_.master_bits > 8))
      throw Error(fmt::format("dr{} must be wider than {} bits and at most 8", p_.master_bits, p_.bits));
    if (p_.group == 0) grouping_ = {Grouping::Row, 0};
    else if (p_.group < 0) grouping_ = {Grouping::Tensor, 0};
    else grouping_ = {Grouping::Group, p_.group};
  }

  std::string spec() const override {
    std::string s = fmt::format("int{}:{}", p_.bits, grouping_.spec());
    if (p_.mode == IntMode::Asym) s += ":asym";
    if (p_.mode == IntMode::Mid) s += ":mid";
    if (p_.master_bits) s += fmt::format(":dr{}", p_.master_bits);
    if (!p_.clip_search) s += ":noclip";
    return s;
  }

  std::string describe() const override {
    static const char* modes[] = {"symmetric", "asymmetric (zero point)", "midrise"};
    std::string d = fmt::format("{}-bit uniform integer, {}, scale per {}", p_.bits, modes[int(p_.mode)],
                                grouping_.kind == Grouping::Group ? fmt::format("{} inputs", p_.group) : grouping_.spec());
    if (p_.master_bits) d += fmt::format(", Double Rounding from a stored int{}", p_.master_bits);
    return d + (p_.clip_search ? ", clipping search" : "");
  }

  int scale_bits() const { return grouping_.kind == Grouping::Tensor ? 32 : 16; }
  int zero_bits() const { return p_.mode == IntMode::Asym ? p_.bits : 0; }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(grouping_.count(rows, cols)) * uint64_t(scale_bits() + zero_bits()) +
           uint64_t(rows * cols) * uint64_t(p_.bits);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    if (p_.master_bits) {
      IntParams master = p_;
      master.bits = p_.master_bits;
      master.master_bits = 0;
      return derive_lower_bits(IntFormat(master).quantize(w, rows, cols, imp), master, p_.bits);
    }
    std::vector<GroupParams> groups;
    std::vector<int16_t> codes;
    encode(w, rows, cols, imp, groups, codes);
    return pack(groups, codes, rows, cols);
  }

  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    const int lo = levels(p_).lo, bits = p_.bits;
    decode_grouped_rows(b, grouping_, 0, uint64_t(scale_bits() + zero_bits()), bits, r0, nr, out, [&](BitReader& br) {
      return [g = read_group(br), lo, bits](BitReader& br, float* o, int64_t n) {
        for (int64_t i = 0; i < n; ++i) o[i] = g.scale * (float(int(br.get(bits)) + lo) - g.offset);
      };
    });
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    std::vector<GroupParams> groups;
    std::vector<int16_t> codes;
    unpack(pk, groups, codes);
    SymbolStream s{"levels", 1u << p_.bits, {}};
    const int lo = levels(p_).lo;
    s.symbols.reserve(codes.size());
    for (int16_t q : codes) s.symbols.push_back(uint32_t(q - lo));
    return {s};
  }

  // Codes in row-major order and one GroupParams per group in Grouping order.
  void encode(const float* w, int64_t rows, int64_t cols, const float* imp, std::vector<GroupParams>& groups,
              std::vector<int16_t>& codes) const {
    const Levels lv = levels(p_);
    const bool fp16 = scale_bits() == 16;
    codes.assign(size_t(rows * cols), 0);
    if (grouping_.kind == Grouping::Tensor) {
      // One scale for the whole matrix: importance repeats per row.
      std::vector<float> imp_full;
      if (imp) {
        imp_full.resize(size_t(rows * cols));
        for (int64_t r = 0; r < rows; ++r) std::copy(imp, imp + cols, imp_full.begin() + r * cols);
      }
      groups = {fit_group(w, imp ? imp_full.data() : nullptr, rows * cols, p_, fp16)};
      for (int64_t i = 0; i < rows * cols; ++i) codes[size_t(i)] = int16_t(quantize_one(w[i], groups[0], lv));
      return;
    }
    const int64_t per_row = grouping_.count(1, cols);
    groups.assign(size_t(rows * per_row), {});
    const int64_t gsize = grouping_.kind == Grouping::Row ? cols : grouping_.size;
    global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g = 0; g < per_row; ++g) {
          const int64_t c0 = g * gsize, n = std::min(cols, c0 + gsize) - c0;
          const float* x = w + r * cols + c0;
          GroupParams gp = fit_group(x, imp ? imp + c0 : nullptr, n, p_, fp16);
          groups[size_t(r * per_row + g)] = gp;
          for (int64_t i = 0; i < n; ++i) codes[size_t(r * cols + c0 + i)] = int16_t(quantize_one(x[i], gp, lv));
        }
    });
  }

  Packed pack(const std::vector<GroupParams>& groups, const std::vector<int16_t>& codes, int64_t rows,
              int64_t cols) const {
    BitWriter bw;
    const int lo = levels(p_).lo;
    size_t gi = 0;
    grouping_.for_each(rows, cols, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      const GroupParams& g = groups[gi++];
      if (scale_bits() == 32) bw.put_f32(g.scale);
      else bw.put_f16(g.scale);
      if (zero_bits()) bw.put(uint64_t(g.zero), zero_bits());
      // Codes go out 64 bits at a time: the same bit string as one put per code.
      uint64_t word = 0;
      int used = 0;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) {
          if (used + p_.bits > 64) bw.put(word, used), word = 0, used = 0;
          word |= uint64_t(codes[size_t(r * cols + c)] - lo) << used;
          used += p_.bits;
        }
      bw.put(word, used);
    });
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  void unpack(const Packed& pk, std::vector<GroupParams>& groups, std::vector<int16_t>& codes) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols)) fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    BitReader br(pk);
    const int lo = levels(p_).lo;
    codes.assign(size_t(pk.rows * pk.cols), 0);
    groups.clear();
    grouping_.for_each(pk.rows, pk.cols, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
      groups.push_back(read_group(br));
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) codes[size_t(r * pk.cols + c)] = int16_t(int(br.get(p_.bits)) + lo);
    });
  }

  // One group's stored scale and zero point.
  GroupParams read_group(BitReader& br) const {
    GroupParams g;
    g.scale = scale_bits() == 32 ? br.get_f32() : br.get_f16();
    if (zero_bits()) g.zero = int(br.get(zero_bits()));
    g.offset = p_.mode == IntMode::Asym ? float(g.zero) : p_.mode == IntMode::Mid ? float(levels(p_).hi) / 2.0f : 0.0f;
    return g;
  }

  const IntParams& params() const { return p_; }
  const Grouping& grouping() const { return grouping_; }

  int64_t column_group(int64_t cols) const override {
    return grouping_.kind == Grouping::Group && !p_.master_bits ? grouping_.size : 0;
  }

  std::unique_ptr<ColumnEncoder> column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                bool static_groups) const override;

 private:
  IntParams p_;
  Grouping grouping_;
};

// One column for GPTQ: each row's code and dequantized value under its group's parameters
// (scale[r] == 0: the code zero_code[r]). Built for AVX-512 and AVX2 too.
[[gnu::target_clones("avx512f", "avx2", "default")]] void quantize_column(const float* w, int64_t rows,
                                                                          const float* scale, const float* offset,
                                                                          const float* zero_code, Levels lv,
                                                                          int16_t* codes, float* deq) {
  const float lo = float(lv.lo), hi = float(lv.hi);
  for (int64_t r = 0; r < rows; ++r) {
    const float s = scale[r], o = offset[r];
    const float q = s != 0.0f ? round_clamped(w[r] / s + o, lo, hi) : zero_code[r];
    codes[r] = int16_t(q);
    deq[r] = s * (q - o);
  }
}

// GPTQ column by column: row/tensor scales are fixed from the original weights (as GPTQ
// does); group scales are chosen from the current weights when the group is reached, or
// from the original weights up front with static groups (act-order without g_idx).
class IntColumnEncoder : public ColumnEncoder {
 public:
  IntColumnEncoder(const IntFormat& f, const float* w, int64_t rows, int64_t cols, const float* imp, bool static_groups)
      : f_(f), rows_(rows), cols_(cols), codes_(size_t(rows * cols), 0), column_codes_(size_t(rows * cols), 0) {
    if (imp) imp_.assign(imp, imp + cols);
    const Grouping& g = f.grouping();
    gsize_ = g.kind == Grouping::Group ? g.size : cols;
    per_row_ = g.kind == Grouping::Tensor ? 0 : (cols + gsize_ - 1) / gsize_;
    dynamic_ = g.kind == Grouping::Group && !static_groups;
    const int64_t n_groups = std::max<int64_t>(1, per_row_);
    for (auto* v : {&scale_, &offset_, &zero_code_}) v->assign(size_t(n_groups * rows), 0.0f);
    // Static parameters come from the original weights; dynamic ones are fitted later.
    if (dynamic_) {
      groups_.assign(size_t(rows * per_row_), {});
    } else {
      f.encode(w, rows, cols, imp, groups_, codes_);
      for (int64_t gi = 0; gi < n_groups; ++gi) gather_params(gi);
    }
  }
  int64_t step() const override { return 1; }
  int64_t lookahead() const override { return dynamic_ ? gsize_ : 1; }

  void encode(int64_t c, const float* cur, int64_t rs, int64_t cs, float* deq) override {
    const int64_t g = c / gsize_;
    if (dynamic_ && c % gsize_ == 0) {
      const int64_t n = std::min(gsize_, cols_ - c);
      global_pool().parallel_for(rows_, [&](int64_t r0, int64_t r1) {
        std::vector<float> x(static_cast<size_t>(n));
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t j = 0; j < n; ++j) x[size_t(j)] = cur[r * rs + j * cs];
          groups_[size_t(r * per_row_ + g)] =
              fit_group(x.data(), imp_.empty() ? nullptr : imp_.data() + c, n, f_.params(), true);
        }
      });
      gather_params(g);
    }
    if (rs != 1) {
      column_.resize(size_t(rows_));
      for (int64_t r = 0; r < rows_; ++r) column_[size_t(r)] = cur[r * rs];
      cur = column_.data();
    }
    const size_t at = size_t((per_row_ ? g : 0) * rows_);
    quantize_column(cur, rows_, &scale_[at], &offset_[at], &zero_code_[at], levels(f_.params()),
                    &column_codes_[size_t(c * rows_)], deq);
  }

  Packed finish() override {
    // Every column was encoded: its codes replace the row-major ones.
    constexpr int64_t kTile = 64;
    global_pool().parallel_for((cols_ + kTile - 1) / kTile, [&](int64_t t0, int64_t t1) {
      for (int64_t c0 = t0 * kTile; c0 < std::min(cols_, t1 * kTile); c0 += kTile)
        for (int64_t r = 0; r < rows_; ++r)
          for (int64_t c = c0; c < std::min(cols_, c0 + kTile); ++c)
            codes_[size_t(r * cols_ + c)] = column_codes_[size_t(c * rows_ + r)];
    });
    return f_.pack(groups_, codes_, rows_, cols_);
  }

 private:
  // Group g's parameters, one per row, as arrays for quantize_column.
  void gather_params(int64_t g) {
    const Levels lv = levels(f_.params());
    for (int64_t r = 0; r < rows_; ++r) {
      const GroupParams& gp = groups_[per_row_ ? size_t(r * per_row_ + g) : 0];
      const size_t i = size_t(g * rows_ + r);
      scale_[i] = gp.scale;
      offset_[i] = gp.offset;
      zero_code_[i] = float(quantize_one(0.0f, {0.0f, gp.offset, gp.zero}, lv));
    }
  }

  const IntFormat& f_;
  int64_t rows_, cols_, gsize_ = 0, per_row_ = 0;
  bool dynamic_ = false;
  std::vector<float> imp_;
  std::vector<GroupParams> groups_;
  std::vector<float> scale_, offset_, zero_code_, column_;  // [group][row]
  std::vector<int16_t> codes_, column_codes_;               // row-major; column-major as encoded
};

std::unique_ptr<ColumnEncoder> IntFormat::column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                         bool static_groups) const {
  if (p_.master_bits) return Format::column_encoder(w, rows, cols, imp, static_groups);
  return std::make_unique<IntColumnEncoder>(*this, w, rows, cols, imp, static_groups);
}

// Second rounding of a B-bit code to b bits: divide by 2^(B-b), round half up, clamp.
int reround(int q, int shift, Levels lv, IntMode mode) {
  if (mode == IntMode::Mid) return std::clamp(q >> shift, lv.lo, lv.hi);  // midrise bins nest exactly
  const int half = 1 << (shift - 1);
  return std::clamp((q + half) >> shift, lv.lo, lv.hi);  // >> floors negatives: round half up
}

std::unique_ptr<Format> parse_int(const std::vector<std::string>& tokens) {
  auto bits = int_after(tokens[0], "int");
  if (!bits) return nullptr;
  SpecTokens t(tokens);
  IntParams p;
  p.bits = int(*bits);
  Grouping g = Grouping::parse(t, {Grouping::Group, 128});
  p.group = g.kind == Grouping::Group ? g.size : g.kind == Grouping::Row ? 0 : -1;
  if (auto m = t.take_one_of({"asym", "mid"})) p.mode = *m == "asym" ? IntMode::Asym : IntMode::Mid;
  if (auto dr = t.take_int("dr")) p.master_bits = int(*dr);
  p.clip_search = !t.take_flag("noclip");
  t.finish();
  return make_int_format(p);
}

Registrar reg{FormatFamily{
    "int", "int<b>:g<G>|row|tensor[:asym|:mid][:dr<B>][:noclip] (b = 1..8)",
    "uniform integer grid with per-group scale (and zero point), clipping search, Double Rounding",
    {"int8:row", "int8:g128", "int4:g128", "int4:g128:asym", "int4:g32", "int3:g32", "int2:g32", "int2:g32:asym",
     "int2:tensor:mid", "int4:g128:dr8", "int3:g128:asym:dr8"},
    parse_int}};

}  // namespace

std::unique_ptr<Format> make_int_format(const IntParams& p) { return std::make_unique<IntFormat>(p); }

Packed derive_lower_bits(const Packed& master, const IntParams& mp, int bits) {
  if (mp.master_bits) fail("Double Rounding source must be a plain int format, not a derived one");
  if (bits < 1 || bits >= mp.bits) fail("cannot derive {} bits from a {}-bit model", bits, mp.bits);
  const IntFormat src(mp);
  IntParams lp = mp;
  lp.bits = bits;
  const IntFormat dst(lp);
  std::vector<GroupParams> groups;
  std::vector<int16_t> codes;
  src.unpack(master, groups, codes);
  const int shift = mp.bits - bits;
  const Levels lv = levels(lp);
  const float factor = float(1 << shift);
  for (auto& g : groups) {
    g.scale *= factor;  // exact in fp16/fp32 unless it overflows
    if (mp.mode == IntMode::Asym) {
      g.zero = reround(g.zero, shift, lv, mp.mode);
      g.offset = float(g.zero);
    } else if (mp.mode == IntMode::Mid) {
      g.offset = float(lv.hi) / 2.0f;
    }
  }
  for (auto& q : codes) q = int16_t(reround(q, shift, lv, mp.mode));
  return dst.pack(groups, codes, master.rows, master.cols);
}

IntUnpacked unpack_int(const Packed& p, const IntParams& params) {
  const IntFormat f(params);
  std::vector<GroupParams> groups;
  std::vector<int16_t> codes;
  f.unpack(p, groups, codes);
  const int lo = levels(params).lo;
  const Grouping& g = f.grouping();
  IntUnpacked u;
  u.rows = p.rows;
  u.cols = p.cols;
  u.group = g.kind == Grouping::Group ? g.size : p.cols;
  u.q.resize(codes.size());
  for (size_t i = 0; i < codes.size(); ++i) u.q[i] = codes[i] - lo;
  // w = s * (level - offset) = s * ((level - lo) - (offset - lo)); a tensor's one group
  // repeats on every row.
  const bool per_tensor = g.kind == Grouping::Tensor;
  const size_t n = per_tensor ? size_t(p.rows) : groups.size();
  for (size_t i = 0; i < n; ++i) {
    const GroupParams& gp = groups[per_tensor ? 0 : i];
    u.scale.push_back(gp.scale);
    u.zero.push_back(gp.offset - float(lo));
  }
  return u;
}

namespace {

// A group's parameters from an unpacked (scale, zero); fails if the zero point is not one
// the format can store.
GroupParams group_params_of(float scale, float zero, const IntParams& p, const std::string& spec) {
  const Levels lv = levels(p);
  GroupParams g;
  g.scale = scale;
  g.offset = zero + float(lv.lo);
  if (p.mode == IntMode::Asym) {
    if (!(zero >= 0.0f && zero <= float(lv.hi)) || zero != std::floor(zero))
      fail("{}: zero point {} is not an integer in [0, {}]", spec, zero, lv.hi);
    g.zero = int(zero);
    return g;
  }
  const float fixed = p.mode == IntMode::Sym ? float(-lv.lo) : float(lv.hi) / 2.0f;
  if (zero != fixed) fail("{}: zero point {} differs from the format's fixed {}", spec, zero, fixed);
  return g;
}

}  // namespace

Packed pack_int(const IntUnpacked& u, const IntParams& params) {
  const IntFormat f(params);
  const std::string spec = f.spec();
  const Grouping& g = f.grouping();
  const Levels lv = levels(params);
  const int64_t per_row = g.kind == Grouping::Group ? (u.cols + g.size - 1) / g.size : 1;
  const int64_t group = g.kind == Grouping::Group ? g.size : u.cols;
  if (u.group != group) fail("{}: unpacked groups of {} columns, the format has {}", spec, u.group, group);
  if (u.q.size() != size_t(u.rows * u.cols) || u.scale.size() != size_t(u.rows * per_row) || u.zero.size() != u.scale.size())
    fail("{}: a {}x{} matrix needs {} codes and {} scales and zero points, got {}, {} and {}", spec, u.rows, u.cols,
         u.rows * u.cols, u.rows * per_row, u.q.size(), u.scale.size(), u.zero.size());
  std::vector<int16_t> codes(u.q.size());
  for (size_t i = 0; i < u.q.size(); ++i) {
    if (u.q[i] < 0 || u.q[i] > lv.hi - lv.lo) fail("{}: code {} is out of range [0, {}]", spec, u.q[i], lv.hi - lv.lo);
    codes[i] = int16_t(u.q[i] + lv.lo);
  }
  std::vector<GroupParams> groups;
  groups.reserve(u.scale.size());
  for (size_t i = 0; i < u.scale.size(); ++i) groups.push_back(group_params_of(u.scale[i], u.zero[i], params, spec));
  if (g.kind == Grouping::Tensor && !groups.empty()) {
    for (size_t i = 1; i < u.scale.size(); ++i)
      if (u.scale[i] != u.scale[0] || u.zero[i] != u.zero[0])
        fail("{}: row {} has its own scale or zero point, the format one per tensor", spec, i);
    groups.resize(1);
  }
  return f.pack(groups, codes, u.rows, u.cols);
}

std::optional<IntParams> int_params_of(const std::string& spec) {
  const std::unique_ptr<Format> f = make_format(spec);
  if (const auto* i = dynamic_cast<const IntFormat*>(f.get())) return i->params();
  return std::nullopt;
}

}  // namespace quantkit::formats
