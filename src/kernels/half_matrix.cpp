#include "kernels/half_matrix.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/avx512_state.h"
#include "quantkit/fp16.h"

namespace quantkit::kernels {
namespace {

constexpr int64_t kChunk = HalfMatrix::kChunkCols;
constexpr int64_t kPassTokens = 4;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

bool has_avx512() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return yes;
#else
  return false;
#endif
}

// AMD's vdpbf16ps issues at the FMA rate, Intel's (Cooper Lake, Sapphire Rapids) at a
// quarter of it: measured (see half_matrix.h), and Intel CPUs with AMX use the tiles.
bool fast_avx512_bf16() {
#if defined(__x86_64__)
  static const bool yes = has_avx512() && has_avx512_bf16() && __builtin_cpu_is("amd");
  return yes;
#else
  return false;
#endif
}

#if defined(__x86_64__)
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized reports.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define QK_HALF_TARGET __attribute__((target("avx512f,avx512bw,f16c")))

// The line 2 chunks (4 KiB) ahead in the strip. The hardware prefetchers alone kept one
// token at 22-24 GB/s on the 1B BF16 model (AMD EPYC, 2 threads); with this, 31-33 GB/s.
// Past the end of the matrix a prefetch is harmless (it never faults).
inline void prefetch_ahead(const uint16_t* line) {
  _mm_prefetch(reinterpret_cast<const char*>(line + 2 * 1024), _MM_HINT_T0);
}

// The rounding of f32_to_bf16 (quantkit/fp16.h), 16 at a time (the same bits).
QK_HALF_TARGET void round_to_bf16_avx512(const float* x, int64_t count, uint16_t* out) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7FFF), quiet = _mm512_set1_epi32(0x40);
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF), inf = _mm512_set1_epi32(0x7F800000);
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i u = _mm512_loadu_si512(x + i);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs_mask), inf);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), one);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(bias, odd)), 16);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtepi32_epi16(r));
  }
  for (; i < count; ++i) out[i] = f32_to_bf16(x[i]);
}

// T tokens (x: rows of ldx floats, padded to whole chunks) against one strip of BF16
// weights; out [T][32]. A line's 32-bit lanes hold (even, odd) columns of 16 rows: the even
// column as FP32 is the lane shifted up by 16 bits, the odd one the lane's high half.
template <int T>
QK_HALF_TARGET void strip_fma_bf16(const uint16_t* strip, int64_t chunks, const float* x, int64_t ldx, float* out) {
  __m512 even_sum[2][T], odd_sum[2][T];  // two sums per row and token: two FMA chains each
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < T; ++t) even_sum[h][t] = odd_sum[h][t] = _mm512_setzero_ps();
  const __m512i high = _mm512_set1_epi32(int(0xFFFF0000u));
  for (int64_t k = 0; k < chunks; ++k)
    for (int p = 0; p < 16; ++p)
      for (int h = 0; h < 2; ++h) {
        prefetch_ahead(strip + k * 1024 + h * 512 + p * 32);
        const __m512i line = _mm512_loadu_si512(strip + k * 1024 + h * 512 + p * 32);
        const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(line, 16));
        const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(line, high));
        const float* xc = x + k * kChunk + 2 * p;
        for (int t = 0; t < T; ++t) {
          even_sum[h][t] = _mm512_fmadd_ps(even, _mm512_set1_ps(xc[t * ldx]), even_sum[h][t]);
          odd_sum[h][t] = _mm512_fmadd_ps(odd, _mm512_set1_ps(xc[t * ldx + 1]), odd_sum[h][t]);
        }
      }
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < 2; ++h) _mm512_storeu_ps(out + t * 32 + h * 16, _mm512_add_ps(even_sum[h][t], odd_sum[h][t]));
}

// The same for F16: each half of a line (8 rows x 2 columns) widens in one vcvtph2ps and is
// multiplied by the activation pair broadcast as 64 bits, so lanes hold (row, column
// parity) sums; adjacent lanes are added at the end. Widening each column apart (as for
// BF16) took 3 conversions per 16 values and ran generation at 61% of the bandwidth.
template <int T>
QK_HALF_TARGET void strip_fma_f16(const uint16_t* strip, int64_t chunks, const float* x, int64_t ldx, float* out) {
  __m512 sum[2][2][T];  // [tile half h][rows 0-7 / 8-15 of it][token]
  for (auto& a : sum)
    for (auto& b : a)
      for (auto& v : b) v = _mm512_setzero_ps();
  for (int64_t k = 0; k < chunks; ++k)
    for (int p = 0; p < 16; ++p)
      for (int h = 0; h < 2; ++h) {
        prefetch_ahead(strip + k * 1024 + h * 512 + p * 32);
        const __m512i line = _mm512_loadu_si512(strip + k * 1024 + h * 512 + p * 32);
        const __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(line));
        const __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(line, 1));
        const float* xc = x + k * kChunk + 2 * p;
        for (int t = 0; t < T; ++t) {
          double pair;
          std::memcpy(&pair, xc + t * ldx, sizeof pair);
          const __m512 xv = _mm512_castpd_ps(_mm512_set1_pd(pair));
          sum[h][0][t] = _mm512_fmadd_ps(lo, xv, sum[h][0][t]);
          sum[h][1][t] = _mm512_fmadd_ps(hi, xv, sum[h][1][t]);
        }
      }
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < 2; ++h)
      for (int part = 0; part < 2; ++part) {
        const __m512 v = sum[h][part][t];
        const __m512 rows = _mm512_maskz_compress_ps(0x5555, _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1)));
        _mm256_storeu_ps(out + t * 32 + h * 16 + part * 8, _mm512_castps512_ps256(rows));
      }
}

