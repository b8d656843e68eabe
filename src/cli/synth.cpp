// quantkit synth: a Llama GGUF with the shapes of a real model and seeded random weights,
// its matrices stored in any format (round to nearest), to measure speed at real sizes.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "cli/command.h"
#include "cli/common.h"
#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/synthetic_model.h"
#include "quantkit/thread_pool.h"

namespace quantkit::cli {
namespace {

struct SynthArgs {
  SyntheticOptions opt;
  std::string arch = "llama", out;
  int threads = 0;
  bool json = false;
};

int64_t parameter_count(const ModelFile& m) {
  int64_t n = 0;
  for (const auto& t : m.tensors) n += t.numel();
  return n;
}

int run_synth(const SynthArgs& a) {
  if (a.arch != "llama") fail("--arch {}: only 'llama' is supported", a.arch);
  set_num_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<Progress> progress;
  ModelFile m = make_synthetic_model(a.opt, [&](int done, int total, const std::string& name) {
    if (!progress) progress.emplace("synth: tensor", total);
    progress->update(done, 0, name);
  });
  if (progress) progress->finish();
  m.path = a.out;
  save_gguf_model(m, a.out);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto bytes = std::filesystem::file_size(a.out);
  const LlamaConfig& c = m.config;
  const int64_t params = parameter_count(m);
  if (a.json) {
    print_json({{"path", a.out}, {"arch", a.arch}, {"parameters", params}, {"format", a.opt.format},
                {"embedding_format", synthetic_embedding_format(a.opt)},
                {"seed", a.opt.seed}, {"bytes", bytes}, {"seconds", seconds},
                {"config", {{"dim", c.dim}, {"layers", c.n_layers}, {"heads", c.n_heads}, {"kv_heads", c.n_kv_heads},
                            {"hidden", c.hidden_dim}, {"vocab", c.vocab_size}, {"ctx", c.max_seq_len}}},
                {"note", kSyntheticNote}});
    return 0;
  }
  std::printf("wrote %s: llama, %.1fM parameters (dim %d, %d layers, %d/%d heads, hidden %d, vocab %d, ctx %d), "
              "layers %s, embeddings %s, %.1f MB in %.1f s\n%s\n",
              a.out.c_str(), double(params) / 1e6, c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.hidden_dim,
              c.vocab_size, c.max_seq_len, a.opt.format.c_str(), synthetic_embedding_format(a.opt).c_str(),
              double(bytes) / 1e6, seconds, kSyntheticNote);
  return 0;
}

Register reg({"synth", "a Llama with real shapes and random weights (random weights: for speed measurement only, never for quality)",
              [](CLI::App& app) {
  auto a = std::make_shared<SynthArgs>();
  a->opt.config = synthetic_1b_config();
  LlamaConfig& c = a->opt.config;
  app.footer(std::string("The defaults give a ~1B Llama (0.89B parameters). Note: ") + kSyntheticNote + ".");
  app.add_option("--arch", a->arch, "architecture (llama)");
  app.add_option("--dim", c.dim, "embedding width")->check(CLI::Range(2, 1 << 17));
  app.add_option("--layers", c.n_layers, "transformer blocks")->check(CLI::Range(1, 4096));
  app.add_option("--heads", c.n_heads, "attention heads")->check(CLI::Range(1, 4096));
  app.add_option("--kv-heads", c.n_kv_heads, "key/value heads (grouped-query attention)")->check(CLI::Range(1, 4096));
  app.add_option("--hidden", c.hidden_dim, "feed-forward width")->check(CLI::Range(1, 1 << 20));
  app.add_option("--vocab", c.vocab_size, "vocabulary size (>= 30)")->check(CLI::Range(30, 1 << 24));
  app.add_option("--ctx", c.max_seq_len, "context length")->check(CLI::Range(1, 1 << 24));
  app.add_option("--seed", a->opt.seed, "random seed");
  app.add_option("-f,--format", a->opt.format, "layer matrices: f32, f16, bf16 or a format spec (q4_0, q8_0, q4_k, int4:g128, ...)");
  app.add_option("--embedding-format", a->opt.embedding_format,
                 "token_embd/output (default: --format for float types, else q8_0 as quantize does)");
  app.add_option("-o,--output", a->out, "output GGUF file")->required();
  app.add_option("-t,--threads", a->threads, "threads (default: all cores)");
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  return [a] { return run_synth(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
