#include "kernels/vec_ops.h"

#include <algorithm>
#include <cmath>

// ifunc dispatch (x86-64 ELF): an AVX2+FMA clone and the baseline.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QK_VEC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QK_VEC_CLONES
#endif

namespace quantkit::kernels {
namespace {
constexpr int kLanes = 16;  // partial sums: two AVX registers, a fixed summation order
constexpr float kExpClamp = 80.0f;
}  // namespace

QK_VEC_CLONES float dot_f32(const float* a, const float* b, int n) {
  float acc[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += a[i + k] * b[i + k];
  float s = 0.0f;
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

QK_VEC_CLONES void axpy_f32(float s, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += s * x[i];
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
