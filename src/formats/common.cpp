#include "formats/common.h"

#include <cstring>

#include "quantkit/fp16.h"

namespace quantkit::formats {

void BitWriter::put(uint64_t value, int nbits) {
  if (nbits < 64) value &= (uint64_t(1) << nbits) - 1;
  for (int done = 0; done < nbits;) {
    const uint64_t byte = bits_ >> 3;
    const int offset = int(bits_ & 7);
    if (byte >= bytes_.size()) bytes_.push_back(0);
    const int n = std::min(8 - offset, nbits - done);
    bytes_[byte] |= uint8_t(((value >> done) & ((1u << n) - 1)) << offset);
    done += n;
    bits_ += uint64_t(n);
  }
}

void BitWriter::put_f16(float v) { put(f32_to_f16(v), 16); }

void BitWriter::put_f32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  put(u, 32);
}

void BitWriter::finish(Packed& p) {
  p.bits = bits_;
  p.bytes = std::move(bytes_);
  p.bytes.resize(size_t((bits_ + 7) / 8));
  bytes_.clear();
  bits_ = 0;
}

PackedBits PackedBits::sub(uint64_t offset, uint64_t nbits, int64_t r, int64_t c) const {
  if (offset > bits || nbits > bits - offset)
    fail("internal: bits [{}, +{}) outside a packed matrix of {} bits", offset, nbits, bits);
  return {data, first + offset, nbits, r, c};
}

// The slow path of get: fields near the end of the data, or wider than 57 bits.
uint64_t BitReader::get_bytewise(int nbits) {
  if (pos_ + uint64_t(nbits) > size_bits_)
    fail("packed data ends at bit {}, reading {} bits at {}", size_bits_, nbits, pos_);
  uint64_t at = first_ + pos_;
  pos_ += uint64_t(nbits);
  uint64_t v = 0;
  for (int done = 0; done < nbits;) {
    const uint8_t b = data_[at >> 3];
    const int offset = int(at & 7);
    const int n = std::min(8 - offset, nbits - done);
    v |= uint64_t((b >> offset) & ((1u << n) - 1)) << done;
    done += n;
    at += uint64_t(n);
  }
  return v;
}

float BitReader::get_f16() { return f16_to_f32(uint16_t(get(16))); }

float BitReader::get_f32() {
  uint32_t u = uint32_t(get(32));
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

PackedBits checked_bits(const Format& f, const Packed& p) {
  if (p.bytes.size() < (p.bits + 7) / 8) fail("packed {} holds {} bits in {} bytes", f.spec(), p.bits, p.bytes.size());
  return PackedBits::of(p);
}

void RowFormat::dequantize(const Packed& p, float* out) const { decode(checked_bits(*this, p), 0, p.rows, out); }

bool RowFormat::dequantize_rows(const Packed& p, int64_t r0, int64_t nr, float* out) const {
  decode(checked_bits(*this, p), r0, nr, out);
  return true;
}

void RowFormat::decode(const PackedBits& b, int64_t r0, int64_t nr, float* out) const {
  if (b.bits != storage_bits(b.rows, b.cols))
    fail("packed {} holds {} bits, expected {}", spec(), b.bits, storage_bits(b.rows, b.cols));
  if (r0 < 0 || nr < 0 || r0 > b.rows - nr)
    fail("rows [{}, {}) outside a packed {} of {} rows", r0, r0 + nr, spec(), b.rows);
  if (nr > 0) decode_rows(b, r0, nr, out);
}

Packed finish_packed(BitWriter& w, int64_t rows, int64_t cols, uint64_t expected_bits) {
  Packed p;
  p.rows = rows;
  p.cols = cols;
  if (w.bits() != expected_bits)
    throw Error(fmt::format("internal: format wrote {} bits, its accounting says {}", w.bits(), expected_bits));
  w.finish(p);
  return p;
}

std::optional<int64_t> int_after(const std::string& token, const std::string& prefix) {
  if (token.size() <= prefix.size() || token.compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  const std::string digits = token.substr(prefix.size());
  if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;  // one spelling per number
  return std::stoll(digits);
}

SpecTokens::SpecTokens(const std::vector<std::string>& tokens, size_t first)
    : tokens_(tokens.begin() + std::min(first, tokens.size()), tokens.end()), used_(tokens_.size(), false) {}

std::optional<int64_t> SpecTokens::take_int(const std::string& prefix) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (used_[i]) continue;
    if (auto v = int_after(tokens_[i], prefix)) {
      used_[i] = true;
      return v;
    }
  }
  return std::nullopt;
}

