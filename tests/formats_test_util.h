// Shared helpers for the format tests: deterministic data, SQNR, round trips.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "quantkit/format.h"

namespace qk_test {

inline std::vector<float> gaussian(size_t n, uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline double sqnr_db(const std::vector<float>& x, const std::vector<float>& y) {
  double s = 0, e = 0;
  for (size_t i = 0; i < x.size(); ++i) s += double(x[i]) * x[i], e += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
  return 10.0 * std::log10(s / e);
}

// Quantizes and dequantizes, checking the bit accounting on the way.
inline std::vector<float> round_trip(const quantkit::Format& f, const std::vector<float>& w, int64_t rows,
                                     int64_t cols, const float* imp = nullptr) {
  quantkit::Packed p = f.quantize(w.data(), rows, cols, imp);
  EXPECT_EQ(p.rows, rows);
  EXPECT_EQ(p.cols, cols);
  EXPECT_EQ(p.bits, f.storage_bits(rows, cols)) << f.spec();
  EXPECT_EQ(p.bytes.size(), (p.bits + 7) / 8) << f.spec();
  std::vector<float> out(w.size());
  f.dequantize(p, out.data());
  return out;
}

}  // namespace qk_test
