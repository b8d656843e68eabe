#include "quantkit/gptq.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <new>
#include <numeric>

#include "kernels/gemm.h"
#include "quantkit/error.h"
#include "quantkit/thread_pool.h"

namespace quantkit {
namespace {

using kernels::Buffer;
using kernels::View;
using kernels::gemm_acc;

// In-place Cholesky of the row-major n x n matrix a (lower triangle: a = L L^T), blocked
// so that its bulk, the trailing update, runs on gemm_acc.
void cholesky_lower(float* a, int64_t n, Buffer& scratch) {
  constexpr int64_t kBlock = 128;
  for (int64_t k0 = 0; k0 < n; k0 += kBlock) {
    const int64_t k1 = std::min(n, k0 + kBlock), kb = k1 - k0;
    float* a11 = a + k0 * n + k0;
    if (LAPACKE_spotrf(LAPACK_ROW_MAJOR, 'L', int(kb), a11, int(n)) != 0)
      fail("GPTQ: the damped Hessian is not positive definite (raise --damp)");
    if (k1 == n) break;
    // A21 := A21 L11^-T, rows independently (in fixed blocks: OpenBLAS's bits depend on
    // where a row falls in its call); then A22 -= A21 A21^T.
    kernels::for_fixed_blocks(n - k1, kBlock, [&](int64_t i0, int64_t i1) {
      cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit, int(i1 - i0), int(kb), 1.0f, a11,
                  int(n), a + (k1 + i0) * n + k0, int(n));
    });
    const float* a21 = a + k1 * n + k0;
    gemm_acc(n - k1, n - k1, kb, View{a21, n, 1}, View{a21, 1, n}, a + k1 * n + k1, n, scratch, -1.0f, true);
  }
}

// wb's columns k in [k0, k1) (column-major, `rows` long) += sum_{i<s} e_i m[i * ld + k]:
// the immediate feedback inside a sub-block. Products and sums stay unfused so every
// instruction set gives the same bits.
[[gnu::target_clones("avx512f", "avx2", "default"), gnu::optimize("fp-contract=off")]] void feed_columns(
    const float* e, int64_t s, const float* m, int64_t ld, int64_t k0, int64_t k1, float* wb, int64_t rows) {
  for (int64_t k = k0; k < k1; ++k) {
    float* __restrict wk = wb + k * rows;
    for (int64_t i = 0; i < s; ++i) {
      const float f = m[i * ld + k];
      const float* __restrict ei = e + i * rows;
      for (int64_t r = 0; r < rows; ++r) wk[r] += ei[r] * f;
    }
  }
}

// ---- the feedback matrix ---------------------------------------------------------------

// V(i, j) of H = V V^T from the factorised reversed Hessian (see feedback_matrix).
struct UpperFactor {
  const Buffer& rev;
  int64_t n;
  float operator()(int64_t i, int64_t j) const { return rev[size_t((n - 1 - i) * n + (n - 1 - j))]; }
};

// GPTQ in LDL form (QuIP's LDLQ; the same as GPTQ's update through the Cholesky factor of
// H^-1, without the inverse): with H = V V^T, V upper triangular, and blocks of `step`
// columns, M[b, c] = V[b, c] V_cc^-1 for blocks b before c, zero elsewhere. Block c is
// quantized from W_c + sum_{b<c} (W_b - Q_b) M[b, c] with W the original weights.
// `rev` is the damped, permuted H reversed in both indices; it is factorised in place
// (P H P = R R^T, R lower, so V = P R P).
Buffer feedback_matrix(Buffer& rev, int64_t n, int64_t step, Buffer& scratch) {
  cholesky_lower(rev.data(), n, scratch);
  const UpperFactor v{rev, n};
  Buffer m(size_t(n * n), 0.0f);
  if (step == 1) {
    global_pool().parallel_for(n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = i + 1; j < n; ++j) m[size_t(i * n + j)] = v(i, j) / v(j, j);
    });
    return m;
  }
  global_pool().parallel_for(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = i; j < n; ++j) m[size_t(i * n + j)] = v(i, j);
  });
  std::vector<float> diag_block(size_t(step * step));
  for (int64_t c0 = n - ((n - 1) % step + 1); c0 >= 0; c0 -= step) {  // from the short last block
    const int64_t s = std::min(step, n - c0);
    for (int64_t i = 0; i < s; ++i)
      for (int64_t j = 0; j < s; ++j) {
        float& x = m[size_t((c0 + i) * n + c0 + j)];
        diag_block[size_t(i * s + j)] = x;
        x = 0.0f;
      }
    if (c0 > 0)
      cblas_strsm(CblasRowMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, int(c0), int(s), 1.0f,
                  diag_block.data(), int(s), &m[size_t(c0)], int(n));
  }
  return m;
}

