// Small FP32 vector loops of the model runtime (attention, SwiGLU), compiled for AVX2+FMA
// and for the baseline, chosen at load time (GCC target_clones). Sums use a fixed number
// of partial sums in a fixed order, so results do not depend on the CPU or thread count
// beyond that choice.
#pragma once
#include <cstddef>
#include <cstdint>

namespace quantkit::kernels {

// Attention over `count` cached positions of one head, one call per head (a call per
// position cost more than the arithmetic at head size 64):
//   out[j] = scale * sum_i q[i] k[j stride + i]   (partial sums in a fixed order per position)
void dot_rows_f32(const float* q, const float* k, long stride, int count, int n, float scale, float* out);
//   y[i] += (w[j] / div) x[j stride + i], for j = 0 .. count-1 in order
void mix_rows_f32(const float* w, float div, const float* x, long stride, int count, float* y, int n);
// The same over FP16 rows (a --kv f16 cache): rows are widened to FP32 in chunks of
// whole 8-position groups and go through the FP32 loops, so the results equal the FP32
// kernels on the widened rows bit for bit.
void dot_rows_f16(const float* q, const uint16_t* k, long stride, int count, int n, float scale, float* out);
void mix_rows_f16(const float* w, float div, const uint16_t* x, long stride, int count, float* y, int n);
// dst[i] = FP16 src[i] widened (F16C where the CPU has AVX2).
void f16_to_f32_row(const uint16_t* src, float* dst, int n);
// v[i] = exp(v[i] - max) (0 where v[i] - max < -80: no subnormal results); returns the sum.
float exp_shifted_sum(float* v, int n, float max);
// gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)) with the exponent clamped to
// [-80, 80]: no overflow and no subnormal (slow) intermediate; exact in float for g > -80,
// below it |silu| < 1e-32 instead of a subnormal.
void swiglu(float* gate, const float* up, size_t n);

}  // namespace quantkit::kernels
