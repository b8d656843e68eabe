// Scale-out (docs/distributed.md): the communicator helpers, exact Hessian shares, and whole
// quantize jobs under `mpirun -np 2` that must write the single-process bytes, refuse a memory
// limit up front, leave nothing behind when a rank is killed and resume to the same bytes.
// The mpirun tests skip with a message when the build has no MPI or mpirun is missing.
#include "quantkit/distributed.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <thread>

#include "quantkit/calibration.h"
#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/quantize.h"
#include "quantkit/synthetic_model.h"
#include "quantkit/tokenizer.h"
#include "test_util.h"

using namespace quantkit;
namespace fs = std::filesystem;

namespace {

bool mpirun_available() {
  static const bool ok = mpi_built() && std::system("mpirun --version >/dev/null 2>&1") == 0;
  return ok;
}

#define REQUIRE_MPIRUN()                                                                                  \
  if (!mpirun_available())                                                                                \
  GTEST_SKIP() << (mpi_built() ? "mpirun not found (Debian: openmpi-bin)"                                 \
                               : "quantkit built without MPI (libopenmpi-dev, cmake -DQUANTKIT_MPI=ON)")

// Loopback only, root allowed (CI runs as root), no core binding (each rank runs threads).
std::string mpirun(int np) {
  return "OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_btl_vader_single_copy_mechanism=none "
         "mpirun -np " + std::to_string(np) + " --oversubscribe --allow-run-as-root --bind-to none ";
}

qk_test::RunResult run_shell(const std::string& cmd) {
  static int counter = 0;
  static const std::string dir = qk_test::temp_dir("dist_shell");
  const std::string base = dir + "/" + std::to_string(counter++);
  const int status = std::system((cmd + " >" + base + ".out 2>" + base + ".err").c_str());
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {code, qk_test::read_file(base + ".out"), qk_test::read_file(base + ".err")};
}

// The same command alone and as 2 ranks must write the same bytes. One thread per process:
// OpenBLAS's SGEMM rounds differently with 1 and 2 threads on some layer shapes, so runs are
// compared at equal thread counts.
void expect_same_output(const std::string& args, const std::string& dir, const std::string& name) {
  const std::string one = dir + "/" + name + "-1.gguf", two = dir + "/" + name + "-2.gguf";
  const auto a = run_shell(std::string(QK_CLI) + " quantize " + args + " -t 1 -o " + one);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const auto b = run_shell(mpirun(2) + QK_CLI + " quantize " + args + " -t 1 -o " + two);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_NE(b.err.find("rank 1 of 2: peak RSS"), std::string::npos) << b.err;
  const std::string x = qk_test::read_file(one), y = qk_test::read_file(two);
  ASSERT_GT(x.size(), 0u);
  EXPECT_TRUE(x == y) << name << ": 1 rank " << x.size() << " bytes, 2 ranks " << y.size() << " bytes differ";
}

std::string aidreams_args() {
  return "-m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() + " --calib " +
         qk_test::shared("data/aidreams-calib.txt") + " --doc-separator '<|endoftext|>'";
}

// A synthetic F16 Llama with realistic widths (random weights: for byte comparisons only).
std::string synthetic_model(const std::string& name, int dim, int hidden, int layers, int heads, int kv_heads,
                            const std::string& format = "f16") {
  static const std::string dir = qk_test::temp_dir("dist_models");
  const std::string path = dir + "/" + name + ".gguf";
  if (fs::exists(path)) return path;
  SyntheticOptions o;
  o.config.dim = dim, o.config.hidden_dim = hidden, o.config.n_layers = layers;
  o.config.n_heads = heads, o.config.n_kv_heads = kv_heads, o.config.vocab_size = 512, o.config.max_seq_len = 256;
  o.format = format;
  o.seed = 9;
  write_synthetic_model(o, path);
  return path;
}

std::string synthetic_args(const std::string& model, const std::string& method) {
  return "-m " + model + " -f q4_0 --method " + method + " --calib " + qk_test::shared("data/aidreams-calib.txt") +
         " --calib-tokens 1024 --ctx 128";
}

}  // namespace

