// Rate-distortion measurement (see include/quantkit/rd.h).
#include "quantkit/rd.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "quantkit/entropy.h"
#include "quantkit/error.h"
#include "quantkit/model_file.h"
#include "quantkit/tensor.h"

namespace quantkit::rd {
namespace {

// ---- deterministic samples -------------------------------------------------------------

// std::mt19937_64 is specified exactly by the standard; the std:: distributions are not,
// so the transforms to uniform, normal, Laplace, gamma and t are ours.
class Sampler {
 public:
  explicit Sampler(uint64_t seed) : rng_(seed) {}

  // Uniform in the open interval (0, 1), 53 random bits.
  double uniform() { return (double(rng_() >> 11) + 0.5) * 0x1p-53; }

  // N(0, 1) by Marsaglia's polar method (two values per accepted pair).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u, v, s;
    do {
      u = 2 * uniform() - 1;
      v = 2 * uniform() - 1;
      s = u * u + v * v;
    } while (s >= 1 || s == 0);
    const double f = std::sqrt(-2 * std::log(s) / s);
    spare_ = v * f;
    has_spare_ = true;
    return u * f;
  }

  // Laplace(0, b) with b = 1/sqrt(2): variance 2 b^2 = 1. Inverse CDF.
  double laplace() {
    const double b = 1 / std::sqrt(2.0), u = uniform();
    return u < 0.5 ? b * std::log(2 * u) : -b * std::log(2 * (1 - u));
  }

  // Gamma(shape, 1): Marsaglia & Tsang (2000); shape < 1 via Gamma(shape + 1) U^(1/shape).
  double gamma(double shape) {
    if (shape < 1) return gamma(shape + 1) * std::pow(uniform(), 1 / shape);
    const double d = shape - 1.0 / 3, c = 1 / std::sqrt(9 * d);
    for (;;) {
      const double x = normal();
      double v = 1 + c * x;
      if (v <= 0) continue;
      v = v * v * v;
      if (std::log(uniform()) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
    }
  }

  // Student's t with nu degrees of freedom: Z / sqrt(chi2_nu / nu), chi2_nu = 2 Gamma(nu/2).
  double student_t(double nu) { return normal() / std::sqrt(2 * gamma(nu / 2) / nu); }

 private:
  std::mt19937_64 rng_;
  double spare_ = 0;
  bool has_spare_ = false;
};

double parse_positive_number(const std::string& text, const std::string& what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || !std::isfinite(v) || v <= 0) fail("{} '{}' is not a positive number", what, text);
  return v;
}

SourceData tensor_source(const std::string& source) {
  // tensor:MODEL:NAME; tensor names hold no ':' but paths might, so split at the last one.
  const std::string rest = source.substr(7);
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == rest.size())
    fail("source '{}': expected tensor:MODEL:TENSOR_NAME", source);
  const ModelFile model = load_model(rest.substr(0, colon), "");
  const Tensor t = to_float(model.get(rest.substr(colon + 1)));
  SourceData d{source, "tensor", t.rows(), t.cols(), t.data};
  if (d.w.empty()) fail("source '{}': the tensor is empty", source);
  for (float v : d.w)
    if (!std::isfinite(v)) fail("source '{}': the tensor holds non-finite values", source);
  return d;
}

// ---- importance files ----------------------------------------------------------------------

std::vector<float> parse_importance_text(const std::string& bytes, int64_t cols, bool* ok) {
  std::vector<float> out;
  std::istringstream lines(bytes);
  std::string line;
  *ok = false;
  while (std::getline(lines, line)) {
    line = line.substr(0, line.find('#'));
    std::replace(line.begin(), line.end(), ',', ' ');
    std::istringstream fields(line);
    std::string field;
    while (fields >> field) {
      size_t used = 0;
      double v;
      try {
        v = std::stod(field, &used);
      } catch (const std::exception&) {
        return {};
      }
      if (used != field.size()) return {};
      out.push_back(float(v));
      if (int64_t(out.size()) > cols) return {};
    }
  }
  *ok = int64_t(out.size()) == cols;
  return out;
}

