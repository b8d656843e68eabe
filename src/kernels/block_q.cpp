#include "kernels/block_q.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/target_region.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include "quantkit/fp16.h"

namespace quantkit::kernels {

void blockq_matmul_avx2(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1);
void blockq_matmul_avx512(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                          int64_t r1);
void blockq_matmul_avx512_zmm(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                              int64_t r1);

namespace {

// Byte k of block b of row r as the row-major layout stores it (either layout).
inline uint8_t block_byte(const BlockQMatrix& w, int64_t r, int64_t b, int k) {
  const int64_t cb = w.code_bytes();
  if (w.row_group == 1) return w.q[size_t((r * w.blocks_per_row + b) * cb + k)];
  const int64_t words = cb / 4, g = r / 16;
  const uint8_t v = w.q[size_t(((g * w.blocks_per_row + b) * words + k / 4) * 64 + (r % 16) * 4 + k % 4)];
  return w.kind == CodeKind::S8 ? uint8_t(v ^ 0x80) : v;
}

// v(c) of code j of block b of row r.
inline int code_value(const BlockQMatrix& w, int64_t r, int64_t b, int j) {
  if (w.kind == CodeKind::S8) return int8_t(block_byte(w, r, b, j));
  const int c = j < 16 ? block_byte(w, r, b, j) & 0x0f : block_byte(w, r, b, j - 16) >> 4;
  if (w.kind == CodeKind::S4) return c - 8;
  return w.kind == CodeKind::Lut4 ? w.lut[c] : c;
}

struct Affine {
  float d, m;
};

inline Affine scale_of(const BlockQMatrix& w, int64_t r, int64_t b) {
  const int64_t s = b / w.blocks_per_scale;
  const int64_t g = w.row_group == 1 ? r * w.scales_per_row + s : ((r / 16) * w.scales_per_row + s) * 16 + r % 16;
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
  for (int64_t b = 0; b < blocks_per_row; ++b) {
    const Affine s = scale_of(*this, r, b);
    for (int j = 0; j < kQBlock && b * kQBlock + j < cols; ++j)
      out[b * kQBlock + j] = s.d * float(code_value(*this, r, b, j)) + s.m;
  }
}

namespace {

#if defined(__x86_64__)
QK_TARGET_BEGIN("avx2")
// One full block of 32 on AVX2, the same bits as the scalar path: the max is exact (vmaxps
// with the running max second ignores NaN as std::max(amax, nan) does), x * inv is one
// rounding, and vcvtps2dq rounds to nearest even as nearbyint does.
float block_absmax_avx2(const float* x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < kQBlock; i += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

int quantize_block_avx2(const float* x, float inv, int8_t* q) {
  const __m256 vinv = _mm256_set1_ps(inv);
  __m256i v[4];
  for (int k = 0; k < 4; ++k) v[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vinv));
  const __m256i sum32 = _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3]));
  // packs interleave 128-bit lanes: [0 1 4 5 | 2 3 6 7] in 4-byte groups, undone by a permute.
  const __m256i w16a = _mm256_packs_epi32(v[0], v[1]), w16b = _mm256_packs_epi32(v[2], v[3]);
  const __m256i w8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w16a, w16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), w8);
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(sum32), _mm256_extracti128_si256(sum32, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(h);
}
QK_TARGET_END
#endif

}  // namespace

int integer_zero_point(const BlockQMatrix& w) {
  if (w.kind == CodeKind::S4) return 8;
  if (w.kind != CodeKind::U4 || w.has_min) return 0;
  const int z = int(w.offset);
  return float(z) == w.offset && z >= 1 && z <= 255 ? z : 0;
}

void quantize_activations(const float* x, int64_t n, int64_t cols, int64_t blocks, Q8Activations& a) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
#else
  constexpr bool avx2 = false;
