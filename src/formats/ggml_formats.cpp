// The ggml block formats (see ggml_formats.h): one format family per ggml type, each
// spec being the type's lower-case name with no options.
#include "formats/ggml_formats.h"

#include <cmath>
#include <cstring>

#include "formats/common.h"
#include "formats/ggml_encode.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

struct GgmlType {
  DType type;
  const char* spec;
  const char* summary;  // the block layout in a few words
};

const GgmlType kTypes[] = {
    {DType::Q8_0, "q8_0", "8-bit levels, fp16 scale per 32"},
    {DType::Q4_0, "q4_0", "4-bit levels, fp16 scale per 32"},
    {DType::Q4_1, "q4_1", "4-bit levels, fp16 scale and offset per 32"},
    {DType::Q5_0, "q5_0", "5-bit levels, fp16 scale per 32"},
    {DType::Q5_1, "q5_1", "5-bit levels, fp16 scale and offset per 32"},
    {DType::Q2_K, "q2_k", "2-bit levels, 4-bit scale and min per 16, fp16 d and dmin per 256"},
    {DType::Q3_K, "q3_k", "3-bit levels, 6-bit scale per 16, fp16 d per 256"},
    {DType::Q4_K, "q4_k", "4-bit levels, 6-bit scale and min per 32, fp16 d and dmin per 256"},
    {DType::Q5_K, "q5_k", "5-bit levels, 6-bit scale and min per 32, fp16 d and dmin per 256"},
    {DType::Q6_K, "q6_k", "6-bit levels, 8-bit scale per 16, fp16 d per 256"},
    {DType::IQ4_NL, "iq4_nl", "4-bit indices into a fixed 16-level non-uniform codebook, fp16 scale per 32"},
};

class GgmlFormat final : public RowFormat {
 public:
  explicit GgmlFormat(const GgmlType& t) : t_(t), traits_(dtype_traits(t.type)) {}

  std::string spec() const override { return t_.spec; }

  std::string describe() const override {
    const double bpw = double(traits_.type_size * 8) / double(traits_.block_size);
    return fmt::format("llama.cpp {} blocks: {}, importance-aware encoder ({:.4g} bits/weight)", traits_.name,
                       t_.summary, bpw);
  }

  std::string check_shape(int64_t rows, int64_t cols) const override {
    if (rows < 1 || cols < 1) return fmt::format("{} x {} matrix is empty", rows, cols);
    if (cols % traits_.block_size != 0)
      return fmt::format("cols {} is not a multiple of the {} block size {}", cols, t_.spec, traits_.block_size);
    return {};
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    require_shape(rows, cols);
    return uint64_t(rows) * uint64_t(cols / traits_.block_size) * uint64_t(traits_.type_size) * 8;
  }

  // Every block is encoded from its own weights (and importance) only.
  int64_t column_group(int64_t cols) const override {
    return cols % traits_.block_size == 0 ? traits_.block_size : 0;
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* importance) const override {
    require_shape(rows, cols);
    require_finite(w, rows, cols, importance);
    // Rows are independent and each has a fixed slot, so they are encoded in parallel.
    const size_t row_bytes = dtype_row_bytes(t_.type, cols);
    std::vector<uint8_t> bytes(size_t(rows) * row_bytes);
    global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        ggml::encode_row(t_.type, w + r * cols, cols, importance, bytes.data() + size_t(r) * row_bytes);
    });
    BitWriter bw;
    for (size_t i = 0; i < bytes.size(); i += 8) {
      uint64_t word = 0;
      const size_t n = std::min<size_t>(8, bytes.size() - i);
      std::memcpy(&word, bytes.data() + i, n);  // little-endian: byte i first
      bw.put(word, int(8 * n));
    }
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  // Rows are whole blocks, byte-aligned: the row range is one run of bytes.
  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    if (b.first % 8 != 0) fail("internal: packed {} data starts inside a byte", t_.spec);
    const size_t row_bytes = dtype_row_bytes(t_.type, b.cols);
    quantkit::dequantize(t_.type, b.data + b.first / 8 + size_t(r0) * row_bytes, out, nr * b.cols);
  }

  std::vector<SymbolStream> symbols(const Packed& p) const override {
    require_packed(p);
    ggml::BlockFields f = ggml::unpack_fields(t_.type, p.bytes.data(), p.rows * p.cols);
    std::vector<SymbolStream> out;
    out.push_back({"levels", 1u << f.level_bits, std::move(f.levels)});
    if (f.scale_bits) out.push_back({"scales", 1u << f.scale_bits, std::move(f.scales)});
    if (f.min_bits) out.push_back({"mins", 1u << f.min_bits, std::move(f.mins)});
    return out;
  }

 private:
  void require_shape(int64_t rows, int64_t cols) const {
    if (auto why = check_shape(rows, cols); !why.empty()) fail("{}: {}", t_.spec, why);
  }

  // Non-finite weights have no ggml encoding; importance must be a valid weighting.
  static void require_finite(const float* w, int64_t rows, int64_t cols, const float* importance) {
    for (int64_t i = 0; i < rows * cols; ++i)
      if (!std::isfinite(w[i])) fail("weight at row {}, col {} is {}", i / cols, i % cols, w[i]);
    if (importance)
      for (int64_t c = 0; c < cols; ++c)
        if (!std::isfinite(importance[c]) || importance[c] < 0)
          fail("importance of column {} is {} (must be finite and >= 0)", c, importance[c]);
  }

  void require_packed(const Packed& p) const {
    require_shape(p.rows, p.cols);
    const uint64_t bits = storage_bits(p.rows, p.cols);
    if (p.bits != bits || p.bytes.size() != bits / 8)
      fail("packed {} {}x{} holds {} bits in {} bytes, expected {} bits", t_.spec, p.rows, p.cols, p.bits,
           p.bytes.size(), bits);
  }

  GgmlType t_;
  const DTypeTraits& traits_;
};

const GgmlType* find_type(const std::string& spec) {
  for (const auto& t : kTypes)
    if (spec == t.spec) return &t;
  return nullptr;
}

FormatFamily family_of(const GgmlType& t) {
  return FormatFamily{t.spec, t.spec, fmt::format("llama.cpp {} ({})", dtype_name(t.type), t.summary), {t.spec},
                      [&t](const std::vector<std::string>& tokens) -> std::unique_ptr<Format> {
                        if (tokens.empty() || tokens[0] != t.spec) return nullptr;
                        SpecTokens(tokens).finish();  // ggml types take no options
                        return std::make_unique<GgmlFormat>(t);
                      }};
}

std::vector<Registrar> register_all() {
  std::vector<Registrar> r;
  r.reserve(std::size(kTypes));
  for (const auto& t : kTypes) r.emplace_back(family_of(t));
  return r;
}

const std::vector<Registrar> registrars = register_all();

}  // namespace

std::optional<DType> ggml_type_for_spec(const std::string& spec) {
  if (const GgmlType* t = find_type(spec)) return t->type;
  return std::nullopt;
}

}  // namespace quantkit::formats
