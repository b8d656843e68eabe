// Calibration: run a model layer by layer over calibration windows and collect, for each
// linear input of a layer, H = sum over tokens of x x^T in FP64 (q/k/v share the attention
// input's H, gate/up share the FFN input's). The diagonal divided by the token count is
// the "importance" (mean x_j^2) the weighted formats use.
//
// Hidden states of all windows are kept between layers, so each layer runs twice: once
// to capture its inputs, once (after its weights were replaced by quantized ones) to
// produce the next layer's inputs — GPTQ's sequential mode.
#pragma once
#include <array>
#include <vector>

#include "quantkit/llama.h"

namespace quantkit {

struct InputHessian {
  int width = 0;
  int64_t tokens = 0;
  std::vector<double> xtx;  // width x width, row-major, symmetric

  std::vector<float> importance() const;  // diag / tokens
  std::vector<double> mean() const;       // xtx / tokens
};

struct LayerHessians {
  std::array<InputHessian, 4> inputs;  // indexed by LinearInput
  const InputHessian& of(LinearInput which) const { return inputs[size_t(which)]; }
};

struct CalibrationOptions {
  int windows = 128;
  int ctx = 256;
};

class Calibrator {
 public:
  // tokens: the tokenized calibration text (BOS first); windows of ctx tokens with BOS
  // first, as many as the text holds up to opt.windows.
  Calibrator(const LlamaModel& model, const std::vector<int>& tokens, int bos, const CalibrationOptions& opt);

  int windows() const { return int(windows_.size()); }
  int ctx() const { return ctx_; }
  // Hessians of layer l's inputs given the current hidden states (does not advance).
  LayerHessians capture(int layer) const;
  // Hessian of the output head's input (the normalised states after the last layer);
  // valid once every layer has been advanced.
  InputHessian capture_head() const;
  // Runs layer l with its current weights and stores its outputs as the next inputs.
  void advance(int layer);
  // Current hidden states of one window: [ctx, dim].
  const std::vector<float>& hidden(int window) const { return hidden_[size_t(window)]; }
  const std::vector<int>& window_tokens(int window) const { return windows_[size_t(window)]; }

 private:
  const LlamaModel& model_;
  int ctx_;
  std::vector<std::vector<int>> windows_;
  std::vector<std::vector<float>> hidden_;  // per window: [ctx, dim]
};

}  // namespace quantkit
