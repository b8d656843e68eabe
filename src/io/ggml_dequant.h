// Decoders of ggml's block-quantized tensor types, written from the GGUF/ggml format
// documentation. Each converts n values (a multiple of its block size) to float.
#pragma once
#include <cstdint>

namespace quantkit {

void dequant_q4_0(const void* src, float* dst, int64_t n);
void dequant_q4_1(const void* src, float* dst, int64_t n);
void dequant_q5_0(const void* src, float* dst, int64_t n);
void dequant_q5_1(const void* src, float* dst, int64_t n);
void dequant_q8_0(const void* src, float* dst, int64_t n);
void dequant_q8_1(const void* src, float* dst, int64_t n);
void dequant_q2_k(const void* src, float* dst, int64_t n);
void dequant_q3_k(const void* src, float* dst, int64_t n);
void dequant_q4_k(const void* src, float* dst, int64_t n);
void dequant_q5_k(const void* src, float* dst, int64_t n);
void dequant_q6_k(const void* src, float* dst, int64_t n);
void dequant_q8_k(const void* src, float* dst, int64_t n);
void dequant_iq4_nl(const void* src, float* dst, int64_t n);

namespace ggml {
// Scale and min (6 bits each) of sub-block j (0..7) of a Q4_K/Q5_K super-block, from its
// 12 packed scale bytes.
struct ScaleMin {
  uint8_t scale, min;
};
ScaleMin kquant_scale_min(const uint8_t* packed, int j);
}  // namespace ggml

}  // namespace quantkit
