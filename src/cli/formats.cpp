// quantkit formats: every registered format with its exact bits per weight.
#include <fmt/format.h>

#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"
#include "quantkit/format.h"

namespace quantkit::cli {
namespace {

struct FormatsArgs {
  int64_t rows = 4096, cols = 4096;
  bool json = false;
};

int run_formats(const FormatsArgs& a) {
  nlohmann::json out = nlohmann::json::array();
  if (!a.json)
    std::printf("%-28s %10s  %s\n", "spec", "bits/w", fmt::format("description (bits/weight of a {}x{} matrix)", a.rows, a.cols).c_str());
  for (const auto& fam : format_families()) {
    if (!a.json) std::printf("\n# %s: %s\n#   %s\n", fam.name.c_str(), fam.summary.c_str(), fam.grammar.c_str());
    for (const auto& spec : fam.examples) {
      auto f = make_format(spec);
      const std::string why = f->check_shape(a.rows, a.cols);
      const double bpw = why.empty() ? f->bits_per_weight(a.rows, a.cols) : 0.0;
      out.push_back({{"spec", spec}, {"family", fam.name}, {"bits_per_weight", why.empty() ? nlohmann::json(bpw) : nlohmann::json(nullptr)},
                     {"description", f->describe()}});
      if (!a.json) std::printf("%-28s %10s  %s\n", spec.c_str(), why.empty() ? fmt::format("{:.4f}", bpw).c_str() : "n/a", f->describe().c_str());
    }
  }
  if (a.json) print_json(out);
  return 0;
}

Register reg({"formats", "list every quantization format with its bits per weight", [](CLI::App& app) {
  auto a = std::make_shared<FormatsArgs>();
  app.add_option("--rows", a->rows, "rows of the matrix the bits/weight are computed for")->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  app.add_option("--cols", a->cols, "columns of that matrix")->check(CLI::Range(int64_t(1), int64_t(1) << 24));
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  return [a] { return run_formats(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
