#include "kernels/vec_ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/target_region.h"
#include "quantkit/fp16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define QK_VEC_CLONES QK_AVX2_CLONES

namespace quantkit::kernels {
namespace {
constexpr int kLanes = 16;  // partial sums: two AVX registers, a fixed summation order
constexpr float kExpClamp = 80.0f;
}  // namespace

namespace {

[[gnu::always_inline]] inline float dot_body(const float* a, const float* b, int n) {
  float acc[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += a[i + k] * b[i + k];
  float s = 0.0f;
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

QK_VEC_CLONES void dot_rows_f32(const float* q, const float* k, long stride, int count, int n, float scale,
                                float* out) {
  // Eight positions at a time, each with 8 partial sums (one vector register per position):
  // the horizontal reduction is paid once per 8 x n products, not per 16. Remaining
  // positions (and n not a multiple of 8) take the 16-lane dot.
  constexpr int kRows = 8, kLanes8 = 8;
  int j = 0;
  if (n % kLanes8 == 0)
    for (; j + kRows <= count; j += kRows) {
      float acc[kRows][kLanes8] = {};
      for (int i = 0; i < n; i += kLanes8)
        for (int p = 0; p < kRows; ++p)
          for (int l = 0; l < kLanes8; ++l) acc[p][l] += q[i + l] * k[(j + p) * stride + i + l];
      for (int p = 0; p < kRows; ++p) {
        const float* a = acc[p];
        out[j + p] = (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))) * scale;
      }
    }
  for (; j < count; ++j) out[j] = dot_body(q, k + j * stride, n) * scale;
}

QK_VEC_CLONES void mix_rows_f32(const float* w, float div, const float* x, long stride, int count, float* y, int n) {
  // y in chunks of 64 held in registers across all positions (same order per element).
  constexpr int kChunk = 64;
  int i0 = 0;
  for (; i0 + kChunk <= n; i0 += kChunk) {
    float acc[kChunk];
    for (int i = 0; i < kChunk; ++i) acc[i] = y[i0 + i];
    for (int j = 0; j < count; ++j) {
      const float s = w[j] / div;
      const float* xj = x + j * stride + i0;
      for (int i = 0; i < kChunk; ++i) acc[i] += s * xj[i];
    }
    for (int i = 0; i < kChunk; ++i) y[i0 + i] = acc[i];
  }
  for (int j = 0; j < count && i0 < n; ++j) {
    const float s = w[j] / div;
    for (int i = i0; i < n; ++i) y[i] += s * x[j * stride + i];
  }
}

#if defined(__x86_64__)
QK_TARGET_BEGIN("avx2,f16c")
static void f16_to_f32_row_f16c(const uint16_t* src, float* dst, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}
QK_TARGET_END
#endif

void f16_to_f32_row(const uint16_t* src, float* dst, int n) {
#if defined(__x86_64__)
  // AVX2 stands for F16C (every AVX2 CPU has it; clang's __builtin_cpu_supports lacks "f16c").
  static const bool f16c = __builtin_cpu_supports("avx2");
  if (f16c) return f16_to_f32_row_f16c(src, dst, n);
#endif
  for (int i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

namespace {
// Positions widened per chunk: a multiple of dot_rows_f32's 8-position groups, ~16 KiB.
int f16_chunk(int n) { return std::max(8, (4096 / std::max(n, 1)) / 8 * 8); }

// A per-thread buffer for the widened rows: no allocation per call once grown.
std::vector<float>& widened_rows(size_t size) {
  thread_local std::vector<float> rows;
  if (rows.size() < size) rows.resize(size);
  return rows;
}
}  // namespace

namespace {
// fn(rows, j0, c) for positions [j0, j0 + c) of `count` FP16 rows, widened into `rows` ([c, n]).
template <class Fn>
void for_widened_chunks(const uint16_t* x, long stride, int count, int n, Fn fn) {
  const int chunk = f16_chunk(n);
  std::vector<float>& rows = widened_rows(size_t(chunk) * n);
  for (int j0 = 0; j0 < count; j0 += chunk) {
    const int c = std::min(chunk, count - j0);
    for (int p = 0; p < c; ++p) f16_to_f32_row(x + (j0 + p) * stride, rows.data() + size_t(p) * n, n);
    fn(rows.data(), j0, c);
  }
}
}  // namespace

void dot_rows_f16(const float* q, const uint16_t* k, long stride, int count, int n, float scale, float* out) {
  for_widened_chunks(k, stride, count, n,
                     [&](const float* rows, int j0, int c) { dot_rows_f32(q, rows, n, c, n, scale, out + j0); });
}

void mix_rows_f16(const float* w, float div, const uint16_t* x, long stride, int count, float* y, int n) {
  for_widened_chunks(x, stride, count, n,
                     [&](const float* rows, int j0, int c) { mix_rows_f32(w + j0, div, rows, n, c, y, n); });
}

float exp_shifted_sum(float* v, int n, float max) {
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float d = v[i] - max;
    v[i] = d < -kExpClamp ? 0.0f : std::exp(d);
    sum += v[i];
  }
  return sum;
}

void swiglu(float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(std::clamp(-g, -kExpClamp, kExpClamp))) * up[i];
  }
}

}  // namespace quantkit::kernels
