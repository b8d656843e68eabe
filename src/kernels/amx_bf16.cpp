// HalfMatrix::multiply_amx and the AMX detection (see kernels/half_matrix.h).
#include "kernels/half_matrix.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "quantkit/fp16.h"

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define QK_HAVE_AMX 1
#endif

namespace quantkit::kernels {
namespace {

constexpr int64_t kChunk = HalfMatrix::kChunkCols;  // columns per tile
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
constexpr TileConfig tile_config() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  return cfg;
}
// In read-only static storage: GCC 12's _tile_loadconfig tells the optimiser it reads 8
// bytes, so a config filled on the stack may lose its other stores (ggml's AMX kernels
// crash that way, see scripts/bench-peer.sh).
alignas(64) constexpr TileConfig kTileConfig = tile_config();

__attribute__((target("amx-tile"))) void configure_tiles() { _tile_loadconfig(&kTileConfig); }

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

#if QK_HAVE_AMX
namespace {
// One product with every edge case (rows and tokens off the tile sizes, two token tiles,
// two chunks) on small integers, whose BF16 products and FP32 sums are exact: AMX is used
// only if it gives the exact result. The tile intrinsics are inline assembly that the
// compiler sees only in part (see kTileConfig), and no CI machine may have AMX to test on.
bool amx_self_check() {
  constexpr int64_t rows = 40, cols = 50, n = 20;
  std::vector<uint16_t> w(rows * cols);
  std::vector<float> x(n * cols);
  for (int64_t i = 0; i < rows * cols; ++i) w[size_t(i)] = f32_to_bf16(float(int(i % 7) - 3));
  for (int64_t i = 0; i < n * cols; ++i) x[size_t(i)] = float(int(i % 5) - 2);
  const HalfMatrix m(HalfType::BF16, w.data(), rows, cols);
  std::vector<uint16_t> xb;
  pad_bf16_activations(x.data(), n, cols, xb);
  std::vector<float> y(n * rows, -1.0f);
  m.multiply_amx(xb.data(), n, y.data(), rows, 0, m.strips());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      float ref = 0;
      for (int64_t c = 0; c < cols; ++c) ref += float(int((r * cols + c) % 7) - 3) * x[size_t(t * cols + c)];
      if (y[size_t(t * rows + r)] != ref) return false;
    }
  return true;
}
}  // namespace
#endif

bool has_amx_bf16() {
#if QK_HAVE_AMX
  static const bool yes = detect_amx() && amx_self_check();
  return yes;
#else
  return false;
#endif
}

#if QK_HAVE_AMX
// noinline: the tile loads are assembly without a memory input, so callers' stores to the
// activations must be complete at a real call.
__attribute__((target("amx-tile,amx-bf16"), noinline)) void HalfMatrix::multiply_amx(const uint16_t* xb, int64_t n, float* y,
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