// ---- without mpirun -----------------------------------------------------------------------

TEST(Distributed, LocalCommunicatorAndHelpers) {
  auto comm = local_communicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  double d[2] = {1.5, -2};
  comm->allreduce_sum(d, 2);
  EXPECT_EQ(d[1], -2);
  const auto parts = all_gather(*comm, {1, 2, 3});
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_EQ(parts[0], (std::vector<uint8_t>{1, 2, 3}));
  EXPECT_EQ(gather_u64(*comm, 42), std::vector<uint64_t>{42});
  EXPECT_EQ(run_job(*comm, [] { return 7; }), 7);
  EXPECT_EQ(parse_memory_limit("512M", 1), uint64_t(512) << 20);
  EXPECT_EQ(parse_memory_limit("1.5GiB", 1), uint64_t(3) << 29);
  EXPECT_EQ(parse_memory_limit("4096", 1), 4096u);
  EXPECT_GT(parse_memory_limit("auto", 1), 0u);
  EXPECT_EQ(parse_memory_limit("auto", 4), parse_memory_limit("auto", 1) / 4);
  for (const char* bad : {"", "-1G", "12X", "G", "lots"}) EXPECT_THROW(parse_memory_limit(bad, 1), Error) << bad;
  EXPECT_GT(peak_rss_bytes(), 0u);
  EXPECT_EQ(format_bytes(3 << 20), "3.0 MiB");
}

// Chunks of X^T X summed in any grouping and order give the same bits (what lets ranks share
// the calibration windows), and the sum is X^T X.
TEST(Distributed, HessianSumIsExactInAnyOrder) {
  const int width = 37, n = 50;
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 3.0f);
  std::vector<std::vector<float>> chunks(5, std::vector<float>(size_t(n) * width));
  for (auto& c : chunks)
    for (float& v : c) v = g(rng);
  std::vector<double> scratch;
  HessianSum forward(width), backward(width), left(width), right(width);
  for (size_t i = 0; i < chunks.size(); ++i) {
    ASSERT_TRUE(forward.add_chunk(chunks[i].data(), n, scratch));
    ASSERT_TRUE(backward.add_chunk(chunks[chunks.size() - 1 - i].data(), n, scratch));
    ASSERT_TRUE((i < 2 ? left : right).add_chunk(chunks[i].data(), n, scratch));
  }
  right.add(left);
  const InputHessian a = forward.finish(5 * n), b = backward.finish(5 * n), c = right.finish(5 * n);
  EXPECT_EQ(a.xtx, b.xtx);
  EXPECT_EQ(a.xtx, c.xtx);
  for (int i = 0; i < width; ++i)
    for (int j = 0; j < width; ++j) {
      double direct = 0;
      for (const auto& ch : chunks)
        for (int t = 0; t < n; ++t) direct += double(ch[size_t(t * width + i)]) * ch[size_t(t * width + j)];
      ASSERT_NEAR(a.xtx[size_t(i * width + j)], direct, 1e-9 * (1 + std::fabs(direct)));
    }
  std::vector<float> bad(size_t(n) * width, 1.0f);
  bad[7] = NAN;
  EXPECT_FALSE(HessianSum(width).add_chunk(bad.data(), n, scratch));
}

