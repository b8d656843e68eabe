// Where a quantize job keeps finished stages (one layer's quantized tensors, then the head,
// then the remaining tensors) until rank 0 writes the output: in memory, in an unlinked
// temporary file (nothing left behind if the process dies), or in a checkpoint folder that a
// restarted job resumes from (--resume DIR, with the calibration activations after the last
// finished layer). Also the byte form of quantized tensors that ranks exchange.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "quantkit/quantize.h"

namespace quantkit::dist {

// ---- quantized tensors as bytes -----------------------------------------------------------

// Appends q (its view's metadata and bytes, its report) to blob; the bytes start at a multiple
// of 64 from the blob's start, so views into a mapped blob are aligned.
void append_tensor(std::vector<uint8_t>& blob, const QuantizedTensor& q);

struct StoredTensor {
  TensorView view;  // points into the parsed bytes
  TensorReport report;
};
// Every tensor of blob[0, n); `what` names the source in errors (a file, a rank).
std::vector<StoredTensor> parse_tensors(const uint8_t* data, size_t n, const std::string& what);

// ---- stores ---------------------------------------------------------------------------------

struct StageBytes {
  std::shared_ptr<const void> keep;  // keeps `bytes` alive
  std::span<const uint8_t> bytes;
};

class StageStore {
 public:
  virtual ~StageStore() = default;
  virtual void put(int stage, const std::vector<uint8_t>& blob) = 0;
  // Valid once every stage has been put (the spill file is mapped on the first call).
  virtual StageBytes get(int stage) = 0;
};

std::unique_ptr<StageStore> memory_store();
// An unlinked file in dir (removed by the kernel whatever happens to the process).
std::unique_ptr<StageStore> spill_store(const std::string& dir);

// A resumable job: dir/manifest.json (the job's description and the stages finished),
// dir/stage-NNNN.qkt (each finished stage's tensors, written by rank 0) and
// dir/act-LNNNN-cNNNNN.f32 (the hidden states of one chunk of calibration windows after
// layer L, written by the rank that holds the chunk). Every file is written atomically; a
// stage counts as finished once the manifest says so.
class Checkpoint : public StageStore {
 public:
  // Rank 0 (`root`) reads or creates the manifest: a manifest of another job is an error.
  Checkpoint(const std::string& dir, const std::string& job, bool root);
  int completed() const { return completed_; }  // root only; the job broadcasts it
  void put(int stage, const std::vector<uint8_t>& blob) override;
  StageBytes get(int stage) override;
  // Root, once every rank has stored its part of `stage`.
  void mark_done(int stage);
  void put_activations(int layer, int chunk, const std::vector<const std::vector<float>*>& windows);
  // Fills windows (sized by the caller) from the chunk's file; throws Error when it is missing or does not fit.
  void get_activations(int layer, int chunk, std::vector<std::vector<float>*>& windows) const;
  // Root: removes the activations of every layer before `keep_layer` (all of them: -1 ... INT_MAX).
  void drop_activations(int keep_layer) const;

 private:
  std::string path(const std::string& name) const;
  std::string activations_name(int layer, int chunk) const;

  std::string dir_, job_;
  int completed_ = 0;
};

}  // namespace quantkit::dist
