// The block-integer kernels for AVX-512 VNNI (256-bit vpdpbusd: one instruction per
// 32 products, no int16 intermediate).
#include <algorithm>
#include <cstdint>

#include "kernels/avx512_state.h"
#include "kernels/block_q.h"
#include "kernels/target_region.h"

#if defined(__x86_64__)
#include <immintrin.h>
QK_TARGET_BEGIN("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#define QK_VNNI 1

namespace quantkit::kernels {
#include "kernels/block_q_simd.inc"

void blockq_matmul_avx512(const BlockQMatrix& w, const Q8Activations& a, float* y, int64_t ldy, int64_t r0,
                          int64_t r1) {
  matmul_dispatch(w, a, y, ldy, r0, r1);
  clean_avx512_upper_state();  // EVEX code may use ymm16-31
}
}  // namespace quantkit::kernels

QK_TARGET_END
#endif
