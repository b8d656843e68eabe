// Integer dot-product kernels on packed weights (generation and prompt processing).
//
// Weights whose values are an affine (or table) map of small integer codes are re-laid at
// load time, without loss, into one kernel-friendly layout: rows of blocks of 32 codes,
// each block's weights w_i = d * v(c_i) + m, with (d, m) in fp16 shared by a run of
// consecutive blocks (one for llama.cpp's 32-blocks, G/32 for "int4:g<G>"). Activations
// are quantized on the fly to int8 in blocks of 32 (one scale each, as llama.cpp's q8_0),
// so a block's dot product is one integer multiply-add pass:
//   sum_i w_i x_i ~= dx * (d * sum_i v(c_i) xq_i) + m * (dx * sum_i xq_i).
// The only approximation is the activation rounding (|x_i - dx xq_i| <= dx / 2) and, for
// K-quants, the fp16 rounding of their per-sub-block scale products.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "kernels/large_pages.h"
#include "quantkit/dtype.h"
#include "quantkit/format.h"

namespace quantkit::kernels {

inline constexpr int64_t kQBlock = 32;

// How a block's 32 codes are stored and mapped to integers v(c).
enum class CodeKind : uint8_t {
  U4,    // 4-bit unsigned, v = c (q4_1, q4_K, asymmetric int<=4)
  S4,    // 4-bit, v = c - 8 (q4_0, symmetric int4): signed, so no offset term per block
  Lut4,  // 4-bit index into a 16-entry int8 table (iq4_nl)
  S8,    // signed byte, v = c (q8_0, q5_*, int5..8)
};

struct BlockQMatrix {
  CodeKind kind = CodeKind::U4;
  int64_t rows = 0, cols = 0;     // cols: logical inputs; code columns beyond them are ignored
  int64_t blocks_per_row = 0;     // ceil(cols / 32)
  int64_t blocks_per_scale = 1;   // consecutive blocks of a row sharing one (d, m)
  int64_t scales_per_row = 0;     // ceil(blocks_per_row / blocks_per_scale)
  bool has_min = false;           // m stored per scale; else m = -offset * d
  float offset = 0.0f;
  std::array<int8_t, 16> lut{};   // CodeKind::Lut4
  // 4-bit codes: block byte j holds weight j (low nibble) and weight j + 16 (high nibble).
  std::vector<uint8_t, LargePageAllocator<uint8_t>> q;  // rows * blocks_per_row * code_bytes()
  std::vector<uint16_t> d, m;     // rows * scales_per_row fp16 (m empty unless has_min)

  // 1: rows one after the other (every kernel). 16: interleaved for the 16-row kernel
  // (blockq_interleave16): per group of 16 rows and block, the 4-byte words of the block's
  // codes, word-major ([word][row]); S8 codes stored + 128; d and m as [group][scale][row].
  // Padding rows up to a multiple of 16 have zero codes and scales.
  int64_t row_group = 1;

  int64_t code_bytes() const { return kind == CodeKind::S8 ? 32 : 16; }
  size_t bytes() const { return q.size() + 2 * (d.size() + m.size()); }
  // Reference decode of row r into out[cols] (tests, and formats without a kernel path).
  void decode_row(int64_t r, float* out) const;
};

// Activations of n tokens quantized to int8 blocks of 32 (zero beyond cols):
// x[t, 32b + i] ~= d[t*blocks + b] * q[(t*blocks + b)*32 + i]; s = d * sum of the block's q.
struct Q8Activations {
  int64_t n = 0, blocks = 0;
  std::vector<int8_t> q;
  std::vector<float> d, s;
  std::vector<int32_t> qsum;  // sum of the block's q
};

void quantize_activations(const float* x, int64_t n, int64_t cols, int64_t blocks, Q8Activations& a);

// z when every block's offset m = -z d with an integer z in [1, 255] (8 for S4): a zero
// point of the unsigned codes, which the kernels fold into an integer bias; else 0.
int integer_zero_point(const BlockQMatrix& w);

// y[t * ldy + r] = row r of w . token t of a, for rows [r0, r1) and every token: the
// fastest kernel this CPU has (AVX-512 VNNI, AVX2, or scalar).
void blockq_matmul(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1);
// The scalar reference of the same sum (identical integer dot products; float sums in
// another order).
void blockq_matmul_ref(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                       int64_t r1);
// Which kernel blockq_matmul uses: "avx512-vnni-zmm", "avx512-vnni", "avx2" or "scalar".
const char* blockq_isa();

// Every kernel this CPU can run, fastest first, ending with the scalar reference (tests
// compare them all; benchmarks time them).
using BlockQMatmulFn = void (*)(const BlockQMatrix&, const Q8Activations&, float*, int64_t, int64_t, int64_t);
struct BlockQKernel {
  const char* isa;
  BlockQMatmulFn fn;
};
std::vector<BlockQKernel> blockq_kernels();

// Re-lays w into 16-row groups (row_group = 16) when this CPU runs the 16-row kernel
// (AVX-512 VNNI) and QUANTKIT_BLOCKQ_ISA does not ask for another kernel; false: w is
// unchanged. blockq_matmul then wants r0 and r1 on group bounds (or r1 = rows).
// In a 16-row group one vpdpbusd multiplies 4 codes of each of the 16 rows by 4 broadcast
// activations, so a block's integer sum stays in one register for 16 rows and its two
// scales are applied once per 16 rows x 32 weights (llama.cpp repacks for the same reason).
bool blockq_interleave16(BlockQMatrix& w);
// The 16-row kernel (w.row_group == 16); a no-op-free call: the CPU must have AVX-512 VNNI.
void blockq_matmul_i16(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1);
bool blockq_i16_supported();

// The lossless re-layout of a llama.cpp block type (rows x cols, bytes as in GGUF);
// nullopt for types without an integer kernel (their layers decode rows instead).
std::optional<BlockQMatrix> blockq_from_ggml(DType type, const uint8_t* bytes, int64_t rows, int64_t cols);

// The re-layout of a quantkit "int<b>" matrix (spec parsed by int_params_of); nullopt when
// its groups do not align to blocks of 32 or the spec is not a plain int format.
// cols <= p.cols are the logical inputs (the rest is zero padding).
std::optional<BlockQMatrix> blockq_from_int(const std::string& spec, const Packed& p, int64_t cols);

}  // namespace quantkit::kernels
