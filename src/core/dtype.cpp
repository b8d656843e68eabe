#include "quantkit/dtype.h"

#include <cstring>

#include "io/ggml_dequant.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"

namespace quantkit {
namespace {

// Tensor data need not be aligned to its element size (a GGUF general.alignment of 1,
// safetensors offsets are arbitrary byte offsets): elements are read with memcpy, which
// compiles to a plain load. Found by the fuzzer (UBSan: misaligned uint16_t load).
template <typename T>
T load(const void* src, int64_t i) {
  T v;
  std::memcpy(&v, static_cast<const unsigned char*>(src) + size_t(i) * sizeof(T), sizeof(T));
  return v;
}

void f32_to_float(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }
void f64_to_float(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float(load<double>(src, i));
}
void f16_to_float(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load<uint16_t>(src, i));
}
void bf16_to_float(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load<uint16_t>(src, i));
}
template <typename T>
void int_to_float(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = float(load<T>(src, i));
}

// One row per type; block layouts of the quantized types are in io/ggml_dequant.h.
const DTypeTraits kTraits[] = {
    {DType::F32, "f32", 1, 4, f32_to_float},
    {DType::F16, "f16", 1, 2, f16_to_float},
    {DType::BF16, "bf16", 1, 2, bf16_to_float},
    {DType::F64, "f64", 1, 8, f64_to_float},
    {DType::Q4_0, "q4_0", 32, 18, dequant_q4_0},
    {DType::Q4_1, "q4_1", 32, 20, dequant_q4_1},
    {DType::Q5_0, "q5_0", 32, 22, dequant_q5_0},
    {DType::Q5_1, "q5_1", 32, 24, dequant_q5_1},
    {DType::Q8_0, "q8_0", 32, 34, dequant_q8_0},
    {DType::Q8_1, "q8_1", 32, 36, dequant_q8_1},
    {DType::Q2_K, "q2_K", 256, 84, dequant_q2_k},
    {DType::Q3_K, "q3_K", 256, 110, dequant_q3_k},
    {DType::Q4_K, "q4_K", 256, 144, dequant_q4_k},
    {DType::Q5_K, "q5_K", 256, 176, dequant_q5_k},
    {DType::Q6_K, "q6_K", 256, 210, dequant_q6_k},
    {DType::Q8_K, "q8_K", 256, 292, dequant_q8_k},
    {DType::IQ4_NL, "iq4_nl", 32, 18, dequant_iq4_nl},
    {DType::I8, "i8", 1, 1, int_to_float<int8_t>},
    {DType::I16, "i16", 1, 2, int_to_float<int16_t>},
    {DType::I32, "i32", 1, 4, int_to_float<int32_t>},
    {DType::I64, "i64", 1, 8, int_to_float<int64_t>},
    {DType::U8, "u8", 1, 1, int_to_float<uint8_t>},
    // Decoding needs the format (TensorView::format): to_float() handles it.
    {DType::QK, "quantkit", 1, 1, nullptr},
};

}  // namespace

const DTypeTraits* dtype_traits(uint32_t id) {
  for (const auto& t : kTraits)
    if (uint32_t(t.type) == id) return &t;
  return nullptr;
}

const DTypeTraits& dtype_traits(DType t) {
  const DTypeTraits* p = dtype_traits(uint32_t(t));
  if (!p) fail("unknown tensor type id {}", uint32_t(t));
  return *p;
}

const char* dtype_name(DType t) { return dtype_traits(t).name; }

DType dtype_from_name(const std::string& name) {
  std::string valid;
  for (const auto& t : kTraits) {
    if (strcasecmp(t.name, name.c_str()) == 0) return t.type;
    valid += valid.empty() ? "" : ", ";
    valid += t.name;
  }
  fail("unknown tensor type '{}' (valid: {})", name, valid);
}

size_t dtype_row_bytes(DType t, int64_t n) {
  const auto& tr = dtype_traits(t);
  if (n < 0 || n % tr.block_size != 0)
    fail("row of {} elements is not a multiple of the {} block size {}", n, tr.name, tr.block_size);
  return size_t(n / tr.block_size) * tr.type_size;
}

void dequantize(DType t, const void* src, float* dst, int64_t n) {
  const auto& tr = dtype_traits(t);
  if (!tr.to_float) fail("tensor type {} cannot be converted to float", tr.name);
  if (n % tr.block_size != 0)
    fail("{} values are not a multiple of the {} block size {}", n, tr.name, tr.block_size);
  tr.to_float(src, dst, n);
}

}  // namespace quantkit
