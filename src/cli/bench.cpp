// quantkit bench: prompt-processing and generation speed of a model, the weight bandwidth
// generation achieves, and the machine's memory bandwidth measured in the same run.
//
// As llama-bench: random token ids (BOS first), one untimed warm-up (the prompt and one
// generated token), then per repetition a fresh cache, the prompt in one forward (logits of
// the last position only) and --gen single-token steps after it; the median of the
// repetitions is reported. Generation reads every weight once per token, so
// bytes/token x tokens/s is the bandwidth it achieves; its ratio to the machine's read
// bandwidth (quantkit/stream_bandwidth.h, measured in the same run) says how close to the
// memory limit it runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>

#include "cli/command.h"
#include "cli/common.h"
#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/llama.h"
#include "quantkit/quantize.h"
#include "quantkit/stream_bandwidth.h"
#include "quantkit/thread_pool.h"

namespace quantkit::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchArgs {
  ModelArgs model;
  std::string format, embedding_format = QuantizeOptions{}.embedding_format, kv = "f32";
  int prompt = 256, gen = 64, reps = 3, seed = 1;
  int stream_mb = 0, stream_passes = 5;
  bool json = false;
};

bool is_float_spec(const std::string& s) { return s == "f32" || s == "f16" || s == "bf16"; }

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The spelling plan_tensor and the file use: "q4_k" for a ggml type, the canonical spec otherwise.
std::string storage_of(const TensorView& t) { return t.type == DType::QK ? t.format : lower(dtype_name(t.type)); }
std::string canonical_spec(const std::string& s) { return is_float_spec(s) ? s : make_format(s)->spec(); }

// The storage holding most weights of the layers' matrices.
std::string layer_storage(const ModelFile& m) {
  std::map<std::string, int64_t> weights;
  for (const auto& t : m.tensors)
    if (t.shape.size() == 2 && t.name.starts_with("blk.")) weights[storage_of(t)] += t.numel();
  auto best = std::max_element(weights.begin(), weights.end(), [](auto& a, auto& b) { return a.second < b.second; });
  return best == weights.end() ? "?" : best->first;
}