// GPTQ's current values of the columns [p, p + len) when an encoder reaches them to
// choose group parameters. The LDL form holds W + G B^-1 for these columns (G the fed-back
// error times V, B the block diagonal of V), which is GPTQ's value only for the column
// being quantized; GPTQ's sequential update holds W + G V_pp^-1 for all of them.
void lookahead_view(const float* wb, const float* wo, const UpperFactor& v, int64_t p, int64_t len, int64_t step,
                    int64_t rows, std::vector<float>& out) {
  std::vector<float> vpp(size_t(len * len), 0.0f);  // V_pp, row-major
  for (int64_t i = 0; i < len; ++i)
    for (int64_t j = i; j < len; ++j) vpp[size_t(i * len + j)] = v(p + i, p + j);
  // G = (wb - wo) B, block by block (stored transposed: row j is column j of G).
  std::vector<float> g(size_t(len * rows));
  for (int64_t i = 0; i < len * rows; ++i) g[size_t(i)] = wb[i] - wo[i];
  for (int64_t c0 = 0; c0 < len; c0 += step) {
    const int64_t s = std::min(step, len - c0);
    cblas_strmm(CblasRowMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, int(s), int(rows), 1.0f,
                &vpp[size_t(c0 * len + c0)], int(len), &g[size_t(c0 * rows)], int(rows));
  }
  // X V_pp = G, i.e. V_pp^T X^T = G^T.
  cblas_strsm(CblasRowMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, int(len), int(rows), 1.0f, vpp.data(),
              int(len), g.data(), int(rows));
  out.resize(size_t(len * rows));
  for (int64_t i = 0; i < len * rows; ++i) out[size_t(i)] = wo[i] + g[size_t(i)];
}

// dst[c * rows + r] = src[r * cols + c], in tiles: a column-by-column copy would stride
// through memory by a power of two.
void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  constexpr int64_t kTile = 16;
  global_pool().parallel_for((cols + kTile - 1) / kTile, [&](int64_t t0, int64_t t1) {
    for (int64_t c0 = t0 * kTile; c0 < std::min(cols, t1 * kTile); c0 += kTile)
      for (int64_t r0 = 0; r0 < rows; r0 += kTile)
        for (int64_t c = c0; c < std::min(cols, c0 + kTile); ++c)
          for (int64_t r = r0; r < std::min(rows, r0 + kTile); ++r) dst[c * rows + r] = src[r * cols + c];
  });
}

// Inputs never active in calibration (H_jj <= 0): their diagonal becomes 1. importance
// receives the (fixed) diagonal.
std::vector<int64_t> dead_inputs(const double* h, int64_t n, std::vector<float>& importance) {
  std::vector<int64_t> dead;
  for (int64_t j = 0; j < n; ++j) {
    float d = float(h[j * n + j]);
    if (!(d > 0.0f)) {
      d = 1.0f;
      dead.push_back(j);
    }
    importance[size_t(j)] = d;
  }
  return dead;
}

