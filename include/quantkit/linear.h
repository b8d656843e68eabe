// A linear layer y = W x. The model runtime only sees this interface, so quantized
// weight formats plug in later without touching the model code.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "quantkit/format.h"
#include "quantkit/tensor.h"

namespace quantkit {

class Linear {
 public:
  virtual ~Linear() = default;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // x: [n, in] row-major, y: [n, out] row-major; y[t] = W x[t].
  virtual void forward(const float* x, int64_t n, float* y) const = 0;
  // Bytes the weights occupy in memory (for bandwidth figures).
  virtual size_t weight_bytes() const = 0;
};

// FP32 weights [out, in], matrix products through OpenBLAS.
class DenseLinear : public Linear {
 public:
  explicit DenseLinear(Tensor w);
  int64_t in_features() const override { return w_.cols(); }
  int64_t out_features() const override { return w_.rows(); }
  void forward(const float* x, int64_t n, float* y) const override;
  size_t weight_bytes() const override { return w_.data.size() * sizeof(float); }
  const Tensor& weight() const { return w_; }

 private:
  Tensor w_;
};

// Weights kept in their packed form (a llama.cpp block type or a quantkit format), decoded
// to FP32 on every forward call into a per-thread scratch matrix, then one SGEMM/SGEMV.
// Memory holds only the packed bytes; decoding costs one pass over the weights per call
// (amortised over the n tokens of a batch). Fast per-format kernels replace this later.
class PackedLinear : public Linear {
 public:
  explicit PackedLinear(const TensorView& w);  // copies the packed bytes
  int64_t in_features() const override { return cols_; }
  int64_t out_features() const override { return rows_; }
  void forward(const float* x, int64_t n, float* y) const override;
  size_t weight_bytes() const override { return packed_.bytes.size(); }
  void decode(float* w) const;  // the FP32 weights [out, in]

 private:
  DType type_;
  std::unique_ptr<Format> format_;  // DType::QK only
  Packed packed_;                   // the bytes (for llama.cpp types: rows x row bytes)
  int64_t rows_, cols_;
};

// Builds the runtime layer for a weight tensor of any stored type: plain float types
// become DenseLinear (FP32), quantized types PackedLinear.
std::unique_ptr<Linear> make_linear(const TensorView& w);

}  // namespace quantkit
