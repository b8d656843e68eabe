// GGUF (versions 2 and 3, little-endian) reader and writer, written from the GGUF
// specification:
//
//   "GGUF" u32:version u64:n_tensors u64:n_kv
//   n_kv x      { string:key  u32:value_type  value }
//   n_tensors x { string:name u32:n_dims  u64:ne[n_dims]  u32:ggml_type  u64:offset }
//   padding to general.alignment (default 32), then the tensor data blob; each tensor's
//   offset is relative to the blob and a multiple of the alignment.
//
// Strings are u64 length + bytes (no NUL); arrays are u32 element type + u64 count +
// elements; bools are one byte (0 or 1). ne[] is innermost-first (ne[0] = row length);
// the reader exposes row-major shapes (reversed), the writer takes row-major shapes.
//
// The reader validates every count, length, type id, shape and offset before use, with
// overflow-checked arithmetic; any problem is a quantkit::Error "<file>: <problem>".
#pragma once
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <variant>
#include <vector>

#include "quantkit/tensor.h"

namespace quantkit {

class MappedFile;

// Metadata value types; the numeric ids are the ones stored in the file.
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7,
  String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);  // "u32", "string", "array", ...; "?" if unknown
bool gguf_type_valid(uint32_t id);
// Bytes of one value of a fixed-size type (0 for string and array).
size_t gguf_type_size(GgufType t);

// One metadata value: a scalar, a string, or an array whose elements all share one type
// (arrays of arrays may differ in their inner element types, as the spec allows).
// Accessors throw quantkit::Error (without a file name: callers add it) on a mismatch.
class GgufValue {
 public:
  GgufValue() = default;  // u8 0

  template <typename T>
  static GgufValue scalar(T v);  // T: uint8_t..int64_t, float, double, bool
  static GgufValue u8(uint8_t v) { return scalar(v); }
  static GgufValue i8(int8_t v) { return scalar(v); }
  static GgufValue u16(uint16_t v) { return scalar(v); }
  static GgufValue i16(int16_t v) { return scalar(v); }
  static GgufValue u32(uint32_t v) { return scalar(v); }
  static GgufValue i32(int32_t v) { return scalar(v); }
  static GgufValue u64(uint64_t v) { return scalar(v); }
  static GgufValue i64(int64_t v) { return scalar(v); }
  static GgufValue f32(float v) { return scalar(v); }
  static GgufValue f64(double v) { return scalar(v); }
  static GgufValue boolean(bool v) { return scalar(v); }
  static GgufValue string(std::string s);

  template <typename T>
  static GgufValue array(const std::vector<T>& v);  // numeric or bool elements
  static GgufValue array(std::vector<std::string> v);
  // Any element type, incl. nested arrays; every element must have type `elem`.
  static GgufValue array(GgufType elem, std::vector<GgufValue> elems);

  GgufType type() const { return type_; }
  bool is_array() const { return type_ == GgufType::Array; }
  bool is_integer() const;
  bool is_number() const;  // integer or float

  int64_t as_int() const;    // any integer type; a u64 above INT64_MAX throws
  uint64_t as_uint() const;  // any integer type; a negative value throws
  double as_float() const;   // any float or integer type
  bool as_bool() const;
  const std::string& as_string() const;

  // Arrays.
  GgufType array_type() const;  // element type; throws if not an array
  size_t array_size() const;
  GgufValue element(size_t i) const;  // copies one element out
  std::vector<std::string> as_string_array() const;
  std::vector<float> as_float_array() const;    // float or integer elements
  std::vector<int64_t> as_int_array() const;    // integer elements

  // One-line human-readable form for listings: scalars in full (control characters
  // escaped), arrays summarised as "[u32 x 12]".
  std::string to_display() const;

  bool operator==(const GgufValue& o) const;  // bitwise for floats (NaN == same NaN)

  // Serialization (used by GgufWriter / GgufReader).
  void append_to(std::vector<uint8_t>& out) const;  // value only, without its type id

 private:
  friend class GgufParser;
  [[noreturn]] void mismatch(const char* wanted) const;
  template <typename T>
  T element_as(size_t i) const;

  GgufType type_ = GgufType::U8;
  GgufType elem_ = GgufType::U8;  // arrays only
  uint64_t bits_ = 0;             // fixed-size scalars: the little-endian bytes, zero-extended
  size_t count_ = 0;              // arrays only
  // string: std::string; arrays of fixed-size elements: the packed element bytes as in
  // the file; arrays of strings / arrays: one entry per element.
  std::variant<std::monostate, std::string, std::vector<uint8_t>, std::vector<std::string>,
               std::vector<GgufValue>>
      payload_;
};

struct GgufKV {
  std::string key;
  GgufValue value;
};

// A tensor as its info record describes it (GGUF order: ne[0] innermost).
struct GgufTensorInfo {
  std::string name;
  uint32_t n_dims = 0;
  int64_t ne[4] = {1, 1, 1, 1};
  uint32_t type = 0;    // ggml type id
  uint64_t offset = 0;  // relative to the data section
  uint64_t nbytes = 0;
};

inline constexpr uint32_t kGgufDefaultAlignment = 32;
inline constexpr const char* kGgufAlignmentKey = "general.alignment";

