// Whole-model quantization: which format each tensor gets (the plan), calibration, and the
// per-tensor methods (round to nearest, importance-weighted, GPTQ), producing a ModelFile
// whose matrices are packed (llama.cpp block types or quantkit formats) and a report.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "quantkit/calibration.h"
#include "quantkit/distributed.h"
#include "quantkit/gptq.h"
#include "quantkit/model_file.h"

namespace quantkit {

enum class QuantMethod { Rtn, Weighted, Gptq };
const char* method_name(QuantMethod m);
QuantMethod method_from_name(const std::string& name);  // throws Error listing the valid names

// "PATTERN=SPEC": tensors whose name matches the regular expression PATTERN (searched
// anywhere in the name) get SPEC: a format spec, "f16", "f32" or "keep" (as in the input).
struct TensorRule {
  std::string pattern, spec;
  static TensorRule parse(const std::string& text);  // throws Error on a malformed rule
};

struct QuantizeOptions {
  std::string format;                  // default for the linear weights of the layers
  QuantMethod method = QuantMethod::Rtn;
  std::string embedding_format = "q8_0";  // token_embd and output, unless a rule says otherwise
  std::vector<TensorRule> rules;       // first match wins: --skip (keep), --keep-f16 (f16), --override
  CalibrationOptions calibration;
  GptqOptions gptq;
  // Non-finite input weights (NaN, +-Inf) are an error naming the tensor; with this set they
  // are replaced by 0 before anything else runs (calibration included) and each affected
  // tensor's report note counts them.
  bool allow_nonfinite = false;
  // Scale-out (docs/distributed.md). comm: the processes sharing the job (null: this one);
  // every rank calls quantize_model with the same arguments, rank 0 gets the model.
  Communicator* comm = nullptr;
  uint64_t max_memory = 0;   // refuse up front when a rank's estimated peak exceeds it (0: no limit)
  std::string resume_dir;    // per-stage checkpoints; a rerun continues after the last finished stage
  std::string spill_dir;     // finished stages wait in an unlinked file here instead of RAM (empty: RAM)
};

// The storage chosen for one tensor.
struct TensorPlan {
  enum Kind { Keep, Float, Quantize } kind = Keep;
  std::string requested;     // what the options asked for
  std::string spec;          // format spec (Quantize), "f16"/"f32" (Float), input type (Keep)
  int64_t stored_cols = 0;   // Quantize: columns after zero padding (>= cols)
  std::string note;          // why spec differs from requested (fallback, padding)
};

// Decides a tensor's storage from the options (rules, embeddings, 1-D tensors stay F32)
// and its shape: llama.cpp block types that do not divide the row fall back along
// llama.cpp's ladder (q4_k -> q5_0 -> f16, ...) so GGUF files stay loadable by llama.cpp;
// quantkit formats pad the row with zero columns up to the format's block.
TensorPlan plan_tensor(const TensorView& t, const QuantizeOptions& opt);

struct TensorReport {
  std::string name;
  TensorPlan plan;
  int64_t rows = 0, cols = 0;
  double bits_per_weight = 0;    // stored bits / (rows * cols), padding included
  double weighted_rel_error = 0; // sum_j imp_j |W_:j - Q_:j|^2 / sum_j imp_j |W_:j|^2 (imp = 1 without calibration)
  double sqnr_db = 0;            // 10 log10(|W|^2 / |W - Q|^2)
  bool calibrated = false;       // its input Hessian was measured
  std::string method;            // method actually used ("rtn" for uncalibrated tensors)
  double seconds = 0;
};

// One quantized tensor: its view and the bytes it points to, the decoded weights and its
// report row.
struct QuantizedTensor {
  TensorView view;
  std::shared_ptr<std::vector<uint8_t>> bytes;  // null when the view points into the input
  Tensor decoded;
  TensorReport report;
};

// Quantizes one tensor according to its plan; h is its input Hessian (null: uncalibrated,
// the method falls back to rtn).
QuantizedTensor quantize_tensor(const TensorView& src, const TensorPlan& plan, QuantMethod method,
                                const InputHessian* h, const GptqOptions& gptq);

// tr((W-Q) H (W-Q)^T) and tr(W H W^T), per row, estimated on at most 256 evenly spaced rows
// (one DGEMM); w, q: rows x cols, h: cols x cols.
struct HessianError {
  double error = 0, reference = 0;
};
HessianError sampled_hessian_error(const float* w, const float* q, int64_t rows, int64_t cols,
                                   const std::vector<double>& h);

// One rank's peak memory as the streaming plan predicts it: what it holds at once during its
// most demanding stage (bytes).
struct MemoryEstimate {
  int rank = 0, ranks = 1;
  std::string stage;          // the most demanding stage
  uint64_t embeddings = 0;    // FP32 token embeddings, norms, RoPE tables (calibration)
  uint64_t activations = 0;   // hidden states of this rank's windows, one chunk of layer inputs, forward scratch
  uint64_t hessians = 0;      // partial sums of the stage's input Hessians, the finished ones this rank solves with
  uint64_t layer = 0;         // the stage's weights in FP32 (calibration runs them) and its quantized bytes
  uint64_t solve = 0;         // quantizing this rank's largest tensor of the stage
  uint64_t output = 0;        // finished stages kept in RAM (0 when they go to disk)
  uint64_t total() const { return embeddings + activations + hessians + layer + solve + output; }
  std::string describe() const;  // "12.3 MiB (embeddings ... + output ...) at stage blk.3"
};

// Bytes a tensor takes once stored according to its plan.
uint64_t stored_bytes(const TensorView& src, const TensorPlan& plan);
// Working memory of quantize_tensor on src beyond its input and Hessian (calibrated: the
// method runs with a Hessian).
uint64_t quantize_working_bytes(const TensorView& src, const TensorPlan& plan, QuantMethod method, bool calibrated);

struct QuantizeResult {
  ModelFile model;  // owns its tensor bytes (storage); rank 0 only in a job of several ranks
  std::vector<TensorReport> tensors;
  uint64_t input_bytes = 0, output_bytes = 0;  // tensor data only
  MemoryEstimate memory;  // this rank's
  int stages = 0, resumed_stages = 0;  // stages of the job, and how many an earlier run had finished
  int calibration_windows = 0;
  int64_t calibration_tokens = 0;
  double seconds = 0;
};

// Progress: stage ("layer", "tensor"), done, total, current tensor name.
using QuantizeProgress = std::function<void(const char* stage, int done, int total, const std::string& what)>;

// calib_tokens: the tokenized calibration text (BOS first), required for the weighted and
// gptq methods. Layers are quantized in order, each calibrated on the outputs of the
// already-quantized previous layers (GPTQ's sequential mode).
QuantizeResult quantize_model(const ModelFile& in, const QuantizeOptions& opt, const std::vector<int>* calib_tokens,
                              int bos, const QuantizeProgress& progress = nullptr);

}  // namespace quantkit
