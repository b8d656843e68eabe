#include "kernels/block_q.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "quantkit/fp16.h"

namespace quantkit::kernels {

void blockq_matmul_avx2(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1);
void blockq_matmul_avx512(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                          int64_t r1);
void blockq_matmul_avx512_zmm(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                              int64_t r1);

namespace {

// v(c) of code j of a block.
inline int code_value(const BlockQMatrix& w, const uint8_t* block, int j) {
  if (w.kind == CodeKind::S8) return int8_t(block[j]);
  const int c = j < 16 ? block[j] & 0x0f : block[j - 16] >> 4;
  if (w.kind == CodeKind::S4) return c - 8;
  return w.kind == CodeKind::Lut4 ? w.lut[c] : c;
}

struct Affine {
  float d, m;
};

inline Affine scale_of(const BlockQMatrix& w, int64_t r, int64_t b) {
  const int64_t g = r * w.scales_per_row + b / w.blocks_per_scale;
  const float d = f16_to_f32(w.d[g]);
  return {d, w.has_min ? f16_to_f32(w.m[g]) : -w.offset * d};
}

// The fastest kernel, or the one QUANTKIT_BLOCKQ_ISA names (to compare kernels on a model).
const BlockQKernel& isa() {
  static const BlockQKernel chosen = [] {
    const std::vector<BlockQKernel> all = blockq_kernels();
    if (const char* want = std::getenv("QUANTKIT_BLOCKQ_ISA"))
      for (const BlockQKernel& k : all)
        if (std::strcmp(k.isa, want) == 0) return k;
    return all.front();
  }();
  return chosen;
}

}  // namespace

void BlockQMatrix::decode_row(int64_t r, float* out) const {
  const uint8_t* row = q.data() + r * blocks_per_row * code_bytes();
  for (int64_t b = 0; b < blocks_per_row; ++b) {
    const Affine s = scale_of(*this, r, b);
    const uint8_t* block = row + b * code_bytes();
    for (int j = 0; j < kQBlock && b * kQBlock + j < cols; ++j)
      out[b * kQBlock + j] = s.d * float(code_value(*this, block, j)) + s.m;
  }
}

void quantize_activations(const float* x, int64_t n, int64_t cols, int64_t blocks, Q8Activations& a) {
  a.n = n;
  a.blocks = blocks;
  a.q.resize(size_t(n * blocks * kQBlock));
  a.d.resize(size_t(n * blocks));
  a.s.resize(size_t(n * blocks));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + t * cols + b * kQBlock;
      const int64_t len = std::clamp<int64_t>(cols - b * kQBlock, 0, kQBlock);
      float amax = 0.0f;
      for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
      int8_t* qb = a.q.data() + (t * blocks + b) * kQBlock;
      int sum = 0;
      for (int64_t i = 0; i < kQBlock; ++i) {
        qb[i] = i < len ? int8_t(std::nearbyint(xb[i] * inv)) : 0;
        sum += qb[i];
      }
      a.d[size_t(t * blocks + b)] = d;
      a.s[size_t(t * blocks + b)] = d * float(sum);
    }
}

void blockq_matmul_ref(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                       int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.q.data() + r * w.blocks_per_row * w.code_bytes();
    for (int64_t t = 0; t < a.n; ++t) {
      float acc = 0.0f;
      for (int64_t b = 0; b < w.blocks_per_row; ++b) {
        const Affine s = scale_of(w, r, b);
        const int64_t ab = t * a.blocks + b;
        const int8_t* xq = a.q.data() + ab * kQBlock;
        int dot = 0;
        for (int j = 0; j < kQBlock; ++j) dot += code_value(w, row + b * w.code_bytes(), j) * xq[j];
        acc += a.d[size_t(ab)] * s.d * float(dot) + s.m * a.s[size_t(ab)];
      }
      y[t * ldy + r] = acc;
    }
  }
}

void blockq_matmul(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  isa().fn(w, a, y, ldy, r0, r1);
}

const char* blockq_isa() { return isa().isa; }

std::vector<BlockQKernel> blockq_kernels() {
  std::vector<BlockQKernel> k;
#if defined(__x86_64__)
  // F16C is not checked: clang's __builtin_cpu_supports does not know it (make fuzz builds with
  // clang), and every CPU with AVX2 and FMA has it.
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw")) {
    if (__builtin_cpu_supports("avx512dq")) k.push_back({"avx512-vnni-zmm", blockq_matmul_avx512_zmm});
    k.push_back({"avx512-vnni", blockq_matmul_avx512});
  }
  if (avx2) k.push_back({"avx2", blockq_matmul_avx2});
#endif
  k.push_back({"scalar", blockq_matmul_ref});
  return k;
}

}  // namespace quantkit::kernels
