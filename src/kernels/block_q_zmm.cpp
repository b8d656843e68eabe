// The block-integer kernels on 512-bit registers (AVX-512 VNNI): one vpdpbusd multiplies
// TWO 32-blocks (64 weights) of a row by a token's activations, so the per-product work
// (integer dot, convert, scale, accumulate) is paid once per 64 weights instead of once per
// 32. Signs are moved into an integer bias computed once per token or per row, not per
// product:
//   c - z (S4: z = 8): sum (c - z) x = vpdpbusd(bias = -z sum x, c, x)   (bias per token)
//   S8 / Lut4 w:       sum w x       = vpdpbusd(bias = -128 sum w, x + 128, w)  (per row)
// Tiles are 4 rows x 4 tokens; a block pair of a row is unpacked once per tile. Integer
// zero points (S4, symmetric "int<b>") become a per-token bias too; other offsets
// (m per block, as q4_1 / K-quants) are added after the tile as one dot product per
// (row, token) over the row's m and the token's block sums.
#include <algorithm>
#include <cstdint>

#include "kernels/avx512_state.h"
#include "kernels/block_q.h"
#include "kernels/target_region.h"

#if defined(__x86_64__)
#include <immintrin.h>
QK_TARGET_BEGIN("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wuninitialized reports.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace quantkit::kernels {
namespace {

constexpr int kRowTile = 4;
constexpr int kTokenTile = 4;

// Lanes 0-7 = lo, lanes 8-15 = hi: one value per block of a pair.
inline __m512 pair_vec(float lo, float hi) {
  return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}

// Blocks b and b+1 of a row as 64 bytes (lanes 0-31: block b); `single`: block b only, the
// upper half zero. 4-bit codes: byte j of a block holds weights j and j + 16.
template <CodeKind K>
inline __m512i load_pair(const uint8_t* q, bool single, __m512i lut) {
  if constexpr (K == CodeKind::S8) {
    return single ? _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)))
                  : _mm512_loadu_si512(q);
  } else {
    // 128-bit chunks [b, b, b+1, b+1] -> [low nibbles, high nibbles] of each block.
    const __m512i packed =
        single ? _mm512_zextsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)))
               : _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
    const __m512i chunks = _mm512_shuffle_i64x2(packed, packed, _MM_SHUFFLE(1, 1, 0, 0));
    const __m512i shifted = _mm512_srlv_epi64(chunks, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    __m512i codes = _mm512_and_si512(shifted, _mm512_set1_epi8(0x0f));
    if constexpr (K == CodeKind::Lut4) codes = _mm512_shuffle_epi8(lut, codes);
    return single ? _mm512_maskz_mov_epi64(0x0f, codes) : codes;
  }
}

// The 64 int8 activations of token position `ab` (and ab+1); single: upper half zero.
inline __m512i load_x(const int8_t* x, bool single) {
  return single ? _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)))
                : _mm512_loadu_si512(x);
}

inline float scale_d(const BlockQMatrix& w, int64_t r, int64_t g) {
  return _cvtsh_ss(w.d[size_t(r * w.scales_per_row + g)]);
}

// How a matrix's codes enter the integer dot product.
enum class Path : uint8_t {
  ZeroPoint,  // unsigned 4-bit codes minus an integer zero point (S4; U4 with m = -z d)
  Unsigned,   // unsigned 4-bit codes; the offset goes through the min term
  Signed,     // signed bytes (S8, or Lut4 looked up)
};

// sum over the row's scale groups of m_g * (sum of the token's block sums s_b in g), with
// m = the stored min, or -offset * d: the offset term of every block of row r for one token.
float min_term(const BlockQMatrix& w, int64_t r, const float* s) {
  const int64_t spr = w.scales_per_row, bps = w.blocks_per_scale;
  const uint16_t* mp = (w.has_min ? w.m : w.d).data() + r * spr;
  const float scale = w.has_min ? 1.0f : -w.offset;
  float sum = 0.0f;
  int64_t g = 0;
  if (bps == 1) {
    __m512 acc = _mm512_setzero_ps();
    for (; g + 16 <= spr; g += 16)
      acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mp + g))),
                            _mm512_loadu_ps(s + g), acc);
    sum = _mm512_reduce_add_ps(acc);
  }
  for (; g < spr; ++g) {
    float sg = 0.0f;
    for (int64_t b = g * bps; b < std::min(w.blocks_per_row, (g + 1) * bps); ++b) sg += s[b];
    sum += _cvtsh_ss(mp[g]) * sg;
  }
  return scale * sum;
}

