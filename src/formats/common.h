// Building blocks shared by the format families: bit packing, spec-token parsing,
// grouping of a row into blocks, scale search. Families compose these; none copies them.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "quantkit/error.h"
#include "quantkit/format.h"

namespace quantkit::formats {

// Registers a family at static-initialisation time (the library is linked whole).
struct Registrar {
  explicit Registrar(FormatFamily f) { register_format_family(std::move(f)); }
};

// ---- bit packing (LSB-first) ------------------------------------------------------------

class BitWriter {
 public:
  void put(uint64_t value, int nbits);  // nbits in [0, 64]
  void put_f16(float v);
  void put_f32(float v);
  uint64_t bits() const { return bits_; }
  // Finishes and moves the bytes into p (sets p.bits and p.bytes).
  void finish(Packed& p);

 private:
  std::vector<uint8_t> bytes_;
  uint64_t bits_ = 0;
};

// A packed matrix's bits, possibly inside a larger bit string: bit i of the matrix is bit
// first + i of data (split's layers and ptq161's salient part are matrices inside another).
struct PackedBits {
  const uint8_t* data = nullptr;
  uint64_t first = 0, bits = 0;
  int64_t rows = 0, cols = 0;

  static PackedBits of(const Packed& p) { return {p.bytes.data(), 0, p.bits, p.rows, p.cols}; }
  // Bits [offset, offset + nbits) of this view as an r x c matrix (inside this view).
  PackedBits sub(uint64_t offset, uint64_t nbits, int64_t r, int64_t c) const;
};

class BitReader {
 public:
  explicit BitReader(const Packed& p) : BitReader(PackedBits::of(p)) {}
  explicit BitReader(const PackedBits& b)
      : data_(b.data), first_(b.first), size_bits_(b.bits), end_byte_((b.first + b.bits + 7) / 8) {}
  // nbits in [0, 64]; throws Error past the end. Inline: decoders call it once per code.
  uint64_t get(int nbits) {
    const uint64_t at = first_ + pos_;
    // One little-endian 64-bit load holds the field (at most 7 + 57 bits) when 8 bytes
    // from its first byte lie inside the data.
    if (nbits <= 57 && pos_ + uint64_t(nbits) <= size_bits_ && (at >> 3) + 8 <= end_byte_) {
      uint64_t word;
      std::memcpy(&word, data_ + (at >> 3), 8);
      pos_ += uint64_t(nbits);
      return (word >> (at & 7)) & ((uint64_t(1) << nbits) - 1);
    }
    return get_bytewise(nbits);
  }
  float get_f16();
  float get_f32();
  // Positions count from the view's first bit.
  uint64_t position() const { return pos_; }
  void seek(uint64_t bit) { pos_ = bit; }

 private:
  uint64_t get_bytewise(int nbits);

  const uint8_t* data_;
  uint64_t first_, size_bits_, end_byte_, pos_ = 0;
};

// Starts a Packed of the given shape whose storage is exactly `expected_bits`; checks at
// finish that the writer produced that many bits (the bit accounting is the contract).
Packed finish_packed(BitWriter& w, int64_t rows, int64_t cols, uint64_t expected_bits);

// ---- spec tokens ------------------------------------------------------------------------

// Parses the integer after `prefix` in `token` ("g128" with prefix "g" -> 128); nullopt if
// the token does not start with the prefix followed by digits only.
std::optional<int64_t> int_after(const std::string& token, const std::string& prefix);

// Walks the tokens after the family name; each option is consumed once, leftovers are an
// error naming them.
class SpecTokens {
 public:
  explicit SpecTokens(const std::vector<std::string>& tokens, size_t first = 1);
  // "<prefix><int>" anywhere among the remaining tokens.
  std::optional<int64_t> take_int(const std::string& prefix);
  bool take_flag(const std::string& flag);
  std::optional<std::string> take_one_of(const std::vector<std::string>& choices);
  void finish() const;  // throws listing unconsumed tokens

 private:
  std::vector<std::string> tokens_;
  std::vector<bool> used_;
};

// ---- grouping ---------------------------------------------------------------------------

// Which weights share a scale: the whole tensor, each row, or groups of G consecutive
// inputs of a row (the last group of a row may be shorter when G does not divide cols).
struct Grouping {
  enum Kind { Tensor, Row, Group } kind = Group;
  int64_t size = 128;  // G for Kind::Group

