// The stages of a quantize job and how the ranks of a distributed job share them
// (src/dist/quantize_job.cpp); quantize_model (src/algo/quantize_model.cpp) prepares the
// source model and the per-tensor quantizer and hands them over.
//
// Stages: layer 0 .. n_layers-1 (its tensors), the output head (calibrated runs with an untied
// head), the rest (embeddings, output norm, ...). Calibrated layer stage on every rank:
// run the FP layer over its chunks of the calibration windows (exact Hessian partial sums),
// reduce each input's Hessian to the rank that solves the matrices reading that input,
// quantize, exchange the quantized bytes, install the decoded layer, advance the windows.
// Rank 0 keeps every finished stage (memory, spill file or checkpoint) and assembles the model.
#pragma once
#include <functional>

#include "quantkit/quantize.h"

namespace quantkit::dist {

struct JobInput {
  const ModelFile& in;   // as loaded: input sizes for the report
  const ModelFile& src;  // in the Normal rope layout
  const std::vector<TensorPlan>& plans;
  const QuantizeOptions& opt;
  const std::vector<int>* calib_tokens;
  int bos;
  const QuantizeProgress& progress;
  // Quantizes src.tensors[i] with its input Hessian (null: uncalibrated).
  std::function<QuantizedTensor(size_t i, const InputHessian* h)> quantize;
};

QuantizeResult run_quantize_job(const JobInput& job);

}  // namespace quantkit::dist
