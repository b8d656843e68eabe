// Dense float kernels that do not depend on OpenBLAS's CPU detection (the packaged
// OpenBLAS may not recognise the CPU and fall back to SSE3 code): C += alpha A B on
// AVX-512 / AVX2 micro-kernels chosen at run time, bit-identical across instruction
// sets, tilings and thread counts; OpenBLAS on other CPUs.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <vector>

#include "kernels/large_pages.h"

namespace quantkit::kernels {

using Buffer = std::vector<float, LargePageAllocator<float>>;

// Element (i, j) of a strided matrix is p[i * rs + j * cs].
struct View {
  const float* p;
  int64_t rs, cs;
  float at(int64_t i, int64_t j) const { return p[i * rs + j * cs]; }
};

// c (m x n, row stride ldc) += alpha a (m x k) b (k x n), alpha = +-1. With `lower`, only
// the lower triangle (i >= j) is needed, and tiles wholly above it are skipped.
// `packed` is scratch space, kept by the caller across calls.
void gemm_acc(int64_t m, int64_t n, int64_t k, View a, View b, float* c, int64_t ldc, Buffer& packed,
              float alpha = 1.0f, bool lower = false);

// fn(begin, end) over [0, n) cut into blocks of `block`, the blocks spread over the pool.
// The cuts do not depend on the thread count, so a product split this way (one
// single-threaded OpenBLAS call per block) gives the same bits for any --threads.
void for_fixed_blocks(int64_t n, int64_t block, const std::function<void(int64_t, int64_t)>& fn);

// y[n, out] = x[n, in] w[out, in]^T, the same bits for any thread count.
void matmul_nt(const float* x, int64_t n, const float* w, int64_t out, int64_t in, float* y);

}  // namespace quantkit::kernels
