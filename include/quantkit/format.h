// Quantization formats: one interface, one registry, one spec-string parser.
//
// A Format maps a 2-D weight matrix W [rows = out, cols = in] to a packed bit string and
// back. Everything needed to decode (scales, zero points, codebooks, indices, seeds) is
// inside the packed bits, and storage_bits() is exactly their count: bits per weight are
// never estimated. Formats are created from spec strings ("int4:g128:asym", "q4_0",
// "vq:d8:k256", ...) parsed in one place (make_format); spec() prints the same string.
//
// An optional importance vector (one value per input column: the diagonal of the input
// Hessian, mean of x_j^2 over calibration data) makes a format minimise
// sum_ij importance_j * (W_ij - Q_ij)^2 when it chooses scales, clipping and codewords.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace quantkit {

// A quantized matrix.
struct Packed {
  int64_t rows = 0, cols = 0;
  uint64_t bits = 0;           // exact storage; bytes.size() == ceil(bits / 8)
  std::vector<uint8_t> bytes;  // the packed bit string (LSB-first within each byte)

  double bits_per_weight() const { return rows && cols ? double(bits) / double(rows * cols) : 0.0; }
};

// The integer symbols inside a packed matrix (levels, codebook indices), for entropy
// coding: alphabet = number of possible values, bits = their fixed-length width.
struct SymbolStream {
  std::string name;
  uint32_t alphabet = 0;
  std::vector<uint32_t> symbols;
};

class Format;

// Second-order (GPTQ-style) quantization drives a format column block by column block,
// feeding each block's rounding error forward into the columns not yet quantized. An
// encoder fixes step() columns at a time; blocks may come in any order (act-order), each
// once. Parameters of a group are chosen from the current (error-updated) weights when
// the encoder first touches the group, unless the encoder was created with static groups.
class ColumnEncoder {
 public:
  virtual ~ColumnEncoder() = default;
  virtual int64_t step() const = 0;
  // Columns from c on that must hold current values when encode(c) runs: a group's
  // width for encoders that choose group parameters when they reach the group.
  virtual int64_t lookahead() const { return step(); }
  // Quantizes columns [c, c + step()) (c a multiple of step()). cur[r * rs + j * cs] is
  // the current value of column c + j of row r, for j < max(step, lookahead) within the
  // matrix (only j < step() when blocks come out of order: act-order with static groups).
  // Writes the dequantized columns to deq[j * rows + r] (column-major: a column is
  // contiguous, as the GPTQ driver stores them).
  virtual void encode(int64_t c, const float* cur, int64_t rs, int64_t cs, float* deq) = 0;
  // The packed matrix once every block has been encoded.
  virtual Packed finish() = 0;
};

// The orthogonal transforms of a format that stores W = R^T Q' C with Q' in an inner format
// (rht). A runtime layer multiplies y = R^T (Q' (C x)) with the inner format's own kernels
// and never decodes W. Each call transforms n contiguous vectors, in place.
class WeightRotation {
 public:
  virtual ~WeightRotation() = default;
  virtual void rotate_inputs(float* x, int64_t n) const = 0;     // x <- C x (vectors of cols)
  virtual void unrotate_outputs(float* y, int64_t n) const = 0;  // y <- R^T y (vectors of rows)
};

struct RotatedPacked {
  std::unique_ptr<Format> inner;  // the format of Q'
  Packed inner_packed;            // Q', rows x cols as the outer matrix
  std::unique_ptr<WeightRotation> rotation;
};

class Format {
 public:
  virtual ~Format() = default;

  virtual std::string spec() const = 0;      // canonical spec; make_format(spec()) recreates it
  virtual std::string describe() const = 0;  // one line for `quantkit formats`

  // Empty when a rows x cols matrix can be stored, else the reason (e.g. "cols 172 is not
  // a multiple of the block size 32").
  virtual std::string check_shape(int64_t rows, int64_t cols) const { return {}; }

  // Exact storage in bits for a rows x cols matrix, everything included.
  virtual uint64_t storage_bits(int64_t rows, int64_t cols) const = 0;
  double bits_per_weight(int64_t rows, int64_t cols) const {
    return double(storage_bits(rows, cols)) / double(rows * cols);
  }

  // w: row-major rows x cols; importance: cols values or nullptr (uniform).
  virtual Packed quantize(const float* w, int64_t rows, int64_t cols, const float* importance) const = 0;
  // out: rows x cols.
  virtual void dequantize(const Packed& p, float* out) const = 0;

  // Rows [r0, r0 + nr) of dequantize(p), bit for bit, into out (nr x p.cols), reading only
  // those rows' bits and the shared data (headers, tensor scales, codebooks): the runtime
  // decodes a few rows at a time instead of the whole matrix. False (out untouched) when
  // the format cannot decode rows on their own (e.g. a transform mixing rows). nr = 0
  // decodes nothing and answers in O(1): a probe of the capability.
  virtual bool dequantize_rows(const Packed& p, int64_t r0, int64_t nr, float* out) const { return false; }

  // Set for formats of the form W = R^T Q' C (see WeightRotation), else nullopt.
  virtual std::optional<RotatedPacked> rotated(const Packed& p) const { return std::nullopt; }

  // The symbol streams of p (empty when the format has none worth coding).
  virtual std::vector<SymbolStream> symbols(const Packed& p) const { return {}; }

  // Width of independent column blocks: quantizing the whole matrix gives, on columns
  // [k*g, (k+1)*g), exactly what quantizing that block alone gives (groups of g inputs,
  // llama.cpp blocks). 0 when no such width exists (row/tensor scales, shared codebooks).
  virtual int64_t column_group(int64_t cols) const { return 0; }

  // Encoder for second-order quantization. The default works for every format: blocks of
  // column_group() columns quantized jointly, or — when the format has no independent
  // column blocks — the whole matrix in one block (no error feedback; equals the weighted
  // method). Formats override it to quantize column by column inside their groups.
  virtual std::unique_ptr<ColumnEncoder> column_encoder(const float* w, int64_t rows, int64_t cols,
                                                        const float* importance, bool static_groups) const;
};

// Parses a spec string; throws Error listing the valid forms when it is not one.
std::unique_ptr<Format> make_format(const std::string& spec);

// One registry row per format family.
struct FormatFamily {
  std::string name;                   // "int", "fp", "q4_0", "vq", ...
  std::string grammar;                // "int<b>[:g<G>|:row|:tensor][:sym|:asym|:mid]..."
  std::string summary;                // one line
  std::vector<std::string> examples;  // canonical specs, listed by `quantkit formats`
  // Returns the format for the spec tokens (split at ':'), nullptr when tokens[0] is not
  // this family's; throws Error when it is but the rest is malformed.
  std::function<std::unique_ptr<Format>(const std::vector<std::string>& tokens)> parse;
};

const std::vector<FormatFamily>& format_families();

// Registers a family; used by the static Registrar objects of src/formats/*.cpp.
void register_format_family(FormatFamily f);

}  // namespace quantkit
