// Rate-distortion measurement of quantization formats on synthetic sources and real
// tensors: exact fixed bits/weight, entropy-coded bits/weight (rANS over the formats'
// symbol streams plus their side information), MSE, SQNR and, for the Gaussian source,
// the distance to Shannon's bound D(R) = sigma^2 2^(-2R), i.e. SQNR = 6.02 R dB.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quantkit/format.h"

namespace quantkit::rd {

// A weight matrix to quantize.
struct SourceData {
  std::string source;  // the --source string it was made from
  std::string kind;    // "gaussian", "laplace", "student-t", "tensor"
  int64_t rows = 0, cols = 0;
  std::vector<float> w;  // row-major rows x cols
};

// Sources (all generated deterministically from `seed`: std::mt19937_64 and our own
// transforms, so the samples are bit-identical on every platform and standard library):
//   gaussian          N(0, 1)
//   laplace           Laplace with variance 1 (scale b = 1/sqrt(2))
//   student-t:NU      Student's t with NU in [0.1, 1e6] degrees of freedom, unscaled (variance
//                     NU / (NU - 2) when NU > 2, infinite otherwise)
//   tensor:MODEL:NAME the tensor NAME of the model file MODEL (any container
//                     load_model reads), in its own shape [rows = prod(outer dims), cols]
// Synthetic sources are laid out as rows = n / cols by cols; n must be a multiple of cols,
// or n < cols (one row of n). n and cols are ignored for tensors.
SourceData make_source(const std::string& source, int64_t n, uint64_t seed, int64_t cols = 1024);

// One float per column, >= 0 and finite, from a text file (numbers separated by white
// space or commas, '#' starts a comment) or a raw little-endian float32 file of exactly
// 4 * cols bytes. Text is tried first. Throws Error naming the file and the problem.
std::vector<float> load_importance(const std::string& path, int64_t cols);

// The specs of `list`: comma-separated specs, or "all" = every example of every registered
// family (in registry order). Each spec is checked with make_format.
std::vector<std::string> expand_formats(const std::string& list);

// Per symbol stream of one quantized matrix.
struct StreamRate {
  std::string name;
  uint32_t alphabet = 0;
  uint64_t n_symbols = 0;
  uint64_t fixed_bits = 0;    // what the stream is taken to occupy inside Packed (see below)
  uint64_t coded_bits = 0;    // rANS-coded size, header and frequency table included
  double shannon_bits = 0;    // empirical entropy (no table)
  char coded_mode = 0;        // entropy::StreamLayout::mode
};

struct Result {
  std::string spec;
  int64_t rows = 0, cols = 0;
  bool skipped = false;
  std::string note;  // why it was skipped, or remarks (e.g. dense packing assumed)

  uint64_t packed_bits = 0;
  double fixed_bpw = 0;      // Packed.bits / n
  double entropy_bpw = 0;    // (side bits + sum of coded stream bits) / n
  double shannon_bpw = 0;    // (side bits + sum of stream Shannon bits) / n: no tables
  uint64_t side_bits = 0;    // Packed.bits - sum of stream fixed bits (scales, codebooks, ...)
  // False when the streams do not fit inside Packed.bits even densely packed (a format
  // whose symbols() is a different, redundant representation of what it stores, e.g.
  // per-coordinate pulses of an enumerated PVQ index): then entropy_bpw = fixed_bpw.
  bool streams_separable = true;
  std::vector<StreamRate> streams;

  double mse = 0;            // mean (w - q)^2
  double weighted_mse = 0;   // mean importance_j (w - q)^2 (equals mse without importance)
  double sqnr_db = 0;        // 10 log10(sum w^2 / sum (w - q)^2)
  bool has_bound = false;    // Gaussian source only
  double bound_fixed_db = 0, bound_entropy_db = 0;  // 6.0206 * rate
  double gap_fixed_db = 0, gap_entropy_db = 0;      // bound - SQNR

  double encode_seconds = 0, decode_seconds = 0;
  double encode_mbps = 0, decode_mbps = 0;  // MB (10^6 bytes) of FP32 input per second
};

// 20 log10(2): dB of SQNR per bit of rate on the Gaussian rate-distortion bound.
constexpr double kDbPerBit = 6.020599913279624;

// Quantizes, dequantizes, entropy-codes the symbol streams (checking that they decode
// back exactly) and measures. A shape the format rejects gives a skipped Result with the
// reason in `note`; other failures throw.
//
// Stream fixed bits: n * ceil(log2 alphabet) per stream (the width the format contract
// asks of a symbol field). When that total exceeds Packed.bits, the format packs some
// streams more densely (e.g. 5 ternary digits per byte, 1.6 bits instead of 2); then
// streams with a non-power-of-two alphabet are counted at n * log2(alphabet) (dense
// packing), which can only overstate the side information, never understate it. If the
// streams still do not fit, the side information is unknown and no entropy-coding gain
// is claimed (streams_separable = false, see Result).
Result measure(const Format& format, const SourceData& data, const float* importance);

}  // namespace quantkit::rd
