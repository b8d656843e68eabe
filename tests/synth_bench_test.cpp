// quantkit synth / bench on a tiny synthetic Llama (dim 64, 2 layers, vocab 256): the file
// has the requested shapes and storage, loads, runs, and bench reports positive numbers
// under the documented JSON keys; llama.cpp (the prebuilt peer, when fetched) loads it,
// tokenizes like quantkit and computes the same logits.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "quantkit/error.h"
#include "quantkit/llama.h"
#include "quantkit/stream_bandwidth.h"
#include "quantkit/synthetic_model.h"
#include "quantkit/thread_pool.h"
#include "quantkit/tokenizer.h"
#include "model_test_util.h"
#include "test_util.h"

namespace {

using namespace quantkit;

const std::string kTinyShape = "--dim 64 --layers 2 --heads 4 --kv-heads 2 --hidden 128 --vocab 256 --ctx 64";

const std::string& dir() {
  static const std::string d = qk_test::temp_dir("synth_bench");
  return d;
}

// `quantkit synth` of the tiny shape in `format`, once per format.
std::string tiny_model(const std::string& format) {
  static std::map<std::string, std::string> made;
  auto it = made.find(format);
  if (it != made.end()) return it->second;
  const std::string path = dir() + "/tiny-" + format + ".gguf";
  const auto r = qk_test::run_cli("synth " + kTinyShape + " --format " + format + " --seed 3 -o " + path + " --json");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["note"], kSyntheticNote);
  EXPECT_EQ(j["format"], format);
  EXPECT_EQ(j["bytes"].get<uint64_t>(), std::filesystem::file_size(path));
  return made[format] = path;
}

SyntheticOptions tiny_options(const std::string& format) {
  SyntheticOptions o;
  o.config.dim = 64, o.config.n_layers = 2, o.config.n_heads = 4, o.config.n_kv_heads = 2, o.config.hidden_dim = 128;
  o.config.vocab_size = 256, o.config.max_seq_len = 64;
  o.format = format;
  return o;
}

TEST(Synth, TinyModelHasRequestedShapesAndStorageAndRuns) {
  const ModelFile f = load_model(tiny_model("q8_0"));
  const LlamaConfig& c = f.config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.hidden_dim, 128);
  EXPECT_EQ(c.vocab_size, 256);
  EXPECT_EQ(c.max_seq_len, 64);
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_EQ(f.get("blk.1.ffn_down.weight").type, DType::Q8_0);
  EXPECT_EQ(f.get("blk.1.ffn_down.weight").shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(f.get("blk.0.attn_k.weight").shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(f.get("token_embd.weight").type, DType::Q8_0);
  EXPECT_EQ(f.get("output_norm.weight").type, DType::F32);

  ASSERT_TRUE(f.vocab.has_value());
  const Tokenizer tok(*f.vocab);
  const std::vector<int> ids = tok.encode("the quick brown fox", true);
  EXPECT_LT(ids.size(), 1 + 19u);  // BOS + fewer pieces than the 19 characters: pairs were merged
  EXPECT_EQ(tok.decode(ids), "the quick brown fox");

  const std::vector<float> logits = qk_test::logits_of(f, ids);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
}

TEST(Synth, PackedFormatAndEmbeddingFormat) {
  SyntheticOptions o = tiny_options("int4:g32");
  o.embedding_format = "q4_0";
  const ModelFile m = make_synthetic_model(o);
  EXPECT_EQ(m.get("blk.0.attn_q.weight").type, DType::QK);
  EXPECT_EQ(m.get("blk.0.attn_q.weight").format, "int4:g32");
  EXPECT_EQ(m.get("output.weight").type, DType::Q4_0);
  const LlamaModel model(m);
  EXPECT_GT(model.weight_bytes(), 0u);
  EXPECT_THROW(make_synthetic_model(tiny_options("int4:g0")), Error);
}

TEST(Synth, SameBytesForAnyThreadCountAndSeedMatters) {
  const SyntheticOptions o = tiny_options("f16");
  set_num_threads(1);
  const ModelFile a = make_synthetic_model(o);
  set_num_threads(2);
  const ModelFile b = make_synthetic_model(o);
  SyntheticOptions o2 = o;
  o2.seed = 1;
  const ModelFile c = make_synthetic_model(o2);
  set_num_threads(0);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    ASSERT_EQ(a.tensors[i].nbytes, b.tensors[i].nbytes);
    EXPECT_EQ(std::memcmp(a.tensors[i].data, b.tensors[i].data, a.tensors[i].nbytes), 0) << a.tensors[i].name;
  }
  const TensorView& q = a.get("blk.0.attn_q.weight");
  EXPECT_NE(std::memcmp(q.data, c.get("blk.0.attn_q.weight").data, q.nbytes), 0);
}

