#include "io/gguf.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "io/untrusted.h"
#include "quantkit/error.h"
#include "quantkit/mapped_file.h"

namespace quantkit {

static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

namespace {

// Limits on what a file may claim before we believe it: far above any real model, far
// below what would let a hostile header exhaust memory.
constexpr uint64_t kMaxTensors = uint64_t(1) << 20;
constexpr uint64_t kMaxKV = uint64_t(1) << 24;
constexpr uint64_t kMaxString = uint64_t(1) << 30;
constexpr uint64_t kMaxKey = 65535;  // the GGUF specification's limit
constexpr int kMaxArrayDepth = 16;
constexpr uint32_t kMaxDims = 4;
constexpr size_t kGgmlMaxName = 64;  // ggml's name buffer, NUL included

constexpr char kMagic[4] = {'G', 'G', 'U', 'F'};

// Escapes only control characters (UTF-8 text stays readable) for display values.
std::string escape_controls(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += char(c);
  }
  return out;
}

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

// ---- types ----------------------------------------------------------------------------

bool gguf_type_valid(uint32_t id) { return id <= uint32_t(GgufType::F64); }

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::Bool: return "bool";
    case GgufType::String: return "string";
    case GgufType::Array: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "?";
}

size_t gguf_type_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::Bool: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    case GgufType::String: case GgufType::Array: return 0;
  }
  return 0;
}

// ---- GgufValue ------------------------------------------------------------------------

namespace {

bool type_is_integer(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
    case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64:
      return true;
    default:
      return false;
  }
}

bool type_is_float(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }
bool type_is_signed(GgufType t) {
  return t == GgufType::I8 || t == GgufType::I16 || t == GgufType::I32 || t == GgufType::I64;
}

// Sign-extends the low `size` bytes of `bits` of a signed integer type.
int64_t sign_extend(uint64_t bits, size_t size) {
  unsigned shift = unsigned(64 - 8 * size);
  return int64_t(bits << shift) >> shift;
}

uint64_t load_bits(const uint8_t* p, size_t size) {
  uint64_t v = 0;
  std::memcpy(&v, p, size);
  return v;
}

float bits_to_f32(uint64_t bits) {
  uint32_t b = uint32_t(bits);
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

double bits_to_f64(uint64_t bits) {
  double d;
  std::memcpy(&d, &bits, 8);
  return d;
}

// A fixed-size scalar of type t with raw bits, viewed as a value of each kind.
struct Scalar {
  GgufType type;
  uint64_t bits;

  bool negative() const { return type_is_signed(type) && sign_extend(bits, gguf_type_size(type)) < 0; }
  int64_t as_signed() const {
    return type_is_signed(type) ? sign_extend(bits, gguf_type_size(type)) : int64_t(bits);
  }
  double as_double() const {
    if (type == GgufType::F32) return bits_to_f32(bits);
    if (type == GgufType::F64) return bits_to_f64(bits);
    if (type_is_signed(type)) return double(as_signed());
    return double(bits);
  }
};

}  // namespace

GgufValue GgufValue::string(std::string s) {
  GgufValue out;
  out.type_ = GgufType::String;
  out.payload_ = std::move(s);
  return out;
}

GgufValue GgufValue::array(std::vector<std::string> v) {
  GgufValue out;
  out.type_ = GgufType::Array;
  out.elem_ = GgufType::String;
  out.count_ = v.size();
  out.payload_ = std::move(v);
  return out;
}

GgufValue GgufValue::array(GgufType elem, std::vector<GgufValue> elems) {
  if (!gguf_type_valid(uint32_t(elem))) fail("GGUF array: invalid element type id {}", uint32_t(elem));
  for (const auto& e : elems)
    if (e.type_ != elem)
      fail("GGUF array of {}: element of type {}", gguf_type_name(elem), gguf_type_name(e.type_));
  GgufValue out;
  out.type_ = GgufType::Array;
  out.elem_ = elem;
  out.count_ = elems.size();
  if (elem == GgufType::String) {
    std::vector<std::string> strs;
    strs.reserve(elems.size());
    for (auto& e : elems) strs.push_back(std::move(std::get<std::string>(e.payload_)));
    out.payload_ = std::move(strs);
  } else if (elem == GgufType::Array) {
    out.payload_ = std::move(elems);
  } else {
    size_t sz = gguf_type_size(elem);
    std::vector<uint8_t> raw(elems.size() * sz);
    for (size_t i = 0; i < elems.size(); ++i) std::memcpy(raw.data() + i * sz, &elems[i].bits_, sz);
    out.payload_ = std::move(raw);
  }
  return out;
}

