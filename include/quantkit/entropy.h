// Entropy coding of quantized symbol streams (levels, codebook indices): a static rANS
// coder with a compact frequency table, used to report entropy-coded bits per weight.
//
// Coder: range-variant ANS (Duda 2013) in the byte-renormalised 32-bit form popularised
// by ryg_rans: state x in [2^23, 2^31), frequencies quantized to sum 2^P (P in 12..16,
// chosen per stream to minimise table + payload), two interleaved states for speed.
// Every present symbol gets frequency >= 1, so any stream round-trips exactly.
//
// Alphabets up to 2^16 are coded directly. Larger alphabets (up to 2^32 - 1) are split:
// each symbol s becomes a high digit s >> 16 and a low digit s & 0xffff, and the two digit
// streams are coded independently, each with its own table. That costs H(hi) + H(lo) >=
// H(s) (the dependence between the digits is not exploited) but keeps tables small; for
// codebook indices of large codebooks, which are close to uniform, the loss is small.
//
// When coding would not beat plain fixed-width packing (ceil(log2 alphabet) bits per
// symbol), the encoder stores the stream raw instead, so the coded size never exceeds the
// fixed size by more than the few header bytes.
//
// Every byte of the result counts: header, table and payload. decode() checks everything
// it reads and throws quantkit::Error on corrupt or truncated input (never crashes or
// loops unboundedly: work is bounded by the input size and max_symbols).
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace quantkit::entropy {

// Encodes symbols (each < alphabet; throws Error otherwise). alphabet >= 1.
std::vector<uint8_t> encode(const std::vector<uint32_t>& symbols, uint32_t alphabet);

// Decodes what encode() produced. Streams claiming more than max_symbols symbols are
// rejected (a hostile header must not make the decoder allocate without bound).
// The default limit (2^28 symbols, 1 GiB decoded) covers any single weight tensor's stream
// in practice; pass a larger one when more is expected.
std::vector<uint32_t> decode(std::span<const uint8_t> bytes, uint64_t max_symbols = uint64_t(1) << 28);

// Where the bytes of an encoded stream go (parses header and tables, not the payload).
struct StreamLayout {
  char mode = 0;           // 'R' rANS, 'W' raw fixed-width, 'S' split into 16-bit digits
  uint32_t alphabet = 0;
  uint64_t n = 0;          // symbols
  int precision = 0;       // frequency bits ('R'; for 'S' the larger of the two parts)
  size_t header_bytes = 0, table_bytes = 0, payload_bytes = 0;  // sum = stream size
};
StreamLayout inspect(std::span<const uint8_t> bytes);

// Empirical (zeroth-order) Shannon information of the stream in bits: n * H(p) with p the
// symbol frequencies of the stream itself. A lower bound for any static per-symbol coder,
// table not included.
double shannon_bits(const std::vector<uint32_t>& symbols);

// Bits of a fixed-width encoding: n * ceil(log2 alphabet) (0 for alphabet 1).
uint64_t fixed_width_bits(uint64_t n_symbols, uint32_t alphabet);

// ---- the pieces, exposed for tests and tools ------------------------------------------

// A static frequency table: freq[s] of the alphabet sum to 2^precision; every symbol with
// a non-zero count has freq >= 1.
struct FreqTable {
  int precision = 12;
  std::vector<uint32_t> freq;  // one per alphabet symbol

  // Quantizes counts to frequencies summing to 2^precision, minimising the coded payload
  // sum_s count_s * log2(2^P / freq_s). Needs 2^precision >= number of non-zero counts.
  static FreqTable from_counts(const std::vector<uint64_t>& counts, int precision);

  // Payload bits the table implies for those counts: sum count_s * log2(2^P / freq_s).
  double payload_bits(const std::vector<uint64_t>& counts) const;
};

}  // namespace quantkit::entropy
