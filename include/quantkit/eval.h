// Perplexity and KL-divergence evaluation over fixed windows of a token stream.
//
// Windows: the text is tokenized once (BOS first); window w covers tokens
// [w*stride, w*stride + ctx) and its first token is replaced by BOS, as llama.cpp's
// llama-perplexity does. Two scorings are reported:
//  - "llama.cpp": only the second half of each window is scored (positions ctx/2 ..
//    ctx-2 predict the next token), non-overlapping windows (stride = ctx);
//  - "all-tokens": every prediction in the window that an earlier window has not scored.
// All sums run in double in a fixed order, so results do not depend on the thread count.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "quantkit/llama.h"

namespace quantkit {

struct PerplexityStats {
  std::string convention;
  int64_t n_scored = 0;
  double mean_nll = 0;
  double ppl = 0;
  double ppl_lo = 0, ppl_hi = 0;  // 95% confidence interval (normal approx. on mean NLL)
};

struct KLStats {
  int64_t n = 0;
  double mean = 0, median = 0, p99 = 0, max = 0;
  double top1_agreement = 0;   // fraction of positions with the same argmax
  double mean_delta_logp = 0;  // mean of log p_model(target) - log p_ref(target)
  double mean_delta_p = 0;     // same, in probability
};

struct EvalOptions {
  int ctx = 256;
  int stride = 0;            // 0: = ctx
  int64_t max_tokens = 0;    // 0: all tokens of the text
  KVSpec kv;                 // KV cache format of the evaluated model (the reference keeps FP32)
};

struct EvalResult {
  int64_t n_tokens = 0;   // tokens of the text (incl. the leading BOS)
  int n_windows = 0;
  int ctx = 0, stride = 0;
  PerplexityStats llamacpp, all_tokens;
  bool has_kl = false;
  KLStats kl;  // over the llama.cpp-convention positions (all-tokens ones if stride < ctx)
  double seconds = 0;
  double tokens_per_second = 0;  // tokens processed (both models when --ref) per second
};

// Reads a text file; when `separator` is set, each "\n<separator>\n" becomes "\n"
// (the document separators of ../shared/data).
std::string read_text(const std::string& path, const std::string& separator = "");

// Number of windows evaluate() will run over n_tokens tokens.
int count_windows(int64_t n_tokens, const EvalOptions& opt);

using ProgressFn = std::function<void(int done, int total)>;

// ref may be null; when set, KL(ref || model) and agreement are computed on the same windows.
EvalResult evaluate(const LlamaModel& model, const LlamaModel* ref, const std::vector<int>& tokens, int bos,
                    const EvalOptions& opt, const ProgressFn& progress = nullptr);

}  // namespace quantkit