// Column permutation in blocks of `step`: position p holds original column perm[p]. With
// act-order, full blocks by decreasing diagonal mass; a short last block stays last (the
// feedback's blocks are aligned to multiples of step).
std::vector<int64_t> processing_order(const std::vector<float>& importance, int64_t step, bool act_order) {
  const int64_t cols = int64_t(importance.size()), n_blocks = (cols + step - 1) / step, n_full = cols / step;
  std::vector<int64_t> order(static_cast<size_t>(n_blocks));
  std::iota(order.begin(), order.end(), 0);
  if (act_order) {
    std::vector<double> weight(size_t(n_blocks), 0.0);
    for (int64_t j = 0; j < cols; ++j) weight[size_t(j / step)] += importance[size_t(j)];
    std::stable_sort(order.begin(), order.begin() + n_full,
                     [&](int64_t a, int64_t b) { return weight[a] > weight[b]; });
  }
  std::vector<int64_t> perm;
  perm.reserve(size_t(cols));
  for (int64_t b : order)
    for (int64_t j = b * step; j < std::min(cols, (b + 1) * step); ++j) perm.push_back(j);
  return perm;
}

// The damped Hessian (FP32), permuted and reversed in both indices (see feedback_matrix).
Buffer reversed_hessian(const double* h, int64_t n, const std::vector<int64_t>& perm,
                        const std::vector<float>& diagonal, double damp) {
  double mean_diag = 0;
  for (float d : diagonal) mean_diag += d;
  mean_diag /= double(n);
  const float add = float(damp * mean_diag);
  Buffer rev(size_t(n * n));
  global_pool().parallel_for(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t pi = perm[size_t(n - 1 - i)];
      for (int64_t j = 0; j < n; ++j) rev[size_t(i * n + j)] = float(h[pi * n + perm[size_t(n - 1 - j)]]);
      rev[size_t(i * n + i)] = diagonal[size_t(pi)] + add;
    }
  });
  return rev;
}

// The columns of w (rows x cols, row-major) in processing order, each contiguous.
Buffer columns_in_order(const float* w, int64_t rows, int64_t cols, const std::vector<int64_t>& perm) {
  Buffer natural(size_t(rows * cols)), ordered(size_t(rows * cols));
  transpose(w, rows, cols, natural.data());  // then whole columns move
  for (int64_t p = 0; p < cols; ++p)
    std::copy_n(&natural[size_t(perm[size_t(p)] * rows)], rows, &ordered[size_t(p * rows)]);
  return ordered;
}

}  // namespace

double hessian_objective(const float* w, const float* q, int64_t rows, int64_t cols, const double* h) {
  // Rows in parallel, their terms summed in row order: the same total for any --threads.
  std::vector<double> per_row(static_cast<size_t>(rows));
  global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
    std::vector<double> d(static_cast<size_t>(cols)), hd(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < cols; ++j) d[size_t(j)] = double(w[r * cols + j]) - double(q[r * cols + j]);
      cblas_dsymv(CblasRowMajor, CblasUpper, int(cols), 1.0, h, int(cols), d.data(), 1, 0.0, hd.data(), 1);
      per_row[size_t(r)] = cblas_ddot(int(cols), d.data(), 1, hd.data(), 1);
    }
  });
  double total = 0;
  for (double v : per_row) total += v;
  return total;
}

