// Weight tensors held in a quantkit format (DType::QK): a TensorView whose bytes are a
// Packed matrix. These helpers convert between the two and check a view's byte count
// against the format's exact storage, so every loader and the runtime agree.
#pragma once
#include <memory>
#include <string>

#include "quantkit/format.h"
#include "quantkit/tensor.h"

namespace quantkit {

// Bytes a packed view must hold: ceil(storage_bits(rows, stored_cols) / 8). Throws Error
// naming the tensor if the spec does not parse or the shape does not fit the format.
uint64_t packed_tensor_bytes(const TensorView& v);

// The Packed matrix of a view (copies its bytes); the view's format is created by make_format.
Packed packed_of(const TensorView& v);

// Decodes p into out [p.rows, cols], dropping padding columns [cols, p.cols).
void dequantize_cropped(const Format& f, const Packed& p, int64_t cols, float* out);

// Decodes a packed view to float32 [rows, cols] (padding columns dropped).
Tensor dequantize_packed(const TensorView& v);

}  // namespace quantkit
