// GPTQ (Frantar et al. 2022) for any quantkit format: columns are quantized in order (or
// by decreasing Hessian diagonal: act-order), and each block's rounding error, scaled by
// the Cholesky factor of the inverse Hessian, is fed into the columns not yet quantized.
// Blocks of step() > 1 columns (vector formats, groups quantized jointly) use the block
// form of the same update (LDLQ, as in QuIP#/VPTQ): E = (W_b - Q_b) U_bb^-1,
// W_rest -= E U_b,rest. Updates are applied lazily per batch of >= 128 columns (BLAS-3).
#pragma once
#include <string>

#include "quantkit/format.h"

namespace quantkit {

struct GptqOptions {
  double damp = 0.01;        // added to the diagonal: damp * mean(diag(H))
  int64_t batch = 128;       // lazy-update batch width (rounded to the encoder's step/groups)
  bool act_order = true;     // blocks by decreasing diag(H) (with static groups: no g_idx needed)
  bool compute_objective = false;
};

struct GptqResult {
  Packed packed;
  int64_t dead_columns = 0;   // inputs with H_jj = 0: weights zeroed, as GPTQ does
  int64_t step = 1;           // columns the format fixed at a time
  double objective = -1;      // tr((W-Q) H (W-Q)^T) with the undamped H (if computed)
  double seconds = 0;
};

// w: rows x cols (row-major); h: cols x cols input Hessian (sum or mean of x x^T; scale
// does not matter), FP64.
GptqResult gptq_quantize(const Format& format, const float* w, int64_t rows, int64_t cols, const double* h,
                         const GptqOptions& opt = {});

// tr((W-Q) H (W-Q)^T): the layer-output error GPTQ minimises.
double hessian_objective(const float* w, const float* q, int64_t rows, int64_t cols, const double* h);

}  // namespace quantkit