bool SpecTokens::take_flag(const std::string& flag) {
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (!used_[i] && tokens_[i] == flag) return used_[i] = true;
  return false;
}

std::optional<std::string> SpecTokens::take_one_of(const std::vector<std::string>& choices) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    if (used_[i]) continue;
    for (const auto& c : choices)
      if (tokens_[i] == c) {
        used_[i] = true;
        return c;
      }
  }
  return std::nullopt;
}

void SpecTokens::finish() const {
  std::string left;
  for (size_t i = 0; i < tokens_.size(); ++i)
    if (!used_[i]) left += (left.empty() ? "'" : ", '") + tokens_[i] + "'";
  if (!left.empty()) throw Error("unknown or repeated option " + left);
}

Grouping Grouping::parse(SpecTokens& t, Grouping dflt) {
  Grouping g = dflt;
  if (auto size = t.take_int("g")) {
    if (*size < 1 || *size > (1 << 20)) throw Error(fmt::format("group size {} is out of range [1, 1048576]", *size));
    g = {Group, *size};
  } else if (t.take_flag("row")) {
    g = {Row, 0};
  } else if (t.take_flag("tensor")) {
    g = {Tensor, 0};
  }
  return g;
}

std::string Grouping::spec() const {
  switch (kind) {
    case Tensor: return "tensor";
    case Row: return "row";
    default: return "g" + std::to_string(size);
  }
}

int64_t Grouping::count(int64_t rows, int64_t cols) const {
  switch (kind) {
    case Tensor: return 1;
    case Row: return rows;
    default: return rows * ((cols + size - 1) / size);
  }
}

void Grouping::for_each(int64_t rows, int64_t cols,
                        const std::function<void(int64_t, int64_t, int64_t, int64_t)>& fn) const {
  if (kind == Tensor) return fn(0, rows, 0, cols);
  for (int64_t r = 0; r < rows; ++r) {
    if (kind == Row) {
      fn(r, r + 1, 0, cols);
      continue;
    }
    for (int64_t c = 0; c < cols; c += size) fn(r, r + 1, c, std::min(cols, c + size));
  }
}

double weighted_sse(const float* x, const float* y, const float* imp, int64_t n, int64_t imp_stride) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(x[i]) - double(y[i]);
    s += (imp ? double(imp[i * imp_stride]) : 1.0) * d * d;
  }
  return s;
}

float search_scale(float s_max, float min_ratio, int steps, const std::function<double(float)>& err) {
  float best = s_max;
  double best_err = err(s_max);
  for (int k = 1; k < steps; ++k) {
    const float s = s_max * (1.0f - float(k) * (1.0f - min_ratio) / float(steps));
    const double e = err(s);
    if (e < best_err) best_err = e, best = s;
  }
  return best;
}

// Inverse of the standard normal CDF: Acklam's rational approximation refined by one
// Halley step on erfc (full double precision).
double normal_quantile(double p) {
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                 1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01, -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  constexpr double p_low = 0.02425;
  double x;
  if (p < p_low) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - p_low) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const double q = std::sqrt(-2 * std::log(1 - p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
  const double u = e * std::sqrt(2 * M_PI) * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}

}  // namespace quantkit::formats
