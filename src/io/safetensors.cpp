#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "io/untrusted.h"
#include "quantkit/error.h"

namespace quantkit {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The reference implementation's limit: a larger header is a corrupt or hostile file.
constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;
constexpr size_t kMaxRank = 8;

struct DTypeName {
  DType type;
  const char* name;
};
constexpr DTypeName kDTypes[] = {
    {DType::F32, "F32"}, {DType::F16, "F16"}, {DType::BF16, "BF16"}, {DType::F64, "F64"}, {DType::I8, "I8"},
    {DType::U8, "U8"},   {DType::I16, "I16"}, {DType::I32, "I32"},   {DType::I64, "I64"},
};

std::string supported_dtypes() {
  std::string s;
  for (const auto& d : kDTypes) s += fmt::format("{}{}", s.empty() ? "" : ", ", d.name);
  return s;
}

std::string one_line(std::string s) {
  std::replace_if(
      s.begin(), s.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
  return s;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

// One header entry after validation.
struct Entry {
  std::string name;
  DType type;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

std::vector<int64_t> parse_shape(const std::string& file, const std::string& name, const json& j) {
  if (!j.is_array()) fail("{}: tensor '{}': shape is not an array", file, printable(name));
  if (j.size() > kMaxRank)
    fail("{}: tensor '{}': rank {} exceeds the limit of {}", file, printable(name), j.size(), kMaxRank);
  std::vector<int64_t> shape;
  for (const auto& d : j) {
    if (d.is_number_unsigned()) {
      uint64_t v = d.get<uint64_t>();
      if (v > uint64_t(INT64_MAX)) fail("{}: tensor '{}': dimension {} is too large", file, printable(name), v);
      shape.push_back(int64_t(v));
    } else if (d.is_number_integer()) {
      fail("{}: tensor '{}': negative dimension {}", file, printable(name), d.get<int64_t>());
    } else {
      fail("{}: tensor '{}': shape {} holds a non-integer", file, printable(name), printable(j.dump()));
    }
  }
  return shape;
}

uint64_t parse_offset(const std::string& file, const std::string& name, const json& j) {
  if (!j.is_number_unsigned())
    fail("{}: tensor '{}': data_offsets must be two non-negative integers", file, printable(name));
  return j.get<uint64_t>();
}

// Bytes a tensor of this shape and type needs, or an error if the product overflows.
uint64_t checked_nbytes(const std::string& file, const std::string& name, DType type,
                        const std::vector<int64_t>& shape) {
  uint64_t n = dtype_traits(type).type_size;
  for (int64_t d : shape)
    if (mul_overflows(n, uint64_t(d), &n))
      fail("{}: tensor '{}': shape {} is too large", file, printable(name), shape_str(shape));
  return n;
}

Entry parse_entry(const std::string& file, const std::string& name, const json& j, uint64_t data_size) {
  if (!j.is_object()) fail("{}: tensor '{}': header entry is not an object", file, printable(name));
  auto field = [&](const char* key) -> const json& {
    auto it = j.find(key);
    if (it == j.end()) fail("{}: tensor '{}': header entry has no '{}'", file, printable(name), key);
    return *it;
  };
  Entry e{name, DType::F32, {}, 0, 0};
  const json& dt = field("dtype");
  if (!dt.is_string()) fail("{}: tensor '{}': dtype is not a string", file, printable(name));
  auto type = safetensors_dtype(dt.get<std::string>());
  if (!type)
    fail("{}: tensor '{}' has dtype {}, which quantkit does not read (supported: {})", file, printable(name),
         printable(dt.get<std::string>()), supported_dtypes());
  e.type = *type;
  e.shape = parse_shape(file, name, field("shape"));
  const json& off = field("data_offsets");
  if (!off.is_array() || off.size() != 2)
    fail("{}: tensor '{}': data_offsets must be two non-negative integers", file, printable(name));
  e.begin = parse_offset(file, name, off[0]);
  e.end = parse_offset(file, name, off[1]);
  if (e.begin > e.end)
    fail("{}: tensor '{}': data_offsets [{}, {}] are reversed", file, printable(name), e.begin, e.end);
  if (e.end > data_size)
    fail("{}: tensor '{}': data_offsets [{}, {}] are outside the {}-byte data buffer", file, printable(name), e.begin,
         e.end, data_size);
  uint64_t need = checked_nbytes(file, name, e.type, e.shape);
  if (e.end - e.begin != need)
    fail("{}: tensor '{}': data_offsets span {} bytes but {} {} needs {}", file, printable(name), e.end - e.begin,
         shape_str(e.shape), safetensors_dtype_name(e.type), need);
  return e;
}

std::map<std::string, std::string> parse_metadata(const std::string& file, const json& j) {
  if (!j.is_object()) fail("{}: __metadata__ is not an object", file);
  std::map<std::string, std::string> out;
  for (const auto& [k, v] : j.items()) {
    if (!v.is_string()) fail("{}: __metadata__ value for '{}' is not a string", file, printable(k));
    out[k] = v.get<std::string>();
  }
  return out;
}

// Sorts entries into data order and rejects any two that share bytes. Empty tensors
// occupy no bytes and cannot overlap anything.
void sort_and_check_overlap(const std::string& file, std::vector<Entry>& entries) {
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  const Entry* prev = nullptr;  // the non-empty entry reaching furthest so far
  for (const auto& e : entries) {
    if (e.begin == e.end) continue;
    if (prev && e.begin < prev->end)
      fail("{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", file, printable(prev->name), prev->begin, prev->end,
           printable(e.name), e.begin, e.end);
    if (!prev || e.end > prev->end) prev = &e;
  }
}

fs::path join(const std::string& dir, const std::string& name) { return fs::path(dir) / name; }

}  // namespace

std::optional<DType> safetensors_dtype(std::string_view name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return d.type;
  return std::nullopt;
}

const char* safetensors_dtype_name(DType t) {
  for (const auto& d : kDTypes)
    if (d.type == t) return d.name;
  fail("tensor type {} cannot be stored in safetensors (supported: {})", dtype_name(t), supported_dtypes());
}

// ---- reader ----

SafetensorsFile::SafetensorsFile(const std::string& path) : map_(std::make_shared<MappedFile>(path)) {
  const uint8_t* base = map_->data();
  const uint64_t size = map_->size();
  if (size < 8) fail("{}: file is {} bytes, too short for a safetensors header", path, size);
  const uint64_t header_len = read_u64_le(base);
  if (header_len > size - 8) fail("{}: header length {} exceeds the file size ({} bytes)", path, header_len, size);
  if (header_len > kMaxHeaderBytes)
    fail("{}: header length {} exceeds the {} MB limit", path, header_len, kMaxHeaderBytes >> 20);
  const char* header = reinterpret_cast<const char*>(base + 8);
  json j = parse_json_strict(path, std::string_view(header, header_len), "header");
  if (!j.is_object()) fail("{}: header is not a JSON object", path);

  const uint64_t data_size = size - 8 - header_len;
  std::vector<Entry> entries;
  for (const auto& [name, v] : j.items()) {
    if (name == "__metadata__")
      metadata_ = parse_metadata(path, v);
    else
      entries.push_back(parse_entry(path, name, v, data_size));
  }
  sort_and_check_overlap(path, entries);

  const uint8_t* data = base + 8 + header_len;
  for (auto& e : entries) {
    TensorView v;
    v.name = std::move(e.name);
    v.type = e.type;
    v.shape = std::move(e.shape);
    v.nbytes = size_t(e.end - e.begin);
    v.data = data + e.begin;
    // A header length that is not a multiple of 8 misaligns the data; copy such tensors
    // rather than hand out pointers that typed reads cannot use.
    size_t align = dtype_traits(v.type).type_size;
    if (v.nbytes && reinterpret_cast<uintptr_t>(v.data) % align != 0) {
      std::shared_ptr<uint8_t[]> copy(new uint8_t[v.nbytes]);
      std::memcpy(copy.get(), v.data, v.nbytes);
      v.data = copy.get();
      aligned_copies_.emplace_back(copy, copy.get());
    }
    by_name_[v.name] = tensors_.size();
    tensors_.push_back(std::move(v));
  }
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

// ---- writer ----

uint64_t safetensors_nbytes(const SafetensorsTensor& t) {
  safetensors_dtype_name(t.type);  // rejects types safetensors cannot hold
  for (int64_t d : t.shape)
    if (d < 0) fail("tensor '{}': negative dimension in shape {}", t.name, shape_str(t.shape));
  return checked_nbytes("safetensors writer", t.name, t.type, t.shape);
}

namespace {

void check_writable(const std::string& path, const std::vector<SafetensorsTensor>& tensors) {
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") fail("{}: invalid tensor name '{}'", path, t.name);
    if (!names.insert(t.name).second) fail("{}: tensor '{}' is given twice", path, t.name);
    if (t.shape.size() > kMaxRank) fail("{}: tensor '{}': rank {} exceeds {}", path, t.name, t.shape.size(), kMaxRank);
    if (!t.data && !t.produce && safetensors_nbytes(t) > 0) fail("{}: tensor '{}' has no data", path, t.name);
  }
}

// Data order: decreasing element size keeps every tensor aligned without padding
// (the reference reader rejects gaps between tensors); ties keep the caller's order.
std::vector<size_t> layout_order(const std::vector<SafetensorsTensor>& tensors) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_traits(tensors[a].type).type_size > dtype_traits(tensors[b].type).type_size;
  });
  return order;
}

std::string build_header(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                         const std::vector<size_t>& order, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (size_t i : order) {
    const auto& t = tensors[i];
    uint64_t end;
    if (add_overflows(offset, safetensors_nbytes(t), &end)) fail("{}: total tensor size overflows", path);
    h[t.name] = {{"dtype", safetensors_dtype_name(t.type)}, {"shape", t.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = h.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not UTF-8
    fail("{}: cannot encode header: {}", path, one_line(e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the reference pads to a multiple of 8
  return text;
}

void write_all(const ByteSink& sink, const std::string& path, const std::vector<SafetensorsTensor>& tensors,
               const std::vector<size_t>& order) {
  for (size_t i : order) {
    const auto& t = tensors[i];
    uint64_t n = safetensors_nbytes(t);
    if (t.produce) {
      std::vector<uint8_t> bytes = t.produce();
      if (bytes.size() != n) fail("{}: tensor '{}': produced {} bytes, expected {}", path, t.name, bytes.size(), n);
      sink(bytes.data(), bytes.size());
    } else if (n > 0) {
      sink(t.data, size_t(n));
    }
  }
}

void remove_if_exists(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);  // best effort: a leftover only matters if it exists, and then remove works
}

}  // namespace

OutputFile safetensors_output(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  check_writable(path, tensors);
  auto order = std::make_shared<const std::vector<size_t>>(layout_order(tensors));
  auto header = std::make_shared<const std::string>(build_header(path, tensors, *order, metadata));
  OutputFile out;
  out.path = path;
  out.size = 8 + header->size();
  for (const auto& t : tensors) out.size += safetensors_nbytes(t);
  out.write = [path, tensors, order, header](const ByteSink& sink) {
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(header->size()) >> (8 * i));
    sink(len, 8);
    sink(header->data(), header->size());
    write_all(sink, path, tensors, *order);
  };
  return out;
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const OutputFile o = safetensors_output(path, tensors, metadata);
  AtomicFile f(path);
  o.write([&](const void* p, size_t n) { f.write(p, n); });
  f.commit();
}

namespace {

// Shards of `tensors` in order: greedy up to the byte limit, or exactly layout.count.
std::vector<std::vector<SafetensorsTensor>> cut_shards(const std::string& dir, const std::vector<SafetensorsTensor>& tensors,
                                                       const ShardLayout& layout) {
  std::vector<std::vector<SafetensorsTensor>> shards(1);
  if (layout.count > 0) {
    std::vector<uint64_t> bytes;
    for (const auto& t : tensors) bytes.push_back(safetensors_nbytes(t));
    const std::vector<int> shard = plan_shards(bytes, layout.count, dir);
    shards.resize(size_t(layout.count));
    for (size_t i = 0; i < tensors.size(); ++i) shards[size_t(shard[i])].push_back(tensors[i]);
    return shards;
  }
  // Greedy in the caller's order; a tensor larger than the limit gets a shard alone.
  uint64_t in_shard = 0;
  for (const auto& t : tensors) {
    uint64_t n = safetensors_nbytes(t);
    if (!shards.back().empty() && (n > layout.max_bytes - in_shard)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(t);
    in_shard += std::min(n, layout.max_bytes);
  }
  return shards;
}

OutputFile text_output(const std::string& path, std::string text) {
  OutputFile o;
  o.path = path;
  o.size = text.size();
  o.last = true;
  o.write = [text = std::move(text)](const ByteSink& sink) { sink(text.data(), text.size()); };
  return o;
}

}  // namespace

std::vector<std::string> write_safetensors_sharded(const std::string& dir,
                                                   const std::vector<SafetensorsTensor>& tensors,
                                                   const std::map<std::string, std::string>& metadata,
                                                   const ShardLayout& layout, const std::string& base) {
  if (layout.max_bytes == 0) fail("{}: the shard size limit must be positive", dir);
  const std::string single = base + ".safetensors", index = base + ".safetensors.index.json";
  uint64_t total = 0;
  for (const auto& t : tensors)
    if (add_overflows(total, safetensors_nbytes(t), &total)) fail("{}: total tensor size overflows", dir);

  if (layout.count == 0 && total <= layout.max_bytes) {
    write_safetensors(join(dir, single).string(), tensors, metadata);
    remove_if_exists(join(dir, index));
    return {single};
  }

  const std::vector<std::vector<SafetensorsTensor>> shards = cut_shards(dir, tensors, layout);
  std::vector<std::string> written;
  std::vector<OutputFile> files;
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    std::string name = fmt::format("{}-{:05d}-of-{:05d}.safetensors", base, s + 1, shards.size());
    files.push_back(safetensors_output(join(dir, name).string(), shards[s], metadata));
    for (const auto& t : shards[s]) weight_map[t.name] = name;
    written.push_back(name);
  }
  // The index last: until it exists the shards are not a model.
  json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  files.push_back(text_output(join(dir, index).string(), idx.dump(2) + "\n"));
  write_files(layout.comm, files);
  remove_if_exists(join(dir, single));
  written.push_back(index);
  return written;
}

// ---- sharded index ----

namespace {

// weight_map as shard file -> tensor names, shards sorted by file name.
std::map<std::string, std::set<std::string>> read_weight_map(const std::string& index_path) {
  json j = read_json_file(index_path, "index");
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail("{}: index has no \"weight_map\" object", index_path);
  std::map<std::string, std::set<std::string>> by_shard;
  for (const auto& [tensor, shard] : j["weight_map"].items()) {
    if (!shard.is_string()) fail("{}: weight_map entry for '{}' is not a file name", index_path, printable(tensor));
    const auto& file = shard.get_ref<const std::string&>();
    // Shards live beside the index; refuse paths that would reach elsewhere.
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
        file.find('\\') != std::string::npos)
      fail("{}: weight_map entry for '{}' names '{}', not a file beside the index", index_path, printable(tensor),
           printable(file));
    by_shard[file].insert(tensor);
  }
  if (by_shard.empty()) fail("{}: weight_map lists no tensors", index_path);
  return by_shard;
}

}  // namespace

SafetensorsSet open_safetensors(const std::string& path) {
  SafetensorsSet set;
  const bool is_index = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  if (!is_index) {
    auto f = std::make_shared<const SafetensorsFile>(path);
    set.tensors = f->tensors();
    set.metadata = f->metadata();
    set.shards.push_back(std::move(f));
    return set;
  }
  const fs::path dir = fs::path(path).parent_path();
  for (const auto& [file, names] : read_weight_map(path)) {
    const std::string shard_path = (dir / file).string();
    std::error_code ec;
    if (!fs::is_regular_file(shard_path, ec)) fail("{}: shard '{}' does not exist", path, printable(file));
    auto shard = std::make_shared<const SafetensorsFile>(shard_path);
    for (const auto& name : names)
      if (!shard->find(name))
        fail("{}: tensor '{}' is mapped to '{}', which does not hold it", path, printable(name), printable(file));
    // Tensors a shard holds but the index does not map are ignored, as transformers does.
    for (const auto& t : shard->tensors())
      if (names.count(t.name)) set.tensors.push_back(t);
    if (set.shards.empty()) set.metadata = shard->metadata();
    set.shards.push_back(std::move(shard));
  }
  return set;
}

}  // namespace quantkit
