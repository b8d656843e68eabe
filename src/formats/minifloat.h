// Minifloat (ExMy) codec: encode a float to a small sign-exponent-mantissa code with
// round-to-nearest-even and saturation, decode it back. Subnormals are included; the
// exponent bias is a parameter (default 2^(E-1) - 1). Used by the floating-point weight
// formats (fp<b>, mxfp4, nvfp4) and meant for reuse (FP8 scales, KV cache).
//
// Code layout (b = 1 + E + M bits): sign in the top bit, then the E exponent bits, then the
// M mantissa bits. Magnitude code c = (exponent_field << M) | mantissa_field; magnitudes
// are monotonic in c, so rounding to the nearest even code is rounding to the nearest
// representable value with ties to an even mantissa. (With M = 0 a tie between 2^e and
// 2^(e+1) goes up: the value counted in quanta of 2^e, 1.5, rounds to the even 2.)
//
//   exponent_field == 0: subnormal, value = mantissa * 2^(1 - bias - M)
//   otherwise:           value = (2^M + mantissa) * 2^(exponent_field - bias - M)
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace quantkit::formats {

// What the top of the code space holds.
enum class MinifloatSpecials {
  None,     // every code is a finite number (OCP FP6 E3M2/E2M3, FP4 E2M1)
  NanOnly,  // only S.1...1.1...1 is NaN, no infinities (OCP FP8 E4M3, "FN")
  Ieee,     // the all-ones exponent holds Inf (mantissa 0) and NaN (OCP FP8 E5M2)
};

class Minifloat {
 public:
  // exp_bits >= 1, man_bits >= 0, 1 + exp_bits + man_bits <= 16; Ieee needs man_bits >= 1.
  // bias: default 2^(exp_bits-1) - 1. Throws Error when the values do not fit a float.
  Minifloat(int exp_bits, int man_bits, MinifloatSpecials specials = MinifloatSpecials::None,
            std::optional<int> bias = std::nullopt);

  // The OCP formats (OCP 8-bit Floating Point spec v1.0, OCP Microscaling spec v1.0).
  static Minifloat e4m3() { return Minifloat(4, 3, MinifloatSpecials::NanOnly); }  // max 448
  static Minifloat e5m2() { return Minifloat(5, 2, MinifloatSpecials::Ieee); }     // max 57344
  static Minifloat e3m2() { return Minifloat(3, 2); }                              // max 28
  static Minifloat e2m3() { return Minifloat(2, 3); }                              // max 7.5
  static Minifloat e2m1() { return Minifloat(2, 1); }                              // max 6

  int bits() const { return 1 + exp_bits_ + man_bits_; }
  int exp_bits() const { return exp_bits_; }
  int man_bits() const { return man_bits_; }
  int bias() const { return bias_; }
  MinifloatSpecials specials() const { return specials_; }
  std::string name() const;  // "e4m3"

  uint32_t sign_bit() const { return 1u << (exp_bits_ + man_bits_); }
  uint32_t max_code() const { return max_code_; }  // magnitude code of the largest finite value
  float max_value() const { return max_value_; }
  float min_positive() const { return table_[1]; }  // smallest positive value (subnormal if M > 0)
  float min_normal() const { return rounder_.min_normal; }

  // Magnitude code of a >= 0 (callers pass fabs(x)): round to nearest, ties to even;
  // values at or above max_value() (and +Inf) saturate to max_code(). NaN gives the NaN
  // magnitude code, or 0 when the format has no NaN.
  uint32_t encode_magnitude(float a) const {
    if (!(a < max_value_)) return a != a ? nan_magnitude_ : max_code_;
    uint32_t u;
    std::memcpy(&u, &a, 4);
    int e = int(u >> 23) - 127;  // floor(log2 a) for normal floats; float subnormals clamp below
    if (e < emin_) e = emin_;
    // a / quantum is exact in double; adding and removing 2^52 rounds it to an integer
    // with ties to even (the default rounding mode).
    const double y = double(a) * inv_quantum_[size_t(e - emin_)];
    const double n = (y + 0x1p52) - 0x1p52;
    // A round-up to 2^(M+1) lands on the next binade's first code: the formula stays right.
    const uint32_t code = (uint32_t(e - emin_) << man_bits_) + uint32_t(n);
    return code < max_code_ ? code : max_code_;
  }

  // Full code of x (sign bit set for negative x, including -0 and values rounding to 0).
  uint32_t encode(float x) const {
    const uint32_t mag = encode_magnitude(std::fabs(x));
    return std::signbit(x) ? (mag | sign_bit()) : mag;
  }

  // Like encode, but every zero result is the +0 code (one symbol for zero; -0 == +0).
  uint32_t encode_canonical_zero(float x) const {
    const uint32_t mag = encode_magnitude(std::fabs(x));
    return (mag != 0 && std::signbit(x)) ? (mag | sign_bit()) : mag;
  }

  // Value of a full code (NaN / +-Inf for special codes). code < 2^bits().
  float decode(uint32_t code) const { return table_[code]; }

  // decode(encode_magnitude(a)) for a >= 0, without a table: rounds the float's mantissa
  // to M bits (normal range) or adds and removes a constant whose ulp is the subnormal step
  // (subnormal range), then saturates. Branch-free, for the inner loops of scale searches;
  // copy the Rounder into a local so its constants stay in registers. NaN and values at or
  // above max_value() give max_value().
  struct Rounder {
    float subnormal_magic;  // 2^(emin - M + 23): its ulp is the subnormal step
    float min_normal, max_value;
    uint32_t dropped_bits;  // 23 - M float mantissa bits rounded away
    uint32_t round_bias, keep_mask;

    float operator()(float a) const {
      const float sub = (a + subnormal_magic) - subnormal_magic;
      uint32_t u, us, umax;
      std::memcpy(&u, &a, 4);
      std::memcpy(&us, &sub, 4);
      std::memcpy(&umax, &max_value, 4);
      const uint32_t un = (u + round_bias + ((u >> dropped_bits) & 1u)) & keep_mask;
      const uint32_t is_sub = 0u - uint32_t(a < min_normal), in_range = 0u - uint32_t(a < max_value);
      const uint32_t q = (((us & is_sub) | (un & ~is_sub)) & in_range) | (umax & ~in_range);
      float out;
      std::memcpy(&out, &q, 4);
      return out;
    }
  };
  // Nearest representable value of x: decode(encode(x)).
  float round(float x) const { return decode(encode(x)); }

  const Rounder& rounder() const { return rounder_; }
  float round_magnitude(float a) const { return rounder_(a); }

 private:
  int exp_bits_, man_bits_, bias_;
  MinifloatSpecials specials_;
  int emin_;                         // exponent of the smallest normal, 1 - bias
  uint32_t max_code_ = 0;            // magnitude code of max_value_
  uint32_t nan_magnitude_ = 0;       // magnitude code returned for NaN input
  float max_value_ = 0;
  Rounder rounder_{};
  std::vector<double> inv_quantum_;  // 2^(M - e) for e = emin .. emax
  std::vector<float> table_;         // value of every full code
};

}  // namespace quantkit::formats
