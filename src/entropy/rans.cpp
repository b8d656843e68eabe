// Static rANS coder for quantized symbol streams (see include/quantkit/entropy.h).
//
// Encoded stream (all integers little-endian, varints LEB128):
//   byte    mode: 'R' rANS, 'W' raw fixed-width, 'S' split into high/low 16-bit digits
//   varint  alphabet (1 .. 2^32-1), varint n (symbols)
//   'R': byte precision P (12..16); frequency table (bit-packed, padded to a byte);
//        then, unless one symbol holds the whole table, two 32-bit states and the
//        renormalisation bytes up to the end of the stream.
//   'W': n symbols of ceil(log2 alphabet) bits, LSB-first, padded to a byte.
//   'S': varint byte length of the high-digit stream, the high-digit stream, the
//        low-digit stream (each a complete stream of mode 'R' or 'W').
// Frequency table: Elias-gamma(D) with D the number of present symbols, then for each
// present symbol in ascending order gamma(gap + 1) (gap = absent symbols skipped since
// the previous one) and gamma(freq).
#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "quantkit/entropy.h"
#include "quantkit/error.h"

namespace quantkit::entropy {
namespace {

constexpr uint8_t kModeRans = 'R', kModeRaw = 'W', kModeSplit = 'S';
constexpr uint32_t kStateLow = 1u << 23;  // states live in [2^23, 2^31)
constexpr int kMinPrecision = 12, kMaxPrecision = 16;
constexpr uint32_t kDirectAlphabet = 1u << 16;

int bits_for(uint32_t alphabet) {  // ceil(log2 alphabet)
  int b = 0;
  while (b < 32 && (uint64_t(1) << b) < alphabet) ++b;
  return b;
}

// ---- byte and bit IO ---------------------------------------------------------------

void put_varint(std::vector<uint8_t>& out, uint64_t v) {
  do {
    out.push_back(uint8_t((v & 0x7f) | (v >= 0x80 ? 0x80 : 0)));
    v >>= 7;
  } while (v);
}

class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> b) : b_(b) {}
  size_t pos() const { return pos_; }
  size_t left() const { return b_.size() - pos_; }
  const uint8_t* here() const { return b_.data() + pos_; }
  void skip(size_t n) {
    need(n);
    pos_ += n;
  }
  void need(size_t n) const {
    if (left() < n) fail("rANS stream truncated: needs {} more bytes at offset {}, has {}", n, pos_, left());
  }
  uint8_t byte() {
    need(1);
    return b_[pos_++];
  }
  uint32_t u32() {
    need(4);
    uint32_t v = uint32_t(b_[pos_]) | uint32_t(b_[pos_ + 1]) << 8 | uint32_t(b_[pos_ + 2]) << 16 | uint32_t(b_[pos_ + 3]) << 24;
    pos_ += 4;
    return v;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const uint8_t b = byte();
      if (shift == 63 && b > 1) break;
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("rANS stream: malformed varint at offset {}", pos_);
  }

 private:
  std::span<const uint8_t> b_;
  size_t pos_ = 0;
};

class BitPacker {
 public:
  void put(uint64_t v, int nbits) {  // nbits in [0, 32]
    if (nbits < 64) v &= (uint64_t(1) << nbits) - 1;
    acc_ |= v << fill_;
    fill_ += nbits;
    bits_ += uint64_t(nbits);
    while (fill_ >= 8) {
      bytes_.push_back(uint8_t(acc_));
      acc_ >>= 8;
      fill_ -= 8;
    }
  }
  void put_gamma(uint64_t v) {  // v >= 1: floor(log2 v) zeros, a one, the low bits
    const int len = 63 - __builtin_clzll(v);
    put(0, len);
    put(1, 1);
    put(v, len);
  }
  uint64_t bits() const { return bits_; }
  // The bytes, the last one zero-padded.
  std::vector<uint8_t> finish() {
    if (fill_ > 0) bytes_.push_back(uint8_t(acc_));
    acc_ = 0, fill_ = 0;
    return std::move(bytes_);
  }

