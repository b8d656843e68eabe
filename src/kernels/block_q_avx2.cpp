// The block-integer kernels for AVX2 (+FMA, F16C): int8 products through vpmaddubsw.
#include <algorithm>
#include <cstdint>

#include "kernels/block_q.h"
#include "kernels/target_region.h"

#if defined(__x86_64__)
#include <immintrin.h>
QK_TARGET_BEGIN("avx2,fma,f16c")
#define QK_VNNI 0

namespace quantkit::kernels {
#include "kernels/block_q_simd.inc"

void blockq_matmul_avx2(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                        int64_t r1) {
  matmul_dispatch(w, a, y, ldy, r0, r1);
}
}  // namespace quantkit::kernels

QK_TARGET_END
#endif
