// Whole-model RTN quantization on a synthetic Llama with real shapes (TinyLlama's layer
// shapes with 16 layers: dim 2048, 32 heads / 4 KV heads, hidden 5632, vocab 32000,
// 0.84B parameters), from an F16 GGUF, against llama.cpp's llama_model_quantize on the
// same file measured in the same run (when the peer of scripts/fetch-peer.sh is built).
//
//   bench_quantize_model [--format SPEC] [--threads N] [--reps N] [--no-peer]
//
// The model (quantkit/synthetic_model.h: seeded Gaussian weights, norms 1, F16) is generated
// once and cached in <build>/bench-data/. Both tools run as child processes on a warm page
// cache, so the times are end to end (read, quantize, write) and the memory is the child's.
//
// Memory beyond the mapped input: the input is mmap'ed, so the child's resident set grows
// by the file's size as it is read; those pages are file-backed and clean (the kernel can
// drop them at will). getrusage's ru_maxrss cannot tell them apart, so the bench polls the
// child's /proc/PID/status every 2 ms and keeps the peak of RssAnon (heap and anonymous
// mappings: everything the process allocated itself); ru_maxrss - input size is printed as
// a cross-check (it underestimates when input pages were never all resident at once).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/llama_tensors.h"
#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/synthetic_model.h"
#include "quantkit/thread_pool.h"

using namespace quantkit;
namespace fs = std::filesystem;

namespace {

LlamaConfig synthetic_config() {
  LlamaConfig c;
  c.dim = 2048, c.n_layers = 16, c.n_heads = 32, c.n_kv_heads = 4, c.hidden_dim = 5632, c.vocab_size = 32000;
  c.max_seq_len = 2048;
  return c;
}

int64_t parameter_count(const LlamaConfig& c) {
  int64_t n = 0;
  for (const auto& s : llama_tensor_specs(c)) n += shape_numel(s.shape);
  return n;
}

// The cached model, generated when missing or unreadable.
std::string synthetic_model(const std::string& dir) {
  const std::string path = dir + "/synthetic-0.9b-f16.gguf";
  if (fs::exists(path)) {
    try {
      load_gguf_model(path);  // checks every tensor's shape and size
      return path;
    } catch (const Error& e) {
      std::fprintf(stderr, "regenerating %s: %s\n", path.c_str(), e.what());
    }
  }
  std::fprintf(stderr, "generating %s ...\n", path.c_str());
  const auto t0 = std::chrono::steady_clock::now();
  SyntheticOptions opt;
  opt.config = synthetic_config();
  opt.format = "f16";
  write_synthetic_model(opt, path);
  std::fprintf(stderr, "generated in %.1f s\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return path;
}

// Reads the file once so that both tools start from a warm page cache.
void warm_page_cache(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> buf(size_t(1) << 24);
  while (in.read(buf.data(), std::streamsize(buf.size())) || in.gcount() > 0) {
  }
}

struct ChildRun {
  double seconds = 0;
  double cpu_seconds = 0;  // user + system: the work done, whatever else shares the machine
  long maxrss_kb = 0;     // ru_maxrss: anonymous + file-backed resident pages
  long peak_anon_kb = 0;  // polled peak of RssAnon
  std::string out;        // stdout
};

long status_kb(const std::string& status, const char* key) {
  const size_t at = status.find(key);
  return at == std::string::npos ? 0 : std::atol(status.c_str() + at + std::strlen(key));
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs argv with stdout to out_file; stderr stays the bench's.
ChildRun run_child(const std::vector<std::string>& argv, const std::string& out_file) {
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid < 0) fail("fork: {}", std::strerror(errno));
  if (pid == 0) {
    const int fd = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || dup2(fd, 1) < 0) _exit(127);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  ChildRun r;
  const std::string status_path = "/proc/" + std::to_string(pid) + "/status";
  int status = 0;
  rusage ru{};
  for (;;) {
    const pid_t done = wait4(pid, &status, WNOHANG, &ru);
    if (done == pid) break;
    if (done < 0) fail("wait4: {}", std::strerror(errno));
    r.peak_anon_kb = std::max(r.peak_anon_kb, status_kb(read_text(status_path), "RssAnon:"));
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.maxrss_kb = ru.ru_maxrss;
  r.cpu_seconds = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  r.out = read_text(out_file);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("{} failed (status {})", argv[0], status);
  return r;
}

// The fastest of `reps` runs (the machine is shared; the minimum is the least disturbed).
ChildRun best_of(int reps, const std::vector<std::string>& argv, const std::string& out_file) {
  ChildRun best;
  for (int i = 0; i < reps; ++i) {
    ChildRun r = run_child(argv, out_file);
    if (i == 0 || r.seconds < best.seconds) best = r;
  }
  return best;
}

struct Args {
  std::string format = "q4_0";
  int threads = 2, reps = 1;
  bool peer = true;
};

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&] {
      if (i + 1 >= argc) fail("{} needs a value", k);
      return std::string(argv[++i]);
    };
    if (k == "--format") a.format = value();
    else if (k == "--threads") a.threads = std::stoi(value());
    else if (k == "--reps") a.reps = std::max(1, std::stoi(value()));
    else if (k == "--no-peer") a.peer = false;
    else fail("usage: bench_quantize_model [--format SPEC] [--threads N] [--reps N] [--no-peer]");
  }
  return a;
}