// ---- one format ------------------------------------------------------------------------

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Codes each stream, checks it decodes back exactly, and records its sizes.
std::vector<StreamRate> code_streams(const std::vector<SymbolStream>& streams) {
  std::vector<StreamRate> out;
  for (const SymbolStream& s : streams) {
    const std::vector<uint8_t> coded = entropy::encode(s.symbols, s.alphabet);
    if (entropy::decode(coded, std::max<uint64_t>(s.symbols.size(), 1)) != s.symbols)
      fail("internal: rANS round trip of stream '{}' failed", s.name);
    StreamRate r{s.name, s.alphabet, s.symbols.size(), entropy::fixed_width_bits(s.symbols.size(), s.alphabet),
                 8 * uint64_t(coded.size()), entropy::shannon_bits(s.symbols), entropy::inspect(coded).mode};
    out.push_back(std::move(r));
  }
  return out;
}

bool is_power_of_two(uint32_t a) { return a && !(a & (a - 1)); }

// Side information = packed bits not in any symbol stream (see the contract in rd.h).
// Returns false when the streams cannot be located inside the packed bits.
bool account_side_bits(Result& r) {
  uint64_t fixed = 0;
  for (const StreamRate& s : r.streams) fixed += s.fixed_bits;
  if (fixed > r.packed_bits) {
    fixed = 0;
    for (StreamRate& s : r.streams) {
      if (!is_power_of_two(s.alphabet))
        s.fixed_bits = uint64_t(std::ceil(double(s.n_symbols) * std::log2(double(s.alphabet))));
      fixed += s.fixed_bits;
    }
    r.note = "streams with non-power-of-two alphabets counted as densely packed";
  }
  if (fixed > r.packed_bits) {
    r.note = fmt::format(
        "symbol streams ({} bits at fixed width) are not a part of the packed bits ({}): side information unknown, "
        "entropy-coded rate not claimed",
        fixed, r.packed_bits);
    return false;
  }
  r.side_bits = r.packed_bits - fixed;
  return true;
}

void measure_rates(Result& r, const Format& format, const Packed& p) {
  r.packed_bits = p.bits;
  r.streams = code_streams(format.symbols(p));
  const double n = double(r.rows) * double(r.cols);
  r.fixed_bpw = double(p.bits) / n;
  r.streams_separable = account_side_bits(r);
  if (!r.streams_separable) {
    r.entropy_bpw = r.shannon_bpw = r.fixed_bpw;
    return;
  }
  // A container keeps a stream raw when coding does not pay, so each stream costs the
  // smaller of its coded and fixed sizes.
  double coded = double(r.side_bits), shannon = double(r.side_bits);
  for (const StreamRate& s : r.streams) {
    coded += double(std::min(s.coded_bits, s.fixed_bits));
    shannon += std::min(s.shannon_bits, double(s.fixed_bits));
  }
  r.entropy_bpw = coded / n;
  r.shannon_bpw = shannon / n;
}

void measure_distortion(Result& r, const SourceData& data, const std::vector<float>& q, const float* importance) {
  double signal = 0, noise = 0, weighted = 0;
  for (int64_t i = 0; i < r.rows; ++i)
    for (int64_t j = 0; j < r.cols; ++j) {
      const size_t k = size_t(i * r.cols + j);
      const double w = data.w[k], e = w - double(q[k]);
      signal += w * w;
      noise += e * e;
      weighted += (importance ? double(importance[j]) : 1.0) * e * e;
    }
  const double n = double(r.rows) * double(r.cols);
  r.mse = noise / n;
  r.weighted_mse = weighted / n;
  r.sqnr_db = noise > 0 ? 10 * std::log10(signal / noise) : INFINITY;
  if (data.kind == "gaussian") {
    r.has_bound = true;
    r.bound_fixed_db = kDbPerBit * r.fixed_bpw;
    r.bound_entropy_db = kDbPerBit * r.entropy_bpw;
    r.gap_fixed_db = r.bound_fixed_db - r.sqnr_db;
    r.gap_entropy_db = r.bound_entropy_db - r.sqnr_db;
  }
}

}  // namespace

