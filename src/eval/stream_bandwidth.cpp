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

// Uninitialised storage: the first touch happens in the threads that later stream it.
struct Array {
  std::unique_ptr<double[]> p;
  explicit Array(size_t n) : p(new double[n]) {}
  double* data() const { return p.get(); }
};

// Seconds of one parallel_for over [0, n) in which each thread runs body on its slice.
template <typename Body>
double timed(int64_t n, Body body) {
  const auto t0 = std::chrono::steady_clock::now();
  global_pool().parallel_for(n, [&](int64_t i0, int64_t i1) { body(i0, i1); });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

double StreamBandwidth::best_gbs() const { return std::max({copy_gbs, triad_gbs, read_gbs}); }

std::string StreamBandwidth::best_kernel() const {
  const double best = best_gbs();
  return best == read_gbs ? "read" : best == copy_gbs ? "copy" : "triad";
}

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
  Array a(static_cast<size_t>(n)), b(static_cast<size_t>(n)), c(static_cast<size_t>(n));
  double *A = a.data(), *B = b.data(), *C = c.data();
  const double s = 3.0;
  std::atomic<uint64_t> sink{0};  // the read kernel's result, so the loop is not dropped

  auto init = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) A[i] = 1.0, B[i] = 2.0, C[i] = 0.5;
  };
  auto copy = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) C[i] = A[i];
  };
  auto triad = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) A[i] = B[i] + s * C[i];
  };
  // Sums the bits as integers: integer adds vectorise, a floating-point sum would wait on
  // the latency of each add.
  auto read = [&](int64_t i0, int64_t i1) {
    uint64_t sum = 0;
    for (int64_t i = i0; i < i1; ++i) {
      uint64_t w;
      std::memcpy(&w, &B[i], sizeof w);
      sum += w;
    }
    sink += sum;
  };

  timed(n, init);
  double t_copy = 1e30, t_triad = 1e30, t_read = 1e30;
  for (int p = 0; p <= opt.passes; ++p) {
    const double tc = timed(n, copy), tt = timed(n, triad), tr = timed(n, read);
    if (p == 0) continue;  // warm-up
    t_copy = std::min(t_copy, tc), t_triad = std::min(t_triad, tt), t_read = std::min(t_read, tr);
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