// T tokens of BF16 activations (rows of ldx, padded to whole chunks) against one strip of
// BF16 weights with vdpbf16ps: a line's lane holds the (even, odd) column pair of one row,
// the activations' pair is broadcast as 32 bits, and one instruction adds both products.
// Two sums per row and token (even and odd pairs) keep enough chains in flight.
template <int T>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void strip_dot_bf16(const uint16_t* strip, int64_t chunks,
                                                                            const uint16_t* x, int64_t ldx, float* out) {
  __m512 sum[2][2][T];  // [tile half h][pair parity][token]
  for (auto& a : sum)
    for (auto& b : a)
      for (auto& v : b) v = _mm512_setzero_ps();
  for (int64_t k = 0; k < chunks; ++k)
#pragma GCC unroll 16  // constant indices into sum: the sums stay in registers
    for (int p = 0; p < 16; ++p)
      for (int h = 0; h < 2; ++h) {
        prefetch_ahead(strip + k * 1024 + h * 512 + p * 32);
        const __m512bh line = (__m512bh)_mm512_loadu_si512(strip + k * 1024 + h * 512 + p * 32);
        const uint16_t* xc = x + k * kChunk + 2 * p;
        for (int t = 0; t < T; ++t) {
          uint32_t pair;
          std::memcpy(&pair, xc + t * ldx, sizeof pair);
          sum[h][p & 1][t] = _mm512_dpbf16_ps(sum[h][p & 1][t], line, (__m512bh)_mm512_set1_epi32(int(pair)));
        }
      }
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < 2; ++h) _mm512_storeu_ps(out + t * 32 + h * 16, _mm512_add_ps(sum[h][0][t], sum[h][1][t]));
}

using StripFma = void (*)(const uint16_t*, int64_t, const float*, int64_t, float*);
constexpr StripFma kStripFmaBf16[kPassTokens] = {strip_fma_bf16<1>, strip_fma_bf16<2>, strip_fma_bf16<3>,
                                                 strip_fma_bf16<4>};
constexpr StripFma kStripFmaF16[kPassTokens] = {strip_fma_f16<1>, strip_fma_f16<2>, strip_fma_f16<3>,
                                                strip_fma_f16<4>};
using StripDot = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, float*);
constexpr StripDot kStripDotBf16[kPassTokens] = {strip_dot_bf16<1>, strip_dot_bf16<2>, strip_dot_bf16<3>,
                                                 strip_dot_bf16<4>};
#pragma GCC diagnostic pop
#endif

// Runs strip(s, t, nt, out) for every strip of [s0, s1) and pass of up to kPassTokens tokens
// and copies out [nt][32] into y (the rows of the strip that exist).
template <class Strip>
void for_each_pass(int64_t rows, int64_t n, float* y, int64_t ldy, int64_t s0, int64_t s1, Strip strip) {
  alignas(64) float out[kPassTokens * 32];
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t r = s * HalfMatrix::kStripRows, nr = std::min(HalfMatrix::kStripRows, rows - r);
    for (int64_t t = 0; t < n; t += kPassTokens) {
      const int64_t nt = std::min(kPassTokens, n - t);
      strip(s, t, nt, out);
      for (int64_t i = 0; i < nt; ++i) std::memcpy(y + (t + i) * ldy + r, out + i * 32, size_t(nr) * sizeof(float));
    }
  }
}

}  // namespace

bool has_avx512_bf16() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
#else
  return false;
#endif
}

Bf16Products HalfMatrix::bf16_products() const {
  if (type_ != HalfType::BF16) return Bf16Products::None;
  if (has_amx_bf16()) return Bf16Products::Amx;
  return fast_avx512_bf16() ? Bf16Products::Avx512 : Bf16Products::None;
}

void HalfMatrix::multiply_bf16(const uint16_t* xb, int64_t n, float* y, int64_t ldy, int64_t s0, int64_t s1) const {
  if (bf16_products() == Bf16Products::Amx) return multiply_amx(xb, n, y, ldy, s0, s1);
  multiply_dot(xb, n, y, ldy, s0, s1);
}