// Weight bytes ahead of the current block pair that a row prefetches: generation streams
// every row once, and R interleaved rows defeat part of the hardware prefetcher.
constexpr int64_t kPrefetchBytes = 512;

template <Path P, CodeKind K, int R, int T>
struct Tile {
  const BlockQMatrix& w;
  const Q8Activations& a;
  int64_t r, t0;
  __m512i lut, zero_point;
  __m512 acc[R][T];

  // Blocks b and b + 1 of every row and token; Single: block b only. d_of(i): row i's
  // scales of the two blocks as a pair vector; dx_of(t, ab): token t's.
  template <bool Single, class DOf, class DxOf>
  inline void pair(int64_t b, DOf d_of, DxOf dx_of) {
    const int64_t nb = w.blocks_per_row, cb = w.code_bytes();
    const __m512i zero = _mm512_setzero_si512();
    __m512i x[T], xb[T];
    __m512 dx[T];
    for (int t = 0; t < T; ++t) {
      const int64_t ab = (t0 + t) * a.blocks + b;
      x[t] = load_x(a.q.data() + ab * kQBlock, Single);
      dx[t] = dx_of(t, ab);
      if constexpr (P == Path::ZeroPoint)
        xb[t] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, zero_point, x[t]));
      if constexpr (P == Path::Signed) xb[t] = _mm512_xor_si512(x[t], _mm512_set1_epi8(char(0x80)));
    }
    for (int i = 0; i < R; ++i) {
      const uint8_t* q = w.q.data() + ((r + i) * nb + b) * cb;
      if constexpr (T == 1) _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchBytes), _MM_HINT_T0);
      const __m512i wq = load_pair<K>(q, Single, lut);
      const __m512 d = d_of(i);
      __m512i wbias = zero;
      if constexpr (P == Path::Signed)
        wbias = _mm512_sub_epi32(zero, _mm512_slli_epi32(_mm512_dpbusd_epi32(zero, _mm512_set1_epi8(1), wq), 7));
      for (int t = 0; t < T; ++t) {
        __m512i dot;
        if constexpr (P == Path::ZeroPoint) dot = _mm512_dpbusd_epi32(xb[t], wq, x[t]);
        if constexpr (P == Path::Unsigned) dot = _mm512_dpbusd_epi32(zero, wq, x[t]);
        if constexpr (P == Path::Signed) dot = _mm512_dpbusd_epi32(wbias, xb[t], wq);
        acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, dx[t]), acc[i][t]);
      }
    }
  }

  // Blocks b .. b + 7: every row's scales and every token's activation scales are loaded
  // once (8 floats) and spread to the four pairs by a permutation. g_lane[k]: the scale
  // group of block b + k minus that of block b.
  inline void octet(int64_t b, int64_t g_first, const int (&g_lane)[8]) {
    const int64_t spr = w.scales_per_row;
    const __mmask8 live = __mmask8((1u << (g_lane[7] + 1)) - 1);  // groups present
    __m512 d8[R], dx8[T];
    for (int i = 0; i < R; ++i)
      d8[i] = _mm512_castps256_ps512(
          _mm256_cvtph_ps(_mm_maskz_loadu_epi16(live, w.d.data() + (r + i) * spr + g_first)));
    for (int t = 0; t < T; ++t) dx8[t] = _mm512_castps256_ps512(_mm256_loadu_ps(a.d.data() + (t0 + t) * a.blocks + b));
    for (int p = 0; p < 4; ++p) {
      const __m512i di = _mm512_inserti32x8(_mm512_set1_epi32(g_lane[2 * p]), _mm256_set1_epi32(g_lane[2 * p + 1]), 1);
      const __m512i xi = _mm512_inserti32x8(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1);
      pair<false>(
          b + 2 * p, [&](int i) { return _mm512_permutexvar_ps(di, d8[i]); },
          [&](int t, int64_t) { return _mm512_permutexvar_ps(xi, dx8[t]); });
    }
  }

  void run(float* y, int64_t ldy, bool with_min) {
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
    const int64_t nb = w.blocks_per_row, bps = w.blocks_per_scale;
    // g0: the scale group of block b, k0: b's place in it (no division in the loop).
    int64_t b = 0, g0 = 0, k0 = 0;
    auto advance = [&](int64_t blocks) {
      for (k0 += blocks; k0 >= bps;) k0 -= bps, ++g0;
    };
    for (; b + 8 <= nb; b += 8) {
      int g_lane[8];
      for (int k = 0, g = 0, kk = int(k0); k < 8; ++k) {
        g_lane[k] = g;
        if (++kk == bps) kk = 0, ++g;
      }
      octet(b, g0, g_lane);
      advance(8);
    }
    for (; b < nb; b += 2) {
      const bool single = b + 1 == nb;
      const int64_t g1 = k0 + 1 == bps ? g0 + 1 : g0;
      auto d_of = [&](int i) {
        return pair_vec(scale_d(w, r + i, g0), single ? 0.0f : scale_d(w, r + i, g1));
      };
      auto dx_of = [&](int, int64_t ab) { return pair_vec(a.d[size_t(ab)], single ? 0.0f : a.d[size_t(ab) + 1]); };
      if (single) pair<true>(b, d_of, dx_of);
      else pair<false>(b, d_of, dx_of);
      advance(2);
    }
    for (int i = 0; i < R; ++i)
      for (int t = 0; t < T; ++t)
        y[(t0 + t) * ldy + r + i] = _mm512_reduce_add_ps(acc[i][t]) +
                                    (with_min ? min_term(w, r + i, a.s.data() + (t0 + t) * a.blocks) : 0.0f);
  }
};

