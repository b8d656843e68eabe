#include "kernels/packed_codes.h"

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "quantkit/fp16.h"

#include "kernels/target_region.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace quantkit::kernels {
namespace {

inline int code_at(const uint8_t* p, int bits, int j) {
  const int per = 8 / bits;
  return p[j / per] >> (j % per * bits) & ((1 << bits) - 1);
}

void affine_tail(int bits, float ao, float as, const uint8_t* p, int j, int n, float* acc) {
  for (; j < n; ++j) acc[j] += ao + as * float(code_at(p, bits, j));
}

void select_tail(float a0, float a1, const uint8_t* p, int j, int n, float* acc) {
  for (; j < n; ++j) acc[j] += code_at(p, 1, j) ? a1 : a0;
}

inline float f16_le(const uint8_t* p) { return f16_to_f32(uint16_t(p[0] | p[1] << 8)); }

void records_scalar(int bits, const float* w, const uint8_t* rec, size_t record_bytes, int channels, int n,
                    float* acc) {
  for (int c = 0; c < channels; ++c, rec += record_bytes)
    affine_tail(bits, w[c] * f16_le(rec), w[c] * f16_le(rec + 2), rec + 4, 0, n, acc);
}

#if defined(__x86_64__)
QK_TARGET_BEGIN("avx2,fma,f16c")

// Codes j .. j + 7 as 8 int32 lanes: bytes widened (8 bits), or the `bits` bytes holding
// them broadcast and shifted right by lane * bits.
template <int BITS>
inline __m256i codes8(const uint8_t* p, int j) {
  constexpr int bits = BITS;
  if constexpr (bits == 8) {
    int64_t v;
    std::memcpy(&v, p + j, 8);
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v));
  } else {
    uint32_t v = 0;
    std::memcpy(&v, p + j * bits / 8, size_t(bits));
    const __m256i shifts = _mm256_setr_epi32(0, bits, 2 * bits, 3 * bits, 4 * bits, 5 * bits, 6 * bits, 7 * bits);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(v)), shifts), _mm256_set1_epi32((1 << bits) - 1));
  }
}

template <int BITS>
void affine_avx2(float ao, float as, const uint8_t* p, int n, float* acc) {
  const __m256 vo = _mm256_set1_ps(ao), vs = _mm256_set1_ps(as);
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 c = _mm256_cvtepi32_ps(codes8<BITS>(p, j));
    _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), _mm256_fmadd_ps(vs, c, vo)));
  }
  affine_tail(BITS, ao, as, p, j, n, acc);
}

// 32 tokens at a time held in four registers across all channels.
template <int BITS>
void records_avx2(const float* w, const uint8_t* rec0, size_t record_bytes, int channels, int n, float* acc) {
  int j0 = 0;
  for (; j0 + 32 <= n; j0 += 32) {
    __m256 a[4];
    for (int k = 0; k < 4; ++k) a[k] = _mm256_loadu_ps(acc + j0 + 8 * k);
    const uint8_t* rec = rec0;
    for (int c = 0; c < channels; ++c, rec += record_bytes) {
      const __m128i h = _mm_cvtsi32_si128(rec[0] | rec[1] << 8 | rec[2] << 16 | rec[3] << 24);
      const __m128 os = _mm_mul_ps(_mm_cvtph_ps(h), _mm_set1_ps(w[c]));  // w off, w step
      const __m256 vo = _mm256_broadcastss_ps(os), vs = _mm256_broadcastss_ps(_mm_movehdup_ps(os));
      for (int k = 0; k < 4; ++k)
        a[k] = _mm256_add_ps(a[k], _mm256_fmadd_ps(vs, _mm256_cvtepi32_ps(codes8<BITS>(rec + 4, j0 + 8 * k)), vo));
    }
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(acc + j0 + 8 * k, a[k]);
  }
  if (j0 == n) return;
  const uint8_t* rec = rec0;
  for (int c = 0; c < channels; ++c, rec += record_bytes) {
    const float off = f16_le(rec), step = f16_le(rec + 2);
    const int per = 8 / BITS;
    affine_tail(BITS, w[c] * off, w[c] * step, rec + 4 + j0 / per, 0, n - j0, acc + j0);
  }
}