 private:
  std::vector<uint8_t> bytes_;
  uint64_t acc_ = 0, bits_ = 0;
  int fill_ = 0;
};

class BitUnpacker {
 public:
  BitUnpacker(const uint8_t* data, size_t nbytes) : data_(data), size_bits_(uint64_t(nbytes) * 8) {}
  uint64_t get(int nbits) {
    if (pos_ + uint64_t(nbits) > size_bits_) fail("rANS stream truncated inside bit-packed data");
    uint64_t v = 0;
    for (int i = 0; i < nbits; ++i, ++pos_) v |= uint64_t((data_[pos_ >> 3] >> (pos_ & 7)) & 1) << i;
    return v;
  }
  uint64_t get_gamma(int max_len) {
    int len = 0;
    while (get(1) == 0)
      if (++len > max_len) fail("rANS frequency table: code longer than {} bits", max_len);
    return (uint64_t(1) << len) | get(len);
  }
  // Bytes consumed, after checking that the padding up to the byte boundary is zero (so
  // every stream has exactly one encoding and flipped padding bits are caught).
  size_t finish_bytes() {
    while (pos_ & 7)
      if (get(1)) fail("rANS stream: non-zero padding bits");
    return size_t(pos_ / 8);
  }

 private:
  const uint8_t* data_;
  uint64_t size_bits_, pos_ = 0;
};

// ---- frequency tables on the wire ------------------------------------------------------

void write_table(BitPacker& w, const FreqTable& t) {
  uint64_t present = 0;
  for (uint32_t f : t.freq) present += f > 0;
  w.put_gamma(present);
  int64_t prev = -1;
  for (size_t s = 0; s < t.freq.size(); ++s) {
    if (!t.freq[s]) continue;
    w.put_gamma(uint64_t(int64_t(s) - prev));
    w.put_gamma(t.freq[s]);
    prev = int64_t(s);
  }
}

uint64_t table_bits(const FreqTable& t) {
  BitPacker w;
  write_table(w, t);
  return w.bits();
}

FreqTable read_table(ByteReader& in, uint32_t alphabet, int precision) {
  FreqTable t;
  t.precision = precision;
  t.freq.assign(alphabet, 0);
  const uint64_t total = uint64_t(1) << precision;
  BitUnpacker bits(in.here(), in.left());
  const uint64_t present = bits.get_gamma(17);
  if (present > alphabet || present > total) fail("rANS frequency table: {} symbols for alphabet {}", present, alphabet);
  int64_t prev = -1;
  uint64_t sum = 0;
  for (uint64_t i = 0; i < present; ++i) {
    const int64_t s = prev + int64_t(bits.get_gamma(17));
    if (s >= int64_t(alphabet)) fail("rANS frequency table: symbol {} outside alphabet {}", s, alphabet);
    const uint64_t f = bits.get_gamma(17);
    sum += f;
    if (sum > total) fail("rANS frequency table: frequencies exceed 2^{}", precision);
    t.freq[size_t(s)] = uint32_t(f);
    prev = s;
  }
  if (sum != total) fail("rANS frequency table: frequencies sum to {}, not 2^{}", sum, precision);
  in.skip(bits.finish_bytes());
  return t;
}

// ---- the rANS core ---------------------------------------------------------------------

struct CodingTable {
  int precision;
  std::vector<uint32_t> freq, start;  // per symbol
};

CodingTable coding_table(const FreqTable& t) {
  CodingTable c{t.precision, t.freq, std::vector<uint32_t>(t.freq.size())};
  uint32_t cum = 0;
  for (size_t s = 0; s < t.freq.size(); ++s) c.start[s] = cum, cum += t.freq[s];
  return c;
}

// One encoding step (ryg_rans style): first shift out low bytes so that the state after
// the step stays below 2^31, then x -> (x / f) * 2^P + x % f + start.
inline void encode_step(uint32_t& x, uint32_t f, uint32_t start, int precision, uint8_t*& out) {
  const uint32_t x_max = ((kStateLow >> precision) << 8) * f;
  while (x >= x_max) {
    *--out = uint8_t(x);
    x >>= 8;
  }
  x = ((x / f) << precision) + (x % f) + start;
}