  // Parses "g<G>", "row" or "tensor" from the spec tokens; default when absent.
  static Grouping parse(SpecTokens& t, Grouping dflt);
  std::string spec() const;  // "g128", "row", "tensor"
  // Number of scale groups of a rows x cols matrix.
  int64_t count(int64_t rows, int64_t cols) const;
  // Calls fn(row_begin, row_end, col_begin, col_end) for each group, in storage order.
  void for_each(int64_t rows, int64_t cols, const std::function<void(int64_t, int64_t, int64_t, int64_t)>& fn) const;
};

// ---- row decoding ------------------------------------------------------------------------

// Base of the formats whose rows decode on their own (from their bits plus shared headers,
// tensor scales or codebooks): dequantize and dequantize_rows both run decode_rows, so they
// cannot disagree.
class RowFormat : public Format {
 public:
  void dequantize(const Packed& p, float* out) const final;
  bool dequantize_rows(const Packed& p, int64_t r0, int64_t nr, float* out) const final;
  // Checks b's size against storage_bits and the row range, then decodes rows
  // [r0, r0 + nr) into out (nr x b.cols); formats nested in another call this.
  void decode(const PackedBits& b, int64_t r0, int64_t nr, float* out) const;

 protected:
  // Rows [r0, r0 + nr) of b (size and range checked, nr >= 1).
  virtual void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const = 0;
};

// The bits of p, a matrix in format f, after checking that its bytes hold them.
PackedBits checked_bits(const Format& f, const Packed& p);

// The row decoder of f, or null when f's rows do not decode on their own.
inline const RowFormat* row_format(const Format& f) { return dynamic_cast<const RowFormat*>(&f); }

// A reader at the first bit of row r when `header` bits come first and every row then
// takes `row_bits` bits.
inline BitReader row_reader(const PackedBits& b, uint64_t header, uint64_t row_bits, int64_t r) {
  BitReader br(b);
  br.seek(header + uint64_t(r) * row_bits);
  return br;
}

// Rows [r0, r0 + nr) of a grouped scalar layout: `header` bits, then per group of g
// (Grouping order) its `param_bits` of parameters followed by its weights' codes,
// `code_bits` each, row-major (a tensor group: the parameters, then every code).
// read_group(br) reads one group's parameters and returns its decoder, a callable
// (BitReader&, float* out, int64_t n) that decodes the next n codes.
template <typename ReadGroup>
void decode_grouped_rows(const PackedBits& b, const Grouping& g, uint64_t header, uint64_t param_bits, int code_bits,
                         int64_t r0, int64_t nr, float* out, ReadGroup&& read_group) {
  const int64_t cols = b.cols;
  BitReader br(b);
  if (g.kind == Grouping::Tensor) {
    br.seek(header);
    auto decode = read_group(br);
    br.seek(header + param_bits + uint64_t(r0 * cols) * uint64_t(code_bits));
    decode(br, out, nr * cols);
    return;
  }
  const int64_t size = g.kind == Grouping::Row ? cols : g.size;
  const uint64_t row_bits = uint64_t(g.count(1, cols)) * param_bits + uint64_t(cols) * uint64_t(code_bits);
  br.seek(header + uint64_t(r0) * row_bits);
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += size) {
      auto decode = read_group(br);
      decode(br, out + r * cols + c0, std::min(size, cols - c0));
    }
}

// ---- weighted error and scale search ---------------------------------------------------

// sum_i imp_i (x_i - y_i)^2 (imp null: 1), in double.
double weighted_sse(const float* x, const float* y, const float* imp, int64_t n, int64_t imp_stride = 1);

// Grid search of a scale: tries `steps` candidates s = s_max * (1 - k * (1 - min_ratio) / steps)
// for k = 0..steps-1 and returns the one minimising err(s). err(s) is the (weighted)
// error of quantizing with scale s. Used for clipping search in scalar formats.
float search_scale(float s_max, float min_ratio, int steps, const std::function<double(float)>& err);

// Inverse CDF of N(0,1) (NormalFloat levels, Gaussian trellis codebooks).
double normal_quantile(double p);

}  // namespace quantkit::formats