void print_run(const char* label, const ChildRun& r, int64_t params, uint64_t input_bytes, uint64_t output_bytes) {
  const double beyond = (double(r.maxrss_kb) * 1024 - double(input_bytes)) / 1048576.0;  // < 0: input not mapped
  std::printf("%-34s %6.2f s (cpu %6.2f s)  %6.1f Mparam/s  out %6.1f MB  peak RSS %5.0f MB, RssAnon (beyond mapped input) %4.0f MB",
              label, r.seconds, r.cpu_seconds, double(params) / r.seconds / 1e6, double(output_bytes) / 1e6,
              r.maxrss_kb / 1024.0, r.peak_anon_kb / 1024.0);
  if (beyond > 0) std::printf(", ru_maxrss - input %4.0f MB", beyond);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  set_num_threads(0);
  const std::string dir = std::string(QK_BUILD_DIR) + "/bench-data";
  fs::create_directories(dir);
  const std::string model = synthetic_model(dir);
  const uint64_t input_bytes = fs::file_size(model);
  const int64_t params = parameter_count(synthetic_config());
  warm_page_cache(model);
  std::printf("synthetic Llama: %.3fB parameters, F16 GGUF %.1f MB, %d threads\n", double(params) / 1e9,
              double(input_bytes) / 1e6, a.threads);

  const std::string out = dir + "/out.gguf", log = dir + "/child.out", threads = std::to_string(a.threads);
  const std::vector<std::string> qk = {QK_CLI, "quantize", "-m", model, "-f", a.format, "-t", threads, "-o", out, "--json"};
  // llama.cpp's own recipe for the type: token_embd in the type itself, output in q6_k.
  std::vector<std::string> qk_recipe = qk;
  for (const char* extra : {"--embedding-format", a.format.c_str(), "--override", "^output\\.weight$=q6_k"})
    qk_recipe.push_back(extra);

  struct Result {
    std::string label;
    ChildRun run;
    uint64_t out_bytes;
  };
  std::vector<Result> results;
  auto run_quantkit = [&](const std::string& label, const std::vector<std::string>& cmd) {
    ChildRun r = best_of(a.reps, cmd, log);
    const double quantize_s = nlohmann::json::parse(r.out).at("seconds").get<double>();
    results.push_back({label, r, fs::file_size(out)});
    print_run(label.c_str(), r, params, input_bytes, results.back().out_bytes);
    std::printf("%-34s   of which quantize_model %.2f s, load + write %.2f s\n", "", quantize_s, r.seconds - quantize_s);
  };
  run_quantkit("quantkit " + a.format + " (q8_0 embeddings)", qk);
  run_quantkit("quantkit " + a.format + " (llama.cpp recipe)", qk_recipe);

#ifdef QK_PEER
  if (a.peer) {
    ChildRun r = best_of(a.reps, {QK_PEER, "quantize", model, out, a.format, threads}, log);
    print_run(("llama.cpp " + a.format).c_str(), r, params, input_bytes, fs::file_size(out));
    std::printf("ratio quantkit / llama.cpp time: %.2f (same recipe), %.2f (quantkit defaults); cpu time %.2f, %.2f\n",
                results[1].run.seconds / r.seconds, results[0].run.seconds / r.seconds,
                results[1].run.cpu_seconds / r.cpu_seconds, results[0].run.cpu_seconds / r.cpu_seconds);
  }
#else
  std::printf("llama.cpp peer not built (scripts/fetch-peer.sh, then reconfigure): no ratio\n");
#endif
  fs::remove(out);
  fs::remove(log);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_quantize_model: %s\n", e.what());
  return 1;
}