void GgufValue::mismatch(const char* wanted) const {
  if (type_ == GgufType::Array)
    fail("expected {}, found an array of {}", wanted, gguf_type_name(elem_));
  fail("expected {}, found {}", wanted, gguf_type_name(type_));
}

bool GgufValue::is_integer() const { return type_is_integer(type_); }
bool GgufValue::is_number() const { return type_is_integer(type_) || type_is_float(type_); }

int64_t GgufValue::as_int() const {
  if (!is_integer()) mismatch("an integer");
  if (type_ == GgufType::U64 && bits_ > uint64_t(std::numeric_limits<int64_t>::max()))
    fail("integer {} is too large", bits_);
  return Scalar{type_, bits_}.as_signed();
}

uint64_t GgufValue::as_uint() const {
  if (!is_integer()) mismatch("an integer");
  Scalar s{type_, bits_};
  if (s.negative()) fail("expected a non-negative integer, found {}", s.as_signed());
  return uint64_t(s.as_signed());
}

double GgufValue::as_float() const {
  if (!is_number()) mismatch("a number");
  return Scalar{type_, bits_}.as_double();
}

bool GgufValue::as_bool() const {
  if (type_ != GgufType::Bool) mismatch("a bool");
  return bits_ != 0;
}

const std::string& GgufValue::as_string() const {
  if (type_ != GgufType::String) mismatch("a string");
  return std::get<std::string>(payload_);
}

GgufType GgufValue::array_type() const {
  if (type_ != GgufType::Array) mismatch("an array");
  return elem_;
}

size_t GgufValue::array_size() const {
  if (type_ != GgufType::Array) mismatch("an array");
  return count_;
}

GgufValue GgufValue::element(size_t i) const {
  if (i >= array_size()) fail("array index {} out of range (size {})", i, count_);
  if (elem_ == GgufType::String) return string(std::get<std::vector<std::string>>(payload_)[i]);
  if (elem_ == GgufType::Array) return std::get<std::vector<GgufValue>>(payload_)[i];
  GgufValue out;
  out.type_ = elem_;
  size_t sz = gguf_type_size(elem_);
  out.bits_ = load_bits(std::get<std::vector<uint8_t>>(payload_).data() + i * sz, sz);
  return out;
}

std::vector<std::string> GgufValue::as_string_array() const {
  if (type_ != GgufType::Array || elem_ != GgufType::String) mismatch("an array of strings");
  return std::get<std::vector<std::string>>(payload_);
}

std::vector<float> GgufValue::as_float_array() const {
  if (type_ != GgufType::Array || !(type_is_float(elem_) || type_is_integer(elem_)))
    mismatch("an array of numbers");
  const auto& raw = std::get<std::vector<uint8_t>>(payload_);
  size_t sz = gguf_type_size(elem_);
  std::vector<float> out(count_);
  for (size_t i = 0; i < count_; ++i) out[i] = float(Scalar{elem_, load_bits(raw.data() + i * sz, sz)}.as_double());
  return out;
}

std::vector<int64_t> GgufValue::as_int_array() const {
  if (type_ != GgufType::Array || !type_is_integer(elem_)) mismatch("an array of integers");
  const auto& raw = std::get<std::vector<uint8_t>>(payload_);
  size_t sz = gguf_type_size(elem_);
  std::vector<int64_t> out(count_);
  for (size_t i = 0; i < count_; ++i) {
    uint64_t bits = load_bits(raw.data() + i * sz, sz);
    if (elem_ == GgufType::U64 && bits > uint64_t(std::numeric_limits<int64_t>::max()))
      fail("array element {} = {} is too large", i, bits);
    out[i] = Scalar{elem_, bits}.as_signed();
  }
  return out;
}

