// Helpers shared by the subcommands: loading models and text, progress lines, JSON.
#pragma once
#include <chrono>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "quantkit/model_file.h"
#include "quantkit/tokenizer.h"

namespace quantkit::cli {

// Options every model-reading command takes.
struct ModelArgs {
  std::string model, tokenizer;
  int threads = 0;
  void add(CLI::App& app, bool model_required = true);
  ModelFile load() const;  // also applies --threads
};

// The model's tokenizer; a clear error when the file carries none.
Tokenizer tokenizer_of(const ModelFile& m);

// "step i of n" progress on stderr, drawn only when stderr is a terminal.
class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "");
  // `what`: the item being worked on (e.g. a tensor name), shown after the count.
  void update(int64_t done, double units_done = 0, const std::string& what = "");
  void finish();

 private:
  std::string label_, unit_;
  int64_t total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

void print_json(const nlohmann::json& j);

}  // namespace quantkit::cli