TEST(Synth, GaussianHasTheRequestedScale) {
  std::vector<float> x(1 << 20);
  fill_gaussian(5, 9, 0.02f, x.data(), int64_t(x.size()));
  double s = 0, s2 = 0;
  for (float v : x) s += v, s2 += double(v) * v;
  const double mean = s / double(x.size()), sd = std::sqrt(s2 / double(x.size()) - mean * mean);
  EXPECT_NEAR(mean, 0.0, 1e-4);
  EXPECT_NEAR(sd, 0.02, 0.0002);
}

TEST(Synth, RejectsBadInput) {
  auto r = qk_test::run_cli("synth --dim 64 --layers 1 --heads 5 --kv-heads 1 --hidden 128 --vocab 256 -o " + dir() + "/bad.gguf");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("n_heads"), std::string::npos) << r.err;
  r = qk_test::run_cli("synth " + kTinyShape + " --format q9_9 -o " + dir() + "/bad.gguf");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(qk_test::count_lines(r.err), 1) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir() + "/bad.gguf"));
}

TEST(StreamBandwidth, SmallArraysGivePositiveRates) {
  StreamOptions o;
  o.array_bytes = size_t(4) << 20;
  o.passes = 2;
  const StreamBandwidth b = measure_stream_bandwidth(o);
  EXPECT_GT(b.copy_gbs, 0);
  EXPECT_GT(b.triad_gbs, 0);
  EXPECT_GT(b.read_gbs, 0);
  EXPECT_EQ(b.reference_gbs(), b.read_gbs);
  EXPECT_GE(default_stream_array_bytes(), size_t(64) << 20);
  o.passes = 0;
  EXPECT_THROW(measure_stream_bandwidth(o), Error);
}