std::string GgufValue::to_display() const {
  switch (type_) {
    case GgufType::String: return escape_controls(as_string());
    case GgufType::Bool: return bits_ ? "true" : "false";
    case GgufType::F32: return fmt::format("{}", bits_to_f32(bits_));
    case GgufType::F64: return fmt::format("{}", bits_to_f64(bits_));
    case GgufType::Array: return fmt::format("[{} x {}]", gguf_type_name(elem_), count_);
    default:
      if (type_is_signed(type_)) return fmt::format("{}", Scalar{type_, bits_}.as_signed());
      return fmt::format("{}", bits_);
  }
}

bool GgufValue::operator==(const GgufValue& o) const {
  return type_ == o.type_ && elem_ == o.elem_ && bits_ == o.bits_ && count_ == o.count_ &&
         payload_ == o.payload_;
}

namespace {

void append_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  out.insert(out.end(), b, b + n);
}
template <typename T>
void append_pod(std::vector<uint8_t>& out, T v) {
  append_bytes(out, &v, sizeof v);
}
void append_string(std::vector<uint8_t>& out, const std::string& s) {
  append_pod<uint64_t>(out, s.size());
  append_bytes(out, s.data(), s.size());
}

}  // namespace

void GgufValue::append_to(std::vector<uint8_t>& out) const {
  if (type_ == GgufType::String) {
    append_string(out, std::get<std::string>(payload_));
    return;
  }
  if (type_ != GgufType::Array) {
    append_bytes(out, &bits_, gguf_type_size(type_));
    return;
  }
  append_pod<uint32_t>(out, uint32_t(elem_));
  append_pod<uint64_t>(out, count_);
  if (elem_ == GgufType::String) {
    for (const auto& s : std::get<std::vector<std::string>>(payload_)) append_string(out, s);
  } else if (elem_ == GgufType::Array) {
    for (const auto& v : std::get<std::vector<GgufValue>>(payload_)) v.append_to(out);
  } else {
    const auto& raw = std::get<std::vector<uint8_t>>(payload_);
    append_bytes(out, raw.data(), raw.size());
  }
}

// ---- reader ---------------------------------------------------------------------------

// Bounds-checked cursor over the mapping; every read names what it was reading.
class GgufParser {
 public:
  GgufParser(GgufReader& r, const MappedFile& f) : r_(r), data_(f.data()), size_(f.size()) {}

  void parse() {
    parse_header();
    parse_metadata();
    parse_alignment();
    parse_tensor_infos();
    place_tensors();
  }

 private:
  template <typename... Args>
  [[noreturn]] void error(fmt::format_string<Args...> f, Args&&... args) const {
    fail("{}: {}", r_.path_, fmt::format(f, std::forward<Args>(args)...));
  }

  uint64_t remaining() const { return size_ - pos_; }

  const uint8_t* take(uint64_t n) {
    if (n > remaining())
      error("truncated file: {} needs {} bytes at offset {}, only {} left", what(), n, pos_, remaining());
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }

  template <typename T>
  T read() {
    T v;
    std::memcpy(&v, take(sizeof(T)), sizeof(T));
    return v;
  }

  std::string read_string() {
    uint64_t len = read<uint64_t>();
    if (len > kMaxString)
      error("{}: string length {} at offset {} exceeds the limit {}", what(), len, pos_ - 8, kMaxString);
    if (len > remaining())
      error("truncated file: {}: string of {} bytes at offset {}, only {} left", what(), len, pos_, remaining());
    const uint8_t* p = take(len);
    return std::string(reinterpret_cast<const char*>(p), len);
  }

