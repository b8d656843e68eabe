// 16-bit float weights (F16, BF16) kept 16-bit in memory: a model stored in F16/BF16 reads
// 2 bytes per weight per token, not the 4 of an FP32 copy.
//
// Layout (the B-tile layout of Intel AMX): strips of 32 rows; in a strip, per chunk of 32
// columns, two 1 KiB tiles (rows 0-15 and 16-31 of the strip), each 16 column pairs x 16
// rows x 2 columns. A 64-byte line is thus 16 rows x 2 adjacent columns, which
//  - FMA code widens with a shift and a mask (BF16) or two conversions (F16) into two
//    vectors of 16 rows, and multiplies by broadcast activations (outer products: no
//    horizontal sums, up to 4 tokens per pass over the strip);
//  - AMX tdpbf16ps takes as it is (BF16 weights, activations rounded to BF16).
// Rows and columns are zero-padded to multiples of 32. A strip is read front to back, so
// generation streams the matrix sequentially.
//
// Measured (bench/bench_half, 2 threads, 4096 x 4096, Sapphire Rapids): one token 0.58 ms against 1.2 ms
// for the FP32 copy (the bytes halve); 256 tokens 33 ms with FMAs and 8.8 ms with AMX,
// against 55 ms for our FP32 GEMM. AVX512_BF16's vdpbf16ps (16 independent sums, one
// thread) issues at a quarter of the rate of a 512-bit FMA on Sapphire Rapids (0.52 against
// 0.13 ns per instruction: half the FLOP rate, not used there) and at the same rate on an
// AMD EPYC (0.15 ns each: twice the FLOP rate, used where there is no AMX).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace quantkit::kernels {

enum class HalfType { F16, BF16 };

// The CPU has AMX-BF16, Linux granted this process the tile state (kernel >= 5.16), and a
// small product on the tiles came out exact (checked once). QUANTKIT_AMX=off turns it off.
bool has_amx_bf16();
// The CPU has AVX512_BF16 (vdpbf16ps).
bool has_avx512_bf16();

// How BF16 weights multiply BF16-rounded activations: AMX tiles, or vdpbf16ps where that
// issues at the rate of an FMA (it does on AMD Zen 4/5: twice the FLOPs of widening; on
// Sapphire Rapids it issues at a quarter of it, and AMX is there anyway). None: F16
// weights, or neither instruction set.
enum class Bf16Products { None, Amx, Avx512 };

// xb [n, cols] = x rounded to BF16 (to nearest, ties to even; a NaN stays a NaN).
void round_to_bf16(const float* x, int64_t n, int64_t cols, uint16_t* xb);
// Activations for HalfMatrix::multiply_bf16: x rounded to BF16, zero-padded to
// [round_up(n, 16), round_up(cols, 32)].
void pad_bf16_activations(const float* x, int64_t n, int64_t cols, std::vector<uint16_t>& xb);

class HalfMatrix {
 public:
  static constexpr int64_t kStripRows = 32;
  static constexpr int64_t kChunkCols = 32;  // 32 16-bit values: 64 bytes of a row

  HalfMatrix(HalfType type, const void* w, int64_t rows, int64_t cols);  // w: row-major 16-bit values

  HalfType type() const { return type_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t strips() const { return (rows_ + kStripRows - 1) / kStripRows; }
  size_t bytes() const { return tiles_.size() * sizeof(uint16_t); }

  // y[t * ldy + r] = sum_c W[r][c] x[t][c] for the rows of strips [s0, s1), t < n, with
  // FP32 activations x [n, cols] (exact products; FMA order fixed per row and token).
  void multiply_fp32(const float* x, int64_t n, float* y, int64_t ldy, int64_t s0, int64_t s1) const;

  // What multiply_bf16 runs on.
  Bf16Products bf16_products() const;
  // The same with activations rounded to BF16 (xb from pad_bf16_activations), on
  // bf16_products(), which must not be None. Any thread (AMX: each call configures and
  // releases the calling thread's tiles).
  void multiply_bf16(const uint16_t* xb, int64_t n, float* y, int64_t ldy, int64_t s0, int64_t s1) const;

  // multiply_bf16 on AMX tiles (public for has_amx_bf16's self-check); has_amx_bf16() only.
  void multiply_amx(const uint16_t* xb, int64_t n, float* y, int64_t ldy, int64_t s0, int64_t s1) const;

  // Rows [r0, r0 + nr) of W widened to FP32, into out [nr, cols].
  void decode_rows(int64_t r0, int64_t nr, float* out) const;

 private:
  // Index of W[r][0] in tiles_; column c of the row is `offset(c)` further: chunk c / 32
  // (1024 values per chunk of a strip), pair (c % 32) / 2 (32 values per pair), then c's
  // place in the pair.
  size_t row_start(int64_t r) const;
  static size_t offset(int64_t c) { return size_t((c >> 5) * 1024 + ((c & 31) >> 1) * 32 + (c & 1)); }
  float widen(uint16_t h) const;
  void multiply_dot(const uint16_t* xb, int64_t n, float* y, int64_t ldy, int64_t s0, int64_t s1) const;

  HalfType type_;
  int64_t rows_, cols_, chunks_;  // chunks_: column chunks of 32
  std::vector<uint16_t> tiles_;
};

}  // namespace quantkit::kernels
