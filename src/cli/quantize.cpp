// quantkit quantize: a model in, a smaller model out (GGUF, quantkit's .qk, safetensors),
// with a per-tensor table and, with --eval, perplexity and KL divergence against the input.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <thread>

#include "cli/budget.h"
#include "cli/command.h"
#include "cli/common.h"
#include "io/model_io.h"
#include "io/shards.h"
#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/html_report.h"
#include "quantkit/quantize.h"
#include "quantkit/thread_pool.h"

namespace quantkit::cli {
namespace {

struct QuantizeArgs {
  ModelArgs model;
  QuantizeOptions opt;
  std::string format, method = "rtn", calib, out, eval_text, separator, report;
  std::string embedding_format = "q8_0", safetensors_dtype = "f16", safetensors_layout = "dequantized";
  std::vector<std::string> skip, keep_f16, overrides;
  int64_t calib_tokens = 0;
  int ctx = 0, eval_ctx = 0, split = 0;
  bool json = false, no_act_order = false;
  BudgetArgs budget;
  std::string max_memory = "auto", resume;  // scale-out (docs/distributed.md)
  std::string shards;                        // --shards N | ranks
};

enum class OutputKind { Gguf, Safetensors };

OutputKind output_kind(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".gguf" || ext == ".qk") return OutputKind::Gguf;
  if (ext == ".safetensors" || ext.empty() || std::filesystem::is_directory(path)) return OutputKind::Safetensors;
  fail("{}: unknown output type '{}' (use .gguf, .qk, or a folder / .safetensors for safetensors)", path, ext);
}

QuantizeOptions options_of(const QuantizeArgs& a, int model_ctx) {
  QuantizeOptions o;
  if (a.format.empty() == !a.budget.active())
    fail("give either --format SPEC or a budget (--target-bpw / --target-size)");
  o.format = a.split > 1 ? fmt::format("split{}:{}", a.split, a.format) : a.format;
  if (!o.format.empty()) make_format(o.format);  // a bad spec fails before any work
  o.method = method_from_name(a.method);
  o.embedding_format = a.embedding_format;
  for (const auto& p : a.skip) o.rules.push_back(TensorRule::parse(p + "=keep"));
  for (const auto& p : a.keep_f16) o.rules.push_back(TensorRule::parse(p + "=f16"));
  for (const auto& r : a.overrides) o.rules.push_back(TensorRule::parse(r));
  o.calibration.ctx = a.ctx ? a.ctx : std::min(256, model_ctx);
  if (a.calib_tokens) o.calibration.windows = int(std::max<int64_t>(1, a.calib_tokens / o.calibration.ctx));
  o.gptq.damp = a.opt.gptq.damp;
  o.gptq.act_order = !a.no_act_order;
  o.allow_nonfinite = a.opt.allow_nonfinite;
  return o;
}

// The GPTQ layout packs int weights for transformers / vLLM; it fixes fp16 for the rest.
void check_layout(const QuantizeArgs& a) {
  if (a.safetensors_layout != "gptq") return;
  if (output_kind(a.out) != OutputKind::Safetensors)
    fail("{}: --safetensors-layout gptq needs a safetensors output (a folder or .safetensors)", a.out);
  if (a.safetensors_dtype != "f16")
    fail("--safetensors-layout gptq stores fp16 (scales and unquantized tensors), not {}", a.safetensors_dtype);
}

// --shards: a count, or `ranks` (one shard per process of the job); 0 without the option.
int shard_count(const QuantizeArgs& a, const Communicator& comm) {
  if (a.shards.empty()) return 0;
  if (a.shards == "ranks") return comm.size();
  size_t used = 0;
  int n = 0;
  try {
    n = std::stoi(a.shards, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != a.shards.size() || n < 1 || n > 65535) fail("--shards {}: give a count from 1 to 65535, or 'ranks'", a.shards);
  return n;
}

// The file a loader opens: the output, or the first shard of a GGUF split.
std::string loadable_output(const QuantizeArgs& a, const Communicator& comm) {
  const int shards = shard_count(a, comm);
  return shards && output_kind(a.out) == OutputKind::Gguf ? shard_path(a.out, 0, shards) : a.out;
}

// Writes the output (with --shards, every rank of the job calls it: each writes its shards);
// returns the GPTQ report when the GPTQ layout was written.
std::optional<GptqReport> write_output(const QuantizeResult& r, const QuantizeArgs& a, Communicator& comm) {
  const int count = shard_count(a, comm);
  if (!comm.root()) {
    if (count) write_files(&comm, {});  // the files rank 0 hands to this rank
    return std::nullopt;
  }
  const ShardLayout shards = count ? ShardLayout::exactly(count, &comm) : ShardLayout();
  if (output_kind(a.out) == OutputKind::Gguf) {
    if (count) save_gguf_shards(r.model, a.out, shards);
    else save_gguf_model(r.model, a.out);
    return std::nullopt;
  }
  std::string dir = a.out;
  if (std::filesystem::path(dir).extension() == ".safetensors") dir = std::filesystem::path(dir).parent_path().string();
  if (dir.empty()) dir = ".";
  if (a.safetensors_layout == "gptq") return save_gptq_safetensors(r.model, dir, shards);
  save_safetensors_model(r.model, dir, dtype_from_name(a.safetensors_dtype), shards);
  return std::nullopt;
}

nlohmann::json gptq_json(const GptqReport& g) {
  nlohmann::json j = {{"bits", g.bits}, {"group_size", g.group_size}, {"sym", g.sym}, {"packed", g.packed},
                      {"dequantized", nlohmann::json::array()}};
  for (const auto& d : g.dequantized) j["dequantized"].push_back({{"name", d.name}, {"type", d.type}, {"reason", d.reason}});
  return j;
}

void print_gptq_notes(const GptqReport& g) {
  std::fprintf(stderr, "note: GPTQ checkpoint, %d bits, group_size %lld, %s: %zu layer weights packed, %zu tensors written as fp16\n",
               g.bits, (long long)g.group_size, g.sym ? "sym" : "asym", g.packed.size(), g.dequantized.size());
  for (const auto& d : g.dequantized)
    std::fprintf(stderr, "  %s (%s): %s\n", d.name.c_str(), d.type.c_str(), d.reason.c_str());
}

void print_table(const QuantizeResult& r) {
  std::printf("%-26s %-14s %-10s %7s %-8s %10s %8s  %s\n", "tensor", "format", "shape", "bits/w", "method",
              "rel.err", "SQNR dB", "note");
  for (const auto& t : r.tensors) {
    const std::string shape = fmt::format("{}x{}", t.rows, t.cols);
    std::printf("%-26s %-14s %-10s %7.3f %-8s %10.3e %8.2f  %s\n", t.name.c_str(), t.plan.spec.c_str(),
                shape.c_str(), t.bits_per_weight, t.method.c_str(), t.weighted_rel_error,
                std::isfinite(t.sqnr_db) ? t.sqnr_db : 999.0, t.plan.note.c_str());
  }
}

// The options of the job itself (not of budget planning or the Pareto sweep, which every
// process runs alone): its processes (mpirun), memory limit, checkpoints, the output's folder
// for finished stages, and the cores of this machine shared among its ranks.
QuantizeOptions scaled_out(QuantizeOptions opt, const QuantizeArgs& a, Communicator& comm) {
  opt.comm = &comm;
  opt.max_memory = parse_memory_limit(a.max_memory, comm.local_size());
  opt.resume_dir = a.resume;
  const std::filesystem::path out = std::filesystem::absolute(a.out);
  // A safetensors folder is created up front (it holds the spilled stages); files come later.
  std::error_code ec;
  if (output_kind(a.out) == OutputKind::Safetensors && out.extension() != ".safetensors" &&
      !std::filesystem::create_directories(out, ec) && ec)
    fail("{}: cannot create the output folder: {}", a.out, ec.message());
  opt.spill_dir = (std::filesystem::is_directory(out) ? out : out.parent_path()).string();
  if (!a.model.threads && comm.local_size() > 1)
    set_num_threads(std::max(1, int(std::thread::hardware_concurrency()) / comm.local_size()));
  return opt;
}

// Every rank's peak RSS (getrusage) beside its estimate, and its CPU time, printed by rank 0;
// for --json.
nlohmann::json report_memory(Communicator& comm, const QuantizeResult& r, const QuantizeArgs& a) {
  const std::vector<uint64_t> rss = gather_u64(comm, peak_rss_bytes()), est = gather_u64(comm, r.memory.total()),
                              cpu_ms = gather_u64(comm, uint64_t(1000 * cpu_seconds()));
  nlohmann::json ranks = nlohmann::json::array();
  if (r.resumed_stages)
    std::fprintf(stderr, "note: resumed from %s: %d of %d stages were done\n", a.resume.c_str(),
                 r.resumed_stages, r.stages);
  for (size_t i = 0; i < rss.size(); ++i) {
    std::fprintf(stderr, "rank %zu of %zu: peak RSS %s (estimated %s), cpu %.1f s\n", i, rss.size(),
                 format_bytes(rss[i]).c_str(), format_bytes(est[i]).c_str(), 1e-3 * double(cpu_ms[i]));
    ranks.push_back({{"rank", i}, {"peak_rss_bytes", rss[i]}, {"estimated_peak_bytes", est[i]},
                     {"cpu_seconds", 1e-3 * double(cpu_ms[i])}});
  }
  return ranks;
}

int run_quantize(QuantizeArgs& a, Communicator& comm) {
  ModelFile in = a.model.load();
  QuantizeOptions opt = options_of(a, in.config.max_seq_len);
  scaled_out(opt, a, comm);  // a bad --max-memory fails before any work
  std::vector<int> calib;
  int bos = 1;
  if (opt.method != QuantMethod::Rtn && a.calib.empty())
    fail("--method {} needs --calib FILE (calibration text)", a.method);
  if (!a.budget.pareto.empty() && a.eval_text.empty()) fail("--pareto needs --eval FILE (the frontier is measured)");
  if (!a.calib.empty()) {
    Tokenizer tok = tokenizer_of(in);
    calib = tok.encode(read_text(a.calib, a.separator), true);
    bos = tok.bos();
  }
  output_kind(a.out);  // a bad output name or shard count fails before any work
  if (shard_count(a, comm) > int(in.tensors.size()))
    fail("--shards {}: more shards than the {} tensors of {}", a.shards, in.tensors.size(), a.model.model);
  check_layout(a);
  std::optional<BudgetPlan> budget;
  if (a.budget.active()) {
    budget = plan_budget(in, opt, a.budget, calib.empty() ? nullptr : &calib, bos);
    const std::vector<TensorRule> rules = allocation_rules(budget->sensitivity, budget->allocation);
    opt.rules.insert(opt.rules.begin(), rules.begin(), rules.end());
    opt.format = "mixed";
  }
  Progress layers("quantize: layer", in.config.n_layers), tensors("quantize: tensor", int64_t(in.tensors.size()));
  QuantizeResult r = quantize_model(in, scaled_out(opt, a, comm), calib.empty() ? nullptr : &calib, bos,
                                    [&](const char* stage, int done, int, const std::string& what) {
                                      (std::string(stage) == "layer" ? layers : tensors).update(done, 0, what);
                                    });
  tensors.finish();
  const std::optional<GptqReport> gptq = write_output(r, a, comm);
  if (!comm.root()) return report_memory(comm, r, a), 0;  // rank 0 reports
  const nlohmann::json ranks = report_memory(comm, r, a);
  if (gptq && !a.json) print_gptq_notes(*gptq);

  int quantkit_only = 0;
  for (const auto& t : r.model.tensors) quantkit_only += t.type == DType::QK;
  const std::string written = loadable_output(a, comm);
  if (quantkit_only && output_kind(a.out) == OutputKind::Gguf && a.out.ends_with(".gguf"))
    std::fprintf(stderr, "note: %d tensors use quantkit formats that llama.cpp cannot read; %s loads in quantkit\n",
                 quantkit_only, written.c_str());

  EvalResult ev;
  const bool eval = !a.eval_text.empty();
  nlohmann::json frontier;
  if (eval) {
    ModelFile qfile = load_model(written);
    LlamaModel qmodel(qfile), ref(in);
    Tokenizer tok = tokenizer_of(qfile);
    const std::vector<int> tokens = tok.encode(read_text(a.eval_text, a.separator), true);
    EvalOptions eo;
    eo.ctx = a.eval_ctx ? a.eval_ctx : in.config.max_seq_len;
    Progress progress("eval: window", count_windows(int64_t(tokens.size()), eo), "tokens");
    ev = evaluate(qmodel, &ref, tokens, tok.bos(), eo, [&](int done, int) { progress.update(done, 2.0 * done * eo.ctx); });
    progress.finish();
    if (budget && !a.budget.pareto.empty())
      frontier = pareto_frontier(in, opt, *budget, calib.empty() ? nullptr : &calib, tok.bos(), tokens, eo.ctx,
                                 a.budget.pareto, !a.json);
  }

  const double bits = 8.0 * double(r.output_bytes);
  int64_t n_params = 0;
  for (const auto& t : r.tensors) n_params += t.rows * t.cols;
  nlohmann::json j = report::quantize_json(in, r, {a.model.model, a.out, opt.format, a.method});
  if (gptq) j["gptq"] = gptq_json(*gptq);
  if (budget) j["mixed_precision"] = budget_json(*budget);
  if (!frontier.is_null()) j["pareto"] = frontier;
  if (eval) j["eval"] = report::eval_json(ev, a.eval_text);
  j["ranks"] = ranks;
  if (!a.report.empty()) report::write_html(j, "quantize of " + a.model.model, a.report);
  if (a.json) {
    print_json(j);
    return 0;
  }
  print_table(r);
  if (budget) print_budget(*budget);
  std::printf("\n%s -> %s: %s, method %s\n", a.model.model.c_str(), a.out.c_str(), opt.format.c_str(), a.method.c_str());
  std::printf("size %.3f MB -> %.3f MB (%.2fx), %.3f bits/weight overall, %.2f s", r.input_bytes / 1e6,
              r.output_bytes / 1e6, double(r.input_bytes) / double(r.output_bytes), bits / double(n_params), r.seconds);
  if (r.calibration_windows)
    std::printf(", calibrated on %d windows (%lld tokens)", r.calibration_windows, (long long)r.calibration_tokens);
  std::printf("\n");
  if (eval)
    std::printf("eval %s: PPL %.4f (llama.cpp convention), all-tokens %.4f, KL mean %.6f, p99 %.6f, top-1 %.2f%%\n",
                a.eval_text.c_str(), ev.llamacpp.ppl, ev.all_tokens.ppl, ev.kl.mean, ev.kl.p99,
                100 * ev.kl.top1_agreement);
  return 0;
}

Register reg({"quantize", "quantize a model to a format with rtn, weighted or gptq", [](CLI::App& app) {
  auto a = std::make_shared<QuantizeArgs>();
  a->model.add(app);
  app.add_option("-f,--format", a->format, "format spec for the layer weights (see `quantkit formats`)");
  a->budget.add(app);
  app.add_option("--method", a->method, "rtn | weighted | gptq")->check(CLI::IsMember({"rtn", "weighted", "gptq"}));
  app.add_option("--calib", a->calib, "calibration text (weighted, gptq)");
  app.add_option("--calib-tokens", a->calib_tokens, "calibration tokens (default 128 windows)")->check(CLI::Range(int64_t(2), int64_t(1) << 40));
  app.add_option("--ctx", a->ctx, "calibration window length (default min(256, model context))")->check(CLI::Range(2, 1 << 20));
  app.add_option("--skip", a->skip, "keep tensors matching this regex as they are in the input");
  app.add_option("--keep-f16", a->keep_f16, "store tensors matching this regex in f16");
  app.add_option("--override", a->overrides, "'REGEX=SPEC': format (or f16/f32/keep) for matching tensors");
  app.add_option("--embedding-format", a->embedding_format, "format of token_embd and output (default q8_0)");
  app.add_option("--split", a->split, "SplitQuant: split each layer weight into K value clusters")->check(CLI::Range(2, 8));
  app.add_option("--damp", a->opt.gptq.damp, "GPTQ damping, fraction of mean diag(H) (default 0.01)")->check(CLI::Range(0.0, 10.0));
  app.add_flag("--no-act-order", a->no_act_order, "GPTQ: columns in natural order");
  app.add_flag("--allow-nonfinite", a->opt.allow_nonfinite,
               "replace NaN/Inf input weights by 0 (counted in the note column) instead of failing");
  app.add_option("--safetensors-dtype", a->safetensors_dtype, "f16 | bf16 | f32 for safetensors output")->check(CLI::IsMember({"f16", "bf16", "f32"}));
  app.add_option("--safetensors-layout", a->safetensors_layout,
                 "dequantized (default: every tensor in --safetensors-dtype) | gptq (int4/int8 layer weights packed for transformers / vLLM)")
      ->check(CLI::IsMember({"dequantized", "gptq"}));
  app.add_option("-o,--output", a->out, "output: .gguf, .qk (quantkit GGUF), or a folder/.safetensors")->required();
  app.add_option("--eval", a->eval_text, "evaluate the result on this text (perplexity, KL vs the input)");
  app.add_option("--eval-ctx", a->eval_ctx, "evaluation window (default: model context)")->check(CLI::Range(4, 1 << 20));
  app.add_option("--doc-separator", a->separator, "document separator line in the texts (e.g. '<|endoftext|>')");
  app.add_flag("--json", a->json, "machine-readable result on stdout");
  app.add_option("--report", a->report, "also write a self-contained HTML report (charts, sortable tensor table) to this file");
  app.add_option("--max-memory", a->max_memory,
                 "refuse up front when a process would need more: BYTES with K/M/G/T suffix, or auto (available RAM "
                 "shared among this machine's ranks; default)");
  app.add_option("--shards", a->shards,
                 "write N files: a GGUF split (OUT-00001-of-0000N.gguf, as llama.cpp's gguf-split) or safetensors "
                 "shards + model.safetensors.index.json; 'ranks': one per process, each process writing its own");
  app.add_option("--resume", a->resume, "checkpoint folder: each finished layer is saved; a rerun continues from it");
  return [a] {
    const std::unique_ptr<Communicator> comm = world_communicator();  // MPI when started by mpirun
    return run_job(*comm, [&] { return run_quantize(*a, *comm); });
  };
}});

}  // namespace
}  // namespace quantkit::cli
