// Leaving AVX-512 code cleanly (x86-64, GCC/Clang).
#pragma once

namespace quantkit::kernels {

#if defined(__x86_64__)
// Call at the end of every AVX-512 entry point (on each thread that ran it). vzeroupper,
// which GCC emits at function exit, does not clear the upper halves of zmm16-31; left
// dirty, every later SSE instruction on the thread (the baseline-compiled runtime, libm)
// pays a state-transition penalty: measured, SwiGLU's expf loop ran ~100x slower after the
// 512-bit matmul kernel. An EVEX write to xmm16-31 zeroes their upper bits.
__attribute__((target("avx512f"))) inline void clean_avx512_upper_state() {
  __asm__ volatile(
      "vpxord %%xmm16, %%xmm16, %%xmm16\n\tvpxord %%xmm17, %%xmm17, %%xmm17\n\t"
      "vpxord %%xmm18, %%xmm18, %%xmm18\n\tvpxord %%xmm19, %%xmm19, %%xmm19\n\t"
      "vpxord %%xmm20, %%xmm20, %%xmm20\n\tvpxord %%xmm21, %%xmm21, %%xmm21\n\t"
      "vpxord %%xmm22, %%xmm22, %%xmm22\n\tvpxord %%xmm23, %%xmm23, %%xmm23\n\t"
      "vpxord %%xmm24, %%xmm24, %%xmm24\n\tvpxord %%xmm25, %%xmm25, %%xmm25\n\t"
      "vpxord %%xmm26, %%xmm26, %%xmm26\n\tvpxord %%xmm27, %%xmm27, %%xmm27\n\t"
      "vpxord %%xmm28, %%xmm28, %%xmm28\n\tvpxord %%xmm29, %%xmm29, %%xmm29\n\t"
      "vpxord %%xmm30, %%xmm30, %%xmm30\n\tvpxord %%xmm31, %%xmm31, %%xmm31\n\t"
      "vzeroupper" ::
          : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
            "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
            "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");
}

#else
inline void clean_avx512_upper_state() {}
#endif

}  // namespace quantkit::kernels
