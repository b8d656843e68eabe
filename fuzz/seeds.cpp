// Writes the seed corpus of every fuzz target: small valid inputs made by quantkit's own
// writers. Usage: fuzz_seeds DIR  (creates DIR/<target>/seed-*).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/model_io.h"
#include "io/safetensors.h"
#include "quantkit/entropy.h"
#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/quantize.h"
#include "seed_models.h"
#include "targets.h"

using namespace quantkit;
namespace fs = std::filesystem;

namespace {

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

class Corpus {
 public:
  Corpus(const fs::path& root, const std::string& target) : dir_(root / target) { fs::create_directories(dir_); }
  void add(const std::string& bytes) {
    std::ofstream(dir_ / ("seed-" + std::to_string(n_++)), std::ios::binary) << bytes;
  }
  void add_file(const std::string& path, const std::string& prefix = "") { add(prefix + read_all(path)); }
  int size() const { return n_; }

 private:
  fs::path dir_;
  int n_ = 0;
};

ModelFile quantized(const ModelFile& m, const std::string& spec) {
  QuantizeOptions o;
  o.format = spec;
  o.embedding_format = spec;
  return quantize_model(m, o, nullptr, 1).model;
}

void gguf_seeds(Corpus& c, const fs::path& tmp) {
  const std::string p = (tmp / "m.gguf").string();
  for (bool tied : {false, true}) {
    save_gguf_model(qk_seed::tiny_model(1, tied), p);
    c.add_file(p);
  }
  save_gguf_model(quantized(qk_seed::tiny_model(), "q8_0"), p);
  c.add_file(p);
  // Every metadata value type, nested arrays included, and an unusual alignment.
  GgufWriter w;
  w.set_alignment(64);
  w.set("u8", GgufValue::u8(1)), w.set("i8", GgufValue::i8(-1)), w.set("u16", GgufValue::u16(2));
  w.set("i16", GgufValue::i16(-2)), w.set("u32", GgufValue::u32(3)), w.set("i32", GgufValue::i32(-3));
  w.set("u64", GgufValue::u64(4)), w.set("i64", GgufValue::i64(-4)), w.set("f32", GgufValue::f32(0.5f));
  w.set("f64", GgufValue::f64(0.25)), w.set("bool", GgufValue::boolean(true)), w.set("str", GgufValue::string("x"));
  w.set("arr", GgufValue::array(std::vector<int32_t>{1, 2, 3}));
  w.set("strs", GgufValue::array(std::vector<std::string>{"a", "bc"}));
  w.set("nested", GgufValue::array(GgufType::Array, {GgufValue::array(std::vector<uint8_t>{1}),
                                                     GgufValue::array(std::vector<float>{1.0f, 2.0f})}));
  const std::vector<uint8_t> blk(34, 1);
  w.add_tensor("t", DType::Q8_0, {1, 32}, blk.data(), blk.size());
  w.write(p);
  c.add_file(p);
}

void packed_seeds(Corpus& c, const fs::path& tmp) {
  const std::string p = (tmp / "m.qk").string();
  const ModelFile m = qk_seed::tiny_model();
  for (const FormatFamily& fam : format_families())
    for (size_t i = 0; i < fam.examples.size() && i < 2; ++i) {
      try {
        save_gguf_model(quantized(m, fam.examples[i]), p);
        c.add_file(p);
      } catch (const Error& e) {
        std::fprintf(stderr, "seed %s skipped: %s\n", fam.examples[i].c_str(), e.what());
      }
    }
}

void safetensors_seeds(Corpus& c, const fs::path& tmp) {
  const fs::path dir = tmp / "st";
  save_safetensors_model(qk_seed::tiny_model(), dir.string(), DType::F16);
  c.add_file((dir / "model.safetensors").string());
  save_safetensors_model(qk_seed::tiny_model(1, true), dir.string(), DType::BF16);
  c.add_file((dir / "model.safetensors").string());
  save_gptq_safetensors(quantized(qk_seed::tiny_model(), "int4:g8:asym"), (tmp / "gptq").string());
  c.add_file((tmp / "gptq" / "model.safetensors").string());
  // Every dtype quantkit reads, and metadata.
  const std::vector<uint8_t> raw(64, 1);
  std::vector<SafetensorsTensor> all;
  for (const char* dt : {"F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64"}) {
    const DType t = *safetensors_dtype(dt);
    all.push_back({dt, t, {int64_t(8 / dtype_traits(t).type_size), 1}, raw.data(), {}});
  }
  write_safetensors((tmp / "all.safetensors").string(), all, {{"format", "pt"}});
  c.add_file((tmp / "all.safetensors").string());
}

void index_seeds(Corpus& c, const fs::path& tmp) {
  const fs::path dir = tmp / "index";
  fs::create_directories(dir);
  qk_fuzz::write_index_shards(dir.string());
  c.add_file((dir / "model.safetensors.index.json").string());
}

void llama2c_seeds(Corpus& checkpoints, Corpus& tokenizers) {
  checkpoints.add(qk_seed::llama2c_checkpoint(qk_seed::tiny_model()));
  checkpoints.add(qk_seed::llama2c_checkpoint(qk_seed::tiny_model(2, true)));
  tokenizers.add(qk_seed::llama2c_tokenizer(qk_seed::tiny_vocab(16)));
  tokenizers.add(qk_seed::llama2c_tokenizer(qk_seed::tiny_vocab(40)));
}

void hf_config_seeds(Corpus& c, const fs::path& tmp) {
  const fs::path dir = tmp / "hf";
  save_safetensors_model(qk_seed::tiny_model(), dir.string(), DType::F32);
  c.add_file((dir / "config.json").string(), std::string(1, '\0'));
  c.add_file((dir / "quantkit_vocab.json").string(), std::string(1, '\1'));
  c.add_file((tmp / "gptq" / "config.json").string(), std::string(1, '\0'));  // quantization_config
}

void spec_seeds(Corpus& c) {
  for (const FormatFamily& fam : format_families())
    for (const std::string& spec : fam.examples) c.add(spec);
}

void entropy_seeds(Corpus& c) {
  auto stream = [](size_t n, uint32_t alphabet, uint32_t skew) {
    std::vector<uint32_t> s(n);
    uint32_t x = 12345;
    for (auto& v : s) {
      x ^= x << 13, x ^= x >> 17, x ^= x << 5;
      v = (x % alphabet) >> (x % (skew + 1));
    }
    return s;
  };
  auto add = [&](const std::vector<uint32_t>& s, uint32_t alphabet) {
    const std::vector<uint8_t> b = entropy::encode(s, alphabet);
    c.add(std::string(b.begin(), b.end()));
  };
  add(stream(200, 16, 3), 16);           // rANS
  add(stream(64, 256, 0), 256);          // raw (uniform)
  add(stream(100, 1u << 20, 12), 1u << 20);  // split digits
  add(std::vector<uint32_t>(50, 3), 8);  // one symbol
  add({}, 5);                            // empty
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const fs::path root = argv[1], tmp = root / ".tmp";
  try {
    fs::create_directories(tmp);
    Corpus gguf(root, "gguf"), packed(root, "packed_container"), st(root, "safetensors"),
        index(root, "safetensors_index"), ckpt(root, "llama2c_checkpoint"), tok(root, "llama2c_tokenizer"),
        cfg(root, "hf_config"), spec(root, "spec"), ent(root, "entropy");
    gguf_seeds(gguf, tmp);
    packed_seeds(packed, tmp);
    safetensors_seeds(st, tmp);
    index_seeds(index, tmp);
    llama2c_seeds(ckpt, tok);
    hf_config_seeds(cfg, tmp);
    spec_seeds(spec);
    entropy_seeds(ent);
    fs::remove_all(tmp);
    for (const Corpus* c : {&gguf, &packed, &st, &index, &ckpt, &tok, &cfg, &spec, &ent})
      if (c->size() == 0) {
        std::fprintf(stderr, "a seed corpus is empty\n");
        return 1;
      }
  } catch (const Error& e) {
    std::fprintf(stderr, "fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
