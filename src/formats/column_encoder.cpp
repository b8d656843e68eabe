// The generic ColumnEncoder: blocks of independent columns quantized through the format's
// own quantize(); the final Packed is the format's quantization of the matrix assembled
// from the blocks as they were when encoded, which by column independence reproduces
// every block's result exactly.
#include <algorithm>

#include "quantkit/error.h"
#include "quantkit/format.h"

namespace quantkit {
namespace {

class BlockEncoder : public ColumnEncoder {
 public:
  BlockEncoder(const Format& f, int64_t rows, int64_t cols, const float* imp, int64_t width)
      : f_(f), rows_(rows), cols_(cols), width_(width), frozen_(size_t(rows * cols)) {
    if (imp) imp_.assign(imp, imp + cols);
  }
  int64_t step() const override { return width_; }

  void encode(int64_t c, const float* cur, int64_t rs, int64_t cs, float* deq) override {
    const int64_t n = std::min(width_, cols_ - c);  // a short last block keeps its own width
    std::vector<float> block(size_t(rows_ * n)), out(block.size());
    for (int64_t r = 0; r < rows_; ++r)
      for (int64_t j = 0; j < n; ++j) {
        block[size_t(r * n + j)] = cur[r * rs + j * cs];
        frozen_[size_t(r * cols_ + c + j)] = cur[r * rs + j * cs];
      }
    f_.dequantize(f_.quantize(block.data(), rows_, n, imp_.empty() ? nullptr : imp_.data() + c), out.data());
    std::fill(deq, deq + rows_ * width_, 0.0f);
    for (int64_t r = 0; r < rows_; ++r)
      for (int64_t j = 0; j < n; ++j) deq[j * rows_ + r] = out[size_t(r * n + j)];
  }

  Packed finish() override { return f_.quantize(frozen_.data(), rows_, cols_, imp_.empty() ? nullptr : imp_.data()); }

 private:
  const Format& f_;
  int64_t rows_, cols_, width_;
  std::vector<float> frozen_, imp_;
};

}  // namespace

std::unique_ptr<ColumnEncoder> Format::column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                      bool static_groups) const {
  const int64_t g = column_group(cols);
  return std::make_unique<BlockEncoder>(*this, rows, cols, imp, g > 0 ? g : cols);
}

}  // namespace quantkit
