// Tensors. Shapes are row-major, outermost dimension first (numpy order): a linear
// weight is [out_features, in_features]. (GGUF stores ne[] innermost-first; the GGUF
// reader reverses it.)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quantkit/dtype.h"

namespace quantkit {

int64_t shape_numel(const std::vector<int64_t>& shape);
std::string shape_str(const std::vector<int64_t>& shape);  // "[512, 64]"

// A non-owning view of tensor bytes (usually inside a memory-mapped file).
struct TensorView {
  std::string name;
  DType type = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
  // type == DType::QK: the bytes are a quantkit Packed matrix of format `format` over
  // [rows, stored_cols]; stored_cols > cols when columns were zero-padded to the format's
  // block (the padding is dropped on decoding). See quantkit/packed_tensor.h.
  std::string format;
  int64_t stored_cols = 0;

  int64_t numel() const { return shape_numel(shape); }
};

// An owning float32 tensor.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;

  Tensor() = default;
  explicit Tensor(std::vector<int64_t> s) : shape(std::move(s)), data(size_t(shape_numel(shape))) {}
  int64_t numel() const { return int64_t(data.size()); }
  int64_t rows() const { return shape.size() >= 2 ? shape_numel({shape.begin(), shape.end() - 1}) : 1; }
  int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
};

// Dequantizes any view to float32 (throws Error naming the tensor if its type cannot be read).
Tensor to_float(const TensorView& v);

}  // namespace quantkit
