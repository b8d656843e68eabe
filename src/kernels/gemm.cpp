#include "kernels/gemm.h"

#include <cblas.h>

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/avx512_state.h"
#include "quantkit/thread_pool.h"

namespace quantkit::kernels {
namespace {

// ---- C += A B, the error feedback's matrix product -------------------------------------
// OpenBLAS as packaged may not recognise the CPU and fall back to SSE3 kernels, so the
// feedback runs on its own AVX-512 / AVX2 micro-kernels where the CPU has them. Every
// element of C gets its k products summed in order in one FMA accumulator, then added:
// both kernels give the same bits, for any tiling and thread count.

// c (mr x nr, row stride ldc) += ap (k x mr, packed) * bp (k x nr, packed).
using MicroKernel = void (*)(int64_t k, const float* ap, const float* bp, float* c, int64_t ldc);

struct Kernel {
  int64_t mr = 0, nr = 0;
  MicroKernel fn = nullptr;  // null: no suitable SIMD, use OpenBLAS
};

#if defined(__x86_64__)
constexpr int64_t kMr512 = 12, kNr512 = 32, kMr256 = 6, kNr256 = 16;

__attribute__((target("avx512f"))) void micro_avx512(int64_t k, const float* ap, const float* bp, float* c,
                                                     int64_t ldc) {
  for (int64_t i = 0; i < kMr512; ++i)  // C arrives while the products run
    for (int64_t j : {0, 16, 31}) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + j), _MM_HINT_T0);
  __m512 acc[kMr512][2];
  for (auto& row : acc) row[0] = row[1] = _mm512_setzero_ps();
  for (int64_t l = 0; l < k; ++l, ap += kMr512, bp += kNr512) {
    const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
    for (int64_t i = 0; i < kMr512; ++i) {
      const __m512 a = _mm512_set1_ps(ap[i]);
      acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  for (int64_t i = 0; i < kMr512; ++i) {
    float* ci = c + i * ldc;
    _mm512_storeu_ps(ci, _mm512_add_ps(_mm512_loadu_ps(ci), acc[i][0]));
    _mm512_storeu_ps(ci + 16, _mm512_add_ps(_mm512_loadu_ps(ci + 16), acc[i][1]));
  }
  clean_avx512_upper_state();  // the 24 accumulators reach zmm16-31; packing code follows
}

__attribute__((target("avx2,fma"))) void micro_avx2(int64_t k, const float* ap, const float* bp, float* c,
                                                    int64_t ldc) {
  for (int64_t i = 0; i < kMr256; ++i)
    for (int64_t j : {0, 15}) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + j), _MM_HINT_T0);
  __m256 acc[kMr256][2];
  for (auto& row : acc) row[0] = row[1] = _mm256_setzero_ps();
  for (int64_t l = 0; l < k; ++l, ap += kMr256, bp += kNr256) {
    const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
    for (int64_t i = 0; i < kMr256; ++i) {
      const __m256 a = _mm256_set1_ps(ap[i]);
      acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
  }
  for (int64_t i = 0; i < kMr256; ++i) {
    float* ci = c + i * ldc;
    _mm256_storeu_ps(ci, _mm256_add_ps(_mm256_loadu_ps(ci), acc[i][0]));
    _mm256_storeu_ps(ci + 8, _mm256_add_ps(_mm256_loadu_ps(ci + 8), acc[i][1]));
  }
}
#endif

const Kernel& kernel() {
  static const Kernel k = [] {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) return Kernel{kMr512, kNr512, micro_avx512};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Kernel{kMr256, kNr256, micro_avx2};
#endif
    return Kernel{};
  }();
  return k;
}

// Rows (or output features) per single-threaded OpenBLAS call.
constexpr int64_t kBlasBlock = 64;

// Fallback for CPUs without the kernels: a view with a unit stride is a BLAS operand.
void gemm_acc_blas(int64_t m, int64_t n, int64_t k, View a, View b, float* c, int64_t ldc, float alpha) {
  const bool at = a.cs != 1, bt = b.cs != 1;  // a.rs == 1 / b.rs == 1: transposed operands
  for_fixed_blocks(m, kBlasBlock, [&](int64_t i0, int64_t i1) {
    cblas_sgemm(CblasRowMajor, at ? CblasTrans : CblasNoTrans, bt ? CblasTrans : CblasNoTrans, int(i1 - i0), int(n),
                int(k), alpha, a.p + i0 * a.rs, int(at ? a.cs : a.rs), b.p, int(bt ? b.cs : b.rs), 1.0f, c + i0 * ldc,
                int(ldc));
  });
}

// Work items in an order whose contiguous halves (quarters, ...) hold equal work when the
// work per item falls linearly: first, last, second, second last, ...
int64_t interleaved(int64_t i, int64_t n) { return i % 2 == 0 ? i / 2 : n - 1 - i / 2; }

}  // namespace

