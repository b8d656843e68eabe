#include "io/shards.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "io/gguf.h"
#include "quantkit/distributed.h"
#include "quantkit/error.h"
#include "quantkit/mapped_file.h"

namespace quantkit {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSplitNo = kGgufSplitNo;
constexpr const char* kSplitCount = kGgufSplitCount;
constexpr const char* kSplitTensors = kGgufSplitTensors;
constexpr int kMaxShards = 65535;  // split.count is a u16

// Bytes rank 0 sends to a shard's writer per message.
constexpr size_t kPieceBytes = size_t(64) << 20;

// "-00002-of-00003" + the extension: the tail of shard `index` (0-based).
std::string shard_suffix(const std::string& path, int index, int count) {
  return fmt::format("-{:05d}-of-{:05d}{}", index + 1, count, fs::path(path).extension().string());
}

// ---- writing --------------------------------------------------------------------------------

// The rank that writes file k: files loaders open first are rank 0's.
int writer_of(const OutputFile& f, size_t k, int ranks) { return f.last ? 0 : int(k % size_t(ranks)); }

// Rank 0's list of files (paths, sizes, order), on every rank.
std::vector<OutputFile> agree_on_files(Communicator& comm, const std::vector<OutputFile>& files) {
  std::vector<uint8_t> bytes;
  if (comm.root()) {
    nlohmann::json j = nlohmann::json::array();
    for (const OutputFile& f : files) j.push_back({f.path, f.size, f.last});
    const std::string text = j.dump();
    bytes.assign(text.begin(), text.end());
  }
  comm.broadcast(bytes, 0);
  if (comm.root()) return files;
  std::vector<OutputFile> out;
  for (const auto& e : nlohmann::json::parse(bytes.begin(), bytes.end())) {
    OutputFile f;
    f.path = e.at(0).get<std::string>(), f.size = e.at(1).get<uint64_t>(), f.last = e.at(2).get<bool>();
    out.push_back(std::move(f));
  }
  return out;
}

void check_size(const std::string& path, uint64_t wrote, uint64_t size) {
  if (wrote != size) fail("{}: wrote {} bytes, expected {}", path, wrote, size);
}

// Rank 0 writes f itself.
std::unique_ptr<AtomicFile> write_here(const OutputFile& f) {
  auto out = std::make_unique<AtomicFile>(f.path);
  f.write([&](const void* p, size_t n) { out->write(p, n); });
  check_size(f.path, out->offset(), f.size);
  return out;
}

// Rank 0 streams f to `owner` in pieces of kPieceBytes (a gather to `owner` in which only
// rank 0's buffer is not empty); every rank takes part in every piece.
std::unique_ptr<AtomicFile> stream(Communicator& comm, const OutputFile& f, int owner) {
  const uint64_t pieces = (f.size + kPieceBytes - 1) / kPieceBytes;
  if (comm.rank() == owner) {
    std::error_code ec;
    fs::create_directories(fs::absolute(f.path).parent_path(), ec);  // on this rank's machine
    auto out = std::make_unique<AtomicFile>(f.path);
    for (uint64_t i = 0; i < pieces; ++i) {
      const std::vector<std::vector<uint8_t>> parts = comm.gather({}, owner);
      out->write(parts.at(0).data(), parts.at(0).size());
    }
    check_size(f.path, out->offset(), f.size);
    return out;
  }
  if (!comm.root()) {
    for (uint64_t i = 0; i < pieces; ++i) comm.gather({}, owner);
    return nullptr;
  }
  std::vector<uint8_t> buf;
  uint64_t sent = 0, produced = 0;
  auto send = [&](size_t n) {
    std::vector<uint8_t> piece(buf.begin(), buf.begin() + int64_t(n));
    buf.erase(buf.begin(), buf.begin() + int64_t(n));
    if (++sent > pieces) fail("{}: more than the announced {} bytes", f.path, f.size);
    comm.gather(piece, owner);
  };
  f.write([&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    produced += n;
    for (size_t at = 0; at < n;) {
      const size_t take = std::min(n - at, kPieceBytes - buf.size());
      buf.insert(buf.end(), b + at, b + at + take);
      at += take;
      if (buf.size() == kPieceBytes) send(kPieceBytes);
    }
  });
  if (!buf.empty()) send(buf.size());
  check_size(f.path, produced, f.size);
  return nullptr;
}

// ---- reading --------------------------------------------------------------------------------

// A split key as an integer (llama.cpp requires u16 / i32; any integer type is accepted here).
int64_t split_key(const GgufReader& r, const char* key) {
  const GgufValue& v = r.get(key);
  if (!v.is_integer()) fail("{}: metadata '{}' is a {}, not an integer", r.path(), key, gguf_type_name(v.type()));
  return v.as_int();
}

}  // namespace

