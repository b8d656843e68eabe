// Wall time of `quantkit quantize` alone and as N MPI ranks (mpirun -np N) on a synthetic
// Llama with realistic widths (default 8 layers of dim 1024 / hidden 2816, 4 KV heads), for
// rtn and gptq, with the per-rank peak RSS the job reports and a check that every run wrote
// the single-process bytes, and each rank's CPU time (the work it did, whatever else shares the
// machine). docs/distributed.md explains the numbers.
//
//   bench_distributed [--layers N] [--dim D] [--hidden H] [--ranks 1,2] [--methods rtn,gptq]
//                     [--calib-tokens N] [--format SPEC] [--threads PER_RANK]
//
// The model and a calibration text (random lowercase words, which the synthetic vocabulary
// splits into pieces) are cached in <build>/bench-data/. Threads per rank: cores / ranks (every
// run uses the whole machine), or --threads (e.g. 1: N ranks use N times the cores of 1 rank).
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "quantkit/distributed.h"
#include "quantkit/error.h"
#include "quantkit/synthetic_model.h"

using namespace quantkit;
namespace fs = std::filesystem;

namespace {

struct Args {
  int layers = 8, dim = 1024, hidden = 2816, calib_tokens = 2048;
  int threads = 0;  // per rank; 0: cores / ranks
  std::vector<int> ranks = {1, 2};
  std::vector<std::string> methods = {"rtn", "gptq"};
  std::string format = "q4_0";
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&] {
      if (i + 1 >= argc) fail("{} needs a value", k);
      return std::string(argv[++i]);
    };
    if (k == "--layers") a.layers = std::stoi(value());
    else if (k == "--dim") a.dim = std::stoi(value());
    else if (k == "--hidden") a.hidden = std::stoi(value());
    else if (k == "--calib-tokens") a.calib_tokens = std::stoi(value());
    else if (k == "--format") a.format = value();
    else if (k == "--threads") a.threads = std::stoi(value());
    else if (k == "--methods") a.methods = split(value());
    else if (k == "--ranks") {
      a.ranks.clear();
      for (const auto& r : split(value())) a.ranks.push_back(std::stoi(r));
    } else
      fail("usage: bench_distributed [--layers N] [--dim D] [--hidden H] [--ranks 1,2] [--methods rtn,gptq] "
           "[--calib-tokens N] [--format SPEC] [--threads PER_RANK]");
  }
  return a;
}

std::string cached_model(const Args& a, const std::string& dir) {
  const std::string path = fmt::format("{}/dist-{}x{}x{}.gguf", dir, a.layers, a.dim, a.hidden);
  if (fs::exists(path)) return path;
  SyntheticOptions o;
  o.config.dim = a.dim, o.config.hidden_dim = a.hidden, o.config.n_layers = a.layers;
  o.config.n_heads = a.dim / 64, o.config.n_kv_heads = std::max(1, a.dim / 256);
  o.config.vocab_size = 4096, o.config.max_seq_len = 512;
  std::fprintf(stderr, "generating %s ...\n", path.c_str());
  write_synthetic_model(o, path);
  return path;
}

std::string cached_text(const std::string& dir) {
  const std::string path = dir + "/dist-calib.txt";
  if (fs::exists(path)) return path;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> letter('a', 'z'), len(2, 9);
  std::ofstream out(path);
  for (int w = 0; w < 200000; ++w) {
    for (int i = len(rng); i > 0; --i) out << char(letter(rng));
    out << (w % 16 == 15 ? '\n' : ' ');
  }
  return path;
}

struct Run {
  double wall = 0, quantize = 0;
  std::vector<uint64_t> rss;
  std::vector<double> cpu;  // per rank, user + system
};

Run run(const std::string& cmd, const std::string& json_file) {
  const auto t0 = std::chrono::steady_clock::now();
  const int status = std::system((cmd + " --json >" + json_file + " 2>/dev/null").c_str());
  Run r;
  r.wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("failed: {}", cmd);
  std::ifstream in(json_file);
  const nlohmann::json j = nlohmann::json::parse(in);
  r.quantize = j.at("seconds");
  for (const auto& k : j.at("ranks")) r.rss.push_back(k.at("peak_rss_bytes")), r.cpu.push_back(k.at("cpu_seconds"));
  return r;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse_args(argc, argv);
  const fs::path build = fs::canonical(fs::path(argv[0])).parent_path().parent_path();
  const std::string cli = (build / "quantkit").string(), dir = (build / "bench-data").string();
  fs::create_directories(dir);
  const std::string model = cached_model(a, dir), text = cached_text(dir);
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  const bool mpi = mpi_built() && std::system("mpirun --version >/dev/null 2>&1") == 0;
  std::printf("synthetic Llama %d layers, dim %d, hidden %d (%.1f MB F16); %d cores; format %s; %d calibration tokens\n",
              a.layers, a.dim, a.hidden, double(fs::file_size(model)) / 1e6, cores, a.format.c_str(), a.calib_tokens);
  std::printf("%-8s %5s %8s %10s %8s %14s  %s\n", "method", "ranks", "wall s", "quantize s", "speedup",
              "cpu s per rank", "peak RSS per rank");
  for (const std::string& method : a.methods) {
    double base = 0;
    std::string reference;
    for (int np : a.ranks) {
      if (np > 1 && !mpi) {
        std::printf("%-8s %5d  (skipped: no MPI build or no mpirun)\n", method.c_str(), np);
        continue;
      }
      const std::string out = fmt::format("{}/dist-out-{}.gguf", dir, np);
      std::string cmd = fmt::format("{} quantize -m {} -f {} --method {} -t {} -o {}", cli, model, a.format, method,
                                    a.threads ? a.threads : std::max(1, cores / np), out);
      if (method != "rtn") cmd += fmt::format(" --calib {} --calib-tokens {} --ctx 256", text, a.calib_tokens);
      if (np > 1) cmd = fmt::format("mpirun -np {} --oversubscribe --allow-run-as-root --bind-to none {}", np, cmd);
      const Run r = run(cmd, dir + "/dist-out.json");
      if (base == 0) base = r.wall;
      const std::string bytes = read_all(out);
      if (reference.empty()) reference = bytes;
      std::string rss, cpu;
      for (uint64_t b : r.rss) rss += (rss.empty() ? "" : ", ") + format_bytes(b);
      for (double c : r.cpu) cpu += fmt::format("{}{:.1f}", cpu.empty() ? "" : ", ", c);
      std::printf("%-8s %5d %8.2f %10.2f %7.2fx %14s  %s%s\n", method.c_str(), np, r.wall, r.quantize, base / r.wall,
                  cpu.c_str(), rss.c_str(), bytes == reference ? "" : "  output differs from 1 rank (other thread count)");
      fs::remove(out);
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_distributed: %s\n", e.what());
  return 1;
}
