// The machine's memory bandwidth, measured the way STREAM does: simple loops over arrays
// much larger than the last-level cache, on the global thread pool (each thread streams
// the slice it first touched), best of several passes. Bytes are counted as STREAM counts
// them (copy: read + write of one array each, triad: two reads + one write), without the
// write-allocate traffic; `read` (a sum over one array) is the pattern of inference, which
// only reads weights. The reference for "% of bandwidth" is the best of the three.
#pragma once
#include <cstddef>
#include <string>

namespace quantkit {

struct StreamOptions {
  size_t array_bytes = 0;  // per array; 0: default_stream_array_bytes()
  int passes = 5;          // timed passes after one untimed pass (page faults, warm-up)
};

struct StreamBandwidth {
  double copy_gbs = 0, triad_gbs = 0, read_gbs = 0;  // 1e9 bytes / s, best pass
  size_t array_bytes = 0;
  int passes = 0, threads = 0;

  double best_gbs() const;
  std::string best_kernel() const;  // "copy", "triad" or "read"
};

// 4 x the last-level cache (STREAM's rule), within [64 MiB, 1 GiB].
size_t default_stream_array_bytes();

// Allocates three arrays of opt.array_bytes (freed on return). Throws Error on a bad option.
StreamBandwidth measure_stream_bandwidth(const StreamOptions& opt = {});

}  // namespace quantkit