// bench on the tiny model: the file as it is, then quantized in memory, with a quantized KV cache.
TEST(Bench, JsonHasPositiveNumbersUnderTheDocumentedKeys) {
  const std::string model = tiny_model("f16");
  const std::string common = "bench --model " + model + " --prompt 16 --gen 8 --reps 2 --threads 2 --stream-mb 8 --stream-passes 2 --json";
  for (const std::string extra : {"", " --format q4_0 --kv int8,int8"}) {
    const auto r = qk_test::run_cli(common + extra);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    for (const char* k : {"weight_bytes", "bytes_per_token", "effective_bandwidth_gbs", "bandwidth_ratio", "bandwidth_ratio_triad"})
      EXPECT_GT(j[k].get<double>(), 0) << k << extra;
    for (const char* k : {"pp", "tg"}) {
      EXPECT_GT(j[k]["tokens_per_second"].get<double>(), 0) << k << extra;
      EXPECT_EQ(j[k]["samples"].size(), 2u) << k << extra;
    }
    for (const char* k : {"copy_gbs", "triad_gbs", "read_gbs", "reference_gbs"})
      EXPECT_GT(j["machine_bandwidth"][k].get<double>(), 0) << k << extra;
    EXPECT_EQ(j["machine_bandwidth"]["array_bytes"].get<size_t>(), size_t(8) << 20);
    EXPECT_EQ(j["threads"], 2);
    EXPECT_EQ(j["prompt"], 16);
    EXPECT_EQ(j["gen"], 8);
    if (extra.empty()) {
      EXPECT_EQ(j["format"], "f16");
      EXPECT_FALSE(j["quantized_in_memory"].get<bool>());
      EXPECT_EQ(j["kv"], "f32,f32");
    } else {
      EXPECT_EQ(j["format"], "q4_0");
      EXPECT_TRUE(j["quantized_in_memory"].get<bool>());
      EXPECT_NE(j["kv"].get<std::string>().find("int8"), std::string::npos);
    }
  }
  // Already in the format: no second quantization.
  const auto r = qk_test::run_cli("bench --model " + tiny_model("q8_0") + " --format q8_0 --prompt 4 --gen 2 --reps 1 --stream-mb 4 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(nlohmann::json::parse(r.out)["quantized_in_memory"].get<bool>());
}

TEST(Bench, HumanTableAndErrors) {
  const std::string model = tiny_model("f16");
  auto r = qk_test::run_cli("bench --model " + model + " --prompt 8 --gen 4 --reps 1 --stream-mb 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* k : {"pp8", "tg4 @ 8", "GB/s", "of the read bandwidth"})
    EXPECT_NE(r.out.find(k), std::string::npos) << k << "\n" << r.out;
  r = qk_test::run_cli("bench --model " + model + " --prompt 60 --gen 8 --stream-mb 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("context of 64"), std::string::npos) << r.err;
  EXPECT_EQ(qk_test::count_lines(r.err), 1) << r.err;
}

#ifdef QK_PEER
std::string run_peer(const std::string& args, int* code) {
  const std::string out = dir() + "/peer.out";
  const int status = std::system((std::string(QK_PEER) + " " + args + " >" + out + " 2>" + out + ".err").c_str());
  *code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  return qk_test::read_file(out) + (*code ? qk_test::read_file(out + ".err") : "");
}
#endif

// llama.cpp loads a synth GGUF: its tokenizer agrees with quantkit's on lowercase text and
// its logits match on the F32 file (both compute in float32; only summation order differs).
TEST(Synth, LlamaCppLoadsTokenizesAndRunsIt) {
#ifndef QK_PEER
  GTEST_SKIP() << "llama.cpp peer not available (scripts/fetch-peer.sh, then re-run cmake)";
#else
  const std::string model = tiny_model("f32");
  const std::string text = "the quick brown fox jumps over the lazy dog";
  const std::string text_file = dir() + "/text.txt";
  std::ofstream(text_file) << text;
  int code = 0;
  const std::string csv = run_peer("tokenize " + model + " " + text_file, &code);
  ASSERT_EQ(code, 0) << csv;
  const ModelFile f = load_model(model);
  const std::vector<int> ids = Tokenizer(*f.vocab).encode(text, true);
  std::string ours;
  for (size_t i = 0; i < ids.size(); ++i) ours += (i ? "," : "") + std::to_string(ids[i]);
  EXPECT_EQ(csv, ours + "\n");

  const std::string logits_file = dir() + "/logits.bin";
  const std::string out = run_peer("logits " + model + " " + ours + " " + logits_file, &code);
  ASSERT_EQ(code, 0) << out;
  const std::vector<float> mine = qk_test::logits_of(f, ids);
  const std::string theirs = qk_test::read_file(logits_file);
  ASSERT_EQ(theirs.size(), mine.size() * sizeof(float));
  float max_diff = 0;
  for (size_t i = 0; i < mine.size(); ++i) {
    float x;
    std::memcpy(&x, theirs.data() + i * sizeof(float), sizeof x);
    max_diff = std::max(max_diff, std::fabs(x - mine[i]));
  }
  EXPECT_LT(max_diff, 1e-4f);
#endif
}

}  // namespace
