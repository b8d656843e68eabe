// quantkit rd: rate-distortion table of quantization formats on a synthetic source or a
// real tensor (fixed and entropy-coded bits/weight, MSE, SQNR, distance to Shannon's
// bound for the Gaussian, speed), optionally plotted as SVG.
#include <cmath>
#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"
#include "quantkit/html_report.h"
#include "quantkit/error.h"
#include "quantkit/rd.h"
#include "quantkit/svg_plot.h"
#include "quantkit/thread_pool.h"

namespace quantkit::cli {
namespace {

struct RdArgs {
  std::string source = "gaussian", formats, importance, plot;
  int64_t n = int64_t(1) << 20, cols = 1024;
  uint64_t seed = 0;
  int threads = 0;
  bool json = false;
};


nlohmann::json result_json(const rd::Result& r) { return report::rd_json(r); }

std::string cell(double v, const char* f) { return std::isfinite(v) ? fmt::format(fmt::runtime(f), v) : "inf"; }

void print_table(const rd::SourceData& data, const RdArgs& a, const std::vector<rd::Result>& results) {
  const bool bound = data.kind == "gaussian";
  std::printf("source  %s (%lld x %lld%s)%s\n", data.source.c_str(), (long long)data.rows, (long long)data.cols,
              data.kind == "tensor" ? "" : fmt::format(", seed {}", a.seed).c_str(),
              a.importance.empty() ? "" : (", importance " + a.importance).c_str());
  const bool weighted = !a.importance.empty();
  std::printf("%-26s %8s %8s %11s", "spec", "bits/w", "ec b/w", "MSE");
  if (weighted) std::printf(" %11s", "imp. MSE");
  std::printf(" %8s", "SQNR dB");
  if (bound) std::printf(" %8s %7s %7s", "bound dB", "gap dB", "gap ec");
  std::printf(" %9s %9s\n", "enc MB/s", "dec MB/s");
  std::vector<const rd::Result*> notes;
  for (const auto& r : results) {
    if (!r.note.empty()) notes.push_back(&r);
    if (r.skipped) continue;
    std::printf("%-26s %8.4f %8.4f %11.4e", r.spec.c_str(), r.fixed_bpw, r.entropy_bpw, r.mse);
    if (weighted) std::printf(" %11.4e", r.weighted_mse);
    std::printf(" %8s", cell(r.sqnr_db, "{:.3f}").c_str());
    if (bound)
      std::printf(" %8.3f %7s %7s", r.bound_fixed_db, cell(r.gap_fixed_db, "{:.3f}").c_str(),
                  cell(r.gap_entropy_db, "{:.3f}").c_str());
    std::printf(" %9s %9s\n", cell(r.encode_mbps, "{:.1f}").c_str(), cell(r.decode_mbps, "{:.1f}").c_str());
  }
  for (const rd::Result* r : notes)
    std::printf("# %s %s: %s\n", r->spec.c_str(), r->skipped ? "skipped" : "note", r->note.c_str());
}

void write_plot(const rd::SourceData& data, const std::vector<rd::Result>& results, const std::string& path) {
  svg::Chart chart;
  chart.title = fmt::format("SQNR vs rate: {} ({} x {})", data.source, data.rows, data.cols);
  chart.x.label = "bits per weight";
  chart.y.label = "SQNR (dB)";
  chart.x.min = 0;
  svg::Series fixed, coded;
  fixed.name = "fixed rate";
  coded.name = "entropy-coded (rANS)";
  const bool label_points = results.size() <= 30;  // beyond that the labels only overlap
  for (const auto& r : results) {
    if (r.skipped) continue;
    fixed.x.push_back(r.fixed_bpw), fixed.y.push_back(r.sqnr_db);
    if (label_points) fixed.labels.push_back(r.spec);
    coded.x.push_back(r.entropy_bpw), coded.y.push_back(r.sqnr_db);
  }
  chart.series = {fixed, coded};
  if (data.kind == "gaussian") {
    svg::ReferenceLine shannon;
    shannon.name = "Shannon bound 6.02 dB/bit";
    shannon.slope = rd::kDbPerBit;
    chart.lines.push_back(shannon);
  }
  svg::write(chart, path);
}

int run_rd(const RdArgs& a) {
  set_num_threads(a.threads);
  const std::vector<std::string> specs = rd::expand_formats(a.formats);
  const rd::SourceData data = rd::make_source(a.source, a.n, a.seed, a.cols);
  std::vector<float> importance;
  if (!a.importance.empty()) importance = rd::load_importance(a.importance, data.cols);
  std::vector<rd::Result> results;
  Progress progress("rd: format", int64_t(specs.size()));
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto format = make_format(specs[i]);
    results.push_back(rd::measure(*format, data, importance.empty() ? nullptr : importance.data()));
    progress.update(int64_t(i + 1));
  }
  progress.finish();
  if (!a.plot.empty()) write_plot(data, results, a.plot);
  if (a.json) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : results) rows.push_back(result_json(r));
    print_json({{"source", data.source}, {"rows", data.rows}, {"cols", data.cols},
                {"seed", data.kind == "tensor" ? nlohmann::json(nullptr) : nlohmann::json(a.seed)},
                {"importance", a.importance.empty() ? nlohmann::json(nullptr) : nlohmann::json(a.importance)},
                {"results", rows}});
  } else {
    print_table(data, a, results);
  }
  return 0;
}

Register reg({"rd", "rate-distortion table of formats on a synthetic source or a real tensor", [](CLI::App& app) {
  auto a = std::make_shared<RdArgs>();
  app.add_option("--source", a->source, "gaussian | laplace | student-t:NU | tensor:MODEL:TENSOR_NAME")->capture_default_str();
  app.add_option("--n", a->n, "samples of a synthetic source")->check(CLI::Range(int64_t(1), int64_t(1) << 31))->capture_default_str();
  app.add_option("--cols", a->cols, "columns of the synthetic matrix (rows = n / cols)")->check(CLI::Range(int64_t(1), int64_t(1) << 24))->capture_default_str();
  app.add_option("--formats", a->formats, "comma-separated format specs, or 'all' (every example of every family)")->required();
  app.add_option("--importance", a->importance, "per-column importance: text numbers or raw float32, one per column");
  app.add_option("--seed", a->seed, "seed of the synthetic source")->capture_default_str();
  app.add_option("--plot", a->plot, "write SQNR vs bits/weight as an SVG chart to this file");
  app.add_option("-t,--threads", a->threads, "threads (default: all cores)");
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  return [a] { return run_rd(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