#endif
  a.n = n;
  a.blocks = blocks;
  a.q.resize(size_t(n * blocks * kQBlock));
  a.d.resize(size_t(n * blocks));
  a.s.resize(size_t(n * blocks));
  a.qsum.resize(size_t(n * blocks));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + t * cols + b * kQBlock;
      const int64_t len = std::clamp<int64_t>(cols - b * kQBlock, 0, kQBlock);
      int8_t* qb = a.q.data() + (t * blocks + b) * kQBlock;
      float d;
      int sum = 0;
#if defined(__x86_64__)
      if (avx2 && len == kQBlock) {
        d = block_absmax_avx2(xb) / 127.0f;
        sum = quantize_block_avx2(xb, d > 0.0f ? 1.0f / d : 0.0f, qb);
      } else
#endif
      {
        float amax = 0.0f;
        for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(xb[i]));
        d = amax / 127.0f;
        const float inv = d > 0.0f ? 1.0f / d : 0.0f;
        for (int64_t i = 0; i < kQBlock; ++i) {
          qb[i] = i < len ? int8_t(std::nearbyint(xb[i] * inv)) : 0;
          sum += qb[i];
        }
      }
      a.d[size_t(t * blocks + b)] = d;
      a.s[size_t(t * blocks + b)] = d * float(sum);
      a.qsum[size_t(t * blocks + b)] = sum;
    }
}

void blockq_matmul_ref(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                       int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t t = 0; t < a.n; ++t) {
      float acc = 0.0f;
      for (int64_t b = 0; b < w.blocks_per_row; ++b) {
        const Affine s = scale_of(w, r, b);
        const int64_t ab = t * a.blocks + b;
        const int8_t* xq = a.q.data() + ab * kQBlock;
        int dot = 0;
        for (int j = 0; j < kQBlock; ++j) dot += code_value(w, r, b, j) * xq[j];
        acc += a.d[size_t(ab)] * s.d * float(dot) + s.m * a.s[size_t(ab)];
      }
      y[t * ldy + r] = acc;
    }
  }
}

void blockq_matmul(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (w.row_group == 16) return blockq_matmul_i16(w, a, y, ldy, r0, r1);
  isa().fn(w, a, y, ldy, r0, r1);
}

const char* blockq_isa() {
  const char* want = std::getenv("QUANTKIT_BLOCKQ_ISA");
  if (blockq_i16_supported() && (!want || std::strcmp(want, "avx512-vnni-i16") == 0)) return "avx512-vnni-i16";
  return isa().isa;
}

bool blockq_interleave16(BlockQMatrix& w) {
  if (w.row_group != 1 || !blockq_i16_supported()) return false;
  if (const char* want = std::getenv("QUANTKIT_BLOCKQ_ISA"); want && std::strcmp(want, "avx512-vnni-i16") != 0)
    return false;
  const int64_t groups = (w.rows + 15) / 16, nb = w.blocks_per_row, cb = w.code_bytes(), words = cb / 4;
  const int64_t spr = w.scales_per_row;
  decltype(w.q) q(size_t(groups * nb * 16 * cb), w.kind == CodeKind::S8 ? 0x80 : 0);
  std::vector<uint16_t> d(size_t(groups * spr * 16), 0), m(w.has_min ? d.size() : 0, 0);
  for (int64_t r = 0; r < w.rows; ++r) {
    const int64_t g = r / 16, i = r % 16;
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t k = 0; k < words; ++k) {
        uint8_t* dst = q.data() + ((g * nb + b) * words + k) * 64 + i * 4;
        std::memcpy(dst, w.q.data() + (r * nb + b) * cb + k * 4, 4);
        if (w.kind == CodeKind::S8)
          for (int e = 0; e < 4; ++e) dst[e] ^= 0x80;
      }
    for (int64_t s = 0; s < spr; ++s) {
      d[size_t((g * spr + s) * 16 + i)] = w.d[size_t(r * spr + s)];
      if (w.has_min) m[size_t((g * spr + s) * 16 + i)] = w.m[size_t(r * spr + s)];
    }
  }
  w.q = std::move(q);
  w.d = std::move(d);
  w.m = std::move(m);
  w.row_group = 16;
  return true;
}

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