// Encodes with two interleaved states (symbol i uses state i & 1). rANS is LIFO, so the
// symbols are encoded last to first and the bytes are written back to front; the decoder
// then reads them front to back.
void rans_encode_payload(const std::vector<uint32_t>& symbols, const CodingTable& t, std::vector<uint8_t>& out) {
  // Each step emits at most 2 bytes (x < 2^31 and x_max >= 2^15), plus the two states.
  std::vector<uint8_t> buf(2 * symbols.size() + 8);
  uint8_t* const end = buf.data() + buf.size();
  uint8_t* p = end;
  uint32_t x0 = kStateLow, x1 = kStateLow;
  const int prec = t.precision;
  size_t i = symbols.size();
  if (i & 1) {
    --i;
    encode_step(x0, t.freq[symbols[i]], t.start[symbols[i]], prec, p);
  }
  while (i > 0) {
    i -= 2;
    encode_step(x1, t.freq[symbols[i + 1]], t.start[symbols[i + 1]], prec, p);
    encode_step(x0, t.freq[symbols[i]], t.start[symbols[i]], prec, p);
  }
  for (uint32_t x : {x1, x0})  // state 0 first in the stream, each little-endian
    for (int b = 3; b >= 0; --b) *--p = uint8_t(x >> (8 * b));
  out.insert(out.end(), p, end);
}

// What the decoder needs per slot of the 2^P table: the symbol owning the slot, its
// frequency and the slot's offset inside the symbol's range.
struct Slot {
  uint32_t freq;
  uint16_t offset;
  uint16_t symbol;
};

std::vector<Slot> decode_table(const FreqTable& t) {
  std::vector<Slot> slots(size_t(1) << t.precision);
  size_t next = 0;
  for (size_t s = 0; s < t.freq.size(); ++s)
    for (uint32_t k = 0; k < t.freq[s]; ++k) slots[next++] = {t.freq[s], uint16_t(k), uint16_t(s)};
  return slots;
}

// One decoding step without the input check; `p` must hold at least 3 bytes (the
// state after a step is >= 2^(23 - P) >= 2^7, so at most 3 bytes are shifted in).
inline uint32_t decode_step_unchecked(uint32_t& x, const Slot* slots, int precision, const uint8_t*& p) {
  const Slot& e = slots[x & ((1u << precision) - 1)];
  x = e.freq * (x >> precision) + e.offset;
  while (x < kStateLow) x = (x << 8) | *p++;
  return e.symbol;
}

void rans_decode_payload(ByteReader& in, const std::vector<Slot>& slots, int precision, uint64_t n,
                         std::vector<uint32_t>& out) {
  uint32_t x[2] = {in.u32(), in.u32()};
  for (uint32_t v : x)
    if (v < kStateLow || v >= (kStateLow << 8)) fail("rANS stream: initial state {:#x} out of range", v);
  const uint8_t* p = in.here();
  const uint8_t* const end = p + in.left();
  // Decodes in chunks so memory follows the input actually present, not the header's n.
  constexpr uint64_t kChunk = uint64_t(1) << 16;
  for (uint64_t done = 0; done < n;) {
    const uint64_t chunk = std::min(kChunk, n - done);
    out.resize(size_t(done + chunk));
    uint32_t* o = out.data() + done;
    uint64_t i = 0;
    for (; i + 2 <= chunk && end - p >= 6; i += 2) {  // fast path: two steps, no checks
      o[i] = decode_step_unchecked(x[0], slots.data(), precision, p);
      o[i + 1] = decode_step_unchecked(x[1], slots.data(), precision, p);
    }
    for (; i < chunk; ++i) {  // near the end of the input: check every byte
      uint32_t& s = x[(done + i) & 1];
      const Slot& e = slots[s & ((1u << precision) - 1)];
      s = e.freq * (s >> precision) + e.offset;
      while (s < kStateLow) {
        if (p == end) fail("rANS stream truncated after {} of {} symbols", done + i, n);
        s = (s << 8) | *p++;
      }
      o[i] = e.symbol;
    }
    done += chunk;
  }
  if (p != end) fail("rANS stream: {} bytes left after the last symbol", end - p);
  if (x[0] != kStateLow || x[1] != kStateLow) fail("rANS stream corrupt: final state mismatch");
  in.skip(in.left());
}

