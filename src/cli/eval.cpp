// quantkit eval: perplexity (llama.cpp and all-tokens conventions, 95% interval) and,
// with --ref, KL divergence / top-1 agreement against a reference model.
#include <cstdio>

#include "cli/command.h"
#include "cli/common.h"
#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/linear.h"

namespace quantkit::cli {
namespace {

struct EvalArgs {
  ModelArgs model;
  std::string text, ref, ref_tokenizer, separator, kv = "f32";
  EvalOptions opt;
  bool json = false, fp32_activations = false;
};

nlohmann::json ppl_json(const PerplexityStats& s) {
  return {{"convention", s.convention}, {"scored_tokens", s.n_scored}, {"mean_nll", s.mean_nll},
          {"perplexity", s.ppl}, {"ci95", {s.ppl_lo, s.ppl_hi}}};
}

int run_eval(const EvalArgs& args) {
  EvalArgs a = args;
  a.opt.kv = parse_kv_spec(a.kv);
  set_int8_activations(!a.fp32_activations);
  ModelFile file = a.model.load();
  Tokenizer tok = tokenizer_of(file);
  LlamaModel model(file);
  std::unique_ptr<ModelFile> ref_file;
  std::unique_ptr<LlamaModel> ref;
  if (!a.ref.empty()) {
    ref_file = std::make_unique<ModelFile>(load_model(a.ref, a.ref_tokenizer.empty() ? a.model.tokenizer : a.ref_tokenizer));
    ref = std::make_unique<LlamaModel>(*ref_file);
  }
  // A quantized KV cache without --ref: KL against the same model with an FP32 cache.
  const bool kv_ref = ref == nullptr && !a.opt.kv.is_f32();
  const LlamaModel* ref_model = kv_ref ? &model : ref.get();
  if (kv_ref) a.ref = "same model, f32 KV cache";
  const int kv_dim = model.config().kv_dim(), head_dim = model.config().head_dim();
  const std::vector<int> tokens = tok.encode(read_text(a.text, a.separator), true);
  Progress progress("eval: window", count_windows(int64_t(tokens.size()), a.opt), "tokens");
  EvalResult r = evaluate(model, ref_model, tokens, tok.bos(), a.opt, [&](int done, int) {
    progress.update(done, double(done) * a.opt.ctx * (ref_model ? 2 : 1));
  });
  progress.finish();
  if (a.json) {
    nlohmann::json j = {{"model", a.model.model}, {"text", a.text}, {"tokens", r.n_tokens}, {"ctx", r.ctx},
                        {"stride", r.stride}, {"windows", r.n_windows}, {"seconds", r.seconds},
                        {"tokens_per_second", r.tokens_per_second},
                        {"activations", a.fp32_activations ? "fp32" : "int8"},
                        {"kv", {{"spec", a.opt.kv.str()},
                                {"key_bits", kv_bits_per_element(a.opt.kv.k, true, kv_dim, head_dim)},
                                {"value_bits", kv_bits_per_element(a.opt.kv.v, false, kv_dim, head_dim)}}},
                        {"perplexity", {{"llama.cpp", ppl_json(r.llamacpp)}, {"all-tokens", ppl_json(r.all_tokens)}}}};
    if (r.has_kl)
      j["kl_divergence"] = {{"reference", a.ref}, {"n", r.kl.n}, {"mean", r.kl.mean}, {"median", r.kl.median},
                            {"p99", r.kl.p99}, {"max", r.kl.max}, {"top1_agreement", r.kl.top1_agreement},
                            {"mean_delta_logp", r.kl.mean_delta_logp}, {"mean_delta_p", r.kl.mean_delta_p}};
    print_json(j);
    return 0;
  }
  std::printf("model        %s\ntext         %s (%lld tokens, %d windows of %d, stride %d)\n", a.model.model.c_str(),
              a.text.c_str(), (long long)r.n_tokens, r.n_windows, r.ctx, r.stride);
  if (!a.opt.kv.is_f32()) std::printf("kv cache     %s\n", kv_describe(a.opt.kv, kv_dim, head_dim).c_str());
  for (const PerplexityStats* s : {&r.llamacpp, &r.all_tokens})
    if (s->n_scored > 0)
      std::printf("PPL %-10s %.4f  95%% CI [%.4f, %.4f]  (%lld scored tokens)\n", s->convention.c_str(), s->ppl,
                  s->ppl_lo, s->ppl_hi, (long long)s->n_scored);
  if (r.has_kl)
    std::printf("KL(ref||model) mean %.6f  median %.6f  p99 %.6f  max %.6f\ntop-1 agreement %.2f%%  mean dlogp %+.6f  mean dp %+.4f%%\n",
                r.kl.mean, r.kl.median, r.kl.p99, r.kl.max, 100 * r.kl.top1_agreement, r.kl.mean_delta_logp,
                100 * r.kl.mean_delta_p);
  std::printf("speed        %.0f tokens/s (%.2f s)\n", r.tokens_per_second, r.seconds);
  return 0;
}

Register reg({"eval", "perplexity and KL divergence on a text", [](CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  a->model.add(app);
  app.add_option("--text", a->text, "evaluation text file")->required();
  app.add_option("--ctx", a->opt.ctx, "window length in tokens")->check(CLI::Range(4, 1 << 20));
  app.add_option("--stride", a->opt.stride, "window start step (default: ctx, non-overlapping)")->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-tokens", a->opt.max_tokens, "use only the first N tokens of the text")->check(CLI::Range(int64_t(1), int64_t(1) << 40));
  app.add_option("--ref", a->ref, "reference model for KL divergence (e.g. the FP32 original)");
  app.add_option("--ref-tokenizer", a->ref_tokenizer, "tokenizer for a llama2.c reference (default: --tokenizer)");
  app.add_option("--doc-separator", a->separator, "replace each line holding only this string by nothing (e.g. '<|endoftext|>')");
  app.add_option("--kv", a->kv, "KV cache format K_SPEC,V_SPEC (f32, f16, int8, int4, int2, vidkv, ternary; :bN :gN :rN :oF); "
                 "without --ref, KL is against an FP32 cache");
  app.add_flag("--fp32-activations", a->fp32_activations,
               "multiply quantized weights with FP32 activations (default: int8 per 32, as llama.cpp), "
               "to measure the weight format's error alone");
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  return [a] { return run_eval(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