  // Keys and tensor names end up in maps, messages and output files: non-empty, bounded,
  // valid UTF-8 without control characters (the specification asks for ASCII keys; UTF-8
  // is the lenient superset real files stay within).
  void check_text(const std::string& s, const char* role, uint64_t max_len) const {
    if (s.empty()) error("empty {}", role);
    if (s.size() > max_len) error("{} '{}' of {} bytes exceeds the limit of {}", role, printable(s), s.size(), max_len);
    if (!valid_utf8(s)) error("{} '{}' is not valid UTF-8", role, printable(s));
    if (std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
      error("{} '{}' contains control characters", role, printable(s));
  }

  GgufType read_type(const char* role) {
    uint32_t id = read<uint32_t>();
    if (!gguf_type_valid(id)) error("{}: unknown {} type id {}", what(), role, id);
    return GgufType(id);
  }

  void parse_header() {
    at("header");
    if (size_ < 4) error("truncated file: {} bytes, too small for a GGUF header", size_);
    if (std::memcmp(data_, kMagic, 4) != 0)
      error("bad magic {}, not a GGUF file", printable(std::string(reinterpret_cast<const char*>(data_), 4)));
    pos_ = 4;
    uint32_t version = read<uint32_t>();
    if (version == 1) error("GGUF version 1 is not supported (only versions 2 and 3)");
    if (__builtin_bswap32(version) == 2 || __builtin_bswap32(version) == 3)
      error("big-endian GGUF files are not supported");
    if (version != 2 && version != 3) error("unsupported GGUF version {} (only versions 2 and 3)", version);
    r_.version_ = version;
    at("tensor count");
    n_tensors_ = read<uint64_t>();
    if (n_tensors_ > kMaxTensors) error("tensor count {} exceeds the limit {}", n_tensors_, kMaxTensors);
    at("metadata count");
    n_kv_ = read<uint64_t>();
    if (n_kv_ > kMaxKV) error("metadata count {} exceeds the limit {}", n_kv_, kMaxKV);
  }

  void parse_metadata() {
    // Each entry takes at least 13 bytes (key length, type, 1-byte value): never reserve
    // more than the file could hold.
    r_.kv_.reserve(std::min<uint64_t>(n_kv_, remaining() / 13));
    for (uint64_t i = 0; i < n_kv_; ++i) {
      at("key of metadata entry #{}", i);
      std::string key = read_string();
      at("metadata '{}'", key);
      if (r_.kv_index_.count(key)) error("duplicate metadata key '{}'", printable(key));
      check_text(key, "metadata key", kMaxKey);
      GgufType t = read_type("value");
      GgufValue v = read_value(t, 0);
      r_.kv_index_.emplace(key, r_.kv_.size());
      r_.kv_.push_back({std::move(key), std::move(v)});
    }
    at("tensor infos");  // the context no longer points at a moved-from key
  }

  GgufValue read_value(GgufType t, int depth) {
    GgufValue v;
    v.type_ = t;
    if (t == GgufType::String) {
      v.payload_ = read_string();
    } else if (t == GgufType::Array) {
      read_array(v, depth);
    } else {
      size_t sz = gguf_type_size(t);
      v.bits_ = load_bits(take(sz), sz);
      if (t == GgufType::Bool && v.bits_ > 1) error("{}: bool value {} is not 0 or 1", what(), v.bits_);
    }
    return v;
  }

  void read_array(GgufValue& v, int depth) {
    if (depth >= kMaxArrayDepth) error("{}: arrays nested deeper than {}", what(), kMaxArrayDepth);
    v.elem_ = read_type("array element");
    uint64_t n = read<uint64_t>();
    // Smallest encoding of one element: its fixed size, a string's length, or a nested
    // array's type + count. The claimed count must fit in the bytes left.
    uint64_t min_elem = gguf_type_size(v.elem_);
    if (v.elem_ == GgufType::String) min_elem = 8;
    if (v.elem_ == GgufType::Array) min_elem = 12;
    uint64_t need;
    if (mul_overflows(n, min_elem, &need) || need > remaining())
      error("{}: array of {} {} elements does not fit in the {} bytes left", what(), n,
            gguf_type_name(v.elem_), remaining());
    v.count_ = n;
    if (v.elem_ == GgufType::String) {
      std::vector<std::string> strs;
      strs.reserve(n);
      for (uint64_t i = 0; i < n; ++i) strs.push_back(read_string());
      v.payload_ = std::move(strs);
    } else if (v.elem_ == GgufType::Array) {
      std::vector<GgufValue> elems;
      elems.reserve(n);
      for (uint64_t i = 0; i < n; ++i) elems.push_back(read_value(GgufType::Array, depth + 1));
      v.payload_ = std::move(elems);
    } else {
      const uint8_t* p = take(need);
      if (v.elem_ == GgufType::Bool)
        for (uint64_t i = 0; i < n; ++i)
          if (p[i] > 1) error("{}: bool array element {} = {} is not 0 or 1", what(), i, p[i]);
      v.payload_ = std::vector<uint8_t>(p, p + need);
    }
  }

  void parse_alignment() {
    const GgufValue* a = r_.find(kGgufAlignmentKey);
    if (!a) return;
    if (a->type() != GgufType::U32)
      error("{} must be a u32, found {}", kGgufAlignmentKey, gguf_type_name(a->type()));
    uint64_t v = a->as_uint();
    if (!is_power_of_two(v)) error("{} = {} is not a power of two", kGgufAlignmentKey, v);
    r_.alignment_ = uint32_t(v);
  }

  void parse_tensor_infos() {
    // At least 8 (name length) + 4 + 8 + 4 + 8 bytes per info.
    r_.infos_.reserve(std::min<uint64_t>(n_tensors_, remaining() / 32));
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      at("name of tensor #{}", i);
      GgufTensorInfo ti;
      ti.name = read_string();
      at("tensor '{}'", ti.name);
      if (r_.tensor_index_.count(ti.name)) error("duplicate tensor name '{}'", printable(ti.name));
      read_tensor_info(ti);
      r_.tensor_index_.emplace(ti.name, r_.infos_.size());
      r_.infos_.push_back(std::move(ti));
      at("tensor infos");
    }
    // After the structural checks, so a duplicate is reported as such whatever its spelling.
    for (const auto& ti : r_.infos_) {
      at("tensor '{}'", ti.name);
      check_text(ti.name, "tensor name", kGgmlMaxName - 1);
    }
  }

