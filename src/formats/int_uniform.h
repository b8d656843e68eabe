// Uniform integer formats: "int<b>:<grouping>[:asym|:mid][:dr<B>][:noclip]".
//  - sym (default, midtread): w = s*q, q in [-2^(b-1), 2^(b-1)-1]; s may be negative so
//    the largest-magnitude weight can use the extra negative level (as ggml's q4_0 does);
//  - asym: w = s*(q - z), q and the zero point z in [0, 2^b-1] (GPTQ's layout);
//  - mid (midrise): w = s*(q - (2^b-1)/2), q in [0, 2^b-1]: no zero level.
// Scales are fp16 per row/group (fp32 per tensor), zero points b bits. The scale (and zero
// point) of each group is found by a coarse-to-fine clipping search minimising the
// (importance-weighted) squared error, unless :noclip (absmax / min-max).
//
// Double Rounding (":dr<B>"): the weights are quantized once to B bits; the b-bit model is
// derived from the stored B-bit integers by a second rounding (shift by B-b with rounding)
// with the scale reused (times 2^(B-b)), so one stored model serves every b < B.
#pragma once
#include <memory>

#include "quantkit/format.h"

namespace quantkit::formats {

enum class IntMode { Sym, Asym, Mid };

struct IntParams {
  int bits = 4;
  int64_t group = 128;  // > 0: group size; 0: row; -1: tensor
  IntMode mode = IntMode::Sym;
  int master_bits = 0;  // Double Rounding source width (0: off)
  bool clip_search = true;
};

std::unique_ptr<Format> make_int_format(const IntParams& p);

// Double Rounding: from a packed "int<B>:<grouping>[:mode]" matrix, the packed int<b>
// matrix of the same grouping and mode obtained by re-rounding the stored integers.
// Decodable by "int<b>:<grouping>[:mode]:dr<B>".
Packed derive_lower_bits(const Packed& master, const IntParams& master_params, int bits);

}  // namespace quantkit::formats
