// Tensor storage types as stored in model files. The numeric ids are ggml's (GGUF
// stores them), so a GGUF tensor type reads straight into this enum. Each type has one
// row of traits: name, weights per block, bytes per block, row dequantizer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace quantkit {

enum class DType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ4_NL = 20, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30,
  U8 = 1000,  // not a ggml type: safetensors' U8 (packed data)
  QK = 1001,  // not a ggml type: packed bits of a quantkit format (TensorView::format)
};

struct DTypeTraits {
  DType type;
  const char* name;      // ggml's spelling: "f32", "q4_K", ...
  int64_t block_size;    // weights per block (1 for plain types)
  size_t type_size;      // bytes per block
  // Converts n values (n a multiple of block_size) to float; null if not convertible.
  void (*to_float)(const void* src, float* dst, int64_t n);
};

// Traits of a type; nullptr for an id quantkit does not know (a hostile file may hold any id).
const DTypeTraits* dtype_traits(uint32_t id);
const DTypeTraits& dtype_traits(DType t);
const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name);  // throws Error listing valid names

// Bytes for a row of n elements of type t; throws if n is not a multiple of the block.
size_t dtype_row_bytes(DType t, int64_t n);

// Dequantizes n consecutive values (a multiple of the block size).
void dequantize(DType t, const void* src, float* dst, int64_t n);

}  // namespace quantkit