  void read_tensor_info(GgufTensorInfo& ti) {
    ti.n_dims = read<uint32_t>();
    if (ti.n_dims < 1 || ti.n_dims > kMaxDims)
      error("{} has {} dimensions (must be 1 to {})", what(), ti.n_dims, kMaxDims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < ti.n_dims; ++d) {
      int64_t ne = read<int64_t>();
      if (ne < 1) error("{} has dimension ne[{}] = {} (must be >= 1)", what(), d, ne);
      if (mul_overflows(numel, uint64_t(ne), &numel) || numel > uint64_t(std::numeric_limits<int64_t>::max()))
        error("{}: element count overflows (dimensions too large)", what());
      ti.ne[d] = ne;
    }
    ti.type = read<uint32_t>();
    ti.offset = read<uint64_t>();
    const DTypeTraits* tr = dtype_traits(ti.type);
    if (!tr || tr->type == DType::U8) error("{} has unknown type id {}", what(), ti.type);
    // ggml packs blocks along rows: the row length must be whole blocks.
    if (ti.ne[0] % tr->block_size != 0)
      error("{}: row length {} is not a multiple of the {} block size {}", what(), ti.ne[0], tr->name,
            tr->block_size);
    if (mul_overflows(numel / uint64_t(tr->block_size), tr->type_size, &ti.nbytes))
      error("{}: byte size overflows", what());
  }

  void place_tensors() {
    uint64_t a = r_.alignment_;
    uint64_t start;
    if (add_overflows(pos_, a - 1, &start)) error("data section offset overflows");
    r_.data_offset_ = start / a * a;
    uint64_t data_size = r_.data_offset_ <= size_ ? size_ - r_.data_offset_ : 0;
    for (const auto& ti : r_.infos_) check_placement(ti, a, data_size);
    check_overlaps();
    r_.views_.reserve(r_.infos_.size());
    for (const auto& ti : r_.infos_) r_.views_.push_back(make_view(ti));
  }

  void check_placement(const GgufTensorInfo& ti, uint64_t align, uint64_t data_size) const {
    if (ti.offset % align != 0)
      error("tensor '{}': data offset {} is not a multiple of the alignment {}", printable(ti.name), ti.offset, align);
    uint64_t end;
    if (add_overflows(ti.offset, ti.nbytes, &end) || end > data_size)
      error("tensor '{}': data [{}, +{}) extends past the end of the file (data section holds {} bytes)",
            printable(ti.name), ti.offset, ti.nbytes, data_size);
  }