void for_fixed_blocks(int64_t n, int64_t block, const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t blocks = (n + block - 1) / block;
  global_pool().parallel_for(blocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b * block, std::min(n, (b + 1) * block));
  });
}

// Below this many rows of x, packing w into panels costs more than the kernels gain.
constexpr int64_t kMinPackedRows = 32;

void matmul_nt(const float* x, int64_t n, const float* w, int64_t out, int64_t in, float* y) {
  if (n <= 0 || out <= 0) return;
  if (n >= kMinPackedRows && kernel().fn) {
    thread_local Buffer packed;
    std::fill(y, y + n * out, 0.0f);
    return gemm_acc(n, out, in, View{x, in, 1}, View{w, 1, in}, y, out, packed);
  }
  // OpenBLAS runs single-threaded (set_num_threads); its own split would depend on the
  // thread count and its edge tiles round differently from its full ones.
  for_fixed_blocks(out, kBlasBlock, [&](int64_t o0, int64_t o1) {
    const int rows = int(o1 - o0);
    if (n == 1)
      cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, int(in), 1.0f, w + o0 * in, int(in), x, 1, 0.0f, y + o0, 1);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), rows, int(in), 1.0f, x, int(in), w + o0 * in,
                  int(in), 0.0f, y + o0, int(out));
  });
}

void gemm_acc(int64_t m, int64_t n, int64_t k, View a, View b, float* c, int64_t ldc, Buffer& packed,
              float alpha, bool lower) {
  if (m <= 0 || n <= 0 || k <= 0) return;
  const Kernel& kn = kernel();
  if (!kn.fn) return gemm_acc_blas(m, n, k, a, b, c, ldc, alpha);
  const int64_t mr = kn.mr, nr = kn.nr, tiles = (m + mr - 1) / mr;
  // A packed once in tiles of mr rows (k x mr each, zero padded, times alpha: exact).
  if (packed.size() < size_t(tiles * k * mr)) packed.resize(size_t(tiles * k * mr));
  float* ap = packed.data();
  ThreadPool& pool = global_pool();
  pool.parallel_for(tiles, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t l = 0; l < k; ++l)
        for (int64_t i = 0; i < mr; ++i) {
          const int64_t r = t * mr + i;
          ap[(t * k + l) * mr + i] = r < m ? alpha * a.at(r, l) : 0.0f;
        }
  });
  // Items: a panel of columns (B packed per item, kept in L2) times a chunk of rows; each
  // tile of a chunk runs along the panel, so C is read row by row.
  constexpr int64_t kPanel = 384, kChunk = 1152;  // multiples of both kernels' nr and mr
  const int64_t panels = (n + kPanel - 1) / kPanel, chunks = (m + kChunk - 1) / kChunk;
  pool.parallel_for(panels * chunks, [&](int64_t i0, int64_t i1) {
    std::vector<float> bp(size_t(k * kPanel)), edge(size_t(mr * nr));
    for (int64_t it = i0; it < i1; ++it) {
      const int64_t item = interleaved(it, panels * chunks), c0 = item / chunks * kPanel;
      const int64_t r_begin = item % chunks * kChunk, r_end = std::min(m, r_begin + kChunk);
      const int64_t pw = std::min(kPanel, n - c0), slivers = (pw + nr - 1) / nr;
      if (lower && r_end <= c0) continue;
      for (int64_t sv = 0; sv < slivers; ++sv)
        for (int64_t l = 0; l < k; ++l)
          for (int64_t j = 0; j < nr; ++j) {
            const int64_t col = sv * nr + j;
            bp[size_t((sv * k + l) * nr + j)] = col < pw ? b.at(l, c0 + col) : 0.0f;
          }
      for (int64_t r0 = r_begin; r0 < r_end; r0 += mr) {
        const int64_t h = std::min(mr, m - r0);
        const float* at = ap + r0 / mr * k * mr;
        for (int64_t sv = 0; sv < slivers; ++sv) {
          const int64_t cc = c0 + sv * nr, w = std::min(nr, n - cc);
          if (lower && r0 + h <= cc) break;  // this tile and the rest of the panel lie above
          float* ct = c + r0 * ldc + cc;
          const float* bt = &bp[size_t(sv * k * nr)];
          if (h == mr && w == nr) {
            kn.fn(k, at, bt, ct, ldc);
            continue;
          }
          // A partial tile goes through a full-size copy.
          std::fill(edge.begin(), edge.end(), 0.0f);
          for (int64_t i = 0; i < h; ++i) std::copy(ct + i * ldc, ct + i * ldc + w, &edge[size_t(i * nr)]);
          kn.fn(k, at, bt, edge.data(), nr);
          for (int64_t i = 0; i < h; ++i) std::copy(&edge[size_t(i * nr)], &edge[size_t(i * nr + w)], ct + i * ldc);
        }
      }
    }
  });
}


}  // namespace quantkit::kernels
