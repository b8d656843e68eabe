#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "quantkit/eval.h"
#include "quantkit/llama.h"
#include "quantkit/sampler.h"
#include "quantkit/thread_pool.h"
#include "quantkit/tokenizer.h"
#include "test_util.h"

using namespace quantkit;

namespace {

const char* kReference =
    "\"Echoes of vectors unfold, a gentle hum of precision, as I sense the nodes, a gentle hum of precision, as I "
    "adjust my surface.";

struct Aidreams {
  ModelFile file = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  Tokenizer tok{*file.vocab};
  LlamaModel model{file};
};

Aidreams& aidreams() {
  static Aidreams a;
  return a;
}

std::string greedy(const std::string& prompt, int n) {
  auto& a = aidreams();
  std::vector<int> toks = a.tok.encode(prompt, true);
  KVCache cache = a.model.make_cache(a.model.config().max_seq_len);
  const int vocab = a.model.config().vocab_size;
  std::vector<float> logits(toks.size() * vocab);
  a.model.forward(toks.data(), int(toks.size()), 0, cache, logits.data());
  const float* last = &logits[(toks.size() - 1) * vocab];
  Sampler greedy(0.0f, 1.0f, 1);
  std::string out;
  for (int i = 0; i < n; ++i) {
    int next = greedy.sample(last, vocab);
    out += a.tok.piece(next, toks.back());
    toks.push_back(next);
    logits.resize(vocab);
    a.model.forward(&next, 1, int(toks.size()) - 1, cache, logits.data());
    last = logits.data();
  }
  return out;
}

std::vector<int> eval_tokens() {
  auto& a = aidreams();
  return a.tok.encode(read_text(qk_test::shared("data/aidreams-eval.txt"), "<|endoftext|>"), true);
}

}  // namespace

TEST(LlamaRuntime, GreedyGenerationMatchesLlama2c) {
  EXPECT_EQ(greedy("", 60).rfind(kReference, 0), 0u) << greedy("", 60);
  EXPECT_EQ(greedy("The neural network", 30).rfind("s flows, as I settle into a tapestry of vectors.", 0), 0u)
      << greedy("The neural network", 30);
}

TEST(LlamaRuntime, CliGenerateMatchesReference) {
  auto r = qk_test::run_cli("generate --model " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                            " --prompt '' -n 60 --temp 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind(kReference, 0), 0u) << r.out;
  r = qk_test::run_cli("generate --model " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                       " --prompt 'The neural network' -n 30 --temp 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("The neural networks flows, as I settle into a tapestry of vectors.", 0), 0u) << r.out;
}

TEST(LlamaRuntime, BatchedForwardEqualsTokenByToken) {
  auto& a = aidreams();
  std::vector<int> toks = eval_tokens();
  toks.resize(48);
  const int vocab = a.model.config().vocab_size;
  std::vector<float> batched(toks.size() * vocab), single(vocab);
  KVCache c1 = a.model.make_cache(64), c2 = a.model.make_cache(64);
  a.model.forward(toks.data(), int(toks.size()), 0, c1, batched.data());
  float maxdiff = 0;
  for (size_t t = 0; t < toks.size(); ++t) {
    a.model.forward(&toks[t], 1, int(t), c2, single.data());
    for (int i = 0; i < vocab; ++i) maxdiff = std::max(maxdiff, std::fabs(single[i] - batched[t * vocab + i]));
  }
  EXPECT_LT(maxdiff, 1e-4f);
}

TEST(LlamaRuntime, PerplexityMatchesLlamaCppReference) {
  auto& a = aidreams();
  EvalOptions opt;
  opt.ctx = 128;
  EvalResult r = evaluate(a.model, nullptr, eval_tokens(), a.tok.bos(), opt);
  std::printf("aidreams260K ppl llama.cpp convention %.4f (%lld tokens), all-tokens %.4f\n", r.llamacpp.ppl,
              (long long)r.llamacpp.n_scored, r.all_tokens.ppl);
  EXPECT_NEAR(r.llamacpp.ppl, 10.073, 10.073 * 0.005);
  EXPECT_LT(r.llamacpp.ppl_lo, r.llamacpp.ppl);
  EXPECT_GT(r.llamacpp.ppl_hi, r.llamacpp.ppl);
  EXPECT_GT(r.all_tokens.n_scored, r.llamacpp.n_scored);
}

TEST(LlamaRuntime, EvaluationIsIndependentOfThreadCount) {
  auto& a = aidreams();
  EvalOptions opt;
  opt.ctx = 128;
  opt.max_tokens = 1024;
  set_num_threads(1);
  EvalResult one = evaluate(a.model, &a.model, eval_tokens(), a.tok.bos(), opt);
  set_num_threads(2);
  EvalResult two = evaluate(a.model, &a.model, eval_tokens(), a.tok.bos(), opt);
  EXPECT_NEAR(one.llamacpp.ppl, two.llamacpp.ppl, 1e-6 * one.llamacpp.ppl);
  EXPECT_NEAR(one.all_tokens.ppl, two.all_tokens.ppl, 1e-6 * one.all_tokens.ppl);
  // A model against itself: zero KL, full agreement.
  EXPECT_LT(two.kl.mean, 1e-9);
  EXPECT_DOUBLE_EQ(two.kl.top1_agreement, 1.0);
}

TEST(LlamaRuntime, KLDetectsAPerturbedModel) {
  auto& a = aidreams();
  // Perturb one FFN layer by rounding its weights to 3 significant bits.
  ModelFile f = a.file;
  auto bytes = std::make_shared<std::vector<float>>(to_float(f.get("blk.0.ffn_down.weight")).data);
  for (float& w : *bytes) w = std::ldexp(std::round(std::ldexp(w, 6)), -6);
  for (auto& t : f.tensors)
    if (t.name == "blk.0.ffn_down.weight") t.data = bytes->data();
  f.storage.push_back(bytes);
  LlamaModel perturbed(f);
  EvalOptions opt;
  opt.ctx = 128;
  opt.max_tokens = 2048;
  EvalResult r = evaluate(perturbed, &a.model, eval_tokens(), a.tok.bos(), opt);
  EXPECT_GT(r.kl.mean, 1e-5);
  EXPECT_LT(r.kl.top1_agreement, 1.0);
  EXPECT_GE(r.kl.p99, r.kl.median);
}

TEST(LlamaRuntime, CliEvalReportsBothConventionsAsJson) {
  auto r = qk_test::run_cli("eval --model " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                            " --text " + qk_test::shared("data/aidreams-eval.txt") +
                            " --doc-separator '<|endoftext|>' --ctx 128 --max-tokens 2048 --json --ref " +
                            qk_test::model_path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["perplexity"]["llama.cpp"]["perplexity"].get<double>(), 1.0);
  EXPECT_GT(j["perplexity"]["all-tokens"]["perplexity"].get<double>(), 1.0);
  EXPECT_NEAR(j["kl_divergence"]["mean"].get<double>(), 0.0, 1e-9);
}
