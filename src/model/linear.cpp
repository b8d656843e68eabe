#include "quantkit/linear.h"

#include <algorithm>
#include <optional>

#include "quantkit/error.h"
#include "formats/ggml_formats.h"
#include "kernels/block_q.h"
#include "kernels/gemm.h"
#include "kernels/half_matrix.h"
#include "kernels/lut_vq.h"
#include "quantkit/packed_tensor.h"
#include "quantkit/thread_pool.h"

namespace quantkit {
namespace {

// From this many tokens, decoded rows are multiplied in 512-row blocks by the GEMM.
constexpr int64_t kGemmTokens = 128;

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
    if (auto r = format_->rotated(packed_)) {
      init_rotated(w.name, std::move(*r));
      return;
    }
    k = kernels::blockq_from_int(w.format, packed_, cols_);
    // A llama.cpp block type held as a quantkit format (e.g. inside rht): the same bytes.
    if (const auto ggml = formats::ggml_type_for_spec(w.format); !k && ggml && packed_.cols == cols_)
      k = kernels::blockq_from_ggml(*ggml, packed_.bytes.data(), rows_, cols_);
    if (!k)
      if (auto cb = kernels::CodebookMatrix::from_packed(*format_, packed_, cols_)) {
        codebook_ = std::make_unique<kernels::CodebookMatrix>(std::move(*cb));
        packed_ = {};  // the codes and codebooks hold the same information
      }
  } else {
    const size_t need = dtype_row_bytes(w.type, cols_) * size_t(rows_);
    if (w.nbytes < need) fail("tensor '{}' holds {} bytes, needs {}", w.name, w.nbytes, need);
    const auto* src = static_cast<const uint8_t*>(w.data);
    if (w.type == DType::F16 || w.type == DType::BF16) {  // re-laid into strips, no other copy
      const auto type = w.type == DType::F16 ? kernels::HalfType::F16 : kernels::HalfType::BF16;
      half_ = std::make_unique<kernels::HalfMatrix>(type, src, rows_, cols_);
    } else {
      k = kernels::blockq_from_ggml(w.type, src, rows_, cols_);
      if (!k) packed_.bytes.assign(src, src + need);
    }
  }
  // nr = 0: the O(1) probe of whether the format's rows decode on their own.
  format_rows_ = format_ && !k && !codebook_ && format_->dequantize_rows(packed_, 0, 0, nullptr);
  if (format_ && !k && !codebook_ && !format_rows_)
    fail("linear weight '{}': format {} has no runtime path (rows do not decode alone, no rotation)", w.name,
         w.format);
  if (k) {
    kernels::blockq_interleave16(*k);
    kernel_ = std::make_unique<kernels::BlockQMatrix>(std::move(*k));
    packed_ = {};  // the kernel layout holds the same information
  }
}

// Q' goes through the inner format's own path; the padding columns of the stored matrix
// become inputs of Q' (the rotated input is padded with zeros before C).
void PackedLinear::init_rotated(const std::string& name, RotatedPacked r) {
  const Packed& q = r.inner_packed;
  const std::string inner_spec = r.inner->spec();
  TensorView v{name, DType::QK, {q.rows, q.cols}, q.bytes.data(), q.bytes.size()};
  v.format = inner_spec, v.stored_cols = q.cols;
  inner_ = std::make_unique<PackedLinear>(v);
  rotation_ = std::move(r.rotation);
  stored_cols_ = q.cols;
  rotated_path_ = std::string("rotated:") + inner_->path();
  packed_ = {};
}

PackedLinear::~PackedLinear() = default;

size_t PackedLinear::weight_bytes() const {
  if (half_) return half_->bytes();
  if (inner_) return inner_->weight_bytes() + sizeof(uint64_t);  // + the seed of the transforms
  if (codebook_) return codebook_->bytes();
  return kernel_ ? kernel_->bytes() : packed_.bytes.size();
}

const char* PackedLinear::path() const {
  if (inner_) return rotated_path_.c_str();
  if (half_) {
    switch (half_->bf16_products()) {
      case kernels::Bf16Products::Amx: return "bf16-amx";
      case kernels::Bf16Products::Avx512: return "bf16-dot";
      case kernels::Bf16Products::None: return "half-fma";
    }
  }
  if (kernel_) return "int8-kernel";
  if (codebook_) return codebook_->lut() ? "vq-lut" : "row-tiles";
  return "row-tiles";
}

namespace {
bool g_int8_activations = true;
}

void set_int8_activations(bool on) { g_int8_activations = on; }
bool int8_activations() { return g_int8_activations; }

