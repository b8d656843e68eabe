#include "quantkit/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include "quantkit/error.h"
#include "quantkit/thread_pool.h"

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
  // A batch is held transposed (column-major: one column contiguous) so the per-column
  // error feedback inside it streams through memory; later columns get the batch's
  // errors in one SGEMM at its end.
  const int64_t unit = std::lcm(step, std::max<int64_t>(1, enc->lookahead()));
  const int64_t batch = unit * std::max<int64_t>(1, (std::max<int64_t>(opt.batch, unit) + unit - 1) / unit);
  std::vector<float> wb(size_t(batch * rows)), err(size_t(batch * rows)), deq(size_t(step * rows)), cur;
  ThreadPool& pool = global_pool();
  const int blas_threads = openblas_get_num_threads();
  openblas_set_num_threads(1);
  for (int64_t b0 = 0; b0 < cols; b0 += batch) {
    const int64_t b1 = std::min(cols, b0 + batch), nb = b1 - b0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < nb; ++j) wb[size_t(j * rows + r)] = wp[size_t(r * cols + b0 + j)];
    for (int64_t p = b0; p < b1; p += step) {
      const int64_t s = std::min(step, cols - p);  // the last block may be short
      const int64_t c = perm[size_t(p)];           // its first original column
      float* col = &wb[size_t((p - b0) * rows)];
      if (natural) {
        enc->encode(c, col, 1, rows, deq.data());
      } else {  // out of order: the encoder gets this block's columns only
        cur.assign(col, col + s * rows);
        enc->encode(c, cur.data(), 1, rows, deq.data());
      }
      // E = (W_b - Q_b) U_bb^-1 (column-major s x rows: E^T = U_bb^-T D^T).
      float* e = &err[size_t((p - b0) * rows)];
      for (int64_t i = 0; i < s * rows; ++i) e[i] = col[i] - deq[size_t(i)];
      cblas_strsm(CblasRowMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, int(s), int(rows), 1.0f,
                  &u[size_t(p * cols + p)], int(cols), e, int(rows));
      std::copy(deq.begin(), deq.begin() + s * rows, col);
      // Feed the error into the rest of this batch now: W_k -= sum_i E_i U[p+i, k].
      const int64_t rest0 = p + s;
      pool.parallel_for(b1 - rest0, [&](int64_t k0, int64_t k1) {
        for (int64_t k = rest0 + k0; k < rest0 + k1; ++k) {
          float* wk = &wb[size_t((k - b0) * rows)];
          for (int64_t i = 0; i < s; ++i) {
            const float f = u[size_t((p + i) * cols + k)];
            const float* ei = e + i * rows;
            for (int64_t r = 0; r < rows; ++r) wk[r] -= ei[r] * f;
          }
        }
      });
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < nb; ++j) wp[size_t(r * cols + b0 + j)] = wb[size_t(j * rows + r)];
    // ... and into every later column at the end of the batch (BLAS-3): W -= E^T U. Rows
    // are split over quantkit's pool with single-threaded OpenBLAS inside, so the two
    // thread pools never compete for the cores.
    if (b1 < cols)
      pool.parallel_for(rows, [&](int64_t r0, int64_t r1) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(r1 - r0), int(cols - b1), int(nb), -1.0f,
                    err.data() + r0, int(rows), &u[size_t(b0 * cols + b1)], int(cols), 1.0f,
                    &wp[size_t(r0 * cols + b1)], int(cols));
      });
  }
  openblas_set_num_threads(blas_threads);
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
