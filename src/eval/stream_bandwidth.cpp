#include "quantkit/stream_bandwidth.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>

#include "quantkit/error.h"
#include "quantkit/thread_pool.h"

namespace quantkit {
namespace {

// Each thread runs a kernel on its slice [i0, i1) of every array.
void copy_kernel(const double* a, double* c, int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) c[i] = a[i];
}

void triad_kernel(double* a, const double* b, const double* c, int64_t i0, int64_t i1) {
  const double s = 3.0;
  for (int64_t i = i0; i < i1; ++i) a[i] = b[i] + s * c[i];
}

// Sums the bits as integers (integer adds vectorise; a floating-point sum would wait on the
// latency of each add) over 8 interleaved streams: one stream per thread leaves the core's
// prefetchers with too few misses in flight (measured: 6.6 vs 9.3 GB/s on 2 threads), and a
// matrix-vector kernel reads several rows at once.
uint64_t read_kernel(const double* b, int64_t i0, int64_t i1) {
  constexpr int kStreams = 8;
  const int64_t len = (i1 - i0) / kStreams;
  uint64_t sum[kStreams] = {};
  for (int64_t i = 0; i < len; ++i)
    for (int s = 0; s < kStreams; ++s) {
      uint64_t w;
      std::memcpy(&w, &b[i0 + s * len + i], sizeof w);
      sum[s] += w;
    }
  uint64_t total = 0;
  for (int64_t i = i0 + kStreams * len; i < i1; ++i) {  // the remainder
    uint64_t w;
    std::memcpy(&w, &b[i], sizeof w);
    total += w;
  }
  for (uint64_t s : sum) total += s;
  return total;
}

// Seconds of one parallel_for over [0, n); the pool gives each thread the same slice every
// time, so each streams the memory it first touched.
template <typename Body>
double timed(int64_t n, Body body) {
  const auto t0 = std::chrono::steady_clock::now();
  global_pool().parallel_for(n, [&](int64_t i0, int64_t i1) { body(i0, i1); });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

size_t default_stream_array_bytes() {
  long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
  const size_t four_llc = llc > 0 ? 4 * size_t(llc) : 0;
  return std::clamp(four_llc, size_t(64) << 20, size_t(1) << 30);
}

StreamBandwidth measure_stream_bandwidth(const StreamOptions& opt) {
  const size_t bytes = opt.array_bytes ? opt.array_bytes : default_stream_array_bytes();
  if (bytes < 4096) fail("stream bandwidth: arrays of {} bytes are too small (at least 4096)", bytes);
  if (opt.passes < 1) fail("stream bandwidth: {} passes (at least 1)", opt.passes);
  const int64_t n = int64_t(bytes / sizeof(double));
  // Uninitialised: the first touch happens in the threads that later stream each slice.
  std::unique_ptr<double[]> a(new double[size_t(n)]), b(new double[size_t(n)]), c(new double[size_t(n)]);
  double *A = a.get(), *B = b.get(), *C = c.get();
  std::atomic<uint64_t> sink{0};  // the read kernel's result, so its loop is not dropped

  timed(n, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) A[i] = 1.0, B[i] = 2.0, C[i] = 0.5;
  });
  double t_copy = 1e30, t_triad = 1e30, t_read = 1e30;
  for (int p = 0; p <= opt.passes; ++p) {  // pass 0 warms up
    const double tc = timed(n, [&](int64_t i0, int64_t i1) { copy_kernel(A, C, i0, i1); });
    const double tt = timed(n, [&](int64_t i0, int64_t i1) { triad_kernel(A, B, C, i0, i1); });
    const double tr = timed(n, [&](int64_t i0, int64_t i1) { sink += read_kernel(B, i0, i1); });
    if (p > 0) t_copy = std::min(t_copy, tc), t_triad = std::min(t_triad, tt), t_read = std::min(t_read, tr);
  }
  StreamBandwidth r;
  const double gb = double(n) * sizeof(double) / 1e9;
  r.copy_gbs = 2 * gb / t_copy;
  r.triad_gbs = 3 * gb / t_triad;
  r.read_gbs = gb / t_read;
  r.array_bytes = size_t(n) * sizeof(double);
  r.passes = opt.passes;
  r.threads = global_pool().size();
  return r;
}

}  // namespace quantkit
