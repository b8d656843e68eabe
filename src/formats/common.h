// Building blocks shared by the format families: bit packing, spec-token parsing,
// grouping of a row into blocks, scale search. Families compose these; none copies them.
#pragma once
#include <cmath>
#include <cstdint>
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

class BitReader {
 public:
  explicit BitReader(const Packed& p) : data_(p.bytes.data()), size_bits_(p.bits) {}
  uint64_t get(int nbits);  // throws Error past the end
  float get_f16();
  float get_f32();
  uint64_t position() const { return pos_; }
  void seek(uint64_t bit) { pos_ = bit; }

 private:
  const uint8_t* data_;
  uint64_t size_bits_, pos_ = 0;
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