// Calibrators holding shares of the windows (the ranks of a job) add up to the Hessians of one
// Calibrator holding them all, bit for bit, layer after layer and for the head.
TEST(Distributed, CalibratorSharesAddUpToTheWholeBitForBit) {
  const ModelFile file = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  Tokenizer tok(*file.vocab);
  const auto calib = tok.encode(read_text(qk_test::shared("data/aidreams-calib.txt"), "<|endoftext|>"), true);
  LlamaModel model(file);
  const CalibrationOptions opt{36, 64};
  Calibrator whole(model, calib, tok.bos(), opt);
  std::vector<std::unique_ptr<Calibrator>> shares;
  for (int s = 0; s < 3; ++s) shares.push_back(std::make_unique<Calibrator>(model, calib, tok.bos(), opt, s, 3));
  ASSERT_EQ(whole.chunk_windows(), 2);
  EXPECT_EQ(shares[0]->windows() + shares[1]->windows() + shares[2]->windows(), 36);
  const int64_t tokens = 36 * 64;
  for (int l = 0; l < file.config.n_layers; ++l) {
    const LayerHessians h = whole.capture(l);
    LayerHessianSums sum = shares[0]->capture_sums(l);
    for (int s = 1; s < 3; ++s) {
      LayerHessianSums part = shares[size_t(s)]->capture_sums(l);
      for (size_t i = 0; i < 4; ++i) sum.inputs[i].add(part.inputs[i]);
    }
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(sum.inputs[i].finish(tokens).xtx, h.inputs[i].xtx) << "layer " << l << " input " << i;
    whole.advance(l);
    for (auto& s : shares) s->advance(l);
  }
  HessianSum head = shares[0]->capture_head_sums();
  head.add(shares[1]->capture_head_sums());
  head.add(shares[2]->capture_head_sums());
  EXPECT_EQ(head.finish(tokens).xtx, whole.capture_head().xtx);
}

// A checkpoint folder: a finished job rerun resumes every stage and gives the same tensors;
// another job (other options) is refused with both descriptions.
TEST(Distributed, ResumeFolderBelongsToOneJob) {
  const ModelFile in = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  const std::string dir = qk_test::temp_dir("dist_resume_lib") + "/ckpt";
  QuantizeOptions o;
  o.format = "q4_0";
  const QuantizeResult plain = quantize_model(in, o, nullptr, 1);
  o.resume_dir = dir;
  const QuantizeResult first = quantize_model(in, o, nullptr, 1), again = quantize_model(in, o, nullptr, 1);
  EXPECT_EQ(first.resumed_stages, 0);
  EXPECT_EQ(again.resumed_stages, again.stages);
  ASSERT_EQ(again.model.tensors.size(), plain.model.tensors.size());
  for (size_t i = 0; i < plain.model.tensors.size(); ++i) {
    const TensorView &a = plain.model.tensors[i], &b = again.model.tensors[i];
    ASSERT_EQ(a.name, b.name);
    EXPECT_EQ(a.type, b.type) << a.name;
    EXPECT_EQ(a.format, b.format) << a.name;
    ASSERT_EQ(a.nbytes, b.nbytes) << a.name;
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << a.name;
  }
  o.format = "q8_0";
  try {
    quantize_model(in, o, nullptr, 1);
    ADD_FAILURE() << "a checkpoint of another job was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint of another job"), std::string::npos) << e.what();
  }
}

// ---- mpirun -np 2 -------------------------------------------------------------------------

// The MPI communicator's collectives, run by Distributed.MpiCollectives as
// `mpirun -np 2 quantkit_tests --gtest_filter=DistributedWorld.*` (skipped otherwise).
TEST(DistributedWorld, Collectives) {
  if (!std::getenv("QK_DIST_WORLD")) GTEST_SKIP() << "runs under mpirun from Distributed.MpiCollectives";
  const std::unique_ptr<Communicator> comm = world_communicator();
  ASSERT_EQ(comm->size(), 2);
  const int r = comm->rank();
  EXPECT_EQ(comm->local_size(), 2);
  double d[3] = {r ? -1e16 : 0.1, r ? 0.0 : 1e16, double(r + 1)};
  comm->allreduce_sum(d, 3);
  EXPECT_EQ(d[0], 0.1 + -1e16);
  EXPECT_EQ(d[1], 1e16);
  EXPECT_EQ(d[2], 3.0);
  std::vector<ExactSum> e = {ExactSum(r + 1) << 100, ExactSum(0) - ExactSum(r + 5)};
  comm->reduce_sum(e.data(), e.size(), 1);
  if (r == 1) {
    EXPECT_TRUE(e[0] == ExactSum(3) << 100);
    EXPECT_TRUE(e[1] == ExactSum(0) - ExactSum(11));
  }
  std::vector<uint8_t> b = r == 1 ? std::vector<uint8_t>{9, 8, 7} : std::vector<uint8_t>{};
  comm->broadcast(b, 1);
  EXPECT_EQ(b, (std::vector<uint8_t>{9, 8, 7}));
  const auto parts = comm->gather(std::vector<uint8_t>(size_t(r + 1), uint8_t(r)), 0);
  if (r == 0) {
    EXPECT_EQ(parts, (std::vector<std::vector<uint8_t>>{{0}, {1, 1}}));
  }
  EXPECT_EQ(all_gather(*comm, {uint8_t(r)}), (std::vector<std::vector<uint8_t>>{{0}, {1}}));
  const auto u = gather_u64(*comm, uint64_t(r) << 40);
  if (r == 0) {
    EXPECT_EQ(u, (std::vector<uint64_t>{0, uint64_t(1) << 40}));
  }
  comm->barrier();
}