SourceData make_source(const std::string& source, int64_t n, uint64_t seed, int64_t cols) {
  if (source.rfind("tensor:", 0) == 0) return tensor_source(source);
  if (n < 1 || n > (int64_t(1) << 31)) fail("--n {} is out of range [1, 2^31]", n);
  if (cols < 1) fail("--cols {} must be positive", cols);
  if (n < cols) cols = n;
  if (n % cols) fail("--n {} is not a multiple of {} columns", n, cols);
  SourceData d{source, "", n / cols, cols, std::vector<float>(size_t(n))};
  Sampler rng(seed);
  if (source == "gaussian") {
    d.kind = "gaussian";
    for (float& v : d.w) v = float(rng.normal());
  } else if (source == "laplace") {
    d.kind = "laplace";
    for (float& v : d.w) v = float(rng.laplace());
  } else if (source.rfind("student-t:", 0) == 0) {
    d.kind = "student-t";
    const double nu = parse_positive_number(source.substr(10), "degrees of freedom");
    // Below 0.1 nearly every draw overflows float (the tails are that heavy).
    if (nu < 0.1 || nu > 1e6) fail("degrees of freedom {} out of range [0.1, 1e6]", nu);
    for (float& v : d.w) {
      double t;
      do t = rng.student_t(nu);  // heavy tails (nu < 1) can overflow float: draw again
      while (!std::isfinite(float(t)));
      v = float(t);
    }
  } else {
    fail("unknown source '{}' (valid: gaussian, laplace, student-t:NU, tensor:MODEL:TENSOR_NAME)", source);
  }
  return d;
}

std::vector<float> load_importance(const std::string& path, int64_t cols) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open the importance file", path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string bytes = ss.str();
  bool text_ok = false;
  std::vector<float> imp = parse_importance_text(bytes, cols, &text_ok);
  if (!text_ok) {
    if (bytes.size() != size_t(cols) * 4)
      fail("{}: expected {} numbers (text) or {} bytes of float32, found neither", path, cols, cols * 4);
    imp.resize(size_t(cols));
    std::memcpy(imp.data(), bytes.data(), bytes.size());  // little-endian hosts only
  }
  for (size_t j = 0; j < imp.size(); ++j)
    if (!std::isfinite(imp[j]) || imp[j] < 0) fail("{}: importance of column {} is {} (must be finite and >= 0)", path, j, imp[j]);
  return imp;
}

std::vector<std::string> expand_formats(const std::string& list) {
  std::vector<std::string> out;
  auto add = [&](const std::string& spec) {
    if (std::find(out.begin(), out.end(), spec) == out.end()) out.push_back(spec);
  };
  std::string field;
  std::istringstream in(list);
  while (std::getline(in, field, ',')) {
    field.erase(0, field.find_first_not_of(" \t"));
    field.erase(field.find_last_not_of(" \t") + 1);
    if (field.empty()) continue;
    if (field == "all") {
      for (const FormatFamily& fam : format_families())
        for (const std::string& spec : fam.examples) add(spec);
    } else {
      make_format(field);  // throws naming the valid forms
      add(field);
    }
  }
  if (out.empty()) fail("no formats given (e.g. --formats int4:g128,q4_0 or --formats all)");
  return out;
}

Result measure(const Format& format, const SourceData& data, const float* importance) {
  Result r;
  r.spec = format.spec();
  r.rows = data.rows;
  r.cols = data.cols;
  if (std::string why = format.check_shape(data.rows, data.cols); !why.empty()) {
    r.skipped = true;
    r.note = why;
    return r;
  }
  const double mb = 4.0 * double(data.rows) * double(data.cols) / 1e6;
  auto t0 = std::chrono::steady_clock::now();
  const Packed p = format.quantize(data.w.data(), data.rows, data.cols, importance);
  r.encode_seconds = seconds_since(t0);
  if (p.bits != format.storage_bits(data.rows, data.cols) || p.bytes.size() != (p.bits + 7) / 8)
    fail("internal: {} packed {} bits, its storage_bits says {}", r.spec, p.bits, format.storage_bits(data.rows, data.cols));

  // Dequantization is fast: repeat it for a stable time (at least 50 ms or 50 runs).
  std::vector<float> q(data.w.size());
  int runs = 0;
  t0 = std::chrono::steady_clock::now();
  do format.dequantize(p, q.data());
  while (++runs < 50 && seconds_since(t0) < 0.05);
  r.decode_seconds = seconds_since(t0) / runs;
  r.encode_mbps = r.encode_seconds > 0 ? mb / r.encode_seconds : INFINITY;
  r.decode_mbps = r.decode_seconds > 0 ? mb / r.decode_seconds : INFINITY;

  measure_rates(r, format, p);
  measure_distortion(r, data, q, importance);
  return r;
}

}  // namespace quantkit::rd