template <Path P, CodeKind K, int R, int T>
void tile(const BlockQMatrix& w, const Q8Activations& a, int64_t r, int64_t t0, float* y, int64_t ldy,
          __m512i lut, __m512i zero_point, bool with_min) {
  Tile<P, K, R, T>{w, a, r, t0, lut, zero_point, {}}.run(y, ldy, with_min);
}

template <Path P, CodeKind K, int R>
void rows_all_tokens(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r, __m512i lut,
                     __m512i zero_point, bool with_min) {
  int64_t t = 0;
  for (; t + kTokenTile <= a.n; t += kTokenTile)
    tile<P, K, R, kTokenTile>(w, a, r, t, y, ldy, lut, zero_point, with_min);
  for (; t < a.n; ++t) tile<P, K, R, 1>(w, a, r, t, y, ldy, lut, zero_point, with_min);
}

template <Path P, CodeKind K>
void matmul_rows(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1,
                 int zero_point) {
  const __m512i lut =
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.lut.data())));
  const __m512i zp = _mm512_set1_epi8(char(zero_point));
  const bool with_min = w.has_min || (w.offset != 0.0f && P != Path::ZeroPoint);
  int64_t r = r0;
  for (; r + kRowTile <= r1; r += kRowTile) rows_all_tokens<P, K, kRowTile>(w, a, y, ldy, r, lut, zp, with_min);
  for (; r < r1; ++r) rows_all_tokens<P, K, 1>(w, a, y, ldy, r, lut, zp, with_min);
}

void dispatch(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  if (const int z = integer_zero_point(w)) return matmul_rows<Path::ZeroPoint, CodeKind::U4>(w, a, y, ldy, r0, r1, z);
  switch (w.kind) {
    case CodeKind::S4:  // handled above (zero point 8)
    case CodeKind::U4: return matmul_rows<Path::Unsigned, CodeKind::U4>(w, a, y, ldy, r0, r1, 0);
    case CodeKind::Lut4: return matmul_rows<Path::Signed, CodeKind::Lut4>(w, a, y, ldy, r0, r1, 0);
    case CodeKind::S8: return matmul_rows<Path::Signed, CodeKind::S8>(w, a, y, ldy, r0, r1, 0);
  }
}

}  // namespace

void blockq_matmul_avx512_zmm(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                              int64_t r1) {
  dispatch(w, a, y, ldy, r0, r1);
  clean_avx512_upper_state();
}

}  // namespace quantkit::kernels

QK_TARGET_END
#endif
