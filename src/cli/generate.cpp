// quantkit generate: text continuation, greedy (--temp 0) or sampled (temperature,
// top-p, seeded).
#include <chrono>
#include <cmath>
#include <iostream>
#include <numeric>

#include "cli/command.h"
#include "cli/common.h"
#include "quantkit/error.h"
#include "quantkit/llama.h"
#include "quantkit/sampler.h"

namespace quantkit::cli {
namespace {

struct GenerateArgs {
  ModelArgs model;
  std::string prompt, kv = "f32";
  int n = 64;
  float temp = 0.0f, top_p = 0.9f;
  uint64_t seed = 42;
  bool json = false;
};

int run_generate(const GenerateArgs& a) {
  ModelFile file = a.model.load();
  Tokenizer tok = tokenizer_of(file);
  LlamaModel model(file);
  std::vector<int> tokens = tok.encode(a.prompt, true);
  const int max_len = model.config().max_seq_len;
  if (int(tokens.size()) >= max_len)
    fail("the prompt has {} tokens, the model's context is {}", tokens.size(), max_len);
  const KVSpec kv = parse_kv_spec(a.kv);
  KVCache cache = model.make_cache(max_len, kv);
  Sampler sampler(a.temp, a.top_p, a.seed);
  std::vector<float> logits(tokens.size() * size_t(model.config().vocab_size));

  std::string text = tok.decode(tokens);
  if (!a.json) std::cout << text << std::flush;
  const auto t0 = std::chrono::steady_clock::now();
  model.forward(tokens.data(), int(tokens.size()), 0, cache, logits.data());
  const auto t1 = std::chrono::steady_clock::now();
  const size_t vocab = size_t(model.config().vocab_size);
  const float* last = &logits[(tokens.size() - 1) * vocab];
  std::string completion;
  int generated = 0;
  while (generated < a.n && int(tokens.size()) < max_len) {
    const int next = sampler.sample(last, int(vocab));
    if (next == tok.eos() || next == tok.bos()) break;
    const std::string piece = tok.piece(next, tokens.back());
    completion += piece;
    if (!a.json) std::cout << piece << std::flush;
    tokens.push_back(next);
    ++generated;
    logits.resize(vocab);
    model.forward(&next, 1, int(tokens.size()) - 1, cache, logits.data());
    last = logits.data();
  }
  const auto t2 = std::chrono::steady_clock::now();
  const double prompt_s = std::chrono::duration<double>(t1 - t0).count();
  const double gen_s = std::chrono::duration<double>(t2 - t1).count();
  const double tps = gen_s > 0 ? generated / gen_s : 0;
  if (a.json) {
    print_json({{"prompt", a.prompt}, {"text", text + completion}, {"completion", completion},
                {"tokens_generated", generated}, {"prompt_tokens", tokens.size() - generated},
                {"prompt_seconds", prompt_s}, {"generation_seconds", gen_s}, {"tokens_per_second", tps}});
  } else {
    std::cout << "\n" << std::flush;
    std::fprintf(stderr, "generated %d tokens in %.3f s (%.1f tokens/s)\n", generated, gen_s, tps);
  }
  return 0;
}

Register reg({"generate", "continue a prompt with a model", [](CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  a->model.add(app);
  app.add_option("-p,--prompt", a->prompt, "prompt text (default: empty, start from BOS)");
  app.add_option("-n,--n-predict", a->n, "tokens to generate")->check(CLI::Range(0, 1 << 20));
  app.add_option("--temp", a->temp, "temperature (0 = greedy)")->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-p", a->top_p, "nucleus sampling threshold")->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", a->seed, "random seed for sampling");
  app.add_option("--kv", a->kv, "KV cache format K_SPEC,V_SPEC (f32, f16, int8, int4, int2, vidkv, ternary; :bN :gN :rN :oF)");
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  return [a] { return run_generate(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