void HalfMatrix::multiply_dot(const uint16_t* xb, int64_t n, float* y, int64_t ldy, int64_t s0, int64_t s1) const {
#if defined(__x86_64__)
  const int64_t ld = chunks_ * kChunk;
  for_each_pass(rows_, n, y, ldy, s0, s1, [&](int64_t s, int64_t t, int64_t nt, float* out) {
    kStripDotBf16[nt - 1](tiles_.data() + s * chunks_ * 1024, chunks_, xb + t * ld, ld, out);
  });
  clean_avx512_upper_state();
#else
  std::abort();  // bf16_products() is None
#endif
}

void round_to_bf16(const float* x, int64_t n, int64_t cols, uint16_t* xb) {
#if defined(__x86_64__)
  if (has_avx512()) {
    round_to_bf16_avx512(x, n * cols, xb);
    clean_avx512_upper_state();
    return;
  }
#endif
  for (int64_t i = 0; i < n * cols; ++i) xb[i] = f32_to_bf16(x[i]);
}

void pad_bf16_activations(const float* x, int64_t n, int64_t cols, std::vector<uint16_t>& xb) {
  const int64_t ld = round_up(cols, kChunk);
  xb.assign(size_t(round_up(n, 16) * ld), 0);
  if (ld == cols) return round_to_bf16(x, n, cols, xb.data());
  for (int64_t t = 0; t < n; ++t) round_to_bf16(x + t * cols, 1, cols, xb.data() + t * ld);
}

HalfMatrix::HalfMatrix(HalfType type, const void* w, int64_t rows, int64_t cols)
    : type_(type), rows_(rows), cols_(cols), chunks_((cols + kChunk - 1) / kChunk) {
  tiles_.assign(size_t(strips() * kStripRows * chunks_ * kChunk), 0);
  const auto* src = static_cast<const uint8_t*>(w);  // a file's bytes: maybe not 2-aligned
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* row = tiles_.data() + row_start(r);
    for (int64_t c = 0; c < cols; ++c) std::memcpy(&row[offset(c)], src + 2 * (r * cols + c), 2);
  }
}

// Strip s = r / 32 starts at s * chunks * 1024; its rows 16..31 use the second tile of each
// chunk (+512); row i of a tile is at i * 2 in every pair.
size_t HalfMatrix::row_start(int64_t r) const {
  return size_t((r / kStripRows) * chunks_ * 1024 + (r % kStripRows / 16) * 512 + (r % 16) * 2);
}

float HalfMatrix::widen(uint16_t h) const { return type_ == HalfType::F16 ? f16_to_f32(h) : bf16_to_f32(h); }

void HalfMatrix::decode_rows(int64_t r0, int64_t nr, float* out) const {
  for (int64_t r = 0; r < nr; ++r) {
    const uint16_t* row = tiles_.data() + row_start(r0 + r);
    for (int64_t c = 0; c < cols_; ++c) out[r * cols_ + c] = widen(row[offset(c)]);
  }
}

void HalfMatrix::multiply_fp32(const float* x, int64_t n, float* y, int64_t ldy, int64_t s0, int64_t s1) const {
#if defined(__x86_64__)
  if (has_avx512()) {
    // x padded to whole chunks: the padding weights are zero, the padding inputs must be
    // finite. Real widths are whole chunks already and are read in place.
    const int64_t ld = chunks_ * kChunk;
    const float* xs = x;
    if (ld != cols_) {
      thread_local std::vector<float> xp;
      xp.assign(size_t(n * ld), 0.0f);
      for (int64_t t = 0; t < n; ++t) std::memcpy(xp.data() + t * ld, x + t * cols_, size_t(cols_) * sizeof(float));
      xs = xp.data();
    }
    const StripFma* fma = type_ == HalfType::F16 ? kStripFmaF16 : kStripFmaBf16;
    for_each_pass(rows_, n, y, ldy, s0, s1, [&](int64_t s, int64_t t, int64_t nt, float* out) {
      fma[nt - 1](tiles_.data() + s * chunks_ * 1024, chunks_, xs + t * ld, ld, out);
    });
    clean_avx512_upper_state();
    return;
  }
#endif
  // Reference: one row at a time, widened, in column order.
  std::vector<float> row(static_cast<size_t>(cols_));
  for (int64_t r = s0 * kStripRows; r < std::min(rows_, s1 * kStripRows); ++r) {
    decode_rows(r, 1, row.data());
    for (int64_t t = 0; t < n; ++t) {
      float acc = 0.0f;
      for (int64_t c = 0; c < cols_; ++c) acc += row[size_t(c)] * x[t * cols_ + c];
      y[t * ldy + r] = acc;
    }
  }
}

}  // namespace quantkit::kernels
