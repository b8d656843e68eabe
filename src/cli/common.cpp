#include "cli/common.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/command.h"
#include "quantkit/error.h"
#include "quantkit/thread_pool.h"

namespace quantkit::cli {

void ModelArgs::add(CLI::App& app, bool model_required) {
  auto* opt = app.add_option("-m,--model", model, "model: GGUF file, safetensors file/folder, llama2.c checkpoint");
  if (model_required) opt->required();
  app.add_option("--tokenizer", tokenizer, "tokenizer file (llama2.c checkpoints carry none)");
  app.add_option("-t,--threads", threads, "threads (default: all cores)");
}

ModelFile ModelArgs::load() const {
  set_num_threads(threads);
  return load_model(model, tokenizer);
}

Tokenizer tokenizer_of(const ModelFile& m) {
  if (!m.vocab) fail("{}: the model carries no tokenizer; pass --tokenizer FILE", m.path);
  return Tokenizer(*m.vocab);
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), tty_(stderr_is_tty()),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t done, double units_done, const std::string& what) {
  if (!tty_) return;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = done > 0 ? s * double(total_ - done) / double(done) : 0;
  std::string rate = unit_.empty() || s <= 0 ? "" : fmt::format(", {:.0f} {}/s", units_done / s, unit_);
  std::fprintf(stderr, "\r%s %lld/%lld%s%s%s, %.0fs, ETA %.0fs   ", label_.c_str(), (long long)done,
               (long long)total_, what.empty() ? "" : " ", what.c_str(), rate.c_str(), s, eta);
  std::fflush(stderr);
}

void Progress::finish() {
  if (tty_) std::fprintf(stderr, "\n");
}

void print_json(const nlohmann::json& j) { std::cout << j.dump(2) << std::endl; }

}  // namespace quantkit::cli
