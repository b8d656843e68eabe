// The machine's memory bandwidth, measured the way STREAM does: simple loops over arrays
// much larger than the last-level cache, on the global thread pool (each thread streams
// the slice it first touched), best of several passes. Copy and triad count bytes as STREAM
// does (copy: one array read + one written, triad: two read + one written; write-allocate
// traffic not counted). Read sums one array: the access pattern of inference, which only
// reads weights, and so the reference for "% of bandwidth" (copy and triad count writes,
// which a weight-reading loop does not get to add to its figure).
#pragma once
#include <cstddef>

namespace quantkit {

struct StreamOptions {
  size_t array_bytes = 0;  // per array; 0: default_stream_array_bytes()
  int passes = 5;          // timed passes after one untimed pass (page faults, warm-up)
};

struct StreamBandwidth {
  double copy_gbs = 0, triad_gbs = 0, read_gbs = 0;  // 1e9 bytes / s, best pass
  size_t array_bytes = 0;
  int passes = 0, threads = 0;

  double reference_gbs() const { return read_gbs; }
};

// 4 x the last-level cache (STREAM's rule), within [64 MiB, 1 GiB].
size_t default_stream_array_bytes();

// Allocates three arrays of opt.array_bytes (freed on return). Throws Error on a bad option.
StreamBandwidth measure_stream_bandwidth(const StreamOptions& opt = {});

}  // namespace quantkit
