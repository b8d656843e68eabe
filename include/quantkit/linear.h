// A linear layer y = W x. The model runtime only sees this interface, so quantized
// weight formats plug in later without touching the model code.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

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

// Builds the runtime layer for a weight tensor of any stored type. For now every type
// is dequantized to FP32 once at load time.
std::unique_ptr<Linear> make_linear(const TensorView& w);

}  // namespace quantkit