GptqResult gptq_quantize(const Format& format, const float* w_in, int64_t rows, int64_t cols, const double* h_in,
                         const GptqOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  if (rows < 1 || cols < 1) fail("GPTQ: empty matrix {}x{}", rows, cols);
  GptqResult res;
  // Dead inputs (never active in calibration) are zeroed and given a unit diagonal.
  std::vector<float> importance(static_cast<size_t>(cols));
  const std::vector<int64_t> dead = dead_inputs(h_in, cols, importance);
  res.dead_columns = int64_t(dead.size());
  Buffer w_live;  // a copy only when inputs are dead
  const float* w = w_in;
  if (!dead.empty()) {
    w_live.assign(w_in, w_in + rows * cols);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j : dead) w_live[size_t(r * cols + j)] = 0.0f;
    w = w_live.data();
  }

  std::unique_ptr<ColumnEncoder> enc = format.column_encoder(w, rows, cols, importance.data(), opt.act_order);
  const int64_t step = enc->step();
  res.step = step;
  const std::vector<int64_t> perm = processing_order(importance, step, opt.act_order);
  const bool natural = std::is_sorted(perm.begin(), perm.end());
  Buffer rev = reversed_hessian(h_in, cols, perm, importance, opt.damp);
  Buffer scratch;
  const Buffer m = feedback_matrix(rev, cols, step, scratch);
  const UpperFactor v{rev, cols};
  // Original and effective (original + fed-back error) weights, column-major in processing
  // order: the encoder reads whole columns, and every feedback writes whole columns.
  const Buffer wo = columns_in_order(w, rows, cols, perm);
  Buffer weff = wo;

  // Lazy batches: a multiple of the step and of the encoder's lookahead, >= opt.batch.
  // Inside a batch, sub-blocks feed their errors to the rest of the batch in one product;
  // inside a sub-block the feedback is immediate, so the columns an encoder may look ahead
  // at (a unit: a multiple of its lookahead) are current when it reaches them. Later
  // batches get a batch's errors in one product at its end.
  const int64_t lookahead = std::max<int64_t>(1, enc->lookahead());
  const int64_t unit = std::lcm(step, lookahead);
  const int64_t batch = unit * std::max<int64_t>(1, (std::max<int64_t>(opt.batch, unit) + unit - 1) / unit);
  const int64_t sub = unit * std::max<int64_t>(1, 16 / unit);
  std::vector<float> err(size_t(batch * rows)), deq(size_t(step * rows)), cur;
  // Columns [c0, c1) += sum over the columns [k0, k1) of the batch from b0: E_k M[k, c],
  // as (c1 - c0) x rows: M^T E^T.
  auto feed_forward = [&](int64_t b0, int64_t k0, int64_t k1, int64_t c0, int64_t c1) {
    gemm_acc(c1 - c0, rows, k1 - k0, View{&m[size_t(k0 * cols + c0)], 1, cols},
             View{&err[size_t((k0 - b0) * rows)], rows, 1}, &weff[size_t(c0 * rows)], rows, scratch);
  };
  for (int64_t b0 = 0; b0 < cols; b0 += batch) {
    const int64_t b1 = std::min(cols, b0 + batch);
    for (int64_t s0 = b0; s0 < b1; s0 += sub) {
      const int64_t s1 = std::min(b1, s0 + sub);
      for (int64_t p = s0; p < s1; p += step) {
        const int64_t s = std::min(step, cols - p);  // the last block may be short
        const int64_t c = perm[size_t(p)];           // its first original column
        const float* col = &weff[size_t(p * rows)];
        if (!natural) {  // out of order: the encoder gets this block's columns only
          cur.assign(col, col + s * rows);
          col = cur.data();
        } else if (lookahead > step && p % lookahead == 0) {
          lookahead_view(col, &wo[size_t(p * rows)], v, p, std::min(lookahead, b1 - p), step, rows, cur);
          col = cur.data();
        }
        enc->encode(c, col, 1, rows, deq.data());
        float* e = &err[size_t((p - b0) * rows)];
        const float* o = &wo[size_t(p * rows)];
        for (int64_t i = 0; i < s * rows; ++i) e[i] = o[i] - deq[size_t(i)];
        feed_columns(e, s, &m[size_t(p * cols)], cols, p + s, s1, weff.data(), rows);
      }
      feed_forward(b0, s0, s1, s1, b1);
    }
    feed_forward(b0, b0, b1, b1, cols);
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
