// quantkit report: one self-contained HTML page (inline SVG charts, sortable per-tensor
// table, no network) from the JSON of `quantize --json` or `rd --json`.
#include <cstdio>

#include "cli/command.h"
#include "quantkit/html_report.h"

namespace quantkit::cli {
namespace {

struct ReportArgs {
  std::string input, output;
};

int run_report(const ReportArgs& a) {
  report::write_html(report::read_json(a.input), a.input, a.output);
  std::printf("wrote %s\n", a.output.c_str());
  return 0;
}

Register reg({"report", "HTML report (charts, sortable tables) from a quantize or rd --json result", [](CLI::App& app) {
  auto a = std::make_shared<ReportArgs>();
  app.add_option("result", a->input, "RESULT.json written by `quantize --json` or `rd --json`")->required();
  app.add_option("-o,--output", a->output, "the HTML file to write")->required();
  return [a] { return run_report(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