bool layers_all_in(const ModelFile& m, const std::string& spec) {
  for (const auto& t : m.tensors)
    if (t.shape.size() == 2 && t.name.starts_with("blk.") && storage_of(t) != spec) return false;
  return true;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Timing {
  std::vector<double> pp_tps, tg_tps;
  size_t kv_bytes_per_position = 0;  // all layers, K and V, as stored after the run
};

class Runner {
 public:
  Runner(const LlamaModel& m, const KVSpec& kv, std::vector<int> tokens, int gen)
      : m_(m), kv_(kv), tokens_(std::move(tokens)), gen_(gen),
        logits_(size_t(m.config().vocab_size)), x_(tokens_.size() * size_t(m.config().dim)) {}

  // One repetition: seconds of the prompt and of the generation steps.
  std::pair<double, double> run(Timing* t = nullptr, int gen = -1) {
    if (gen < 0) gen = gen_;
    const int n = int(tokens_.size());
    KVCache cache = m_.make_cache(n + gen_, kv_);
    auto t0 = Clock::now();
    if (n > 0) prefill(cache);
    const double pp = seconds_since(t0);
    t0 = Clock::now();
    for (int g = 0; g < gen; ++g) {
      const int token = next_token();
      m_.forward(&token, 1, n + g, cache, logits_.data());
    }
    const double tg = seconds_since(t0);
    if (t) t->kv_bytes_per_position = kv_bytes_per_position(cache, n + gen);
    return {pp, tg};
  }

 private:
  // The prompt in one pass, logits of its last position only (what generation needs).
  void prefill(KVCache& cache) {
    const int n = int(tokens_.size()), dim = m_.config().dim;
    m_.embed(tokens_.data(), n, x_.data());
    for (int l = 0; l < m_.config().n_layers; ++l) m_.forward_layer(l, x_.data(), n, 0, cache);
    m_.head(x_.data() + size_t(n - 1) * dim, 1, logits_.data());
  }

  int next_token() { return int(rng_() % uint64_t(m_.config().vocab_size)); }

  size_t kv_bytes_per_position(const KVCache& cache, int len) const {
    if (cache.quant) return len > 0 ? cache.quant->bytes() / size_t(len) : 0;
    const size_t k = cache.k16.empty() ? sizeof(float) : sizeof(uint16_t);
    const size_t v = cache.v16.empty() ? sizeof(float) : sizeof(uint16_t);
    return (k + v) * m_.config().n_layers * m_.config().kv_dim();
  }

  const LlamaModel& m_;
  KVSpec kv_;
  std::vector<int> tokens_;
  int gen_;
  std::vector<float> logits_, x_;
  std::mt19937_64 rng_{7};
};

std::vector<int> random_prompt(const ModelFile& f, int n, int seed) {
  std::mt19937_64 rng{static_cast<uint64_t>(seed)};
  std::vector<int> t(static_cast<size_t>(n));
  for (int& id : t) id = int(rng() % uint64_t(f.config.vocab_size));
  if (n > 0 && f.vocab) t[0] = f.vocab->bos_id;
  return t;
}

nlohmann::json samples_json(const std::vector<double>& tps) {
  return {{"tokens_per_second", median(tps)}, {"samples", tps}};
}

StreamBandwidth machine_bandwidth(const BenchArgs& a) {
  StreamOptions so;
  so.array_bytes = size_t(a.stream_mb) << 20;
  so.passes = a.stream_passes;
  if (!a.json && stderr_is_tty()) std::fprintf(stderr, "bench: measuring memory bandwidth...\r");
  return measure_stream_bandwidth(so);
}

// The model file, its layers quantized in memory (rtn) when --format asks for a storage the
// file does not already have.
ModelFile load_for_bench(const BenchArgs& a, bool* quantized) {
  ModelFile file = a.model.load();
  *quantized = !a.format.empty() && !layers_all_in(file, canonical_spec(a.format));
  if (!*quantized) return file;
  QuantizeOptions opt;
  opt.format = a.format;
  opt.embedding_format = a.embedding_format;
  Progress progress("bench: quantizing (rtn), tensor", int64_t(file.tensors.size()));
  QuantizeResult r = quantize_model(file, opt, nullptr, file.vocab ? file.vocab->bos_id : 1,
                                    [&](const char*, int done, int, const std::string& what) { progress.update(done, 0, what); });
  progress.finish();
  return std::move(r.model);
}

Timing time_model(const LlamaModel& model, const ModelFile& file, const KVSpec& kv, const BenchArgs& a) {
  Runner runner(model, kv, random_prompt(file, a.prompt, a.seed), a.gen);
  runner.run(nullptr, std::min(a.gen, 1));  // warm-up: scratch buffers, page faults, caches
  Timing t;
  Progress progress("bench: repetition", a.reps);
  for (int r = 0; r < a.reps; ++r) {
    const auto [pp, tg] = runner.run(&t);
    if (a.prompt > 0) t.pp_tps.push_back(a.prompt / pp);
    if (a.gen > 0) t.tg_tps.push_back(a.gen / tg);
    progress.update(r + 1);
  }
  progress.finish();
  return t;
}

struct Report {
  std::string storage, kv;
  bool quantized = false;
  int64_t params = 0;
  size_t weight_bytes = 0;
  double kv_bytes = 0;   // per generated token
  double effective = 0;  // GB/s generation reads
  double ratio = 0;      // effective / the machine's read bandwidth
  Timing timing;
  StreamBandwidth bw;
};

// Bytes read per generated token: every weight once, plus the cached keys/values of the
// positions attended to (prompt + (gen + 1) / 2 on average over the steps).
Report summarize(const LlamaModel& model, const ModelFile& file, const BenchArgs& a, Timing t, const StreamBandwidth& bw) {
  Report r;
  r.storage = layer_storage(file);
  for (const auto& w : file.tensors) r.params += w.numel();
  r.weight_bytes = model.weight_bytes();
  r.kv_bytes = double(t.kv_bytes_per_position) * (a.prompt + (a.gen + 1) / 2.0);
  r.effective = (double(r.weight_bytes) + r.kv_bytes) * median(t.tg_tps) / 1e9;
  r.ratio = bw.reference_gbs() > 0 ? r.effective / bw.reference_gbs() : 0;
  r.timing = std::move(t);
  r.bw = bw;
  return r;
}

void print_json_report(const Report& r, const BenchArgs& a) {
  const StreamBandwidth& bw = r.bw;
  print_json({{"model", a.model.model}, {"format", r.storage}, {"quantized_in_memory", r.quantized},
              {"threads", num_threads()}, {"kv", r.kv}, {"prompt", a.prompt}, {"gen", a.gen}, {"reps", a.reps},
              {"parameters", r.params}, {"weight_bytes", r.weight_bytes}, {"kv_bytes_per_token", r.kv_bytes},
              {"bytes_per_token", double(r.weight_bytes) + r.kv_bytes},
              {"pp", samples_json(r.timing.pp_tps)}, {"tg", samples_json(r.timing.tg_tps)},
              {"effective_bandwidth_gbs", r.effective},
              {"machine_bandwidth", {{"copy_gbs", bw.copy_gbs}, {"triad_gbs", bw.triad_gbs}, {"read_gbs", bw.read_gbs},
                                     {"reference_gbs", bw.reference_gbs()},
                                     {"array_bytes", bw.array_bytes}, {"passes", bw.passes}, {"threads", bw.threads}}},
              {"bandwidth_ratio", r.ratio},
              {"bandwidth_ratio_triad", bw.triad_gbs > 0 ? r.effective / bw.triad_gbs : 0}});
}

void print_table_report(const Report& r, const BenchArgs& a) {
  const StreamBandwidth& bw = r.bw;
  std::printf("model      %s (%s layers%s, %.1fM parameters, %d threads, KV cache %s)\n", a.model.model.c_str(),
              r.storage.c_str(), r.quantized ? ", quantized in memory (rtn)" : "", double(r.params) / 1e6,
              num_threads(), r.kv.c_str());
  std::printf("%-16s %12s   median of %d (min .. max)\n", "test", "tokens/s", a.reps);
  auto row = [&](const std::string& name, const std::vector<double>& tps) {
    if (tps.empty()) return;
    std::printf("%-16s %12.2f   (%.2f .. %.2f)\n", name.c_str(), median(tps), *std::min_element(tps.begin(), tps.end()),
                *std::max_element(tps.begin(), tps.end()));
  };
  row(fmt::format("pp{}", a.prompt), r.timing.pp_tps);
  row(fmt::format("tg{} @ {}", a.gen, a.prompt), r.timing.tg_tps);
  std::printf("per token  %.2f MB weights + %.2f MB KV cache read\n", double(r.weight_bytes) / 1e6, r.kv_bytes / 1e6);
  std::printf("bandwidth  generation %.2f GB/s; machine (%d threads, %zu MiB arrays, best of %d): read %.2f GB/s, "
              "STREAM copy %.2f, triad %.2f GB/s\n",
              r.effective, bw.threads, bw.array_bytes >> 20, bw.passes, bw.read_gbs, bw.copy_gbs, bw.triad_gbs);
  std::printf("ratio      %.1f%% of the read bandwidth (%.1f%% of STREAM triad)\n", 100 * r.ratio,
              bw.triad_gbs > 0 ? 100 * r.effective / bw.triad_gbs : 0.0);
}

int run_bench(const BenchArgs& a) {
  if (a.prompt + a.gen == 0) fail("--prompt and --gen: at least one must be positive");
  const KVSpec kv = parse_kv_spec(a.kv);
  if (!a.format.empty()) canonical_spec(a.format);  // a bad spec fails before any work
  set_num_threads(a.model.threads);
  const StreamBandwidth bw = machine_bandwidth(a);  // first, before the model takes memory
  bool quantized = false;
  const ModelFile file = load_for_bench(a, &quantized);
  const LlamaModel model(file);
  if (a.prompt + a.gen > model.config().max_seq_len)
    fail("{}: --prompt {} + --gen {} exceeds the model's context of {}", a.model.model, a.prompt, a.gen,
         model.config().max_seq_len);
  Report r = summarize(model, file, a, time_model(model, file, kv, a), bw);
  r.quantized = quantized;
  r.kv = kv.str();
  if (a.json) print_json_report(r, a);
  else print_table_report(r, a);
  return 0;
}

Register reg({"bench", "prompt and generation speed, effective weight bandwidth vs the machine's", [](CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  a->model.add(app);
  app.add_option("-f,--format", a->format, "quantize the layers in memory first (rtn) unless the file already holds SPEC");
  app.add_option("--embedding-format", a->embedding_format, "token_embd/output when quantizing in memory");
  app.add_option("-p,--prompt", a->prompt, "prompt tokens processed in one forward (0: skip)")->check(CLI::Range(0, 1 << 20));
  app.add_option("-n,--gen", a->gen, "tokens generated one by one after the prompt (0: skip)")->check(CLI::Range(0, 1 << 20));
  app.add_option("-r,--reps", a->reps, "repetitions (the median is reported)")->check(CLI::Range(1, 1000));
  app.add_option("--kv", a->kv, "KV cache format K_SPEC,V_SPEC (f32, f16, int8, int4, int2, vidkv, ternary; :bN :gN :rN :oF)");
  app.add_option("--seed", a->seed, "seed of the random prompt");
  app.add_option("--stream-mb", a->stream_mb, "bandwidth test: MiB per array (default: 4 x last-level cache, 64..1024)")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--stream-passes", a->stream_passes, "bandwidth test: timed passes (best is kept)")->check(CLI::Range(1, 100));
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  return [a] { return run_bench(*a); };
}});

}  // namespace
}  // namespace quantkit::cli
