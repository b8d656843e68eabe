// Buffers of 2 MiB and more on transparent huge pages where the kernel offers them
// (madvise mode): a 4096 x 4096 FP32 buffer costs 16K page faults to touch on 4 KiB pages,
// and generation streams every packed weight once per token, a TLB miss every 4 KiB.
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace quantkit::kernels {

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
    // Aligned to a huge page, not rounded up to one: the partial last one stays on small pages.
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, bytes) != 0) throw std::bad_alloc();
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

}  // namespace quantkit::kernels
