#include "quantkit/linear.h"

#include <algorithm>
#include <optional>

#include "quantkit/error.h"
#include "kernels/block_q.h"
#include "kernels/gemm.h"
#include "kernels/lut_vq.h"
#include "quantkit/packed_tensor.h"
#include "quantkit/thread_pool.h"

namespace quantkit {
namespace {

bool is_plain_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

}  // namespace

DenseLinear::DenseLinear(Tensor w) : w_(std::move(w)) {
  if (w_.shape.size() != 2) fail("linear weight must be 2-D, got {}", shape_str(w_.shape));
}

void DenseLinear::forward(const float* x, int64_t n, float* y) const {
  kernels::matmul_nt(x, n, w_.data.data(), out_features(), in_features(), y);
}

PackedLinear::PackedLinear(const TensorView& w) : type_(w.type) {
  if (w.shape.size() != 2) fail("linear weight '{}' must be 2-D, got {}", w.name, shape_str(w.shape));
  rows_ = w.shape[0];
  cols_ = w.shape[1];
  std::optional<kernels::BlockQMatrix> k;
  if (w.type == DType::QK) {
    format_ = make_format(w.format);
    packed_ = packed_of(w);
    k = kernels::blockq_from_int(w.format, packed_, cols_);
    if (!k)
      if (auto cb = kernels::CodebookMatrix::from_packed(*format_, packed_, cols_)) {
        codebook_ = std::make_unique<kernels::CodebookMatrix>(std::move(*cb));
        packed_ = {};  // the codes and codebooks hold the same information
      }
  } else {
    const size_t need = dtype_row_bytes(w.type, cols_) * size_t(rows_);
    if (w.nbytes < need) fail("tensor '{}' holds {} bytes, needs {}", w.name, w.nbytes, need);
    const auto* src = static_cast<const uint8_t*>(w.data);
    k = kernels::blockq_from_ggml(w.type, src, rows_, cols_);
    if (!k) packed_.bytes.assign(src, src + need);
  }
  if (k) {
    kernels::blockq_interleave16(*k);
    kernel_ = std::make_unique<kernels::BlockQMatrix>(std::move(*k));
    packed_ = {};  // the kernel layout holds the same information
  }
}

PackedLinear::~PackedLinear() = default;

size_t PackedLinear::weight_bytes() const {
  if (codebook_) return codebook_->bytes();
  return kernel_ ? kernel_->bytes() : packed_.bytes.size();
}

const char* PackedLinear::path() const {
  if (kernel_) return "int8-kernel";
  if (codebook_) return codebook_->lut() ? "vq-lut" : "row-tiles";
  return format_ ? "whole-matrix" : "row-tiles";
}

namespace {
bool g_int8_activations = true;
}

void set_int8_activations(bool on) { g_int8_activations = on; }
bool int8_activations() { return g_int8_activations; }

void PackedLinear::forward(const float* x, int64_t n, float* y) const {
  if (kernel_ && g_int8_activations) return forward_int8(x, n, y);
  if (codebook_ && codebook_->lut() && n <= kernels::kLutMaxTokens) return codebook_->matmul(x, n, y);
  if (!kernel_ && !codebook_ && format_) return forward_whole(x, n, y);
  forward_row_tiles(x, n, y);
}

void PackedLinear::forward_int8(const float* x, int64_t n, float* y) const {
  // Per-thread activation buffer: grows once, then no allocation per call.
  thread_local kernels::Q8Activations act;
  kernels::quantize_activations(x, n, cols_, kernel_->blocks_per_row, act);
  struct Job {
    const kernels::BlockQMatrix* w;
    const kernels::Q8Activations* a;
    float* y;
    int64_t ldy;
  } job{kernel_.get(), &act, y, rows_};
  // Threads take whole row groups of the interleaved layout.
  const int64_t group = kernel_->row_group, rows = rows_;
  global_pool().parallel_for((rows + group - 1) / group, [&job, group, rows](int64_t g0, int64_t g1) {
    kernels::blockq_matmul(*job.w, *job.a, job.y, job.ldy, g0 * group, std::min(rows, g1 * group));
  });
}

void PackedLinear::decode_rows(int64_t r0, int64_t nr, float* out) const {
  if (kernel_) {
    for (int64_t r = 0; r < nr; ++r) kernel_->decode_row(r0 + r, out + r * cols_);
    return;
  }
  if (codebook_) return codebook_->decode_rows(r0, nr, out);
  dequantize(type_, packed_.bytes.data() + size_t(r0) * dtype_row_bytes(type_, cols_), out, nr * cols_);
}

// Rows are independent (llama.cpp types, the kernel layout): each thread decodes kTile rows
// into its own buffer and multiplies them with every token while they are in cache.
void PackedLinear::forward_row_tiles(const float* x, int64_t n, float* y) const {
  constexpr int64_t kTile = 8;
  const int64_t tiles = (rows_ + kTile - 1) / kTile;
  global_pool().parallel_for(tiles, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> w;
    w.resize(size_t(kTile * cols_));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * kTile, nr = std::min(kTile, rows_ - r0);
      decode_rows(r0, nr, w.data());
      kernels::tile_dot(w.data(), nr, cols_, x, n, cols_, cols_, y + r0, rows_);
    }
  });
}

void PackedLinear::forward_whole(const float* x, int64_t n, float* y) const {
  thread_local std::vector<float> scratch;
  scratch.resize(size_t(rows_ * cols_));
  dequantize_cropped(*format_, packed_, cols_, scratch.data());
  kernels::matmul_nt(x, n, scratch.data(), rows_, cols_, y);
}

std::unique_ptr<Linear> make_linear(const TensorView& w) {
  if (is_plain_float(w.type)) return std::make_unique<DenseLinear>(to_float(w));
  return std::make_unique<PackedLinear>(w);
}

}  // namespace quantkit
