// Accumulating small packed codes into FP32 sums: the inner loop of attention over a
// quantized KV cache (model/kv_cache.cpp), which reads codes where they are stored instead
// of decoding the cache. Codes are LSB first from a byte-aligned start; AVX2 when the CPU
// has it, else scalar (same sums: one product and one add per element, in order).
#pragma once
#include <cstddef>
#include <cstdint>

namespace quantkit::kernels {

// acc[j] += ao + as * code[j], j < n, codes of `bits` (1, 2, 4 or 8) from p.
void affine_codes_acc(int bits, float ao, float as, const uint8_t* p, int n, float* acc);
// Consecutive records [fp16 off][fp16 step][n codes of `bits`], record_bytes apart, of
// `channels` channels: acc[j] += w[c] * off_c + w[c] * step_c * code_c[j], j < n, the
// channels in order (one int key block's head slice: its scores for a query).
void affine_records_acc(int bits, const float* w, const uint8_t* records, std::size_t record_bytes, int channels, int n,
                        float* acc);
// VidKV key records of channels [c0, c0 + channels): bit c of `mask` set: a 2-bit affine
// record (as above), else a two-level one [fp16 lo][fp16 hi][n bits]: acc[j] += w[c] * (bit ?
// hi : lo). n a multiple of 8, so every record starts on a byte.
void two_width_records_acc(const uint8_t* mask, int c0, const float* w, const uint8_t* records, int channels, int n,
                           float* acc);
// acc[j] += code[j] ? a1 : a0, j < n, 1-bit codes from p.
void select_codes_acc(float a0, float a1, const uint8_t* p, int n, float* acc);

}  // namespace quantkit::kernels
