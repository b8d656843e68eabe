// Sharded outputs: a model written as N files, the forms llama.cpp's gguf-split and Hugging
// Face use, optionally written by the ranks of a distributed job.
//
// - GGUF split: <stem>-00001-of-0000N.gguf ... ; every shard carries split.no (u16, 0-based),
//   split.count (u16) and split.tensors.count (i32, tensors of the whole model); the first
//   shard alone carries the model's metadata (what llama.cpp's loader reads), as gguf-split
//   writes it.
// - safetensors: model-0000k-of-0000N.safetensors + model.safetensors.index.json
//   (metadata.total_size, weight_map), as transformers' save_pretrained writes them.
//
// Tensors go to shards in file order, contiguous, balanced by bytes (plan_shards): the
// union of the shards holds the single file's tensors, bytes and order, whoever writes them.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "quantkit/model_file.h"

namespace quantkit {

class Communicator;
class GgufReader;

// The keys of a GGUF split, on every shard.
inline constexpr const char* kGgufSplitNo = "split.no";                  // u16, 0-based
inline constexpr const char* kGgufSplitCount = "split.count";            // u16
inline constexpr const char* kGgufSplitTensors = "split.tensors.count";  // i32, the whole model's

// Receives a file's bytes in consecutive pieces.
using ByteSink = std::function<void(const void* data, size_t n)>;

// How a writer cuts its tensors into files.
struct ShardLayout {
  uint64_t max_bytes = uint64_t(5) << 30;  // count == 0: a new shard when the next tensor would pass this
  int count = 0;                           // > 0: exactly `count` shards, balanced by bytes, always sharded
  Communicator* comm = nullptr;            // the ranks that write the shards (null: this process alone)

  ShardLayout(uint64_t max = uint64_t(5) << 30) : max_bytes(max) {}  // NOLINT: a size is a layout
  static ShardLayout exactly(int count, Communicator* comm = nullptr) {
    ShardLayout l;
    l.count = count, l.comm = comm;
    return l;
  }
};

// The shard of each item (0-based): contiguous runs in order, every shard non-empty, each
// item in the shard whose share of the total bytes holds the item's middle byte.
// Throws Error naming `what` when there are more shards than items.
std::vector<int> plan_shards(const std::vector<uint64_t>& bytes, int count, const std::string& what);

// "dir/out.gguf", 1, 3 -> "dir/out-00002-of-00003.gguf" (llama.cpp's llama_split_path form).
std::string shard_path(const std::string& path, int index, int count);

// A file rank 0 produces: `size` bytes through write(sink).
struct OutputFile {
  std::string path;
  uint64_t size = 0;
  bool last = false;  // becomes visible after every other file (the file loaders open first)
  std::function<void(const ByteSink&)> write;
};

// Writes `files` atomically, each to a temporary file first; renames only once all are
// written, the `last` ones after every other. With a communicator of several ranks every rank
// calls it (the files are rank 0's; the others pass none): file k is written by rank
// k % ranks (`last` files by rank 0) from the bytes rank 0 streams to it, and the renames
// wait for a barrier, so a rank that fails before leaves no output. Returns the paths.
std::vector<std::string> write_files(Communicator* comm, const std::vector<OutputFile>& files);

// Every shard of the GGUF split `path` belongs to, in order (the first holds the metadata),
// from the path of any of them; a file without split.count > 1 alone. Throws Error naming
// the file on a missing shard or inconsistent split keys.
std::vector<std::unique_ptr<GgufReader>> open_gguf_split(const std::string& path);

}  // namespace quantkit
