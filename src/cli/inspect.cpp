// quantkit inspect: what a model file holds.
#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"
#include "quantkit/error.h"

namespace quantkit::cli {
namespace {

struct InspectArgs {
  ModelArgs model;
  bool json = false;
};

int run_inspect(const InspectArgs& a) {
  if (a.model.model.empty()) fail("inspect: no model given (quantkit inspect FILE)");
  ModelFile m = a.model.load();
  const LlamaConfig& c = m.config;
  uint64_t total_bytes = 0, total_params = 0;
  nlohmann::json tensors = nlohmann::json::array();
  for (const auto& t : m.tensors) {
    total_bytes += t.nbytes;
    total_params += uint64_t(t.numel());
    tensors.push_back({{"name", t.name}, {"shape", t.shape}, {"type", t.type == DType::QK ? t.format : dtype_name(t.type)}, {"bytes", t.nbytes},
                       {"bits_per_weight", 8.0 * double(t.nbytes) / double(t.numel())}});
  }
  nlohmann::json cfg = {{"dim", c.dim}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
                        {"n_kv_heads", c.n_kv_heads}, {"hidden_dim", c.hidden_dim}, {"vocab_size", c.vocab_size},
                        {"max_seq_len", c.max_seq_len}, {"rms_eps", c.rms_eps}, {"rope_theta", c.rope_theta},
                        {"rope_style", c.rope_style == RopeStyle::Normal ? "normal" : "neox"},
                        {"tied_embeddings", c.tied_embeddings}};
  if (a.json) {
    print_json({{"file", m.path}, {"container", m.container}, {"architecture", "llama"}, {"config", cfg},
                {"tokenizer", m.vocab ? nlohmann::json{{"model", m.vocab->model}, {"tokens", m.vocab->tokens.size()},
                                                       {"bos", m.vocab->bos_id}, {"eos", m.vocab->eos_id}}
                                      : nlohmann::json(nullptr)},
                {"metadata", m.metadata}, {"tensors", tensors}, {"total_bytes", total_bytes},
                {"total_parameters", total_params}});
    return 0;
  }
  std::printf("file          %s (%s)\narchitecture  llama\n", m.path.c_str(), m.container.c_str());
  const std::pair<const char*, std::string> rows[] = {
      {"dim", fmt::format("{}", c.dim)}, {"n_layers", fmt::format("{}", c.n_layers)},
      {"n_heads", fmt::format("{}", c.n_heads)}, {"n_kv_heads", fmt::format("{}", c.n_kv_heads)},
      {"hidden_dim", fmt::format("{}", c.hidden_dim)}, {"vocab_size", fmt::format("{}", c.vocab_size)},
      {"max_seq_len", fmt::format("{}", c.max_seq_len)}, {"rms_eps", fmt::format("{}", c.rms_eps)},
      {"rope_theta", fmt::format("{}", c.rope_theta)}, {"rope_style", cfg["rope_style"].get<std::string>()},
      {"tied_embeddings", c.tied_embeddings ? "yes" : "no"}};
  for (const auto& [k, v] : rows) std::printf("  %-16s %s\n", k, v.c_str());
  if (m.vocab)
    std::printf("tokenizer     %s, %zu tokens, bos %d, eos %d\n", m.vocab->model.c_str(), m.vocab->tokens.size(),
                m.vocab->bos_id, m.vocab->eos_id);
  else
    std::printf("tokenizer     none\n");
  std::printf("\n%-32s %-16s %-14s %12s %8s\n", "tensor", "shape", "type", "bytes", "bits/w");
  for (const auto& t : tensors)
    std::printf("%-32s %-16s %-14s %12llu %8.3f\n", t["name"].get<std::string>().c_str(),
                shape_str(t["shape"].get<std::vector<int64_t>>()).c_str(), t["type"].get<std::string>().c_str(),
                (unsigned long long)t["bytes"].get<uint64_t>(), t["bits_per_weight"].get<double>());
  std::printf("\n%zu tensors, %llu parameters, %llu bytes (%.2f MiB), %.3f bits/weight\n", m.tensors.size(),
              (unsigned long long)total_params, (unsigned long long)total_bytes, double(total_bytes) / (1 << 20),
              8.0 * double(total_bytes) / double(total_params));
  return 0;
}

Register reg({"inspect", "show a model file's hyper-parameters and tensors", [](CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  a->model.add(app, false);
  app.add_option("file", a->model.model, "model file (same as --model)");
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  return [a] { return run_inspect(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
