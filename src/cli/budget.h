// `quantize --target-bpw / --target-size`: mixed precision under a size budget. The
// sensitivity measurement, the allocation and the Pareto frontier, as the quantize
// subcommand presents them.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "quantkit/mixed_precision.h"

namespace quantkit::cli {

struct BudgetArgs {
  double target_bpw = 0;
  uint64_t target_size = 0;
  std::string candidates;  // comma-separated; empty: default_candidates()
  bool measure = false;    // KL of the whole model per tensor x candidate
  std::string pareto;      // SVG path
  void add(CLI::App& app);
  bool active() const { return target_bpw > 0 || target_size > 0; }
};

struct BudgetPlan {
  Sensitivity sensitivity;
  Allocation allocation;
  uint64_t budget_bytes = 0;
  DamageEstimate damage = DamageEstimate::Hessian;
  std::vector<std::string> candidates;
};

// Measures the sensitivity and allocates; calib may be null (data-free).
BudgetPlan plan_budget(const ModelFile& in, const QuantizeOptions& opt, const BudgetArgs& b,
                       const std::vector<int>* calib, int bos);

nlohmann::json budget_json(const BudgetPlan& p);
void print_budget(const BudgetPlan& p);

// The model-level frontier: perplexity and KL on the eval text of every uniform candidate
// and of mixed allocations across the candidates' range; printed, and drawn as SVG.
nlohmann::json pareto_frontier(const ModelFile& in, const QuantizeOptions& opt, const BudgetPlan& p,
                               const std::vector<int>* calib, int bos, const std::vector<int>& eval_tokens, int ctx,
                               const std::string& svg_path, bool print);

}  // namespace quantkit::cli