  void check_overlaps() const {
    const auto& infos = r_.infos_;
    std::vector<size_t> order(infos.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::sort(order.begin(), order.end(), [&](size_t x, size_t y) { return infos[x].offset < infos[y].offset; });
    for (size_t i = 1; i < order.size(); ++i) {
      const auto& prev = infos[order[i - 1]];
      const auto& cur = infos[order[i]];
      if (prev.offset + prev.nbytes > cur.offset)  // both in range: no overflow
        error("tensors '{}' and '{}' overlap", printable(prev.name), printable(cur.name));
    }
  }

  TensorView make_view(const GgufTensorInfo& ti) const {
    TensorView v;
    v.name = ti.name;
    v.type = DType(ti.type);
    for (uint32_t d = ti.n_dims; d-- > 0;) v.shape.push_back(ti.ne[d]);  // row-major
    v.data = data_ + r_.data_offset_ + ti.offset;
    v.nbytes = size_t(ti.nbytes);
    return v;
  }

  GgufReader& r_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  uint64_t n_tensors_ = 0, n_kv_ = 0;
  // What is being read, for error messages; formatted only when one is raised (every key
  // and tensor name through printable() was a fifth of the parse time).
  struct Context {
    const char* label = "";              // a fmt pattern when name or indexed is set
    const std::string* name = nullptr;   // a key or tensor name, valid until the next at()
    uint64_t index = 0;
    bool indexed = false;
  } ctx_;
  void at(const char* label) { ctx_ = {label}; }
  void at(const char* label, uint64_t i) { ctx_ = {label, nullptr, i, true}; }
  void at(const char* label, const std::string& name) { ctx_ = {label, &name}; }
  std::string what() const {
    if (ctx_.name) return fmt::format(fmt::runtime(ctx_.label), printable(*ctx_.name));
    if (ctx_.indexed) return fmt::format(fmt::runtime(ctx_.label), ctx_.index);
    return ctx_.label;
  }
};

GgufReader::GgufReader(const std::string& path) : path_(path) {
  auto file = std::make_shared<MappedFile>(path);
  file_ = file;
  GgufParser(*this, *file).parse();
}

const GgufValue* GgufReader::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].value;
}

const GgufValue& GgufReader::get(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) fail("{}: missing metadata key '{}'", path_, key);
  return *v;
}

const TensorView* GgufReader::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &views_[it->second];
}

// ---- writer ---------------------------------------------------------------------------

void GgufWriter::set(const std::string& key, GgufValue value) {
  if (key.empty()) fail("GGUF metadata key must not be empty");
  if (key == kGgufAlignmentKey) {
    if (value.type() != GgufType::U32 || !is_power_of_two(value.as_uint()))
      fail("{} must be a u32 power of two, got {} {}", key, gguf_type_name(value.type()), value.to_display());
  }
  auto it = kv_index_.find(key);
  if (it != kv_index_.end()) {
    kv_[it->second].value = std::move(value);
    return;
  }
  kv_index_.emplace(key, kv_.size());
  kv_.push_back({key, std::move(value)});
}

void GgufWriter::set_alignment(uint32_t alignment) { set(kGgufAlignmentKey, GgufValue::u32(alignment)); }

uint32_t GgufWriter::alignment() const {
  auto it = kv_index_.find(kGgufAlignmentKey);
  return it == kv_index_.end() ? kGgufDefaultAlignment : uint32_t(kv_[it->second].value.as_uint());
}

