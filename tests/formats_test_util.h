// Shared helpers for the format tests: deterministic data, SQNR, round trips.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/linear.h"

namespace qk_test {

// N(0, sigma^2) from std::normal_distribution on mt19937_64.
inline std::vector<float> gaussian(size_t n, uint64_t seed = 1, float sigma = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// scale * N(0,1) from std::normal_distribution on the 32-bit mt19937.
inline std::vector<float> gaussian_mt32(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = scale * d(rng);
  return v;
}

// N(0,1) by Box-Muller from mt19937_64 (portable across standard libraries).
inline std::vector<float> gaussian_box_muller(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; i += 2) {
    const double u1 = (double(g() >> 11) + 0.5) * 0x1p-53, u2 = double(g() >> 11) * 0x1p-53;
    const double r = std::sqrt(-2 * std::log(u1));
    v[i] = float(r * std::cos(2 * M_PI * u2));
    if (i + 1 < n) v[i + 1] = float(r * std::sin(2 * M_PI * u2));
  }
  return v;
}

inline double sqnr_db(const std::vector<float>& x, const std::vector<float>& y) {
  double s = 0, e = 0;
  for (size_t i = 0; i < x.size(); ++i) s += double(x[i]) * x[i], e += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
  return 10.0 * std::log10(s / e);
}

// sum_ij imp_j (w_ij - q_ij)^2 over a row-major matrix with `cols` columns (imp null: 1).
inline double weighted_error(const std::vector<float>& w, const std::vector<float>& q, int64_t cols,
                             const float* imp) {
  double e = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = double(w[i]) - q[i];
    e += (imp ? double(imp[i % size_t(cols)]) : 1.0) * d * d;
  }
  return e;
}

// The message make_format(spec) throws, or `none` if it does not throw.
inline std::string spec_error(const std::string& spec, const std::string& none = "no error") {
  try {
    quantkit::make_format(spec);
  } catch (const quantkit::Error& e) {
    return e.what();
  }
  return none;
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

struct SpecRoundTrip {
  quantkit::Packed p;
  std::vector<float> q;
};

// round_trip by spec, keeping the packed bits too (the output starts as NaN).
inline SpecRoundTrip round_trip(const std::string& spec, const std::vector<float>& w, int64_t rows, int64_t cols,
                                const float* imp = nullptr) {
  const auto f = quantkit::make_format(spec);
  SpecRoundTrip r;
  r.p = f->quantize(w.data(), rows, cols, imp);
  EXPECT_EQ(r.p.rows, rows) << spec;
  EXPECT_EQ(r.p.cols, cols) << spec;
  EXPECT_EQ(r.p.bits, f->storage_bits(rows, cols)) << spec;
  EXPECT_EQ(r.p.bytes.size(), (r.p.bits + 7) / 8) << spec;
  r.q.assign(w.size(), NAN);
  f->dequantize(r.p, r.q.data());
  return r;
}

// sqrt(sum (y - ref)^2 / sum ref^2) over n tokens of x, y = lin.forward(x), ref = W x in
// double with W the [out, in] reference weights in rows of ldw (>= in; extra columns unread).
inline double linear_relative_error(const quantkit::Linear& lin, const std::vector<float>& w, int64_t ldw,
                                    const std::vector<float>& x, int64_t n) {
  const int64_t rows = lin.out_features(), cols = lin.in_features();
  std::vector<float> y(size_t(n * rows), NAN);
  lin.forward(x.data(), n, y.data());
  double err = 0, norm = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double ref = 0;
      for (int64_t j = 0; j < cols; ++j) ref += double(w[size_t(r * ldw + j)]) * x[size_t(t * cols + j)];
      const double d = double(y[size_t(t * rows + r)]) - ref;
      err += d * d, norm += ref * ref;
    }
  return std::sqrt(err / norm);
}

}  // namespace qk_test
