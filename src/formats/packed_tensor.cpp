#include "quantkit/packed_tensor.h"

#include <cstring>

#include "quantkit/error.h"

namespace quantkit {
namespace {

struct Geometry {
  int64_t rows, cols, stored_cols;
};

Geometry geometry_of(const TensorView& v) {
  if (v.type != DType::QK) fail("tensor '{}' is not in a quantkit format", v.name);
  if (v.shape.size() != 2) fail("tensor '{}': a quantkit-format tensor must be 2-D, got {}", v.name, shape_str(v.shape));
  Geometry g{v.shape[0], v.shape[1], v.stored_cols ? v.stored_cols : v.shape[1]};
  if (g.rows < 1 || g.cols < 1 || g.stored_cols < g.cols || g.stored_cols > g.cols + (int64_t(1) << 20))
    fail("tensor '{}': stored columns {} do not fit shape {}", v.name, g.stored_cols, shape_str(v.shape));
  return g;
}

std::unique_ptr<Format> format_of(const TensorView& v, const Geometry& g) {
  std::unique_ptr<Format> f;
  try {
    f = make_format(v.format);
  } catch (const Error& e) {
    fail("tensor '{}': {}", v.name, e.what());
  }
  if (std::string why = f->check_shape(g.rows, g.stored_cols); !why.empty())
    fail("tensor '{}': format {} cannot hold {}x{}: {}", v.name, v.format, g.rows, g.stored_cols, why);
  return f;
}

}  // namespace

uint64_t packed_tensor_bytes(const TensorView& v) {
  const Geometry g = geometry_of(v);
  return (format_of(v, g)->storage_bits(g.rows, g.stored_cols) + 7) / 8;
}

Packed packed_of(const TensorView& v) {
  const Geometry g = geometry_of(v);
  auto f = format_of(v, g);
  Packed p;
  p.rows = g.rows;
  p.cols = g.stored_cols;
  p.bits = f->storage_bits(g.rows, g.stored_cols);
  if (v.nbytes < (p.bits + 7) / 8)
    fail("tensor '{}' ({}) holds {} bytes, needs {}", v.name, v.format, v.nbytes, (p.bits + 7) / 8);
  const auto* src = static_cast<const uint8_t*>(v.data);
  p.bytes.assign(src, src + (p.bits + 7) / 8);
  return p;
}

void dequantize_cropped(const Format& f, const Packed& p, int64_t cols, float* out) {
  if (p.cols == cols) {
    f.dequantize(p, out);
    return;
  }
  std::vector<float> full(static_cast<size_t>(p.rows * p.cols));
  f.dequantize(p, full.data());
  for (int64_t r = 0; r < p.rows; ++r)
    std::memcpy(out + r * cols, &full[size_t(r * p.cols)], size_t(cols) * sizeof(float));
}

Tensor dequantize_packed(const TensorView& v) {
  const Geometry g = geometry_of(v);
  Tensor t(v.shape);
  dequantize_cropped(*format_of(v, g), packed_of(v), g.cols, t.data.data());
  return t;
}

}  // namespace quantkit
