// The 16-row kernel (AVX-512 VNNI) on the interleaved layout of blockq_interleave16.
//
// Lane i of a 512-bit register belongs to row i of a group of 16; a register of codes holds
// 4 consecutive codes of every row (one 4-byte word of the block), so
//   vpdpbusd(acc, codes, broadcast of 4 activations)
// adds 4 products to each row's running sum of the block. The 8 words of a 32-block leave
// the block's integer dot product of all 16 rows in one register; it is converted and
// scaled once (row scales x the token's scale), instead of once per row as in the
// row-major kernels. Codes are unsigned (u8 x s8 is what vpdpbusd multiplies): 4-bit codes
// as stored, bytes + 128; the zero point z enters as an integer bias -z * sum(xq) per
// (token, block), other offsets as m * (token block sum) after the scaling.
// Tiles: one group x up to 8 tokens; the group's block codes are unpacked once per tile.
#include <algorithm>
#include <cstdint>

#include "kernels/avx512_state.h"
#include "kernels/block_q.h"
#include "kernels/target_region.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace quantkit::kernels {

bool blockq_i16_supported() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

}  // namespace quantkit::kernels

#if defined(__x86_64__)
QK_TARGET_BEGIN("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace quantkit::kernels {
namespace {

constexpr int kMaxTokens = 8;
// Generation prefetches every cache line of the block this many blocks ahead (4 KiB of
// 4-bit codes), into L2 (T1), not L1: a T0 prefetch holds one of the core's few L1 fill
// buffers until the line arrives, which capped the lines in flight. Measured on 100
// 5632 x 2048 matrices (> LLC), 2 threads, 4-bit codes: T0 at 32 blocks 286 us per matrix
// with one scale per block (q4_0) and 332 us with one per 4 blocks (int4:g128: fewer
// scale-line misses, less for the hardware prefetcher to follow); T1 at 16 blocks 235 and
// 220 us; T1 at 32 245 and 238. One thread: T0/32 553 and 625 us, T1/16 450 and 423 us.
constexpr int64_t kPrefetchBlocks = 16;

enum class Codes : uint8_t { Nibbles, LutNibbles, Bytes };

struct GroupArgs {
  const BlockQMatrix& w;
  const Q8Activations& a;
  float* y;
  int64_t ldy;
  int zero_point;      // integer zero point of the unsigned codes (0: none)
  __m512i lut;         // LutNibbles: table + 128, in every 128-bit lane
  bool stored_min;     // Min: m stored per scale (else m = -offset * d)
};

// Rows g*16 .. g*16 + live - 1, tokens t0 .. t0 + T - 1.
template <Codes C, bool Min, int T>
void group_tile(const GroupArgs& p, int64_t g, int live, int64_t t0) {
  const BlockQMatrix& w = p.w;
  const Q8Activations& a = p.a;
  const int64_t nb = w.blocks_per_row, spr = w.scales_per_row, bps = w.blocks_per_scale;
  const int64_t block_bytes = 16 * w.code_bytes();
  const uint8_t* q = w.q.data() + g * nb * block_bytes;
  const uint16_t* dg = w.d.data() + g * spr * 16;
  const uint16_t* mg = Min && p.stored_min ? w.m.data() + g * spr * 16 : nullptr;
  const __m512 neg_offset = _mm512_set1_ps(-w.offset);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
  int64_t s = 0, k = 0;  // the scale group of block b, and b's place in it
  for (int64_t b = 0; b < nb; ++b, q += block_bytes) {
    __m512i codes[8];
    if constexpr (C == Codes::Bytes) {
      for (int j = 0; j < 8; ++j) codes[j] = _mm512_loadu_si512(q + 64 * j);
    } else {
      for (int j = 0; j < 4; ++j) {
        const __m512i packed = _mm512_loadu_si512(q + 64 * j);
        codes[j] = _mm512_and_si512(packed, low4);                             // codes 4j .. 4j+3
        codes[j + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);  // codes 16+4j ..
        if constexpr (C == Codes::LutNibbles) {
          codes[j] = _mm512_shuffle_epi8(p.lut, codes[j]);
          codes[j + 4] = _mm512_shuffle_epi8(p.lut, codes[j + 4]);
        }
      }
    }
    if constexpr (T == 1)  // generation streams the weights once
      for (int64_t line = 0; line < block_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(q + kPrefetchBlocks * block_bytes + line), _MM_HINT_T1);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dg + s * 16)));
    __m512 m = _mm512_setzero_ps();
    if constexpr (Min)
      m = p.stored_min ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mg + s * 16)))
                       : _mm512_mul_ps(d, neg_offset);
    for (int t = 0; t < T; ++t) {
      const int64_t ab = (t0 + t) * a.blocks + b;
      const int32_t* x = reinterpret_cast<const int32_t*>(a.q.data() + ab * kQBlock);
      __m512i dot = _mm512_set1_epi32(-p.zero_point * a.qsum[size_t(ab)]);
      for (int j = 0; j < 8; ++j) dot = _mm512_dpbusd_epi32(dot, codes[j], _mm512_set1_epi32(x[j]));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, _mm512_set1_ps(a.d[size_t(ab)])), acc[t]);
      if constexpr (Min) acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(a.s[size_t(ab)]), acc[t]);
    }
    if (++k == bps) k = 0, ++s;
  }
  const __mmask16 mask = __mmask16((1u << live) - 1);
  for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(p.y + (t0 + t) * p.ldy + g * 16, mask, acc[t]);
}

