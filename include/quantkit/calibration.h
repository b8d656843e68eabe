// Calibration: run a model layer by layer over calibration windows and collect, for each
// linear input of a layer, H = sum over tokens of x x^T in FP64 (q/k/v share the attention
// input's H, gate/up share the FFN input's). The diagonal divided by the token count is
// the "importance" (mean x_j^2) the weighted formats use.
//
// Hidden states of all windows are kept between layers, so each layer runs twice: once
// to capture its inputs, once (after its weights were replaced by quantized ones) to
// produce the next layer's inputs — GPTQ's sequential mode.
//
// The windows are cut into fixed chunks (chunk_windows(), a function of the window count and
// length only). A chunk's X^T X is one FP64 DSYRK; chunks are summed exactly (HessianSum), so
// a Calibrator holding any share of the chunks (one process of a distributed job) contributes
// partial sums whose total is bit-identical to the single-process Hessian.
#pragma once
#include <array>
#include <vector>

#include "quantkit/distributed.h"

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

// Sum of X^T X over chunks of tokens, exact: each chunk's FP64 X^T X is rounded to a
// multiple of 2^-56 and added as a 128-bit integer, so the total does not depend on how the
// chunks are grouped or ordered. Holds the upper triangle, row-major.
class HessianSum {
 public:
  HessianSum() = default;
  explicit HessianSum(int width);
  int width() const { return width_; }
  // Adds X^T X of x [n, width]; scratch is reused between calls. False when a value is not
  // finite or too large (|entry| >= 2^56) to be summed exactly.
  bool add_chunk(const float* x, int64_t n, std::vector<double>& scratch);
  void add(const HessianSum& other);
  std::vector<ExactSum>& terms() { return terms_; }  // for transport between processes
  InputHessian finish(int64_t tokens) const;         // the FP64 sum, both triangles

 private:
  int width_ = 0;
  std::vector<ExactSum> terms_;
};

struct LayerHessianSums {
  std::array<HessianSum, 4> inputs;  // indexed by LinearInput
};

// Windows per chunk: up to 2048 tokens, and at least 16 chunks when there are >= 16 windows
// (so up to 16 processes share the calibration).
int chunk_windows(int windows, int ctx);

class Calibrator {
 public:
  // tokens: the tokenized calibration text (BOS first); windows of ctx tokens with BOS
  // first, as many as the text holds up to opt.windows. share/shares: this Calibrator holds
  // the contiguous share `share` of `shares` of the chunks (one process of a job), and
  // windows(), hidden() and window_tokens() count its own windows only.
  Calibrator(const LlamaModel& model, const std::vector<int>& tokens, int bos, const CalibrationOptions& opt,
             int share = 0, int shares = 1);

  int windows() const { return int(windows_.size()); }
  int total_windows() const { return total_windows_; }
  int first_window() const { return first_window_; }
  int ctx() const { return ctx_; }
  int chunk_windows() const { return chunk_windows_; }
  int first_chunk() const { return first_chunk_; }
  int end_chunk() const { return end_chunk_; }
  // Hessians of layer l's inputs given the current hidden states (does not advance); with
  // several shares, over this share's windows only.
  LayerHessians capture(int layer) const;
  // The same as exact partial sums, to be added across shares before finish().
  LayerHessianSums capture_sums(int layer) const;
  // Hessian of the output head's input (the normalised states after the last layer);
  // valid once every layer has been advanced.
  InputHessian capture_head() const;
  HessianSum capture_head_sums() const;
  // Runs layer l with its current weights and stores its outputs as the next inputs.
  void advance(int layer);
  // Current hidden states of one window (of this share): [ctx, dim].
  const std::vector<float>& hidden(int window) const { return hidden_[size_t(window)]; }
  std::vector<float>& hidden(int window) { return hidden_[size_t(window)]; }  // e.g. restored from a checkpoint
  const std::vector<int>& window_tokens(int window) const { return windows_[size_t(window)]; }

 private:
  KVCache layer_cache(int layer) const;

  const LlamaModel& model_;
  int ctx_;
  int total_windows_ = 0, chunk_windows_ = 1, first_chunk_ = 0, end_chunk_ = 0, first_window_ = 0;
  std::vector<std::vector<int>> windows_;
  std::vector<std::vector<float>> hidden_;  // per window: [ctx, dim]
};

}  // namespace quantkit
