#include "formats/minifloat.h"

#include <cfloat>

#include "quantkit/error.h"

namespace quantkit::formats {

Minifloat::Minifloat(int exp_bits, int man_bits, MinifloatSpecials specials, std::optional<int> bias)
    : exp_bits_(exp_bits), man_bits_(man_bits), bias_(bias ? *bias : exp_bits >= 1 && exp_bits < 16 ? (1 << (exp_bits - 1)) - 1 : 0), specials_(specials) {
  if (exp_bits < 1 || man_bits < 0 || 1 + exp_bits + man_bits > 16)
    fail("minifloat e{}m{}: need 1 <= E, 0 <= M, 1 + E + M <= 16", exp_bits, man_bits);
  if (specials == MinifloatSpecials::Ieee && man_bits < 1) fail("minifloat e{}m0 cannot hold IEEE Inf and NaN", exp_bits);
  // The smallest normal exponent must be a float normal exponent so that encode_magnitude
  // can read floor(log2 a) from the float bits (float subnormals then clamp to emin).
  emin_ = 1 - bias_;
  if (emin_ < -126) fail("minifloat e{}m{} bias {} is too large (at most 127)", exp_bits, man_bits, bias_);
  if (emin_ - man_bits + 23 > 127) fail("minifloat e{}m{} bias {} is too small", exp_bits, man_bits, bias_);

  const uint32_t magnitudes = 1u << (exp_bits + man_bits);
  const uint32_t top_field = (1u << exp_bits) - 1;
  switch (specials) {
    case MinifloatSpecials::None:
      max_code_ = magnitudes - 1;
      nan_magnitude_ = 0;
      break;
    case MinifloatSpecials::NanOnly:
      max_code_ = magnitudes - 2;
      nan_magnitude_ = magnitudes - 1;
      break;
    case MinifloatSpecials::Ieee:
      max_code_ = (top_field << man_bits) - 1;
      nan_magnitude_ = (top_field << man_bits) | (1u << (man_bits - 1));
      break;
  }

  auto magnitude_value = [&](uint32_t c) -> double {
    const int field = int(c >> man_bits);
    const double mant = double(c & ((1u << man_bits) - 1));
    if (field == 0) return std::ldexp(mant, emin_ - man_bits);
    return std::ldexp(double(1u << man_bits) + mant, field - bias_ - man_bits);
  };
  const double max_value = magnitude_value(max_code_);
  if (max_code_ == 0 || !(max_value <= double(FLT_MAX)))
    fail("minifloat e{}m{} bias {}: largest value does not fit a float", exp_bits, man_bits, bias_);
  max_value_ = float(max_value);

  const uint32_t dropped = uint32_t(23 - man_bits);
  rounder_ = {std::ldexp(1.0f, emin_ - man_bits + 23), std::ldexp(1.0f, emin_), max_value_, dropped,
              (1u << (dropped - 1)) - 1, ~((1u << dropped) - 1)};

  const int emax = std::max(emin_, int(max_code_ >> man_bits) - bias_);
  for (int e = emin_; e <= emax; ++e) inv_quantum_.push_back(std::ldexp(1.0, man_bits - e));

  table_.resize(size_t(2) * magnitudes);
  for (uint32_t c = 0; c < magnitudes; ++c) {
    float v;
    if (c <= max_code_) v = float(magnitude_value(c));
    else if (specials == MinifloatSpecials::Ieee && (c & ((1u << man_bits) - 1)) == 0) v = INFINITY;
    else v = NAN;
    table_[c] = v;
    table_[c | magnitudes] = -v;
  }
}

std::string Minifloat::name() const { return "e" + std::to_string(exp_bits_) + "m" + std::to_string(man_bits_); }

}  // namespace quantkit::formats