TEST(Distributed, MpiCollectives) {
  REQUIRE_MPIRUN();
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  const auto r = run_shell("QK_DIST_WORLD=1 " + mpirun(2) + self +
                           " --gtest_color=no --gtest_filter=DistributedWorld.Collectives");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  int passed = 0;
  for (size_t at = 0; (at = r.out.find("[  PASSED  ] 1 test", at)) != std::string::npos; ++at) ++passed;
  EXPECT_EQ(passed, 2) << r.out;
}

TEST(Distributed, TwoRanksWriteTheSingleProcessBytesOnAidreams) {
  REQUIRE_MPIRUN();
  const std::string dir = qk_test::temp_dir("dist_aidreams");
  for (const std::string method : {"rtn", "weighted", "gptq"})
    expect_same_output(aidreams_args() + " -f q4_0 --method " + method, dir, method);
}

// --shards under mpirun: the ranks write the shards (rank 1 the second of each split), and the
// files are the single process's, with no temporary left behind.
TEST(Distributed, TwoRanksWriteTheSingleProcessShards) {
  REQUIRE_MPIRUN();
  const std::string dir = qk_test::temp_dir("dist_shards"), args = aidreams_args() + " -f q4_0 --method rtn -t 1";
  for (const char* sub : {"one", "two"}) fs::create_directories(dir + "/" + sub + "-hf");  // quantize spills there
  for (const auto& [out, shards] : {std::pair{"one.gguf", "2"}, std::pair{"one-hf/", "3"}}) {
    const auto r = run_shell(std::string(QK_CLI) + " quantize " + args + " --shards " + shards + " -o " + dir + "/" + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  for (const auto& [out, shards] : {std::pair{"two.gguf", "ranks"}, std::pair{"two-hf/", "3"}}) {
    const auto r = run_shell(mpirun(2) + QK_CLI + " quantize " + args + " --shards " + shards + " -o " + dir + "/" + out);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::vector<std::string> names;
  for (const auto& e : fs::recursive_directory_iterator(dir)) names.push_back(fs::relative(e.path(), dir).string());
  std::sort(names.begin(), names.end());
  const std::vector<std::string> hf = {"config.json", "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                       "model-00003-of-00003.safetensors", "model.safetensors.index.json",
                                       "quantkit_vocab.json"};
  std::vector<std::string> expected;
  for (const char* run : {"one", "two"}) {
    expected.push_back(std::string(run) + "-00001-of-00002.gguf");
    expected.push_back(std::string(run) + "-00002-of-00002.gguf");
    expected.push_back(std::string(run) + "-hf");
    for (const std::string& f : hf) expected.push_back(std::string(run) + "-hf/" + f);
  }
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(names, expected);
  for (const std::string& f : expected) {
    if (!f.starts_with("one") || fs::is_directory(dir + "/" + f)) continue;
    const std::string a = qk_test::read_file(dir + "/" + f), b = qk_test::read_file(dir + "/two" + f.substr(3));
    EXPECT_GT(a.size(), 0u) << f;
    EXPECT_TRUE(a == b) << f << ": 1 rank " << a.size() << " bytes, 2 ranks " << b.size() << " bytes differ";
  }
}

// Realistic widths: 8 layers of 1024 / 2816 (4 KV heads) with rtn; the calibrated path (the
// Hessians of 1024- and 2816-wide inputs crossing between ranks) on one such layer, weighted:
// GPTQ and 8 calibrated layers take minutes with one thread per rank (bench_distributed runs them).
TEST(Distributed, TwoRanksWriteTheSingleProcessBytesOnASyntheticModel) {
  REQUIRE_MPIRUN();
  const std::string dir = qk_test::temp_dir("dist_synthetic");
  expect_same_output(synthetic_args(synthetic_model("s1024x8", 1024, 2816, 8, 16, 4), "rtn"), dir, "rtn");
  expect_same_output(synthetic_args(synthetic_model("s1024x1", 1024, 2816, 1, 16, 4), "weighted"), dir, "weighted");
}

// ---- memory limit, killed rank, resume ----------------------------------------------------

namespace {

// A deep, narrow model (32 layers of 64 / 176, f32) calibrated on many windows: the hidden
// states of the windows weigh in a rank's memory, and more ranks divide them.
constexpr int kNarrowLayers = 32;
std::string narrow_args() {
  return "-m " + synthetic_model("narrow", 64, 176, kNarrowLayers, 4, 4, "f32") + " -f q4_0 --method weighted --calib " +
         qk_test::shared("data/aidreams-calib.txt") + " --calib-tokens 4096 --ctx 128";
}

// The single-process output of narrow_args (one thread), computed once.
const std::string& narrow_reference() {
  static const std::string bytes = [] {
    const std::string out = qk_test::temp_dir("dist_narrow_ref") + "/ref.gguf";
    const auto r = run_shell(std::string(QK_CLI) + " quantize " + narrow_args() + " -t 1 -o " + out);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return qk_test::read_file(out);
  }();
  return bytes;
}

// The "N bytes" after `label` in an error message.
uint64_t bytes_after(const std::string& text, const std::string& label) {
  const std::regex re(label + "[^(]*\\((\\d+) bytes");
  std::smatch m;
  if (!std::regex_search(text, m, re)) return 0;
  return std::stoull(m[1].str());
}

// Starts `cmd` under sh in a process group of its own.
pid_t spawn(const std::string& cmd) {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  return pid;
}

// A process whose environment holds every entry of `vars` (0: none).
pid_t find_process(const std::vector<std::string>& vars) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string env = qk_test::read_file(e.path().string() + "/environ");
    std::vector<std::string> entries;
    for (size_t at = 0; at < env.size();) {
      const size_t end = env.find('\0', at);
      entries.push_back(env.substr(at, end == std::string::npos ? std::string::npos : end - at));
      at = end == std::string::npos ? env.size() : end + 1;
    }
    bool all = true;
    for (const auto& v : vars) all = all && std::find(entries.begin(), entries.end(), v) != entries.end();
    if (all) return pid_t(std::stoi(name));
  }
  return 0;
}

int completed_stages(const std::string& dir) {
  const std::string text = qk_test::read_file(dir + "/manifest.json");
  const std::regex re("\"completed\":\\s*(\\d+)");
  std::smatch m;
  return std::regex_search(text, m, re) ? std::stoi(m[1].str()) : -1;
}

// waitpid with a deadline; -1 when the process is still running after `seconds`.
int wait_exit(pid_t pid, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < end) {
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

}  // namespace

// A limit below the whole model but above one layer: one process refuses up front with the
// numbers (nothing written), two ranks (each holding half of the calibration windows) fit.
TEST(Distributed, MaxMemoryTwoRanksFitWhereOneRefuses) {
  REQUIRE_MPIRUN();
  const std::string dir = qk_test::temp_dir("dist_memory");
  const std::string one = std::string(QK_CLI) + " quantize " + narrow_args() + " -t 1", two = mpirun(2) + one;
  // The estimates, from the refusals of an absurd limit.
  const auto probe1 = run_shell(one + " --max-memory 1K -o " + dir + "/p.gguf");
  const auto probe2 = run_shell(two + " --max-memory 1K -o " + dir + "/p.gguf");
  const uint64_t need1 = bytes_after(probe1.err, "would need an estimated"),
                 need2 = bytes_after(probe2.err, "would need an estimated"),
                 model = bytes_after(probe1.err, "the model's tensors take");
  ASSERT_GT(need1, 0u) << probe1.err;
  ASSERT_GT(need2, 0u) << probe2.err;
  ASSERT_LT(need2, need1) << probe2.err;
  const uint64_t limit = (need1 + need2) / 2, layer = model / kNarrowLayers;
  EXPECT_LT(limit, model) << "the limit must be below the whole model";
  EXPECT_GT(limit, layer) << "the limit must be above one layer";

  const auto refused = run_shell(one + " --max-memory " + std::to_string(limit) + " -o " + dir + "/one.gguf");
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_EQ(qk_test::count_lines(refused.err), 1) << refused.err;
  EXPECT_NE(refused.err.find("--max-memory"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("rank 0 of 1 would need an estimated"), std::string::npos) << refused.err;
  EXPECT_FALSE(fs::exists(dir + "/one.gguf"));

  const auto fits = run_shell(two + " --max-memory " + std::to_string(limit) + " -o " + dir + "/two.gguf");
  ASSERT_EQ(fits.exit_code, 0) << fits.err;
  EXPECT_TRUE(qk_test::read_file(dir + "/two.gguf") == narrow_reference());
}

// Killing one rank midway ends the job with no output file (nor a temporary one); the same
// command with --resume continues from the last finished layer to the single-process bytes.
TEST(Distributed, KilledRankLeavesNoOutputAndResumeFinishesTheSameBytes) {
  REQUIRE_MPIRUN();
  const std::string dir = qk_test::temp_dir("dist_kill"), ckpt = dir + "/ckpt", out = dir + "/out/m.gguf";
  fs::create_directories(dir + "/out");
  const std::string tag = "QK_DIST_TEST_TAG=" + std::to_string(getpid());
  const std::string cmd = mpirun(2) + QK_CLI + " quantize " + narrow_args() + " -t 1 --resume " + ckpt + " -o " + out;
  const pid_t job = spawn("exec env " + tag + " " + cmd + " >" + dir + "/killed.log 2>&1");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  int status = -1;
  while (completed_stages(ckpt) < 3 && (status = wait_exit(job, 0.01)) == -1 && std::chrono::steady_clock::now() < deadline) {
  }
  ASSERT_EQ(status, -1) << "the job ended before a rank could be killed: " << qk_test::read_file(dir + "/killed.log");
  const pid_t rank1 = find_process({tag, "OMPI_COMM_WORLD_RANK=1"});
  ASSERT_GT(rank1, 0);
  ASSERT_EQ(kill(rank1, SIGKILL), 0);
  status = wait_exit(job, 120);
  if (status == -1) kill(-job, SIGKILL), waitpid(job, nullptr, 0);
  ASSERT_NE(status, -1) << "mpirun did not end after a rank was killed";
  EXPECT_NE(status, 0);
  EXPECT_FALSE(qk_test::read_file(dir + "/killed.log").empty());
  EXPECT_TRUE(fs::is_empty(dir + "/out")) << "partial output left behind";
  const int done = completed_stages(ckpt);
  EXPECT_GE(done, 3);
  EXPECT_LT(done, kNarrowLayers + 2);

  const auto resumed = run_shell(cmd);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resumed from"), std::string::npos) << resumed.err;
  EXPECT_TRUE(qk_test::read_file(out) == narrow_reference()) << "resumed output differs from the single-process one";
}
