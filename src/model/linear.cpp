#include "quantkit/linear.h"

#include <cblas.h>

#include "quantkit/error.h"
#include "quantkit/packed_tensor.h"

namespace quantkit {
namespace {

// y[n, out] = x[n, in] * w[out, in]^T
void gemm_rows(const float* w, int64_t out, int64_t in, const float* x, int64_t n, float* y) {
  if (n == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, int(out), int(in), 1.0f, w, int(in), x, 1, 0.0f, y, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(out), int(in), 1.0f, x, int(in), w, int(in), 0.0f,
              y, int(out));
}

bool is_plain_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

}  // namespace

DenseLinear::DenseLinear(Tensor w) : w_(std::move(w)) {
  if (w_.shape.size() != 2) fail("linear weight must be 2-D, got {}", shape_str(w_.shape));
}

void DenseLinear::forward(const float* x, int64_t n, float* y) const {
  gemm_rows(w_.data.data(), out_features(), in_features(), x, n, y);
}

PackedLinear::PackedLinear(const TensorView& w) : type_(w.type) {
  if (w.shape.size() != 2) fail("linear weight '{}' must be 2-D, got {}", w.name, shape_str(w.shape));
  rows_ = w.shape[0];
  cols_ = w.shape[1];
  if (w.type == DType::QK) {
    format_ = make_format(w.format);
    packed_ = packed_of(w);
    return;
  }
  const size_t need = dtype_row_bytes(w.type, cols_) * size_t(rows_);
  if (w.nbytes < need) fail("tensor '{}' holds {} bytes, needs {}", w.name, w.nbytes, need);
  const auto* src = static_cast<const uint8_t*>(w.data);
  packed_.bytes.assign(src, src + need);
}

void PackedLinear::decode(float* w) const {
  if (format_)
    dequantize_cropped(*format_, packed_, cols_, w);
  else
    dequantize(type_, packed_.bytes.data(), w, rows_ * cols_);
}

void PackedLinear::forward(const float* x, int64_t n, float* y) const {
  thread_local std::vector<float> scratch;
  scratch.resize(size_t(rows_ * cols_));
  decode(scratch.data());
  gemm_rows(scratch.data(), rows_, cols_, x, n, y);
}

std::unique_ptr<Linear> make_linear(const TensorView& w) {
  if (is_plain_float(w.type)) return std::make_unique<DenseLinear>(to_float(w));
  return std::make_unique<PackedLinear>(w);
}

}  // namespace quantkit