// ---- modes -----------------------------------------------------------------------------

void write_header(std::vector<uint8_t>& out, uint8_t mode, uint32_t alphabet, uint64_t n) {
  out.push_back(mode);
  put_varint(out, alphabet);
  put_varint(out, n);
}

std::vector<uint8_t> encode_raw(const std::vector<uint32_t>& symbols, uint32_t alphabet) {
  std::vector<uint8_t> out;
  write_header(out, kModeRaw, alphabet, symbols.size());
  const int width = bits_for(alphabet);
  BitPacker w;
  for (uint32_t s : symbols) w.put(s, width);
  const std::vector<uint8_t> packed = w.finish();
  out.insert(out.end(), packed.begin(), packed.end());
  return out;
}

std::vector<uint64_t> count_symbols(const std::vector<uint32_t>& symbols, uint32_t alphabet) {
  std::vector<uint64_t> counts(alphabet);
  for (uint32_t s : symbols) ++counts[s];
  return counts;
}

// The precision with the smallest table + payload: a higher P models rare symbols better
// but makes every table entry longer.
FreqTable best_table(const std::vector<uint64_t>& counts) {
  uint64_t present = 0;
  for (uint64_t c : counts) present += c > 0;
  int lowest = kMinPrecision;
  while ((uint64_t(1) << lowest) < present) ++lowest;
  FreqTable best;
  double best_bits = INFINITY;
  for (int p = lowest; p <= kMaxPrecision; ++p) {
    FreqTable t = FreqTable::from_counts(counts, p);
    const double bits = double(table_bits(t)) + t.payload_bits(counts);
    if (bits < best_bits) best_bits = bits, best = std::move(t);
  }
  return best;
}

std::vector<uint8_t> encode_rans(const std::vector<uint32_t>& symbols, uint32_t alphabet) {
  const std::vector<uint64_t> counts = count_symbols(symbols, alphabet);
  const FreqTable table = best_table(counts);
  std::vector<uint8_t> out;
  write_header(out, kModeRans, alphabet, symbols.size());
  out.push_back(uint8_t(table.precision));
  BitPacker w;
  write_table(w, table);
  const std::vector<uint8_t> table_bytes = w.finish();
  out.insert(out.end(), table_bytes.begin(), table_bytes.end());
  const bool single_symbol = std::count(counts.begin(), counts.end(), uint64_t(0)) + 1 == int64_t(counts.size());
  if (!single_symbol) rans_encode_payload(symbols, coding_table(table), out);
  return out;
}

// Size of encode_raw's output, without building it.
size_t raw_size(uint64_t n, uint32_t alphabet) {
  std::vector<uint8_t> header;
  write_header(header, kModeRaw, alphabet, n);
  return header.size() + size_t((fixed_width_bits(n, alphabet) + 7) / 8);
}

std::vector<uint8_t> encode_direct(const std::vector<uint32_t>& symbols, uint32_t alphabet) {
  if (symbols.empty() || alphabet == 1) return encode_raw(symbols, alphabet);
  std::vector<uint8_t> coded = encode_rans(symbols, alphabet);
  return coded.size() < raw_size(symbols.size(), alphabet) ? coded : encode_raw(symbols, alphabet);
}

std::vector<uint8_t> encode_split(const std::vector<uint32_t>& symbols, uint32_t alphabet) {
  std::vector<uint32_t> high(symbols.size()), low(symbols.size());
  for (size_t i = 0; i < symbols.size(); ++i) high[i] = symbols[i] >> 16, low[i] = symbols[i] & 0xffff;
  const std::vector<uint8_t> hi = encode_direct(high, ((alphabet - 1) >> 16) + 1);
  const std::vector<uint8_t> lo = encode_direct(low, kDirectAlphabet);
  std::vector<uint8_t> out;
  write_header(out, kModeSplit, alphabet, symbols.size());
  put_varint(out, hi.size());
  out.insert(out.end(), hi.begin(), hi.end());
  out.insert(out.end(), lo.begin(), lo.end());
  return out;
}

