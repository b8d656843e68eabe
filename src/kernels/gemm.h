// Dense float kernels that do not depend on OpenBLAS's CPU detection (the packaged
// OpenBLAS may not recognise the CPU and fall back to SSE3 code): C += alpha A B on
// AVX-512 / AVX2 micro-kernels chosen at run time, bit-identical across instruction
// sets, tilings and thread counts; OpenBLAS on other CPUs.
#pragma once
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <vector>

namespace quantkit::kernels {

// The n x n buffers go on transparent huge pages where the kernel offers them (madvise
// mode): on 4 KiB pages a 4096 x 4096 buffer costs 16K page faults to touch.
template <typename T>
struct LargePageAllocator {
  using value_type = T;
  static constexpr size_t kHuge = size_t(2) << 20;
  LargePageAllocator() = default;
  template <typename U>
  LargePageAllocator(const LargePageAllocator<U>&) {}
  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes < kHuge) return std::allocator<T>().allocate(n);
    void* p = std::aligned_alloc(kHuge, (bytes + kHuge - 1) / kHuge * kHuge);
    if (!p) throw std::bad_alloc();
    madvise(p, bytes, MADV_HUGEPAGE);  // advice: ordinary pages if refused
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    if (n * sizeof(T) < kHuge) return std::allocator<T>().deallocate(p, n);
    std::free(p);
  }
  template <typename U>
  bool operator==(const LargePageAllocator<U>&) const {
    return true;
  }
};
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
