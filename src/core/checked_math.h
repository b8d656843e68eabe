// Overflow-safe arithmetic for parsers of untrusted files: every size, count and offset a
// file claims goes through these before it is used, so a hostile value cannot wrap
// around, index out of bounds or trigger undefined behaviour (float casts included).
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>

namespace quantkit {

// a * b and a + b, nullopt on overflow.
inline std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<int64_t> checked_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// init * prod(dims); nullopt if a dim is negative or the product leaves [0, INT64_MAX]
// (element counts must also fit a signed index).
inline std::optional<uint64_t> checked_product(std::span<const int64_t> dims, uint64_t init = 1) {
  uint64_t n = init;
  for (int64_t d : dims) {
    if (d < 0) return std::nullopt;
    auto next = checked_mul(n, uint64_t(d));
    if (!next) return std::nullopt;
    n = *next;
  }
  if (n > uint64_t(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return n;
}

// Whether [offset, offset + length) lies inside [0, size).
inline bool range_inside(uint64_t offset, uint64_t length, uint64_t size) {
  auto end = checked_add(offset, length);
  return end && *end <= size;
}

// double -> float, nullopt when a finite value is outside float's range (the C++ cast
// would be undefined behaviour). NaN and infinities convert as they are.
inline std::optional<float> checked_float(double v) {
  if (std::isfinite(v) && std::fabs(v) > double(std::numeric_limits<float>::max())) return std::nullopt;
  return float(v);
}

}  // namespace quantkit
