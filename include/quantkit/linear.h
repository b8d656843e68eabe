// A linear layer y = W x. The model runtime only sees this interface, so quantized
// weight formats plug in later without touching the model code.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quantkit/format.h"
#include "quantkit/tensor.h"

namespace quantkit::kernels {
class HalfMatrix;
struct BlockQMatrix;
class CodebookMatrix;
}

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

// Weights kept in their packed form (a llama.cpp block type or a quantkit format); memory
// holds only packed bytes, never a decoded copy of the matrix. Paths, best first:
//  - integer kernels: formats whose weights are integer codes with per-block scales (q4_0,
//    q4_1, q5_0, q5_1, q8_0, q4_K, q5_K, iq4_nl, int<b> with groups of 32k) are re-laid
//    losslessly into kernels::BlockQMatrix and multiplied with int8-quantized activations;
//  - look-up tables: codebook formats (vq, rvq, grvq) keep their codes and, per token,
//    a table of codeword . input dot products (kernels/lut_vq.h); prompts longer than
//    kernels::kLutMaxTokens decode row tiles from the codes instead;
//  - row tiles: other llama.cpp types, codebooks too large for a cached table, and every
//    quantkit format whose rows decode on their own (Format::dequantize_rows) decode a few
//    rows at a time into a per-thread buffer (512-row blocks through the FP32 GEMM for long
//    prompts);
//  - rotated: formats storing W = R^T Q' C (rht, Format::rotated) rotate each token's input
//    by C, multiply by Q' through an inner PackedLinear (any of the paths above), and
//    rotate the outputs back by R^T;
//  - 16-bit floats (F16, BF16) stay 16-bit in an AMX tile layout (kernels/half_matrix.h):
//    BF16 from 4 tokens with activations rounded to BF16 (int8 activations on) on AMX tiles
//    ("bf16-amx") or with vdpbf16ps where it is fast ("bf16-dot", AMD), otherwise FMAs on
//    weights widened in registers with FP32 activations ("half-fma").
class PackedLinear : public Linear {
 public:
  explicit PackedLinear(const TensorView& w);  // copies (or re-lays) the packed bytes
  ~PackedLinear() override;
  int64_t in_features() const override { return cols_; }
  int64_t out_features() const override { return rows_; }
  void forward(const float* x, int64_t n, float* y) const override;
  size_t weight_bytes() const override;
  // "int8-kernel", "vq-lut", "row-tiles", "bf16-amx", "bf16-dot", "half-fma", or "rotated:" and the
  // inner layer's path.
  const char* path() const;

 private:
  void forward_int8(const float* x, int64_t n, float* y) const;
  void forward_row_tiles(const float* x, int64_t n, float* y) const;
  void forward_row_blocks(const float* x, int64_t n, float* y, int64_t ld) const;
  void decode_rows(int64_t r0, int64_t nr, float* out) const;
  void forward_rotated(const float* x, int64_t n, float* y) const;
  void forward_half(const float* x, int64_t n, float* y) const;
  void init_rotated(const std::string& name, RotatedPacked r);

  DType type_;
  std::unique_ptr<Format> format_;                  // DType::QK only
  std::unique_ptr<kernels::BlockQMatrix> kernel_;  // integer-kernel layout, when the format has one
  std::unique_ptr<kernels::CodebookMatrix> codebook_;  // codes and codebooks of vq / rvq / grvq
  Packed packed_;  // the bytes when there is no kernel layout (llama.cpp types: rows x row bytes)
  bool format_rows_ = false;  // format_ decodes row ranges (Format::dequantize_rows)
  std::unique_ptr<kernels::HalfMatrix> half_;  // F16 / BF16 weights, in strip layout
  std::unique_ptr<WeightRotation> rotation_;  // rotated formats: C and R^T around inner_
  std::unique_ptr<PackedLinear> inner_;       // Q' of a rotated format
  int64_t stored_cols_ = 0;                   // inputs of inner_ (cols_ plus zero padding)
  std::string rotated_path_;                  // path() of a rotated layer
  int64_t rows_, cols_;
};

// Whether layers with an integer kernel quantize activations to int8 (default on, as
// llama.cpp does). Off: they decode weight rows and multiply in FP32, so a measurement sees
// only the weight format's error. Process-wide; set before running a model.
void set_int8_activations(bool on);
bool int8_activations();

// Builds the runtime layer for a weight tensor of any stored type: plain float types
// become DenseLinear (FP32), quantized types PackedLinear.
std::unique_ptr<Linear> make_linear(const TensorView& w);

}  // namespace quantkit
