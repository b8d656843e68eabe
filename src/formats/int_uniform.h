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
#include <optional>
#include <string>
#include <vector>

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

// The integers of a packed int matrix in GPTQ's terms: w = scale * (q - zero), q the
// unsigned code 0..2^b-1. Sym stores signed levels s*l: q = l + 2^(b-1), zero = 2^(b-1);
// mid: zero = (2^b-1)/2. Row and tensor grouping give one group per row (group = cols).
struct IntUnpacked {
  int64_t rows = 0, cols = 0;
  int64_t group = 0;               // columns per group; the last group of a row may be shorter
  std::vector<int32_t> q;          // rows x cols, row-major
  std::vector<float> scale, zero;  // rows x n_groups, row-major

  int64_t n_groups() const { return rows ? int64_t(scale.size()) / rows : 0; }
};

IntUnpacked unpack_int(const Packed& p, const IntParams& params);

// Inverse of unpack_int. Scales are rounded to the format's precision (fp16, fp32 per
// tensor); throws Error when a code or zero point does not fit the format (sym and mid
// have fixed zero points, asym integer ones) or, per tensor, rows disagree.
Packed pack_int(const IntUnpacked& u, const IntParams& params);

// The parameters of an int-family spec ("int4:g128:asym"); nullopt for other families
// (including wrappers such as "rht:int4:g128"). Throws Error on a malformed spec.
std::optional<IntParams> int_params_of(const std::string& spec);

}  // namespace quantkit::formats
