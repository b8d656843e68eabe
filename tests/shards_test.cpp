// `quantize --shards N` (src/io/shards.h): a GGUF split as llama.cpp's gguf-split writes it
// and safetensors shards + index as Hugging Face writes them. The shards hold exactly the
// single file's tensors in its order, load in quantkit (from any shard) and in llama.cpp, and
// a broken split is a one-line error naming the file. The mpirun variant is in
// tests/distributed_test.cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "io/shards.h"
#include "quantkit/error.h"
#include "quantkit/model_file.h"
#include "test_util.h"

using namespace quantkit;
namespace fs = std::filesystem;

namespace {

std::string quantize_args() {
  return "quantize -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() + " -f q4_0 --method rtn -t 1";
}

// The single file and a 3-shard split of aidreams260K in q4_0, written once.
struct Outputs {
  std::string dir = qk_test::temp_dir("shards");
  std::string single = dir + "/single.gguf", split = dir + "/split.gguf";
  std::string error;
  Outputs() {
    for (const auto& [out, extra] : {std::pair{single, ""}, std::pair{split, " --shards 3"}}) {
      const auto r = qk_test::run_cli(quantize_args() + " -o " + out + extra);
      if (r.exit_code != 0) error += r.err;
    }
  }
  std::string shard(int k) const { return dir + "/split-0000" + std::to_string(k) + "-of-00003.gguf"; }
};

const Outputs& outputs() {
  static const Outputs o;
  return o;
}

// Same tensors (names, types, shapes, formats, bytes) in the same order.
void expect_same_tensors(const ModelFile& a, const ModelFile& b) {
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    const TensorView &x = a.tensors[i], &y = b.tensors[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.type, y.type) << x.name;
    EXPECT_EQ(x.shape, y.shape) << x.name;
    EXPECT_EQ(x.format, y.format) << x.name;
    ASSERT_EQ(x.nbytes, y.nbytes) << x.name;
    EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << x.name;
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

double eval_ppl(const std::string& model) {
  const auto r = qk_test::run_cli("eval -m " + model + " --text " + qk_test::shared("data/aidreams-eval.txt") +
                                  " --ctx 128 --max-tokens 8192 -t 1 --json");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out)["perplexity"]["llama.cpp"]["perplexity"].get<double>();
}

}  // namespace

TEST(Shards, PlanIsContiguousNonEmptyAndBalancedByBytes) {
  EXPECT_EQ(plan_shards({10, 10, 10, 10}, 2, "x"), (std::vector<int>{0, 0, 1, 1}));
  EXPECT_EQ(plan_shards({10, 10, 10, 10}, 4, "x"), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(plan_shards({30, 10, 10, 10}, 2, "x"), (std::vector<int>{0, 1, 1, 1}));
  EXPECT_EQ(plan_shards({100, 1, 1, 1}, 3, "x"), (std::vector<int>{0, 1, 2, 2}));  // no shard left empty
  EXPECT_EQ(plan_shards({1, 1, 1, 100}, 3, "x"), (std::vector<int>{0, 0, 1, 2}));
  EXPECT_EQ(plan_shards({0, 0, 0}, 2, "x"), (std::vector<int>{0, 0, 1}));
  EXPECT_EQ(plan_shards({5, 5}, 1, "x"), (std::vector<int>{0, 0}));
  const std::string e = error_of([] { plan_shards({1, 2}, 3, "m.gguf"); });
  EXPECT_NE(e.find("m.gguf: 3 shards for 2 tensors"), std::string::npos) << e;
  EXPECT_EQ(shard_path("d/out.gguf", 1, 3), "d/out-00002-of-00003.gguf");
  EXPECT_EQ(shard_path("out.qk", 0, 12), "out-00001-of-00012.qk");
}

TEST(Shards, GgufSplitHoldsTheSingleFileAndLoadsFromAnyShard) {
  const Outputs& o = outputs();
  ASSERT_TRUE(o.error.empty()) << o.error;
  EXPECT_FALSE(fs::exists(o.split));
  const ModelFile single = load_model(o.single);
  size_t tensors = 0;
  for (int k = 1; k <= 3; ++k) {
    ASSERT_TRUE(fs::exists(o.shard(k))) << o.shard(k);
    const GgufReader r(o.shard(k));
    EXPECT_EQ(r.get(kGgufSplitNo).type(), GgufType::U16);
    EXPECT_EQ(r.get(kGgufSplitNo).as_int(), k - 1);
    EXPECT_EQ(r.get(kGgufSplitCount).type(), GgufType::U16);
    EXPECT_EQ(r.get(kGgufSplitCount).as_int(), 3);
    EXPECT_EQ(r.get(kGgufSplitTensors).type(), GgufType::I32);
    EXPECT_EQ(r.get(kGgufSplitTensors).as_int(), int64_t(single.tensors.size()));
    // The model's metadata in the first shard only, as gguf-split writes it.
    EXPECT_EQ(r.find("general.architecture") != nullptr, k == 1) << k;
    if (k > 1) {
      EXPECT_EQ(r.metadata().size(), 3u) << k;  // the split keys alone
    }
    EXPECT_GT(r.tensors().size(), 0u);
    tensors += r.tensors().size();
  }
  EXPECT_EQ(tensors, single.tensors.size());
  for (int k : {1, 3}) expect_same_tensors(single, load_model(o.shard(k)));
  EXPECT_EQ(eval_ppl(o.shard(1)), eval_ppl(o.single));
}

TEST(Shards, LlamaCppLoadsTheSplit) {
#ifndef QK_PEER
  GTEST_SKIP() << "llama.cpp peer not available (no .peer/ok at configure time)";
#else
  const Outputs& o = outputs();
  ASSERT_TRUE(o.error.empty()) << o.error;
  auto peer_ppl = [&](const std::string& model) {
    const std::string out = o.dir + "/peer.out";
    const std::string cmd = std::string(QK_PEER) + " perplexity " + model + " " +
                            qk_test::shared("data/aidreams-eval.txt") + " 128 >" + out + " 2>" + out + ".err";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << qk_test::read_file(out + ".err");
    double ppl = 0;
    long scored = 0;
    EXPECT_EQ(std::sscanf(qk_test::read_file(out).c_str(), "ppl %lf %ld", &ppl, &scored), 2);
    return ppl;
  };
  const double split = peer_ppl(o.shard(1)), single = peer_ppl(o.single);
  EXPECT_GT(split, 1.0);
  EXPECT_EQ(split, single);
#endif
}

TEST(Shards, SafetensorsShardsWithIndexLoad) {
  const std::string dir = qk_test::temp_dir("shards_hf");
  fs::create_directories(dir + "/single"), fs::create_directories(dir + "/split");  // quantize spills into them
  const auto a = qk_test::run_cli(quantize_args() + " -o " + dir + "/single/");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  const auto b = qk_test::run_cli(quantize_args() + " --shards 2 -o " + dir + "/split/");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                        "model.safetensors.index.json", "config.json"})
    EXPECT_TRUE(fs::exists(dir + "/split/" + f)) << f;
  EXPECT_FALSE(fs::exists(dir + "/split/model.safetensors"));
  const auto index = nlohmann::json::parse(qk_test::read_file(dir + "/split/model.safetensors.index.json"));
  const ModelFile single = load_model(dir + "/single"), split = load_model(dir + "/split");
  uint64_t total = 0;
  for (const TensorView& t : single.tensors) total += t.nbytes;
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), single.tensors.size());
  EXPECT_EQ(index["weight_map"]["model.embed_tokens.weight"], "model-00001-of-00002.safetensors");
  EXPECT_EQ(index["weight_map"]["model.norm.weight"], "model-00002-of-00002.safetensors");
  expect_same_tensors(single, split);
}

