// Matrix products on codebook-quantized weights (vq, rvq, grvq) without decoding them
// (VPTQ-style look-up tables). A row is a run of codes, each naming a codeword of D/G
// inputs (summed over residual stages); per token, the table T[code slot][c] = codeword c .
// (its inputs of x) turns a row's product into one table look-up per code:
//   y[r] = scale[r] * sum_i T[i][index[r][i]].
// The table (codes per row x K floats per token and codebook block) must stay in L2, so it
// is used when it fits kLutTableBytes and K <= kLutMaxCodewords; otherwise, and for rows
// decoded one tile at a time, decode_rows gives the weights.
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "quantkit/format.h"

namespace quantkit::kernels {

constexpr size_t kLutTableBytes = size_t(1) << 20;  // per token and codebook block
constexpr int64_t kLutMaxCodewords = 4096;
// Above this many tokens, decoding row tiles once and multiplying them with every token
// is faster than a table per token (bench_lut, 4096 x 4096 vq:d8:k256 on 2 threads: a
// table costs ~2 ms per token, row tiles ~9 ms once plus ~0.7 ms per token).
constexpr int64_t kLutMaxTokens = 8;

class CodebookMatrix {
 public:
  // nullopt unless f is a codebook format; the layer has `cols` inputs (<= p.cols: the rest
  // are padding columns, dropped). Throws Error when p does not decode.
  static std::optional<CodebookMatrix> from_packed(const Format& f, const Packed& p, int64_t cols);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  // Whether the tables fit the cache budget and pay for themselves (enough rows share them).
  bool lut() const { return lut_; }
  size_t bytes() const;
  size_t table_bytes() const { return size_t(codes_per_row_ * k_) * sizeof(float); }

  // y[n, rows] = x[n, cols] W^T through the tables (lut() must hold). Rows are split across
  // the pool; the sum of each row runs in a fixed order, whatever the thread count.
  void matmul(const float* x, int64_t n, float* y) const;
  // Rows [r0, r0 + nr) decoded into out (row stride cols()), as Format::dequantize does.
  void decode_rows(int64_t r0, int64_t nr, float* out) const;

 private:
  struct Block {
    int64_t row0 = 0, rows = 0;
    std::vector<float> books;    // [book][c][l]: k x sub_dim per book (book = g * stages + m)
    std::vector<float> books_t;  // [book][l][c]: the same, transposed for building tables
  };
  struct TableJob;

  const Block& block_of(int64_t r) const { return blocks_[size_t(r / block_rows_)]; }
  void build_tables(const Block& b, const float* xpad, int64_t nt, float* tables, int64_t j0, int64_t j1) const;
  template <typename Idx>
  void decode_rows_as(const Idx* idx, int64_t r0, int64_t nr, float* out) const;
  void gather_rows(const float* tables, int64_t nt, int64_t r0, int64_t r1, float* y, int64_t ldy) const;

  int64_t rows_ = 0, cols_ = 0, dim_ = 0, groups_ = 0, stages_ = 0, k_ = 0, sub_dim_ = 0;
  int64_t vectors_ = 0, codes_per_row_ = 0, block_rows_ = 0;
  std::vector<Block> blocks_;
  std::vector<float> scale_;      // per row: block scale x row scale
  std::vector<uint8_t> idx8_;     // K <= 256
  std::vector<uint16_t> idx16_;  // otherwise
  bool lut_ = false;
};

// y[t * ldy + r] = sum_c w[r * ldw + c] x[t * ldx + c] for r < nr, t < n: a tile of decoded
// rows against every token (AVX-512 when the CPU has it).
void tile_dot(const float* w, int64_t nr, int64_t ldw, const float* x, int64_t n, int64_t ldx, int64_t cols, float* y,
              int64_t ldy);

}  // namespace quantkit::kernels
