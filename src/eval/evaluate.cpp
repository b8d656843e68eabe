#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

#include "quantkit/error.h"
#include "quantkit/eval.h"

namespace quantkit {
namespace {

// log-softmax of one row, in double for stable sums.
void log_softmax(const float* logits, int n, std::vector<double>& out) {
  out.resize(size_t(n));
  double mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = std::max(mx, double(logits[i]));
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  for (int i = 0; i < n; ++i) out[i] = double(logits[i]) - lse;
}

int argmax(const std::vector<double>& v) { return int(std::max_element(v.begin(), v.end()) - v.begin()); }

struct NllAccumulator {
  std::vector<double> nll;
  void add(double x) { nll.push_back(x); }
  PerplexityStats stats(const std::string& name) const {
    PerplexityStats s;
    s.convention = name;
    s.n_scored = int64_t(nll.size());
    if (nll.empty()) return s;
    double sum = 0, sum2 = 0;
    for (double x : nll) sum += x, sum2 += x * x;
    const double n = double(nll.size());
    s.mean_nll = sum / n;
    s.ppl = std::exp(s.mean_nll);
    const double var = n > 1 ? std::max(0.0, (sum2 / n - s.mean_nll * s.mean_nll) * n / (n - 1)) : 0.0;
    const double se = std::sqrt(var / n);
    s.ppl_lo = std::exp(s.mean_nll - 1.96 * se);
    s.ppl_hi = std::exp(s.mean_nll + 1.96 * se);
    return s;
  }
};

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

}  // namespace

int count_windows(int64_t n_tokens, const EvalOptions& opt) {
  const int stride = opt.stride > 0 ? opt.stride : opt.ctx;
  if (opt.max_tokens > 0) n_tokens = std::min(n_tokens, opt.max_tokens);
  return n_tokens < opt.ctx ? 0 : int((n_tokens - opt.ctx) / stride + 1);
}

EvalResult evaluate(const LlamaModel& model, const LlamaModel* ref, const std::vector<int>& all_tokens, int bos,
                    const EvalOptions& opt, const ProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const int ctx = opt.ctx;
  const int stride = opt.stride > 0 ? opt.stride : ctx;
  if (ctx < 4) fail("context {} is too small (need >= 4)", ctx);
  if (ctx > model.config().max_seq_len)
    fail("context {} exceeds the model's maximum of {}", ctx, model.config().max_seq_len);
  if (stride > ctx) fail("stride {} exceeds the context {}", stride, ctx);
  if (ref && ref->config().vocab_size != model.config().vocab_size)
    fail("reference model has vocab {} but the model has {}", ref->config().vocab_size, model.config().vocab_size);
  std::vector<int> tokens = all_tokens;
  if (opt.max_tokens > 0 && int64_t(tokens.size()) > opt.max_tokens) tokens.resize(size_t(opt.max_tokens));
  const int64_t n_tok = int64_t(tokens.size());
  if (n_tok < ctx) fail("the text has {} tokens, fewer than one window of {}", n_tok, ctx);
  const int n_windows = count_windows(n_tok, opt);
  const int vocab = model.config().vocab_size;
  const int first = ctx / 2;

  NllAccumulator llamacpp, all;
  std::vector<double> kl_values;
  int64_t agree = 0;
  double delta_logp = 0, delta_p = 0;
  std::vector<float> logits(size_t(ctx) * vocab), ref_logits(ref ? logits.size() : 0);
  std::vector<double> lp, ref_lp;
  KVCache cache = model.make_cache(ctx, opt.kv);
  KVCache ref_cache = ref ? ref->make_cache(ctx) : KVCache{};
  int64_t scored_until = 0;  // all-tokens: targets below this index were scored already

  for (int w = 0; w < n_windows; ++w) {
    const int64_t start = int64_t(w) * stride;
    std::vector<int> window(tokens.begin() + start, tokens.begin() + start + ctx);
    window[0] = bos;
    model.forward(window.data(), ctx, 0, cache, logits.data());
    if (ref) ref->forward(window.data(), ctx, 0, ref_cache, ref_logits.data());
    const bool llamacpp_window = stride == ctx;
    for (int j = 0; j + 1 < ctx; ++j) {
      const int64_t target_index = start + j + 1;
      const bool in_all = target_index >= std::max<int64_t>(scored_until, 1);
      const bool in_llamacpp = llamacpp_window && j >= first;
      // KL follows llama.cpp's positions; with overlapping windows, the all-tokens ones.
      const bool in_kl = llamacpp_window ? in_llamacpp : in_all;
      if (!in_all && !in_llamacpp) continue;
      const int target = window[size_t(j) + 1];
      log_softmax(&logits[size_t(j) * vocab], vocab, lp);
      if (in_all) all.add(-lp[size_t(target)]);
      if (in_llamacpp) llamacpp.add(-lp[size_t(target)]);
      if (!ref || !in_kl) continue;
      log_softmax(&ref_logits[size_t(j) * vocab], vocab, ref_lp);
      double kl = 0;
      for (int i = 0; i < vocab; ++i) kl += std::exp(ref_lp[i]) * (ref_lp[i] - lp[i]);
      kl_values.push_back(std::max(0.0, kl));
      agree += argmax(lp) == argmax(ref_lp);
      delta_logp += lp[size_t(target)] - ref_lp[size_t(target)];
      delta_p += std::exp(lp[size_t(target)]) - std::exp(ref_lp[size_t(target)]);
    }
    scored_until = start + ctx;
    if (progress) progress(w + 1, n_windows);
  }

  EvalResult r;
  r.n_tokens = n_tok;
  r.n_windows = n_windows;
  r.ctx = ctx;
  r.stride = stride;
  r.llamacpp = llamacpp.stats("llama.cpp");
  r.all_tokens = all.stats("all-tokens");
  if (ref && !kl_values.empty()) {
    r.has_kl = true;
    const double n = double(kl_values.size());
    r.kl.n = int64_t(kl_values.size());
    double sum = 0;
    for (double x : kl_values) sum += x;
    r.kl.mean = sum / n;
    r.kl.median = quantile(kl_values, 0.5);
    r.kl.p99 = quantile(kl_values, 0.99);
    r.kl.max = *std::max_element(kl_values.begin(), kl_values.end());
    r.kl.top1_agreement = double(agree) / n;
    r.kl.mean_delta_logp = delta_logp / n;
    r.kl.mean_delta_p = delta_p / n;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_second = r.seconds > 0 ? double(n_windows) * ctx * (ref ? 2 : 1) / r.seconds : 0;
  return r;
}

}  // namespace quantkit