void PackedLinear::forward(const float* x, int64_t n, float* y) const {
  if (kernel_ && g_int8_activations) return forward_int8(x, n, y);
  if (codebook_ && codebook_->lut() && n <= kernels::kLutMaxTokens) return codebook_->matmul(x, n, y);
  if (inner_) return forward_rotated(x, n, y);
  if (half_) return forward_half(x, n, y);
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
  if (format_) {  // rows of packed_.cols (stored) columns
    format_->dequantize_rows(packed_, r0, nr, out);
    return;
  }
  dequantize(type_, packed_.bytes.data() + size_t(r0) * dtype_row_bytes(type_, cols_), out, nr * cols_);
}

// Rows are independent (llama.cpp types, the kernel layout, quantkit formats that decode
// row ranges): each thread decodes kTile rows into its own buffer and multiplies them with
// every token while they are in cache. A quantkit format's rows hold its stored columns:
// the padding beyond cols_ is skipped by the row stride.
void PackedLinear::forward_row_tiles(const float* x, int64_t n, float* y) const {
  constexpr int64_t kTile = 8;
  const int64_t tiles = (rows_ + kTile - 1) / kTile;
  const int64_t ld = format_rows_ ? packed_.cols : cols_;
  if (n >= kGemmTokens) return forward_row_blocks(x, n, y, ld);
  global_pool().parallel_for(tiles, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> w;
    w.resize(size_t(kTile * ld));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * kTile, nr = std::min(kTile, rows_ - r0);
      decode_rows(r0, nr, w.data());
      kernels::tile_dot(w.data(), nr, ld, x, n, cols_, cols_, y + r0, rows_);
    }
  });
}

// Long prompts: the 4x4 dot tiles fall behind a packed GEMM, so blocks of 512 rows are
// decoded (per thread, 512 x cols floats, not the matrix) and multiplied by the GEMM; 512,
// because the GEMM packs the activations again for every block. Measured on 2048x2048, 1
// thread (e8:b2 / nf4:g64): 256 tokens 36 / 38 ms vs 67 / 84 ms decoding the whole matrix,
// 512 tokens 62 / 60 vs 83 / 104 ms. The blocks are cut by row index, not by thread, so the
// bits do not depend on the thread count.
void PackedLinear::forward_row_blocks(const float* x, int64_t n, float* y, int64_t ld) const {
  constexpr int64_t kBlock = 512;
  kernels::for_fixed_blocks(rows_, kBlock, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> w;
    thread_local kernels::Buffer packed;
    w.resize(size_t(kBlock * ld));
    decode_rows(r0, r1 - r0, w.data());
    for (int64_t t = 0; t < n; ++t) std::fill(y + t * rows_ + r0, y + t * rows_ + r1, 0.0f);
    kernels::gemm_acc(n, r1 - r0, cols_, kernels::View{x, cols_, 1}, kernels::View{w.data(), 1, ld}, y + r0, rows_,
                      packed);
  });
}

// 16-bit weights in strip layout (kernels/half_matrix.h); threads take strips of 32 rows.
// BF16 weights from kBf16Tokens tokens multiply BF16 products (AMX tiles or vdpbf16ps),
// with activations rounded to BF16 once per call (as int8 activations are rounded for the
// integer kernels); otherwise FMAs on weights widened in registers, with FP32 activations
// (generation is bound by memory there, and the products are not faster).
void PackedLinear::forward_half(const float* x, int64_t n, float* y) const {
  constexpr int64_t kBf16Tokens = 4;
  const kernels::HalfMatrix& m = *half_;
  if (n < kBf16Tokens || !g_int8_activations || m.bf16_products() == kernels::Bf16Products::None) {
    global_pool().parallel_for(m.strips(),
                               [&](int64_t s0, int64_t s1) { m.multiply_fp32(x, n, y, rows_, s0, s1); });
    return;
  }
  thread_local std::vector<uint16_t> xb;
  kernels::pad_bf16_activations(x, n, cols_, xb);
  const uint16_t* xbp = xb.data();
  global_pool().parallel_for(m.strips(), [&](int64_t s0, int64_t s1) { m.multiply_bf16(xbp, n, y, rows_, s0, s1); });
}

// y = R^T Q' (C x): two fast Walsh-Hadamard transforms per token around the inner product.
void PackedLinear::forward_rotated(const float* x, int64_t n, float* y) const {
  thread_local std::vector<float> xr;
  xr.assign(size_t(n * stored_cols_), 0.0f);
  for (int64_t t = 0; t < n; ++t) std::copy(x + t * cols_, x + (t + 1) * cols_, xr.data() + t * stored_cols_);
  rotation_->rotate_inputs(xr.data(), n);
  inner_->forward(xr.data(), n, y);
  rotation_->unrotate_outputs(y, n);
}

std::unique_ptr<Linear> make_linear(const TensorView& w) {
  // 16-bit floats stay 16-bit (half the memory and the bytes read per token).
  if (w.type == DType::F32 || w.type == DType::F64) return std::make_unique<DenseLinear>(to_float(w));
  return std::make_unique<PackedLinear>(w);
}

}  // namespace quantkit