std::vector<int> plan_shards(const std::vector<uint64_t>& bytes, int count, const std::string& what) {
  const size_t n = bytes.size();
  if (count < 1 || count > kMaxShards) fail("{}: {} shards (must be 1 to {})", what, count, kMaxShards);
  if (size_t(count) > n) fail("{}: {} shards for {} tensors (each shard needs at least one)", what, count, n);
  unsigned __int128 total = 0;
  for (uint64_t b : bytes) total += b;
  std::vector<int> shard(n, 0);
  unsigned __int128 before = 0;
  for (size_t i = 0; i < n; ++i) {
    // Exact integer arithmetic: the same plan on every machine.
    const unsigned __int128 mid = 2 * before + bytes[i];
    int s = total ? int(std::min<unsigned __int128>(mid * unsigned(count) / (2 * total), unsigned(count - 1)))
                  : int(i * size_t(count) / n);
    const int prev = i ? shard[i - 1] : 0;
    s = std::clamp(s, prev, i ? prev + 1 : 0);          // contiguous, no shard skipped
    s = std::max(s, count - int(std::min(n - i, size_t(count))));  // enough tensors left for the rest
    shard[i] = s;
    before += bytes[i];
  }
  return shard;
}

std::string shard_path(const std::string& path, int index, int count) {
  const fs::path p(path);
  return (p.parent_path() / p.stem()).string() + shard_suffix(path, index, count);
}

std::vector<std::string> write_files(Communicator* comm, const std::vector<OutputFile>& files) {
  const bool together = comm && comm->size() > 1;
  const std::vector<OutputFile> list = together ? agree_on_files(*comm, files) : files;
  const int ranks = together ? comm->size() : 1, rank = together ? comm->rank() : 0;
  std::vector<std::unique_ptr<AtomicFile>> mine(list.size());
  for (size_t k = 0; k < list.size(); ++k) {
    const int owner = writer_of(list[k], k, ranks);
    if (owner == 0 && rank == 0) mine[k] = write_here(list[k]);
    else if (owner != 0) mine[k] = stream(*comm, list[k], owner);
  }
  // Renames only once every rank has written its files; the files loaders open first last.
  for (const bool last : {false, true}) {
    if (together) comm->barrier();
    for (size_t k = 0; k < list.size(); ++k)
      if (mine[k] && list[k].last == last) mine[k]->commit();
  }
  std::vector<std::string> paths;
  for (const OutputFile& f : list) paths.push_back(f.path);
  return paths;
}

std::vector<std::unique_ptr<GgufReader>> open_gguf_split(const std::string& path) {
  auto given = std::make_unique<GgufReader>(path);
  std::vector<std::unique_ptr<GgufReader>> parts;
  if (!given->find(kSplitCount)) {
    parts.push_back(std::move(given));
    return parts;
  }
  const int64_t count = split_key(*given, kSplitCount), no = split_key(*given, kSplitNo);
  if (count < 1 || count > kMaxShards) fail("{}: {} = {} (must be 1 to {})", path, kSplitCount, count, kMaxShards);
  if (no < 0 || no >= count) fail("{}: {} = {} but {} = {}", path, kSplitNo, no, kSplitCount, count);
  const std::string suffix = shard_suffix(path, int(no), int(count));
  if (count > 1 && !path.ends_with(suffix))
    fail("{}: shard {} of {}, but its name does not end in '{}' (the others are found by name)", path, no + 1, count,
         suffix);
  const std::string stem = path.substr(0, path.size() - (count > 1 ? suffix.size() : 0));
  parts.resize(size_t(count));
  parts[size_t(no)] = std::move(given);
  for (int k = 0; k < int(count); ++k) {
    if (parts[size_t(k)]) continue;
    const std::string p = stem + shard_suffix(path, k, int(count));
    std::error_code ec;
    if (!fs::exists(p, ec)) fail("{}: shard {} of {} is missing (the split of {})", p, k + 1, count, path);
    auto r = std::make_unique<GgufReader>(p);
    if (!r->find(kSplitCount)) fail("{}: no {} key: not a shard of the split of {}", p, kSplitCount, path);
    if (split_key(*r, kSplitCount) != count)
      fail("{}: {} = {}, but {} says {}", p, kSplitCount, split_key(*r, kSplitCount), path, count);
    if (split_key(*r, kSplitNo) != k) fail("{}: {} = {}, expected {}", p, kSplitNo, split_key(*r, kSplitNo), k);
    parts[size_t(k)] = std::move(r);
  }
  // Names are unique across shards and the first shard's count holds.
  std::set<std::string> names;
  for (const auto& r : parts)
    for (const TensorView& t : r->tensors())
      if (!names.insert(t.name).second) fail("{}: tensor '{}' is also in another shard", r->path(), t.name);
  const int64_t expected = split_key(*parts[0], kSplitTensors);
  if (expected != int64_t(names.size()))
    fail("{}: {} = {}, but the {} shards hold {} tensors", parts[0]->path(), kSplitTensors, expected, count,
         names.size());
  return parts;
}

}  // namespace quantkit
