// The fuzz harnesses, one per parser. fuzz_main.cpp turns each into a libFuzzer target
// (fuzz_<name>); tests/fuzz_regression_test.cpp replays the committed findings
// (tests/data/fuzz-regressions/<name>/*) through the same functions.
#pragma once
#include <cstdint>
#include <map>
#include <span>
#include <string>

#include "fuzz_util.h"
#include "io/gguf.h"
#include "io/model_io.h"
#include "io/safetensors.h"
#include "quantkit/entropy.h"
#include "quantkit/format.h"
#include "quantkit/tensor.h"
#include "quantkit/tokenizer.h"
#include "seed_models.h"

namespace qk_fuzz {

using namespace quantkit;

// Decodes the small tensors of a loaded model: hostile bytes through the ggml block
// decoders and every quantkit format's decoder.
inline void decode_small_tensors(const std::vector<TensorView>& tensors) {
  for (const auto& t : tensors)
    if (t.numel() <= (1 << 16)) expect_clean("", [&] { (void)to_float(t); });
}

inline void run_tokenizer(const Vocab& v) {
  const Tokenizer tok(v);
  (void)tok.decode(tok.encode("ab the \xc3\xa9 <0x41>\n\xff x", true));
}

// Typed GGUF accessors throw Error without a file name by design (callers add it).
inline void exercise_value(const GgufValue& v) {
  expect_clean("", [&] { (void)v.to_display(); });
  expect_clean("", [&] { (void)v.as_int(); });
  expect_clean("", [&] { (void)v.as_uint(); });
  expect_clean("", [&] { (void)v.as_float(); });
  expect_clean("", [&] { (void)v.as_string(); });
  expect_clean("", [&] { (void)v.as_string_array(); });
  expect_clean("", [&] { (void)v.as_float_array(); });
  expect_clean("", [&] { (void)v.as_int_array(); });
  if (v.is_array() && v.array_size() > 0) expect_clean("", [&] { exercise_value(v.element(0)); });
}

// GGUF container: header, metadata of every type, tensor infos, placement; then the Llama
// mapping on top (load_gguf_model) and the ggml block decoders on the tensor bytes.
inline void gguf(const uint8_t* data, size_t size) {
  static const std::string path = scratch("in.gguf");
  write_file(path, data, size);
  expect_clean(path, [&] {
    GgufReader r(path);
    for (const auto& kv : r.metadata()) exercise_value(kv.value);
    decode_small_tensors(r.tensors());
  });
  expect_clean(path, [&] { (void)load_gguf_model(path); });
}

// quantkit's own container: GGUF whose quantkit.packed.<name>.{format,shape} metadata turn
// 1-D i8 tensors into packed matrices of any registered format. Loads the model, decodes
// every packed tensor (hostile bits through each format's decoder), runs the tokenizer.
inline void packed_container(const uint8_t* data, size_t size) {
  static const std::string path = scratch("in.qk");
  write_file(path, data, size);
  expect_clean(path, [&] {
    const ModelFile m = load_gguf_model(path);
    decode_small_tensors(m.tensors);
    if (m.vocab) run_tokenizer(*m.vocab);
  });
}

// A folder holding config.json (plain or GPTQ, matching qk_seed::tiny_model) for a fuzzed
// model.safetensors.
inline std::string hf_folder(bool gptq) {
  const std::string dir = scratch(gptq ? "gptq" : "plain");
  const LlamaConfig c = qk_seed::tiny_model().config;
  const std::string cfg = fmt::format(
      R"({{"model_type": "llama", "hidden_size": {}, "intermediate_size": {}, "num_hidden_layers": {},
          "num_attention_heads": {}, "num_key_value_heads": {}, "vocab_size": {}, "max_position_embeddings": {},
          "rms_norm_eps": 1e-05, "tie_word_embeddings": false{}}})",
      c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len,
      gptq ? R"(, "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 8, "sym": false})" : "");
  write_file(dir + "/config.json", cfg.data(), cfg.size());
  return dir;
}

// safetensors: header length, JSON header, dtypes, shapes, offsets, overlaps; then the
// Hugging Face model mapping on top, with a plain config.json and with a GPTQ
// quantization_config (qweight / qzeros / scales / g_idx modules).
inline void safetensors(const uint8_t* data, size_t size) {
  static const std::string plain = hf_folder(false), gptq = hf_folder(true);
  const std::string path = plain + "/model.safetensors";
  write_file(path, data, size);
  bool parsed = false;
  expect_clean(path, [&] {
    SafetensorsFile f(path);
    decode_small_tensors(f.tensors());
    parsed = true;
  });
  if (!parsed) return;  // the model loads would stop at the same place
  expect_clean(plain, [&] { (void)load_safetensors_model(plain); });
  write_file(gptq + "/model.safetensors", data, size);
  expect_clean(gptq, [&] { decode_small_tensors(load_safetensors_model(gptq).tensors); });
}

