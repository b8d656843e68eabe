// Small helpers shared by the lattice, structured-codebook and trellis formats (pvq, e8,
// tcq, rht): fp16 scale rounding, a reproducible random generator, gathering a padded
// sub-vector of a row with its importance, and the least-squares gain of fixed codewords.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "quantkit/fp16.h"

namespace quantkit::formats::lattice {

inline constexpr float kF16Max = 65504.0f;

// The value a non-negative scale takes after being stored as fp16: rounded to nearest and
// clamped to [0, 65504] so that huge inputs give a huge but finite reconstruction.
inline float round_scale_f16(double s) {
  if (!(s > 0)) return 0.0f;
  const float clamped = float(std::min(s, double(kF16Max)));
  return f16_to_f32(f32_to_f16(clamped));
}

// SplitMix64 (Steele, Lea, Flood 2014): a tiny generator whose stream is fully specified,
// so seeds reproduce the same signs/permutations on every platform.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n) (n >= 1); the modulo bias is below 2^-40 for the n used here.
  uint64_t below(uint64_t n) { return next() % n; }
};

// Copies the d weights of `row` starting at column c0 into x and their importance into w
// (1 when imp is null); positions past `cols` are padding: x = 0 with weight 0, so they
// never influence a choice.
inline void gather_vector(const float* row, const float* imp, int64_t cols, int64_t c0, int d, float* x, float* w) {
  for (int i = 0; i < d; ++i) {
    const int64_t c = c0 + i;
    const bool inside = c < cols;
    x[i] = inside ? row[c] : 0.0f;
    w[i] = inside ? (imp ? imp[c] : 1.0f) : 0.0f;
  }
}

// The gain g minimising sum_i w_i (x_i - g c_i)^2, or 0 when the codewords are all zero
// (or carry no weight).
inline double least_squares_gain(const float* x, const float* c, const float* w, int64_t n) {
  double xc = 0, cc = 0;
  for (int64_t i = 0; i < n; ++i) {
    xc += double(w[i]) * double(x[i]) * double(c[i]);
    cc += double(w[i]) * double(c[i]) * double(c[i]);
  }
  return cc > 0 ? xc / cc : 0.0;
}

}  // namespace quantkit::formats::lattice

// ---- functions of the lattice formats exposed for known-answer tests --------------------

namespace quantkit::formats::lattice {

// pvq.cpp: N(d, k), the number of integer vectors of dimension d with L1 norm k, and
// Fischer's index of such a vector (both exact in 128-bit integers; d <= 128, k <= 4096,
// throws Error when N(d, k) >= 2^126).
unsigned __int128 pyramid_count(int d, int k);
unsigned __int128 pyramid_index(const int* y, int d, int k);
void pyramid_vector(unsigned __int128 index, int d, int k, int* y);

// e8_lattice.cpp: the point of E8 = D8 u (D8 + 1/2) nearest to x (Conway & Sloane).
void nearest_e8(const double* x, double* out);

// trellis.cpp: the computed codebook of the bitshift trellis with L state bits (2^L fp16
// values, the same for every k).
std::vector<float> trellis_codebook(int L);

}  // namespace quantkit::formats::lattice
