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

struct QuantizeResult {
  ModelFile model;  // owns its tensor bytes (storage)
  std::vector<TensorReport> tensors;
  uint64_t input_bytes = 0, output_bytes = 0;  // tensor data only
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