// 32 tokens at a time held in four registers across the channels, as records_avx2.
void two_width_avx2(const uint8_t* mask, int c0, const float* w, const uint8_t* rec0, int channels, int n,
                    float* acc) {
  for (int j0 = 0; j0 < n; j0 += 32) {
    const int m = std::min(32, n - j0) / 8;  // 8-token steps in this chunk
    __m256 a[4];
    for (int k = 0; k < m; ++k) a[k] = _mm256_loadu_ps(acc + j0 + 8 * k);
    const uint8_t* rec = rec0;
    for (int c = c0; c < c0 + channels; ++c) {
      const bool outlier = mask[c / 8] >> (c % 8) & 1;
      const __m256 v0 = _mm256_set1_ps(w[c - c0] * f16_le(rec)), v1 = _mm256_set1_ps(w[c - c0] * f16_le(rec + 2));
      for (int k = 0; k < m; ++k) {
        const __m256 t = outlier ? _mm256_fmadd_ps(v1, _mm256_cvtepi32_ps(codes8<2>(rec + 4, j0 + 8 * k)), v0)
                                 : _mm256_blendv_ps(v0, v1, _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                                                                codes8<1>(rec + 4, j0 + 8 * k), _mm256_set1_epi32(1))));
        a[k] = _mm256_add_ps(a[k], t);
      }
      rec += 4 + size_t(n) * (outlier ? 2 : 1) / 8;
    }
    for (int k = 0; k < m; ++k) _mm256_storeu_ps(acc + j0 + 8 * k, a[k]);
  }
}

void select_avx2(float a0, float a1, const uint8_t* p, int n, float* acc) {
  const __m256 v0 = _mm256_set1_ps(a0), v1 = _mm256_set1_ps(a1);
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 one = _mm256_castsi256_ps(_mm256_cmpeq_epi32(codes8<1>(p, j), _mm256_set1_epi32(1)));
    _mm256_storeu_ps(acc + j, _mm256_add_ps(_mm256_loadu_ps(acc + j), _mm256_blendv_ps(v0, v1, one)));
  }
  select_tail(a0, a1, p, j, n, acc);
}

QK_TARGET_END

// F16C goes with AVX2 (every AVX2 CPU has it; see vec_ops.cpp).
bool has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}

// fn(std::integral_constant<int, bits>) for the code widths with an AVX2 kernel; false when
// the CPU lacks AVX2 or the width is another.
template <class Fn>
bool with_avx2_bits(int bits, Fn fn) {
  if (!has_avx2()) return false;
  switch (bits) {
    case 8: fn(std::integral_constant<int, 8>{}); return true;
    case 4: fn(std::integral_constant<int, 4>{}); return true;
    case 2: fn(std::integral_constant<int, 2>{}); return true;
    case 1: fn(std::integral_constant<int, 1>{}); return true;
    default: return false;
  }
}
#endif

}  // namespace

void affine_codes_acc(int bits, float ao, float as, const uint8_t* p, int n, float* acc) {
#if defined(__x86_64__)
  if (with_avx2_bits(bits, [&](auto b) { affine_avx2<b()>(ao, as, p, n, acc); })) return;
#endif
  affine_tail(bits, ao, as, p, 0, n, acc);
}

void affine_records_acc(int bits, const float* w, const uint8_t* records, size_t record_bytes, int channels, int n,
                        float* acc) {
#if defined(__x86_64__)
  if (with_avx2_bits(bits, [&](auto b) { records_avx2<b()>(w, records, record_bytes, channels, n, acc); })) return;
#endif
  records_scalar(bits, w, records, record_bytes, channels, n, acc);
}

void two_width_records_acc(const uint8_t* mask, int c0, const float* w, const uint8_t* records, int channels, int n,
                           float* acc) {
#if defined(__x86_64__)
  if (has_avx2()) return two_width_avx2(mask, c0, w, records, channels, n, acc);
#endif
  const uint8_t* rec = records;
  for (int c = c0; c < c0 + channels; ++c) {
    const bool outlier = mask[c / 8] >> (c % 8) & 1;
    const float a = w[c - c0] * f16_le(rec), b = w[c - c0] * f16_le(rec + 2);
    if (outlier) affine_tail(2, a, b, rec + 4, 0, n, acc);
    else select_tail(a, b, rec + 4, 0, n, acc);
    rec += 4 + size_t(n) * (outlier ? 2 : 1) / 8;
  }
}

void select_codes_acc(float a0, float a1, const uint8_t* p, int n, float* acc) {
#if defined(__x86_64__)
  if (has_avx2()) return select_avx2(a0, a1, p, n, acc);
#endif
  select_tail(a0, a1, p, 0, n, acc);
}

}  // namespace quantkit::kernels