// Parses and validates a GGUF file through a read-only mapping; tensor views point into
// the mapping (no copies). The mapping lives as long as the reader or any holder of
// mapping().
class GgufReader {
 public:
  explicit GgufReader(const std::string& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the data section

  const std::vector<GgufKV>& metadata() const { return kv_; }  // in file order
  const GgufValue* find(const std::string& key) const;
  const GgufValue& get(const std::string& key) const;  // throws "<file>: missing metadata key"

  const std::vector<GgufTensorInfo>& tensor_infos() const { return infos_; }
  const std::vector<TensorView>& tensors() const { return views_; }  // row-major shapes
  const TensorView* find_tensor(const std::string& name) const;

  std::shared_ptr<const MappedFile> mapping() const { return file_; }

 private:
  std::string path_;
  std::shared_ptr<const MappedFile> file_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufKV> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<GgufTensorInfo> infos_;
  std::vector<TensorView> views_;
  std::unordered_map<std::string, size_t> tensor_index_;
  friend class GgufParser;
};

// Builds a GGUF v3 file. Metadata keeps insertion order (set() on an existing key
// replaces the value in place). Tensor data is referenced, not copied: the buffers must
// stay valid until write() returns.
class GgufWriter {
 public:
  void set(const std::string& key, GgufValue value);
  // Sets general.alignment (a power of two); without it the default 32 applies.
  void set_alignment(uint32_t alignment);
  // `shape` is row-major (outermost first), 1 to 4 dims; nbytes must match type and shape.
  void add_tensor(const std::string& name, DType type, const std::vector<int64_t>& shape,
                  const void* data, size_t nbytes);

  const std::vector<GgufKV>& metadata() const { return kv_; }
  size_t tensor_count() const { return tensors_.size(); }
  uint64_t tensor_nbytes(size_t i) const { return tensors_.at(i).info.nbytes; }
  // Tensors [begin, end) (the same buffers) with every metadata entry, or with none but the
  // alignment: the pieces of a GGUF split (src/io/shards.cpp).
  GgufWriter slice(size_t begin, size_t end, bool with_metadata) const;

  // Writes atomically (temporary file, fsync, rename); throws Error naming `path`.
  void write(const std::string& path) const;
  // The file's bytes, in order, in pieces through `sink`; file_size() of them in all.
  void write_to(const std::function<void(const void*, size_t)>& sink) const;
  uint64_t file_size() const;

 private:
  struct PendingTensor {
    GgufTensorInfo info;
    const void* data;
  };
  uint32_t alignment() const;
  std::vector<uint8_t> header() const;  // up to the tensor data, without the padding after it

  std::vector<GgufKV> kv_;
  std::unordered_map<std::string, size_t> kv_index_;
  std::vector<PendingTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// ---- template definitions -------------------------------------------------------------

namespace gguf_detail {
template <typename T>
constexpr GgufType type_of() {
  if constexpr (std::is_same_v<T, bool>) return GgufType::Bool;
  else if constexpr (std::is_same_v<T, uint8_t>) return GgufType::U8;
  else if constexpr (std::is_same_v<T, int8_t>) return GgufType::I8;
  else if constexpr (std::is_same_v<T, uint16_t>) return GgufType::U16;
  else if constexpr (std::is_same_v<T, int16_t>) return GgufType::I16;
  else if constexpr (std::is_same_v<T, uint32_t>) return GgufType::U32;
  else if constexpr (std::is_same_v<T, int32_t>) return GgufType::I32;
  else if constexpr (std::is_same_v<T, uint64_t>) return GgufType::U64;
  else if constexpr (std::is_same_v<T, int64_t>) return GgufType::I64;
  else if constexpr (std::is_same_v<T, float>) return GgufType::F32;
  else if constexpr (std::is_same_v<T, double>) return GgufType::F64;
  else static_assert(sizeof(T) == 0, "not a GGUF scalar type");
}
}  // namespace gguf_detail

template <typename T>
GgufValue GgufValue::scalar(T v) {
  GgufValue out;
  out.type_ = gguf_detail::type_of<T>();
  if constexpr (std::is_same_v<T, bool>) {
    out.bits_ = v ? 1 : 0;
  } else {
    static_assert(sizeof(T) <= sizeof(uint64_t));
    std::memcpy(&out.bits_, &v, sizeof(T));  // little-endian host: the low bytes
  }
  return out;
}

template <typename T>
GgufValue GgufValue::array(const std::vector<T>& v) {
  constexpr GgufType et = gguf_detail::type_of<T>();
  GgufValue out;
  out.type_ = GgufType::Array;
  out.elem_ = et;
  out.count_ = v.size();
  std::vector<uint8_t> raw(v.size() * sizeof(T));
  for (size_t i = 0; i < v.size(); ++i) {
    T x = v[i];  // vector<bool> yields proxies: materialise first
    if constexpr (std::is_same_v<T, bool>) raw[i] = x ? 1 : 0;
    else std::memcpy(raw.data() + i * sizeof(T), &x, sizeof(T));
  }
  out.payload_ = std::move(raw);
  return out;
}

}  // namespace quantkit
