// HalfMatrix::multiply_amx and the AMX detection (see kernels/half_matrix.h).
#include "kernels/half_matrix.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define QK_HAVE_AMX 1
#endif

namespace quantkit::kernels {
namespace {

constexpr int64_t kChunk = 32;  // columns per tile (32 BF16 = 64 bytes)
constexpr int64_t kTileTokens = 16;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

#if QK_HAVE_AMX
// CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE; then Linux must grant the process the
// 8 KiB of tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 18).
bool detect_amx() {
  if (const char* env = std::getenv("QUANTKIT_AMX"); env && std::string(env) == "off") return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
}

struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3: sums (16 tokens x 16 rows FP32), 4-5: activations (16 tokens x 32 columns),
// 6-7: weights (16 column pairs x 16 rows x 2). Every tile is 16 rows of 64 bytes.
__attribute__((target("amx-tile"))) void configure_tiles() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  _tile_loadconfig(&cfg);
}

// The weights of a strip are read once per 32 tokens: the first pass comes from memory, and
// tile loads alone keep too few lines in flight. Past the end of the matrix a prefetch is
// harmless (it never faults).
constexpr int64_t kPrefetchChunks = 4;
inline void prefetch_chunk(const uint16_t* chunk) {
  for (int line = 0; line < 32; ++line) _mm_prefetch(reinterpret_cast<const char*>(chunk) + line * 64, _MM_HINT_T1);
}

// Stores sum tile T (tokens t.., rows r..) into y, through `tmp` where it overhangs.
#define QK_STORE_TILE(T, t, r)                                                                      \
  do {                                                                                              \
    if ((t) + kTileTokens <= n && (r) + 16 <= rows_) {                                              \
      _tile_stored(T, y + (t) * ldy + (r), ldy * 4);                                                \
    } else if ((t) < n && (r) < rows_) {                                                            \
      _tile_stored(T, tmp, 64);                                                                     \
      for (int64_t i = 0; i < std::min(kTileTokens, n - (t)); ++i)                                  \
        std::memcpy(y + ((t) + i) * ldy + (r), tmp + i * 16, size_t(std::min<int64_t>(16, rows_ - (r))) * 4); \
    }                                                                                               \
  } while (0)
#endif

}  // namespace

bool has_amx_bf16() {
#if QK_HAVE_AMX
  static const bool yes = detect_amx();
  return yes;
#else
  return false;
#endif
}

#if QK_HAVE_AMX
__attribute__((target("amx-tile,amx-bf16"))) void HalfMatrix::multiply_amx(const uint16_t* xb, int64_t n, float* y,
                                                                           int64_t ldy, int64_t s0, int64_t s1) const {
  configure_tiles();
  alignas(64) float tmp[16 * 16];
  const int64_t ld = chunks_ * kChunk, n16 = round_up(n, kTileTokens);
  for (int64_t s = s0; s < s1; ++s) {
    const uint16_t* strip = tiles_.data() + s * chunks_ * 1024;
    const int64_t r = s * kStripRows;
    for (int64_t t = 0; t < n16; t += 2 * kTileTokens) {
      const uint16_t* a = xb + t * ld;
      _tile_zero(0);
      _tile_zero(1);
      if (t + kTileTokens < n16) {  // two token tiles
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t k = 0; k < chunks_; ++k) {
          prefetch_chunk(strip + (k + kPrefetchChunks) * 1024);
          _tile_loadd(4, a + k * kChunk, ld * 2);
          _tile_loadd(5, a + kTileTokens * ld + k * kChunk, ld * 2);
          _tile_loadd(6, strip + k * 1024, 64);
          _tile_loadd(7, strip + k * 1024 + 512, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
        QK_STORE_TILE(2, t + kTileTokens, r);
        QK_STORE_TILE(3, t + kTileTokens, r + 16);
      } else {
        for (int64_t k = 0; k < chunks_; ++k) {
          prefetch_chunk(strip + (k + kPrefetchChunks) * 1024);
          _tile_loadd(4, a + k * kChunk, ld * 2);
          _tile_loadd(6, strip + k * 1024, 64);
          _tile_loadd(7, strip + k * 1024 + 512, 64);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
        }
      }
      QK_STORE_TILE(0, t, r);
      QK_STORE_TILE(1, t, r + 16);
    }
  }
  _tile_release();
}

#else
void HalfMatrix::multiply_amx(const uint16_t*, int64_t, float*, int64_t, int64_t, int64_t) const {
  std::abort();  // bf16_products() is never Amx here
}
#endif

}  // namespace quantkit::kernels
