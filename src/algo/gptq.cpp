#include "quantkit/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include "quantkit/error.h"

namespace quantkit {
namespace {

// U upper triangular with H^-1 = U^T U, from one Cholesky and one triangular inverse:
// with P the reversal permutation and P H P = R R^T (R lower), A = P R^-1 P is upper and
// H^-1 = A^T A. Half the work of inverting H and factorising the inverse.
std::vector<float> inverse_cholesky_upper(std::vector<float> h, int64_t n) {
  std::vector<float> rev(size_t(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) rev[size_t(i * n + j)] = h[size_t((n - 1 - i) * n + (n - 1 - j))];
  if (LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', int(n), rev.data(), int(n)) != 0)
    fail("GPTQ: the damped Hessian is not positive definite (raise --damp)");
  if (LAPACKE_strtri(LAPACK_ROW_MAJOR, 'L', 'N', int(n), rev.data(), int(n)) != 0)
    fail("GPTQ: the Hessian's Cholesky factor is singular (raise --damp)");
  std::vector<float> u(size_t(n * n), 0.0f);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i; j < n; ++j) u[size_t(i * n + j)] = rev[size_t((n - 1 - i) * n + (n - 1 - j))];
  return u;
}

}  // namespace

double hessian_objective(const float* w, const float* q, int64_t rows, int64_t cols, const double* h) {
  std::vector<double> d(static_cast<size_t>(cols)), hd(static_cast<size_t>(cols));
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) d[size_t(j)] = double(w[r * cols + j]) - double(q[r * cols + j]);
    cblas_dsymv(CblasRowMajor, CblasUpper, int(cols), 1.0, h, int(cols), d.data(), 1, 0.0, hd.data(), 1);
    total += cblas_ddot(int(cols), d.data(), 1, hd.data(), 1);
  }
  return total;
}

GptqResult gptq_quantize(const Format& format, const float* w_in, int64_t rows, int64_t cols, const double* h_in,
                         const GptqOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  if (rows < 1 || cols < 1) fail("GPTQ: empty matrix {}x{}", rows, cols);
  GptqResult res;
  // Dead inputs (never active in calibration) are zeroed and given a unit diagonal.
  std::vector<float> w(w_in, w_in + rows * cols);
  std::vector<float> h(size_t(cols * cols));
  double mean_diag = 0;
  for (int64_t i = 0; i < cols * cols; ++i) h[size_t(i)] = float(h_in[i]);
  std::vector<float> importance(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    float& d = h[size_t(j * cols + j)];
    if (!(d > 0.0f)) {
      d = 1.0f;
      for (int64_t r = 0; r < rows; ++r) w[size_t(r * cols + j)] = 0.0f;
      ++res.dead_columns;
    }
    importance[size_t(j)] = d;
    mean_diag += d;
  }
  mean_diag /= double(cols);
  for (int64_t j = 0; j < cols; ++j) h[size_t(j * cols + j)] += float(opt.damp * mean_diag);

  std::unique_ptr<ColumnEncoder> enc = format.column_encoder(w.data(), rows, cols, importance.data(), opt.act_order);
  const int64_t step = enc->step();
  res.step = step;
  // Blocks of `step` columns, in processing order.
  const int64_t n_blocks = (cols + step - 1) / step;
  std::vector<int64_t> order(static_cast<size_t>(n_blocks));
  std::iota(order.begin(), order.end(), 0);
  if (opt.act_order) {
    std::vector<double> weight(size_t(n_blocks), 0.0);
    for (int64_t j = 0; j < cols; ++j) weight[size_t(j / step)] += importance[size_t(j)];
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return weight[a] > weight[b]; });
  }
  const bool natural = std::is_sorted(order.begin(), order.end());
  // Column permutation: position p holds original column perm[p].
  std::vector<int64_t> perm;
  perm.reserve(size_t(cols));
  for (int64_t b : order)
    for (int64_t j = b * step; j < std::min(cols, (b + 1) * step); ++j) perm.push_back(j);
  std::vector<float> hp(size_t(cols * cols)), wp(size_t(rows * cols));
  for (int64_t i = 0; i < cols; ++i)
    for (int64_t j = 0; j < cols; ++j) hp[size_t(i * cols + j)] = h[size_t(perm[i] * cols + perm[j])];
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t p = 0; p < cols; ++p) wp[size_t(r * cols + p)] = w[size_t(r * cols + perm[p])];
  h.clear();
  const std::vector<float> u = inverse_cholesky_upper(std::move(hp), cols);

  // Lazy batches: a multiple of the step and of the encoder's lookahead, >= opt.batch.
  const int64_t unit = std::lcm(step, std::max<int64_t>(1, enc->lookahead()));
  const int64_t batch = unit * std::max<int64_t>(1, (std::max<int64_t>(opt.batch, unit) + unit - 1) / unit);
  std::vector<float> err(size_t(rows * batch)), deq(size_t(rows * step)), diff(size_t(rows * step)), cur;
  for (int64_t b0 = 0; b0 < cols; b0 += batch) {
    const int64_t b1 = std::min(cols, b0 + batch);
    for (int64_t p = b0; p < b1; p += step) {
      const int64_t s = std::min(step, cols - p);  // last block may be short
      const int64_t c = perm[size_t(p)];           // its first original column
      if (natural) {
        enc->encode(c, &wp[size_t(p)], cols, deq.data());
      } else {  // out of order: hand over this block's columns only
        cur.resize(size_t(rows * s));
        for (int64_t r = 0; r < rows; ++r) std::memcpy(&cur[size_t(r * s)], &wp[size_t(r * cols + p)], size_t(s) * 4);
        enc->encode(c, cur.data(), s, deq.data());
      }
      // E = (W_b - Q_b) U_bb^-1, written into the batch's error columns.
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < s; ++j)
          diff[size_t(r * s + j)] = wp[size_t(r * cols + p + j)] - deq[size_t(r * step + j)];
      cblas_strsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, int(rows), int(s), 1.0f,
                  &u[size_t(p * cols + p)], int(cols), diff.data(), int(s));
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(&err[size_t(r * batch + (p - b0))], &diff[size_t(r * s)], size_t(s) * 4);
        for (int64_t j = 0; j < s; ++j) wp[size_t(r * cols + p + j)] = deq[size_t(r * step + j)];
      }
      // Feed the error into the rest of this batch now.
      const int64_t rest0 = p + s;
      if (rest0 < b1)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(b1 - rest0), int(s), -1.0f, diff.data(),
                    int(s), &u[size_t(p * cols + rest0)], int(cols), 1.0f, &wp[size_t(rest0)], int(cols));
    }
    // ... and into every later column at the end of the batch (BLAS-3).
    if (b1 < cols)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(rows), int(cols - b1), int(b1 - b0), -1.0f,
                  err.data(), int(batch), &u[size_t(b0 * cols + b1)], int(cols), 1.0f, &wp[size_t(b1)], int(cols));
  }
  res.packed = enc->finish();
  if (opt.compute_objective) {
    std::vector<float> q(size_t(rows * cols));
    format.dequantize(res.packed, q.data());
    res.objective = hessian_objective(w_in, q.data(), rows, cols, h_in);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace quantkit