struct Header {
  uint8_t mode;
  uint32_t alphabet;
  uint64_t n;
};

Header read_header(ByteReader& in, uint64_t max_symbols) {
  Header h;
  h.mode = in.byte();
  if (h.mode != kModeRans && h.mode != kModeRaw && h.mode != kModeSplit) fail("not a rANS stream (mode byte {:#x})", h.mode);
  const uint64_t alphabet = in.varint();
  if (alphabet < 1 || alphabet > UINT32_MAX) fail("rANS stream: alphabet {} out of range", alphabet);
  h.alphabet = uint32_t(alphabet);
  h.n = in.varint();
  if (h.n > max_symbols) fail("rANS stream: {} symbols exceed the limit {}", h.n, max_symbols);
  return h;
}

std::vector<uint32_t> decode_stream(ByteReader& in, uint64_t max_symbols, bool allow_split);

std::vector<uint32_t> decode_raw(ByteReader& in, const Header& h) {
  const int width = bits_for(h.alphabet);
  uint64_t bits;
  if (mul_overflows(h.n, uint64_t(width), &bits)) fail("rANS stream: raw size overflows");
  if ((bits + 7) / 8 != in.left()) fail("rANS raw stream: {} bytes for {} symbols of {} bits", in.left(), h.n, width);
  BitUnpacker r(in.here(), in.left());
  std::vector<uint32_t> out(size_t(h.n));
  for (auto& s : out) {
    s = uint32_t(r.get(width));
    if (s >= h.alphabet) fail("rANS raw stream: symbol {} outside alphabet {}", s, h.alphabet);
  }
  in.skip(r.finish_bytes());
  return out;
}

std::vector<uint32_t> decode_rans(ByteReader& in, const Header& h) {
  if (h.alphabet > kDirectAlphabet) fail("rANS stream: alphabet {} too large for direct coding", h.alphabet);
  const int precision = in.byte();
  if (precision < kMinPrecision || precision > kMaxPrecision) fail("rANS stream: precision {} out of range", precision);
  const FreqTable table = read_table(in, h.alphabet, precision);
  std::vector<uint32_t> out;
  const auto full = std::find(table.freq.begin(), table.freq.end(), uint32_t(1) << precision);
  if (full != table.freq.end()) {  // one symbol: nothing else to read
    if (in.left()) fail("rANS stream: {} unexpected bytes after a single-symbol table", in.left());
    out.assign(size_t(h.n), uint32_t(full - table.freq.begin()));
    return out;
  }
  rans_decode_payload(in, decode_table(table), precision, h.n, out);
  return out;
}

std::vector<uint32_t> decode_split(ByteReader& in, const Header& h, uint64_t max_symbols) {
  if (h.alphabet <= kDirectAlphabet) fail("rANS stream: split coding of small alphabet {}", h.alphabet);
  const uint64_t hi_size = in.varint();
  if (hi_size > in.left()) fail("rANS split stream: high part of {} bytes, {} left", hi_size, in.left());
  ByteReader hi_in({in.here(), size_t(hi_size)});
  std::vector<uint32_t> out = decode_stream(hi_in, max_symbols, false);
  in.skip(size_t(hi_size));
  ByteReader lo_in({in.here(), in.left()});
  const std::vector<uint32_t> low = decode_stream(lo_in, max_symbols, false);
  in.skip(in.left());
  if (out.size() != h.n || low.size() != h.n) fail("rANS split stream: parts hold {} and {} symbols, not {}", out.size(), low.size(), h.n);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = (out[i] << 16) | low[i];
    if (out[i] >= h.alphabet) fail("rANS split stream: symbol {} outside alphabet {}", out[i], h.alphabet);
  }
  return out;
}

