// Mixed precision under a size budget (ZeroQ's Pareto-frontier allocation, FLIQS-style
// candidates mixing integer, floating-point, llama.cpp block and vector formats): measure
// per tensor and per candidate format the exact storage and a damage estimate, then choose
// one candidate per tensor minimising the summed damage subject to total bits <= budget
// (a multiple-choice knapsack, solved exactly by dynamic programming over a discretised
// budget whose rounding never lets the true size exceed it).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "quantkit/quantize.h"

namespace quantkit {

// The default candidate ladder, ~1.6 to 8.5 bits per weight.
std::vector<std::string> default_candidates();

enum class DamageEstimate {
  Hessian,   // tr(dW H dW^T) / tr(W H W^T) with H from calibration (per layer, relative)
  Measured,  // KL(FP || model with only this tensor quantized) on calibration windows
  DataFree,  // ||dW||^2 / ||W||^2: H = identity (a ZeroQ-like proxy without data; approximate)
};
const char* damage_name(DamageEstimate d);

struct TensorOption {
  std::string spec;      // the candidate as requested
  std::string stored;    // what the plan stores (fallbacks: "f16", "q5_0", ...)
  uint64_t bytes = 0;    // exact storage of the tensor
  double damage = 0;
};

struct TensorChoices {
  std::string name;
  int64_t params = 0;
  std::vector<TensorOption> options;  // one per candidate
};

struct SensitivityOptions {
  std::vector<std::string> candidates;
  QuantMethod method = QuantMethod::Rtn;
  DamageEstimate damage = DamageEstimate::Hessian;
  CalibrationOptions calibration;
  GptqOptions gptq;
  int measure_windows = 8;  // calibration windows scored per tensor x candidate (Measured)
};

struct Sensitivity {
  std::vector<TensorChoices> tensors;  // every 2-D tensor of the model
  uint64_t fixed_bytes = 0;            // tensors outside the allocation (norms: f32)
  int64_t params = 0;                  // every parameter of the model
};

using SensitivityProgress = std::function<void(int done, int total, const std::string& tensor)>;

// calib_tokens may be null only for DamageEstimate::DataFree with method rtn.
Sensitivity measure_sensitivity(const ModelFile& in, const SensitivityOptions& opt,
                                const std::vector<int>* calib_tokens, int bos,
                                const SensitivityProgress& progress = nullptr);

struct Allocation {
  std::vector<std::string> specs;  // chosen candidate per tensor (Sensitivity::tensors order)
  uint64_t bytes = 0;              // total model bytes (fixed included)
  double damage = 0;               // summed damage
  double bits_per_weight(const Sensitivity& s) const { return 8.0 * double(bytes) / double(s.params); }
};

// The least-damage choice whose total size (fixed bytes included) is <= budget_bytes.
// Throws Error naming the minimum achievable size when the budget is below it.
Allocation allocate(const Sensitivity& s, uint64_t budget_bytes);

// The uniform choice (one candidate for every tensor).
Allocation uniform(const Sensitivity& s, const std::string& spec);

// Rules that make quantize_model() store exactly this allocation.
std::vector<TensorRule> allocation_rules(const Sensitivity& s, const Allocation& a);

}  // namespace quantkit