template <Codes C, bool Min>
void groups(const GroupArgs& p, int64_t r0, int64_t r1) {
  using Fn = void (*)(const GroupArgs&, int64_t, int, int64_t);
  static constexpr Fn tail[kMaxTokens] = {nullptr,
                                          group_tile<C, Min, 1>,
                                          group_tile<C, Min, 2>,
                                          group_tile<C, Min, 3>,
                                          group_tile<C, Min, 4>,
                                          group_tile<C, Min, 5>,
                                          group_tile<C, Min, 6>,
                                          group_tile<C, Min, 7>};
  for (int64_t g = r0 / 16; g * 16 < r1; ++g) {
    const int live = int(std::min<int64_t>(16, r1 - g * 16));
    int64_t t = 0;
    for (; t + kMaxTokens <= p.a.n; t += kMaxTokens) group_tile<C, Min, kMaxTokens>(p, g, live, t);
    if (t < p.a.n) tail[p.a.n - t](p, g, live, t);
  }
}

template <Codes C>
void with_min(const GroupArgs& p, bool min, int64_t r0, int64_t r1) {
  if (min) return groups<C, true>(p, r0, r1);
  groups<C, false>(p, r0, r1);
}

}  // namespace

void blockq_matmul_i16(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                       int64_t r1) {
  if (r0 >= r1) return;
  alignas(16) int8_t lut128[16];
  for (int i = 0; i < 16; ++i) lut128[i] = int8_t(w.lut[size_t(i)] + 128);
  // Bytes and looked-up values are stored / tabled + 128: that is their zero point.
  const int z = w.kind == CodeKind::S8 || w.kind == CodeKind::Lut4 ? 128 : integer_zero_point(w);
  const bool min = w.has_min || (z == 0 && w.offset != 0.0f) || (w.kind != CodeKind::U4 && w.offset != 0.0f);
  const GroupArgs p{w, a, y, ldy, z,
                    _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(lut128))), w.has_min};
  switch (w.kind) {
    case CodeKind::S4:
    case CodeKind::U4: with_min<Codes::Nibbles>(p, min, r0, r1); break;
    case CodeKind::Lut4: with_min<Codes::LutNibbles>(p, min, r0, r1); break;
    case CodeKind::S8: with_min<Codes::Bytes>(p, min, r0, r1); break;
  }
  clean_avx512_upper_state();
}

}  // namespace quantkit::kernels

QK_TARGET_END
#endif