TEST(Shards, BrokenSplitIsAOneLineErrorNamingTheFile) {
  const Outputs& o = outputs();
  ASSERT_TRUE(o.error.empty()) << o.error;
  const std::string dir = qk_test::temp_dir("shards_broken");
  const std::string first = dir + "/split-00001-of-00003.gguf", second = dir + "/split-00002-of-00003.gguf";
  for (int k = 1; k <= 3; ++k) fs::copy_file(o.shard(k), dir + "/" + fs::path(o.shard(k)).filename().string());

  // A shard that says the split has 4 files.
  {
    const GgufReader r(o.shard(2));
    GgufWriter w;
    for (const GgufKV& kv : r.metadata())
      w.set(kv.key, kv.key == kGgufSplitCount ? GgufValue::u16(4) : kv.value);
    for (const TensorView& t : r.tensors()) w.add_tensor(t.name, t.type, t.shape, t.data, t.nbytes);
    w.write(second);
  }
  std::string e = error_of([&] { load_model(first); });
  EXPECT_NE(e.find(second + ": split.count = 4, but " + first + " says 3"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;

  fs::remove(second);
  for (const std::string& from : {first, dir + "/split-00003-of-00003.gguf"}) {
    e = error_of([&] { load_model(from); });
    EXPECT_NE(e.find(second + ": shard 2 of 3 is missing"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }

  // A shard renamed: the others cannot be found by name.
  const std::string renamed = dir + "/renamed.gguf";
  fs::copy_file(o.shard(1), renamed);
  e = error_of([&] { load_model(renamed); });
  EXPECT_NE(e.find(renamed + ": shard 1 of 3, but its name does not end in '-00001-of-00003.gguf'"), std::string::npos)
      << e;

  const auto r = qk_test::run_cli(quantize_args() + " --shards 1000 -o " + dir + "/x.gguf");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--shards 1000: more shards than the 38 tensors"), std::string::npos) << r.err;
  EXPECT_EQ(qk_test::count_lines(r.err), 1) << r.err;
  EXPECT_EQ(qk_test::run_cli(quantize_args() + " --shards two -o " + dir + "/x.gguf").exit_code, 1);
}

// A safetensors output folder that does not exist yet is created (it also holds the
// quantized stages while the job runs), with the shards inside.
TEST(Shards, SafetensorsOutputFolderIsCreated) {
  const std::string dir = qk_test::temp_dir("shards_newdir") + "/not/there/yet/";
  const auto r = qk_test::run_cli(quantize_args() + " -o " + dir + " --shards 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir + "model-00001-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "model-00002-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "model.safetensors.index.json"));
}