void GgufWriter::add_tensor(const std::string& name, DType type, const std::vector<int64_t>& shape,
                            const void* data, size_t nbytes) {
  if (name.empty() || name.size() >= kGgmlMaxName)
    fail("tensor '{}': name must be 1 to {} bytes for GGUF", printable(name), kGgmlMaxName - 1);
  if (tensor_index_.count(name)) fail("tensor '{}' added twice", name);
  const DTypeTraits* tr = dtype_traits(uint32_t(type));
  if (!tr || type == DType::U8) fail("tensor '{}': type id {} cannot be stored in GGUF", name, uint32_t(type));
  if (shape.empty() || shape.size() > kMaxDims)
    fail("tensor '{}': shape {} must have 1 to {} dimensions", name, shape_str(shape), kMaxDims);
  GgufTensorInfo ti;
  ti.name = name;
  ti.type = uint32_t(type);
  ti.n_dims = uint32_t(shape.size());
  uint64_t numel = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    int64_t n = shape[shape.size() - 1 - d];  // GGUF order: innermost first
    if (n < 1 || mul_overflows(numel, uint64_t(n), &numel))
      fail("tensor '{}': invalid shape {}", name, shape_str(shape));
    ti.ne[d] = n;
  }
  if (ti.ne[0] % tr->block_size != 0)
    fail("tensor '{}': row length {} is not a multiple of the {} block size {}", name, ti.ne[0], tr->name,
         tr->block_size);
  ti.nbytes = numel / uint64_t(tr->block_size) * tr->type_size;
  if (ti.nbytes != nbytes)
    fail("tensor '{}': {} {} needs {} bytes, got {}", name, tr->name, shape_str(shape), ti.nbytes, nbytes);
  tensor_index_.emplace(name, tensors_.size());
  tensors_.push_back({std::move(ti), data});
}

namespace {
uint64_t padding(uint64_t offset, uint64_t align) { return (align - offset % align) % align; }
}  // namespace

GgufWriter GgufWriter::slice(size_t begin, size_t end, bool with_metadata) const {
  if (begin > end || end > tensors_.size()) fail("GGUF slice [{}, {}) of {} tensors", begin, end, tensors_.size());
  GgufWriter out;
  if (with_metadata) out.kv_ = kv_, out.kv_index_ = kv_index_;
  else if (alignment() != kGgufDefaultAlignment) out.set_alignment(alignment());
  for (size_t i = begin; i < end; ++i) {
    out.tensor_index_.emplace(tensors_[i].info.name, out.tensors_.size());
    out.tensors_.push_back(tensors_[i]);
  }
  return out;
}

std::vector<uint8_t> GgufWriter::header() const {
  const uint64_t align = alignment();
  std::vector<uint8_t> header(kMagic, kMagic + 4);
  append_pod<uint32_t>(header, 3);
  append_pod<uint64_t>(header, tensors_.size());
  append_pod<uint64_t>(header, kv_.size());
  for (const auto& kv : kv_) {
    append_string(header, kv.key);
    append_pod<uint32_t>(header, uint32_t(kv.value.type()));
    kv.value.append_to(header);
  }
  // Tensors are laid out in order, each starting on an alignment boundary (llama.cpp
  // expects exactly this packing).
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    append_string(header, t.info.name);
    append_pod<uint32_t>(header, t.info.n_dims);
    for (uint32_t d = 0; d < t.info.n_dims; ++d) append_pod<int64_t>(header, t.info.ne[d]);
    append_pod<uint32_t>(header, t.info.type);
    append_pod<uint64_t>(header, offset);
    offset += t.info.nbytes + padding(t.info.nbytes, align);
  }
  return header;
}

uint64_t GgufWriter::file_size() const {
  const uint64_t align = alignment();
  uint64_t n = header().size();
  n += padding(n, align);
  for (const auto& t : tensors_) n += t.info.nbytes + padding(t.info.nbytes, align);
  return n;
}

void GgufWriter::write_to(const std::function<void(const void*, size_t)>& sink) const {
  static const uint8_t kZeros[4096] = {};
  auto zeros = [&](uint64_t n) {
    for (; n > 0; n -= std::min<uint64_t>(n, sizeof kZeros)) sink(kZeros, size_t(std::min<uint64_t>(n, sizeof kZeros)));
  };
  const uint64_t align = alignment();
  const std::vector<uint8_t> h = header();
  sink(h.data(), h.size());
  zeros(padding(h.size(), align));
  for (const auto& t : tensors_) {
    if (t.info.nbytes) sink(t.data, size_t(t.info.nbytes));
    zeros(padding(t.info.nbytes, align));
  }
}

void GgufWriter::write(const std::string& path) const {
  AtomicFile out(path);
  write_to([&](const void* p, size_t n) { out.write(p, n); });
  out.commit();
}

}  // namespace quantkit
