#include "quantkit/tensor.h"

#include <fmt/format.h>

#include "quantkit/error.h"
#include "quantkit/packed_tensor.h"

namespace quantkit {

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Tensor to_float(const TensorView& v) {
  if (v.type == DType::QK) return dequantize_packed(v);
  Tensor t(v.shape);
  const auto* tr = dtype_traits(uint32_t(v.type));
  if (!tr || !tr->to_float) fail("tensor {}: type {} cannot be converted to float", v.name, uint32_t(v.type));
  int64_t n = t.numel();
  if (n % tr->block_size != 0)
    fail("tensor {}: {} elements are not a multiple of the {} block size", v.name, n, tr->name);
  if (size_t(n / tr->block_size) * tr->type_size > v.nbytes)
    fail("tensor {}: data holds {} bytes, shape {} needs more", v.name, v.nbytes, shape_str(v.shape));
  tr->to_float(v.data, t.data.data(), n);
  return t;
}

}  // namespace quantkit
