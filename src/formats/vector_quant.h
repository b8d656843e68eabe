// The codebook formats (vq, rvq, grvq) unpacked for kernels that multiply on the codes
// directly (kernels/lut_vq.h): see src/formats/vector_quant.cpp for the layout.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

#include "quantkit/format.h"

namespace quantkit::formats {

// w[r][v*dim + g*sub_dim + l] = scale * row_scale[r] * sum_m codebooks[g*stages + m][index * sub_dim + l]
// with index = indices[(r * vectors_per_row + v) * groups * stages + g * stages + m] (block-local r).
struct CodebookUnpacked {
  int64_t rows = 0, cols = 0;  // the packed shape (cols may include padding columns)
  int64_t dim = 0, groups = 0, stages = 0, k = 0, sub_dim = 0, vectors_per_row = 0;
  struct Block {
    int64_t row0 = 0, rows = 0;
    float scale = 0;                            // fp32 block scale
    std::vector<float> row_scales;              // empty without :rs
    std::vector<std::vector<float>> codebooks;  // [g * stages + m]: k x sub_dim
    std::vector<uint32_t> indices;              // [row][vector][group][stage]
  };
  std::vector<Block> blocks;
};

// nullopt unless f is a vq / rvq / grvq format; throws Error when p does not decode.
std::optional<CodebookUnpacked> unpack_codebook(const Format& f, const Packed& p);

}  // namespace quantkit::formats
