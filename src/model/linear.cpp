#include "quantkit/linear.h"

#include <cblas.h>

#include "quantkit/error.h"

namespace quantkit {

DenseLinear::DenseLinear(Tensor w) : w_(std::move(w)) {
  if (w_.shape.size() != 2) fail("linear weight must be 2-D, got {}", shape_str(w_.shape));
}

void DenseLinear::forward(const float* x, int64_t n, float* y) const {
  const int64_t out = out_features(), in = in_features();
  if (n == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, int(out), int(in), 1.0f, w_.data.data(), int(in), x, 1, 0.0f, y, 1);
    return;
  }
  // Y[n, out] = X[n, in] * W[out, in]^T
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(out), int(in), 1.0f, x, int(in), w_.data.data(),
              int(in), 0.0f, y, int(out));
}

std::unique_ptr<Linear> make_linear(const TensorView& w) { return std::make_unique<DenseLinear>(to_float(w)); }

}  // namespace quantkit
