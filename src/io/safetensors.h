// safetensors (https://github.com/huggingface/safetensors): reader, writer, sharded
// index, plus the Hugging Face Llama helpers used by src/io/hf_model.cpp.
//
// File layout: u64 little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}, "<name>": {"dtype": "F16", "shape": [..],
//    "data_offsets": [begin, end]}, ...}
// then the data buffer; offsets are relative to its start. Shapes are row-major,
// as quantkit's TensorView.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/shards.h"
#include "quantkit/mapped_file.h"
#include "quantkit/model_file.h"
#include "quantkit/tensor.h"

namespace quantkit {

// safetensors dtype name ("F16", "BF16", ...) -> DType; nullopt for a dtype quantkit
// does not read (BOOL, F8_E4M3, U32, ...).
std::optional<DType> safetensors_dtype(std::string_view name);
// DType -> safetensors name; throws Error for a type safetensors cannot hold (q4_0, ...).
const char* safetensors_dtype_name(DType t);

// One .safetensors file, memory-mapped and fully validated on open. Tensor views point
// into the mapping (a tensor whose data is not aligned to its element size is copied
// into an aligned buffer owned by this object, so typed reads stay well defined).
// Views are valid while the SafetensorsFile lives; moving it keeps them valid.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws Error "<path>: <what>"

  const std::string& path() const { return map_->path(); }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }  // in data order
  const TensorView* find(const std::string& name) const;

 private:
  std::shared_ptr<const MappedFile> map_;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> by_name_;
  std::vector<std::shared_ptr<const void>> aligned_copies_;
};

// A tensor to write. Its bytes come from `data` (numel * element size bytes, not
// copied) or, when `produce` is set, from calling it right before the tensor is
// written, so a converter holds one converted tensor in memory at a time.
struct SafetensorsTensor {
  std::string name;
  DType type = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  std::function<std::vector<uint8_t>()> produce;
};

// Bytes of a tensor's data (throws Error on a negative dim or overflow).
uint64_t safetensors_nbytes(const SafetensorsTensor& t);

// Writes one .safetensors file atomically (temp file, fsync, rename). The header is
// padded with spaces to a multiple of 8 bytes and tensors are laid out by decreasing
// element size, as the reference implementation does, so every tensor is aligned.
void write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
// The same file as an OutputFile (src/io/shards.h): its size and a writer of its bytes.
OutputFile safetensors_output(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// A model stored as one .safetensors file or as shards listed by an index
// (model.safetensors.index.json: {"metadata": {"total_size": n}, "weight_map":
// {tensor: shard file}}). Each shard is opened once; `tensors` lists every tensor in
// shard order, then data order, views pointing into `shards`.
struct SafetensorsSet {
  std::vector<std::shared_ptr<const SafetensorsFile>> shards;
  std::vector<TensorView> tensors;
  std::map<std::string, std::string> metadata;  // the first shard's __metadata__
};

// Opens `path`: an index .json (shards resolved beside it) or a single .safetensors.
// Throws Error naming the index or shard on a missing shard or a tensor the index maps
// to a shard that does not hold it.
SafetensorsSet open_safetensors(const std::string& path);

// Writes `tensors` into `dir` as <base>.safetensors when they total at most
// shards.max_bytes (and shards.count is 0), else as <base>-00001-of-0000N.safetensors shards
// (greedy up to max_bytes, or exactly shards.count balanced by bytes: plan_shards) plus
// <base>.safetensors.index.json, written last (write_files: by the ranks of shards.comm when
// set; every rank calls write_files, rank 0 through this function). Removes a stale single
// file / index of the other form so the folder stays unambiguous. Returns the file names
// written (index last).
std::vector<std::string> write_safetensors_sharded(const std::string& dir,
                                                   const std::vector<SafetensorsTensor>& tensors,
                                                   const std::map<std::string, std::string>& metadata,
                                                   const ShardLayout& shards, const std::string& base = "model");

// ---- Hugging Face Llama helpers (implemented in src/io/hf_model.cpp) ----

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight", etc.; nullopt for
// tensors quantkit does not use (rotary_emb.inv_freq, ...).
std::optional<std::string> hf_to_gguf_name(const std::string& hf);
// The inverse; nullopt for a canonical name with no Hugging Face Llama counterpart.
std::optional<std::string> gguf_to_hf_name(const std::string& gguf);

// Reorders the rows of a Q or K weight [n_heads * head_dim, cols] from the Normal
// (adjacent pairs 2i, 2i+1) rope layout to Hugging Face's NeoX (half-split) layout:
// within each head, new row i = old row 2i and new row head_dim/2 + i = old row 2i+1.
// Inverse of llama.cpp convert_hf_to_gguf's permute(). Throws Error if the rows are
// not n_heads * an even head_dim.
Tensor permute_qk_normal_to_neox(const Tensor& w, int n_heads, const std::string& name);

}  // namespace quantkit