// The two shards the index seed (fuzz/seeds.cpp) maps; the same call writes both.
inline void write_index_shards(const std::string& dir) {
  const std::vector<float> a = qk_seed::floats(8, 1), b = qk_seed::floats(4, 2);
  write_safetensors_sharded(dir, {{"a", DType::F32, {2, 4}, a.data(), {}}, {"b", DType::F32, {4}, b.data(), {}}}, {}, 32);
}

// model.safetensors.index.json: the weight map (JSON, file names confined to the index's
// folder, tensors that must exist in their shard), over two fixed valid shards.
inline void safetensors_index(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = scratch("index");
    std::filesystem::create_directories(d);
    write_index_shards(d);
    return d;
  }();
  const std::string path = dir + "/model.safetensors.index.json";
  write_file(path, data, size);
  expect_clean(dir, [&] { (void)open_safetensors(path); });
}

// llama2.c checkpoint: the seven-int header (every hyper-parameter validated) and the
// stacked tensors it implies against the file size.
inline void llama2c_checkpoint(const uint8_t* data, size_t size) {
  static const std::string path = scratch("model.bin");
  write_file(path, data, size);
  expect_clean(path, [&] { check_llama_tensors(load_llama2c_model(path, "")); });
}

// llama2.c tokenizer.bin: max_token_length, then per token score / length / bytes; the
// vocabulary then drives the BPE tokenizer (encode and decode of fixed text).
inline void llama2c_tokenizer(const uint8_t* data, size_t size) {
  static const std::string path = scratch("tokenizer.bin");
  write_file(path, data, size);
  expect_clean(path, [&] { run_tokenizer(load_llama2c_vocab(path)); });
}

// Hugging Face config.json (hyper-parameters, unsupported features, quantization_config)
// and quantkit_vocab.json beside a fixed valid model.safetensors. The first input byte
// picks which file the rest is (even: config.json, odd: quantkit_vocab.json).
inline void hf_config(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    const std::string d = scratch("hf");
    save_safetensors_model(qk_seed::tiny_model(), d, DType::F32);
    return d;
  }();
  static const std::string config = read_text(dir + "/config.json"), vocab = read_text(dir + "/quantkit_vocab.json");
  if (size < 1) return;
  const bool is_vocab = data[0] & 1;
  const std::string fuzzed(reinterpret_cast<const char*>(data + 1), size - 1);
  write_file(dir + "/config.json", is_vocab ? config.data() : fuzzed.data(), is_vocab ? config.size() : fuzzed.size());
  write_file(dir + "/quantkit_vocab.json", is_vocab ? fuzzed.data() : vocab.data(), is_vocab ? fuzzed.size() : vocab.size());
  expect_clean(dir, [&] {
    const ModelFile m = load_safetensors_model(dir);
    if (m.vocab) run_tokenizer(*m.vocab);
  });
}

// Format spec strings ("int4:g128:asym", "vq:d8:k256", ...): the one parser behind
// --format, --override, --candidates and the packed-tensor metadata.
inline void spec(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  expect_clean("", [&] {
    const std::unique_ptr<Format> f = make_format(text);
    if (make_format(f->spec())->spec() != f->spec()) finding("spec '" + f->spec() + "' does not round-trip");
    (void)f->describe();
    for (int64_t cols : {int64_t(1), int64_t(64), int64_t(256), int64_t(4096)})
      if (f->check_shape(8, cols).empty()) (void)f->storage_bits(8, cols);
  });
}

inline constexpr uint64_t kMaxFuzzSymbols = uint64_t(1) << 14;

// rANS / raw / split symbol streams: header, frequency tables, payload; whatever decodes
// must re-encode into a stream that decodes to the same symbols (alphabets up to 4096).
inline void entropy(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  expect_clean("", [&] { (void)entropy::inspect(bytes); });
  expect_clean("", [&] {
    // A small symbol limit keeps each input cheap (the limit check itself is what matters).
    const std::vector<uint32_t> symbols = entropy::decode(bytes, kMaxFuzzSymbols);
    const uint32_t alphabet = entropy::inspect(bytes).alphabet;
    // Re-encoding costs O(alphabet) per frequency precision tried: small alphabets only.
    if (alphabet <= 4096 && entropy::decode(entropy::encode(symbols, alphabet), kMaxFuzzSymbols) != symbols)
      finding("a decoded stream does not survive re-encoding");
  });
}

using Target = void (*)(const uint8_t*, size_t);

inline const std::map<std::string, Target>& targets() {
  static const std::map<std::string, Target> t = {
      {"gguf", gguf},
      {"packed_container", packed_container},
      {"safetensors", safetensors},
      {"safetensors_index", safetensors_index},
      {"llama2c_checkpoint", llama2c_checkpoint},
      {"llama2c_tokenizer", llama2c_tokenizer},
      {"hf_config", hf_config},
      {"spec", spec},
      {"entropy", entropy},
  };
  return t;
}

}  // namespace qk_fuzz
