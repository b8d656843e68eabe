// Result documents: the JSON that `quantize --json` / `rd --json` print and the Python
// module returns, built in one place, and the self-contained HTML report made from it
// (`quantkit report`, `quantize --report`): model summary, evaluation metrics, the
// per-tensor rate-distortion chart, the Pareto frontier when present, a sortable
// per-tensor table. The page needs no network: inline CSS, inline SVG, a few lines of JS.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "quantkit/eval.h"
#include "quantkit/mixed_precision.h"
#include "quantkit/quantize.h"
#include "quantkit/rd.h"

namespace quantkit::report {

// What a quantize run was asked to do (the command line's or the Python call's arguments).
struct QuantizeRun {
  std::string model, output, format, method;
};

// The quantize result: run, sizes, bits/weight, calibration, `model_info` (the input's
// hyper-parameters) and one `tensors` row per tensor.
nlohmann::json quantize_json(const ModelFile& in, const QuantizeResult& r, const QuantizeRun& run);

// The `eval` object of a quantize result (the quantized model against its input).
nlohmann::json eval_json(const EvalResult& e, const std::string& text);

// The `mixed_precision` object: budget, achieved size, damage estimate, per-tensor choice.
nlohmann::json mixed_precision_json(const Sensitivity& s, const Allocation& a, uint64_t budget_bytes,
                                    DamageEstimate damage, const std::vector<std::string>& candidates);

// One row of `rd --json`'s `results`.
nlohmann::json rd_json(const rd::Result& r);

// The HTML page of a quantize result (or of an `rd --json` result: the RD chart and table).
// `source` names the document in messages and the footer. Throws Error naming `source`
// when the JSON is neither.
std::string html(const nlohmann::json& result, const std::string& source);

// html() written atomically to `path`.
void write_html(const nlohmann::json& result, const std::string& source, const std::string& path);

// Reads a result JSON file; throws Error naming the file when it cannot be read or parsed.
nlohmann::json read_json(const std::string& path);

}  // namespace quantkit::report
