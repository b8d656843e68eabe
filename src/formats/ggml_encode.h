// quantkit's own encoders for ggml's block-quantized types (llama.cpp's GGUF tensor types).
//
// The bytes are exactly ggml's blocks (layouts in io/ggml_blocks.h), so a row encoded here
// can be written straight into a GGUF tensor of that type and decoded by llama.cpp or by
// io/ggml_dequant.h. The search is ours: every scale, offset and sub-block scale is chosen
// to minimise sum_i weight_i * (x_i - decoded_i)^2 as the decoder will compute decoded_i
// (fp16 rounding of the scales included), with weight_i = 1 without importance. A
// continuous fit (grid of clipping ratios, then least squares / Lloyd refinement) gives a
// target; a local search over the representable values (fp16 neighbours, integer
// sub-block scales) picks the final block by its exact error.
#pragma once
#include <cstdint>
#include <vector>

#include "quantkit/dtype.h"

namespace quantkit::ggml {

// The types encode_row() writes: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL.
bool can_encode(DType type);

// Encodes n weights (a multiple of the type's block size) as consecutive blocks at out
// (dtype_row_bytes(type, n) bytes). weight: n non-negative finite values or nullptr
// (plain squared error); a block whose weights are all zero is fitted as if unweighted.
// Inputs must be finite. Scales saturate at the largest finite fp16 value, so huge
// inputs decode to finite (clipped) values.
void encode_row(DType type, const float* x, int64_t n, const float* weight, uint8_t* out);

// The integer fields of encoded blocks, for entropy coding. Each field is listed in block
// order (within a block: weights in order, sub-blocks in order). Symbol values are the
// unsigned field values, except that two's-complement int8 fields (Q8_0 levels, Q6_K
// scales) are offset by 128 so that symbol order follows value order.
struct BlockFields {
  int level_bits = 0;            // width of a weight's level field (alphabet 2^bits)
  int scale_bits = 0;            // width of a sub-block scale (0: the type has none)
  int min_bits = 0;              // width of a sub-block min (0: none)
  std::vector<uint32_t> levels;  // one per weight
  std::vector<uint32_t> scales;  // one per sub-block
  std::vector<uint32_t> mins;    // one per sub-block
};
BlockFields unpack_fields(DType type, const uint8_t* blocks, int64_t n);

}  // namespace quantkit::ggml
