#include "cli/budget.h"
#include "quantkit/html_report.h"

#include <cstdio>
#include <sstream>

#include "cli/common.h"
#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/svg_plot.h"

namespace quantkit::cli {
namespace {

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

struct Point {
  std::string label;
  double bpw = 0, ppl = 0, kl = 0;
};

Point evaluate_allocation(const ModelFile& in, QuantizeOptions opt, const Sensitivity& s, const Allocation& a,
                          const std::vector<int>* calib, int bos, const LlamaModel& ref,
                          const std::vector<int>& tokens, int ctx, std::string label) {
  opt.rules = allocation_rules(s, a);
  const QuantizeResult r = quantize_model(in, opt, calib, bos);
  const LlamaModel q(r.model);
  EvalOptions eo;
  eo.ctx = ctx;
  const EvalResult e = evaluate(q, &ref, tokens, bos, eo);
  return {std::move(label), 8.0 * double(r.output_bytes) / double(s.params), e.llamacpp.ppl, e.kl.mean};
}

}  // namespace

void BudgetArgs::add(CLI::App& app) {
  app.add_option("--target-bpw", target_bpw, "mixed precision: best mix within B bits per weight (everything counted)")
      ->check(CLI::Range(0.5, 64.0));
  app.add_option("--target-size", target_size, "mixed precision: best mix within this many bytes of tensor data");
  app.add_option("--candidates", candidates, "comma-separated candidate formats (default: a ladder 1.6..8.5 bits)");
  app.add_flag("--measure", measure, "damage = KL of the whole model with only that tensor quantized (slower)");
  app.add_option("--pareto", pareto, "draw the perplexity vs bits/weight frontier to this SVG (needs --eval)");
}

BudgetPlan plan_budget(const ModelFile& in, const QuantizeOptions& opt, const BudgetArgs& b,
                       const std::vector<int>* calib, int bos) {
  BudgetPlan p;
  p.candidates = b.candidates.empty() ? default_candidates() : split_list(b.candidates);
  for (const auto& c : p.candidates) make_format(c);  // fail before any work
  SensitivityOptions so;
  so.candidates = p.candidates;
  so.method = opt.method;
  so.calibration = opt.calibration;
  so.gptq = opt.gptq;
  so.damage = !calib ? DamageEstimate::DataFree : b.measure ? DamageEstimate::Measured : DamageEstimate::Hessian;
  if (b.measure && !calib) fail("--measure needs --calib (KL is measured on calibration text)");
  p.damage = so.damage;
  Progress progress("sensitivity: tensor", int64_t(in.tensors.size()));
  p.sensitivity = measure_sensitivity(in, so, calib, bos, [&](int done, int, const std::string& what) { progress.update(done, 0, what); });
  progress.finish();
  p.budget_bytes = b.target_size ? b.target_size : uint64_t(b.target_bpw * double(p.sensitivity.params) / 8.0);
  p.allocation = allocate(p.sensitivity, p.budget_bytes);
  return p;
}

nlohmann::json budget_json(const BudgetPlan& p) {
  return report::mixed_precision_json(p.sensitivity, p.allocation, p.budget_bytes, p.damage, p.candidates);
}

void print_budget(const BudgetPlan& p) {
  std::printf("mixed precision: budget %.4f bits/weight (%llu bytes), achieved %.4f bits/weight (%llu bytes)\n",
              8.0 * double(p.budget_bytes) / double(p.sensitivity.params), (unsigned long long)p.budget_bytes,
              p.allocation.bits_per_weight(p.sensitivity), (unsigned long long)p.allocation.bytes);
  std::printf("damage estimate: %s%s, predicted total %.6g%s\n", damage_name(p.damage),
              p.damage == DamageEstimate::DataFree ? " (approximation: no calibration data)" : "", p.allocation.damage,
              p.damage == DamageEstimate::Measured ? " (sum of per-tensor KL)" : " (sum of relative output errors)");
}

nlohmann::json pareto_frontier(const ModelFile& in, const QuantizeOptions& opt, const BudgetPlan& p,
                               const std::vector<int>* calib, int bos, const std::vector<int>& eval_tokens, int ctx,
                               const std::string& svg_path, bool print) {
  const LlamaModel ref(in);
  const Sensitivity& s = p.sensitivity;
  std::vector<Point> uniform_points, mixed_points;
  double lo = 1e30, hi = 0;
  for (const auto& c : p.candidates) {
    const Allocation a = uniform(s, c);
    uniform_points.push_back(evaluate_allocation(in, opt, s, a, calib, bos, ref, eval_tokens, ctx, c));
    lo = std::min(lo, a.bits_per_weight(s));
    hi = std::max(hi, a.bits_per_weight(s));
  }
  uint64_t min_bytes = s.fixed_bytes;
  for (const auto& t : s.tensors) {
    uint64_t m = UINT64_MAX;
    for (const auto& o : t.options) m = std::min(m, o.bytes);
    min_bytes += m;
  }
  lo = std::max(lo, 8.0 * double(min_bytes) / double(s.params) * 1.01);
  constexpr int kSteps = 10;
  for (int i = 0; i <= kSteps; ++i) {
    const double bpw = lo + (hi - lo) * i / kSteps;
    const Allocation a = allocate(s, uint64_t(bpw * double(s.params) / 8.0));
    mixed_points.push_back(evaluate_allocation(in, opt, s, a, calib, bos, ref, eval_tokens, ctx, "mixed"));
  }
  nlohmann::json j = nlohmann::json::array();
  if (print) std::printf("\n%-22s %12s %10s %10s\n", "frontier point", "bits/weight", "PPL", "KL");
  for (const auto* pts : {&uniform_points, &mixed_points})
    for (const Point& pt : *pts) {
      j.push_back({{"label", pt.label}, {"bits_per_weight", pt.bpw}, {"perplexity", pt.ppl}, {"kl_mean", pt.kl}});
      if (print) std::printf("%-22s %12.4f %10.4f %10.6f\n", pt.label.c_str(), pt.bpw, pt.ppl, pt.kl);
    }
  if (!svg_path.empty()) {
    svg::Chart chart;
    chart.title = "Perplexity vs size: uniform formats and mixed precision";
    chart.x.label = "bits per weight (everything counted)";
    chart.y.label = "perplexity (llama.cpp convention)";
    chart.y.log10 = true;
    svg::Series u{"uniform formats", {}, {}, {}, true, false, ""}, m{"mixed precision", {}, {}, {}, true, true, ""};
    for (const Point& pt : uniform_points) u.x.push_back(pt.bpw), u.y.push_back(pt.ppl), u.labels.push_back(pt.label);
    for (const Point& pt : mixed_points) m.x.push_back(pt.bpw), m.y.push_back(pt.ppl);
    chart.series = {u, m};
    svg::write(chart, svg_path);
  }
  return j;
}

}  // namespace quantkit::cli