std::vector<uint32_t> decode_stream(ByteReader& in, uint64_t max_symbols, bool allow_split) {
  const Header h = read_header(in, max_symbols);
  switch (h.mode) {
    case kModeRaw: return decode_raw(in, h);
    case kModeRans: return decode_rans(in, h);
    default:
      if (!allow_split) fail("rANS stream: nested split coding");
      return decode_split(in, h, max_symbols);
  }
}

}  // namespace

std::vector<uint8_t> encode(const std::vector<uint32_t>& symbols, uint32_t alphabet) {
  if (alphabet < 1) fail("rANS: alphabet must be at least 1");
  for (size_t i = 0; i < symbols.size(); ++i)
    if (symbols[i] >= alphabet) fail("rANS: symbol {} at position {} is outside the alphabet {}", symbols[i], i, alphabet);
  if (alphabet <= kDirectAlphabet) return encode_direct(symbols, alphabet);
  std::vector<uint8_t> split = encode_split(symbols, alphabet);
  return split.size() < raw_size(symbols.size(), alphabet) ? split : encode_raw(symbols, alphabet);
}

std::vector<uint32_t> decode(std::span<const uint8_t> bytes, uint64_t max_symbols) {
  ByteReader in(bytes);
  std::vector<uint32_t> out = decode_stream(in, max_symbols, true);
  if (in.left()) fail("rANS stream: {} trailing bytes", in.left());
  return out;
}

namespace {

StreamLayout inspect_stream(ByteReader& in, bool allow_split) {
  const size_t begin = in.pos();
  const Header h = read_header(in, UINT64_MAX);
  StreamLayout l{char(h.mode), h.alphabet, h.n};
  if (h.mode == kModeRans) {
    l.precision = in.byte();
    if (l.precision < kMinPrecision || l.precision > kMaxPrecision || h.alphabet > kDirectAlphabet)
      fail("rANS stream: bad precision or alphabet");
    l.header_bytes = in.pos() - begin;
    const size_t table_begin = in.pos();
    read_table(in, h.alphabet, l.precision);
    l.table_bytes = in.pos() - table_begin;
  } else if (h.mode == kModeSplit) {
    if (!allow_split) fail("rANS stream: nested split coding");
    const uint64_t hi_size = in.varint();
    if (hi_size > in.left()) fail("rANS split stream: high part of {} bytes, {} left", hi_size, in.left());
    l.header_bytes = in.pos() - begin;
    ByteReader hi_in({in.here(), size_t(hi_size)});
    in.skip(size_t(hi_size));
    ByteReader lo_in({in.here(), in.left()});
    for (ByteReader* part : {&hi_in, &lo_in}) {
      const StreamLayout p = inspect_stream(*part, false);
      l.header_bytes += p.header_bytes, l.table_bytes += p.table_bytes, l.payload_bytes += p.payload_bytes;
      l.precision = std::max(l.precision, p.precision);
    }
    in.skip(in.left());
    return l;
  } else {
    l.header_bytes = in.pos() - begin;
  }
  l.payload_bytes = in.left();
  in.skip(in.left());
  return l;
}

}  // namespace

StreamLayout inspect(std::span<const uint8_t> bytes) {
  ByteReader in(bytes);
  return inspect_stream(in, true);
}

double shannon_bits(const std::vector<uint32_t>& symbols) {
  if (symbols.empty()) return 0;
  std::unordered_map<uint32_t, uint64_t> sparse;
  std::vector<uint64_t> dense;
  const uint32_t max = *std::max_element(symbols.begin(), symbols.end());
  if (max < (1u << 24)) {
    dense.assign(size_t(max) + 1, 0);
    for (uint32_t s : symbols) ++dense[s];
  } else {
    for (uint32_t s : symbols) ++sparse[s];
    for (const auto& [s, c] : sparse) dense.push_back(c);
  }
  const double n = double(symbols.size());
  double bits = n * std::log2(n);
  for (uint64_t c : dense)
    if (c) bits -= double(c) * std::log2(double(c));
  return std::max(0.0, bits);
}

uint64_t fixed_width_bits(uint64_t n_symbols, uint32_t alphabet) { return n_symbols * uint64_t(bits_for(alphabet)); }

}  // namespace quantkit::entropy
