// Hugging Face Llama models in safetensors: config.json + model.safetensors (or shards
// + index), tensor names mapped to quantkit's canonical GGUF names. quantkit's own
// writer adds quantkit_vocab.json so a folder it writes is self-contained. GPTQ modules
// (<module>.qweight, ...) are read through src/io/gptq_checkpoint.cpp.
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/hf_model.h"
#include "io/llama_tensors.h"
#include "io/model_io.h"
#include "core/checked_math.h"
#include "io/safetensors.h"
#include "io/untrusted.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"
#include "quantkit/mapped_file.h"

namespace quantkit {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kConfigFile = "config.json";
constexpr const char* kVocabFile = "quantkit_vocab.json";
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr const char* kQuantizeConfigFile = "quantize_config.json";  // AutoGPTQ's copy of quantization_config
constexpr std::string_view kQweight = ".qweight";

// ---- names ----

struct NamePair {
  const char* hf;
  const char* gguf;
};
constexpr NamePair kGlobalNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};
// Per layer: "model.layers.N.<hf>" <-> "blk.N.<gguf>".
constexpr NamePair kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},      {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},       {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

// Splits "<prefix><N>.<rest>" into N and rest; N must be a canonical decimal int.
bool split_layer(const std::string& name, std::string_view prefix, int* layer, std::string* rest) {
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  size_t i = prefix.size(), j = i;
  while (j < name.size() && name[j] >= '0' && name[j] <= '9') ++j;
  if (j == i || j - i > 6 || j >= name.size() || name[j] != '.') return false;
  if (name[i] == '0' && j - i > 1) return false;  // "07" would not round-trip
  *layer = std::stoi(name.substr(i, j - i));
  *rest = name.substr(j + 1);
  return true;
}

// Returns the counterpart of `name` in the pair column `from` -> `to`.
std::optional<std::string> map_name(const std::string& name, bool to_gguf) {
  for (const auto& p : kGlobalNames)
    if (name == (to_gguf ? p.hf : p.gguf)) return std::string(to_gguf ? p.gguf : p.hf);
  int layer;
  std::string rest;
  if (!split_layer(name, to_gguf ? "model.layers." : "blk.", &layer, &rest)) return std::nullopt;
  for (const auto& p : kLayerNames)
    if (rest == (to_gguf ? p.hf : p.gguf))
      return fmt::format("{}{}.{}", to_gguf ? "blk." : "model.layers.", layer, to_gguf ? p.gguf : p.hf);
  return std::nullopt;
}

// ---- JSON files ----

void write_json_file(const std::string& path, const nlohmann::ordered_json& j) {
  std::string text;
  try {
    text = j.dump(2) + "\n";
  } catch (const json::exception& e) {  // a string that is not UTF-8
    fail("{}: cannot encode as JSON: {}", path, e.what());
  }
  AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

// Typed access to keys of a JSON object; every error names the file and the key.
// A null value counts as absent (transformers writes "num_key_value_heads": null).
class JsonFields {
 public:
  JsonFields(std::string file, const json& j) : file_(std::move(file)), j_(j) {
    if (!j_.is_object()) fail("{}: expected a JSON object", file_);
  }

  const json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  const json& require(const char* key) const {
    const json* v = find(key);
    if (!v) fail("{}: missing required key \"{}\"", file_, key);
    return *v;
  }
  int get_int(const char* key, std::optional<int> def = std::nullopt) const {
    const json* v = def ? find(key) : &require(key);
    if (!v) return *def;
    if (!v->is_number_integer()) fail("{}: \"{}\" must be an integer, not {}", file_, key, v->type_name());
    bool fits = v->is_number_unsigned() ? v->get<uint64_t>() <= uint64_t(INT_MAX)
                                        : v->get<int64_t>() >= INT_MIN && v->get<int64_t>() <= INT_MAX;
    if (!fits) fail("{}: \"{}\" = {} is out of range", file_, key, v->dump());
    return v->get<int>();
  }
  float get_float(const char* key, std::optional<float> def = std::nullopt) const {
    const json* v = def ? find(key) : &require(key);
    if (!v) return *def;
    if (!v->is_number()) fail("{}: \"{}\" must be a number, not {}", file_, key, v->type_name());
    const std::optional<float> f = checked_float(v->get<double>());
    if (!f) fail("{}: \"{}\" = {} is out of range for a float", file_, key, v->dump());
    return *f;
  }
  bool get_bool(const char* key, std::optional<bool> def = std::nullopt) const {
    const json* v = def ? find(key) : &require(key);
    if (!v) return *def;
    if (!v->is_boolean()) fail("{}: \"{}\" must be true or false, not {}", file_, key, v->type_name());
    return v->get<bool>();
  }
  std::string get_string(const char* key, std::optional<std::string> def = std::nullopt) const {
    const json* v = def ? find(key) : &require(key);
    if (!v) return *def;
    if (!v->is_string()) fail("{}: \"{}\" must be a string, not {}", file_, key, v->type_name());
    return v->get<std::string>();
  }
  const json& get_array(const char* key, size_t size) const {
    const json& v = require(key);
    if (!v.is_array()) fail("{}: \"{}\" must be an array, not {}", file_, key, v.type_name());
    if (v.size() != size) fail("{}: \"{}\" has {} entries, expected {}", file_, key, v.size(), size);
    return v;
  }
  const std::string& file() const { return file_; }

 private:
  std::string file_;
  const json& j_;
};

// ---- config.json ----

// Features of other Llama variants that quantkit's runtime does not implement; loading
// such a model while ignoring them would silently compute something else.
void reject_unsupported(const JsonFields& c, const LlamaConfig& cfg) {
  std::string type = c.get_string("model_type", "llama");
  if (type != "llama") fail("{}: model_type \"{}\" is not supported (only \"llama\")", c.file(), printable(type));
  if (c.find("rope_scaling")) fail("{}: \"rope_scaling\" is not supported", c.file());
  if (c.get_string("hidden_act", "silu") != "silu") fail("{}: \"hidden_act\" must be \"silu\"", c.file());
  if (c.get_bool("attention_bias", false)) fail("{}: \"attention_bias\": true is not supported", c.file());
  if (c.get_bool("mlp_bias", false)) fail("{}: \"mlp_bias\": true is not supported", c.file());
  if (cfg.n_heads > 0 && c.get_int("head_dim", cfg.head_dim()) != cfg.head_dim())
    fail("{}: \"head_dim\" {} differs from hidden_size / num_attention_heads = {}", c.file(), c.get_int("head_dim"),
         cfg.head_dim());
}

LlamaConfig parse_config(const JsonFields& c) {
  LlamaConfig cfg;
  cfg.dim = c.get_int("hidden_size");
  cfg.n_layers = c.get_int("num_hidden_layers");
  cfg.n_heads = c.get_int("num_attention_heads");
  cfg.n_kv_heads = c.get_int("num_key_value_heads", cfg.n_heads);
  cfg.hidden_dim = c.get_int("intermediate_size");
  cfg.vocab_size = c.get_int("vocab_size");
  cfg.max_seq_len = c.get_int("max_position_embeddings");
  cfg.rms_eps = c.get_float("rms_norm_eps");
  cfg.rope_theta = c.get_float("rope_theta", 10000.0f);
  cfg.tied_embeddings = c.get_bool("tie_word_embeddings", false);
  cfg.rope_style = RopeStyle::NeoX;  // HF q/k_proj rows are in the half-split layout
  reject_unsupported(c, cfg);
  return cfg;
}

// "quantization_config": nullopt without one; GPTQ is the only method read.
std::optional<GptqScheme> parse_quantization(const JsonFields& c) {
  const json* q = c.find("quantization_config");
  if (!q) return std::nullopt;
  const JsonFields f(c.file() + " (quantization_config)", *q);
  const std::string method = f.get_string("quant_method");
  if (method != "gptq") fail("{}: quant_method \"{}\" is not supported (only \"gptq\")", f.file(), printable(method));
  GptqScheme s;
  s.bits = f.get_int("bits");
  if (s.bits != 4 && s.bits != 8) fail("{}: GPTQ bits {} is not supported (4 or 8)", f.file(), s.bits);
  s.group_size = f.get_int("group_size", 128);
  if (s.group_size == 0 || s.group_size < -1) fail("{}: group_size {} must be -1 or positive", f.file(), s.group_size);
  s.sym = f.get_bool("sym", true);
  const std::string layout = f.get_string("checkpoint_format", "gptq");
  if (layout != "gptq" && layout != "gptq_v2")
    fail("{}: checkpoint_format \"{}\" is not supported (\"gptq\" or \"gptq_v2\")", f.file(), printable(layout));
  s.zeros_minus_one = layout == "gptq";
  return s;
}

// The float as its shortest decimal, so 1e-5f is written "1e-05", not 9.99999974e-06.
double short_float(float f) { return std::stod(fmt::format("{}", f)); }

const char* torch_dtype(DType t) {
  switch (t) {
    case DType::F32:
      return "float32";
    case DType::F16:
      return "float16";
    case DType::BF16:
      return "bfloat16";
    default:
      fail("safetensors output type must be f32, f16 or bf16, not {}", dtype_name(t));
  }
}

nlohmann::ordered_json config_json(const ModelFile& m, DType dtype) {
  const LlamaConfig& c = m.config;
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
  j["hidden_size"] = c.dim;
  j["intermediate_size"] = c.hidden_dim;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = short_float(c.rms_eps);
  j["rope_theta"] = short_float(c.rope_theta);
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_seq_len;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["torch_dtype"] = torch_dtype(dtype);
  if (m.vocab) {
    if (m.vocab->bos_id >= 0) j["bos_token_id"] = m.vocab->bos_id;
    if (m.vocab->eos_id >= 0) j["eos_token_id"] = m.vocab->eos_id;
  }
  return j;
}

// ---- quantkit_vocab.json ----

nlohmann::ordered_json vocab_json(const Vocab& v) {
  nlohmann::ordered_json j;
  j["model"] = v.model;
  j["tokens"] = v.tokens;
  j["scores"] = v.scores;
  std::vector<int32_t> types;
  for (TokenType t : v.types) types.push_back(int32_t(t));
  j["types"] = types;
  j["bos_id"] = v.bos_id;
  j["eos_id"] = v.eos_id;
  j["unk_id"] = v.unk_id;
  j["add_bos"] = v.add_bos;
  j["add_space_prefix"] = v.add_space_prefix;
  return j;
}

Vocab parse_vocab(const JsonFields& f) {
  Vocab v;
  v.model = f.get_string("model", "llama");
  const json& tokens = f.require("tokens");
  if (!tokens.is_array() || tokens.empty()) fail("{}: \"tokens\" must be a non-empty array", f.file());
  const size_t n = tokens.size();
  const json& scores = f.get_array("scores", n);
  const json& types = f.get_array("types", n);
  for (size_t i = 0; i < n; ++i) {
    if (!tokens[i].is_string()) fail("{}: tokens[{}] is not a string", f.file(), i);
    const std::optional<float> score = scores[i].is_number() ? checked_float(scores[i].get<double>()) : std::nullopt;
    if (!score || std::isnan(*score)) fail("{}: scores[{}] is not a number in float range", f.file(), i);
    if (!types[i].is_number_integer() || types[i].get<int64_t>() < int64_t(TokenType::Normal) ||
        types[i].get<int64_t>() > int64_t(TokenType::Byte))
      fail("{}: types[{}] is not a token type (1..6)", f.file(), i);
    v.tokens.push_back(tokens[i].get<std::string>());
    v.scores.push_back(*score);
    v.types.push_back(TokenType(types[i].get<int32_t>()));
    v.max_token_length = std::max(v.max_token_length, int(v.tokens.back().size()));
  }
  auto id = [&](const char* key, int def) {
    int x = f.get_int(key, def);
    if (x < -1 || x >= int(n)) fail("{}: \"{}\" = {} is not a token id (vocabulary of {})", f.file(), key, x, n);
    return x;
  };
  v.bos_id = id("bos_id", v.bos_id);
  v.eos_id = id("eos_id", v.eos_id);
  v.unk_id = id("unk_id", v.unk_id);
  v.add_bos = f.get_bool("add_bos", v.add_bos);
  v.add_space_prefix = f.get_bool("add_space_prefix", v.add_space_prefix);
  return v;
}

// ---- locating the files ----

struct Layout {
  std::string config;   // config.json
  std::string weights;  // a .safetensors file or the index .json
  std::string vocab;    // quantkit_vocab.json (may not exist)
};

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

Layout locate(const std::string& path) {
  std::error_code ec;
  fs::path dir;
  Layout l;
  // Naming the folder's config.json means the folder.
  const bool is_config = fs::path(path).filename() == kConfigFile;
  if (fs::is_directory(path, ec) || is_config) {
    dir = is_config ? fs::path(path).parent_path() : fs::path(path);
    if (dir.empty()) dir = ".";
    if (path_exists(dir / kIndexFile))
      l.weights = (dir / kIndexFile).string();
    else if (path_exists(dir / kSingleFile))
      l.weights = (dir / kSingleFile).string();
    else
      fail("{}: folder holds neither {} nor {}", path, kSingleFile, kIndexFile);
  } else {
    if (!fs::is_regular_file(path, ec)) fail("{}: no such file or folder", path);
    dir = fs::path(path).parent_path();
    if (dir.empty()) dir = ".";
    l.weights = path;
  }
  l.config = (dir / kConfigFile).string();
  l.vocab = (dir / kVocabFile).string();
  if (!path_exists(l.config)) fail("{}: not found; a safetensors model needs config.json beside its weights", l.config);
  return l;
}

// ---- writing tensors ----

std::vector<uint8_t> encode(const std::vector<float>& x, DType t) {
  std::vector<uint8_t> out(x.size() * dtype_traits(t).type_size);
  if (t == DType::F32) {
    std::memcpy(out.data(), x.data(), out.size());
    return out;
  }
  for (size_t i = 0; i < x.size(); ++i) {
    uint16_t h = t == DType::F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

// Heads whose Q/K rows must be permuted from Normal to NeoX for this tensor; 0 if none.
int qk_heads(const ModelFile& m, const std::string& name) {
  if (m.config.rope_style != RopeStyle::Normal) return 0;
  int layer;
  std::string rest;
  if (!split_layer(name, "blk.", &layer, &rest)) return 0;
  if (rest == "attn_q.weight") return m.config.n_heads;
  if (rest == "attn_k.weight") return m.config.n_kv_heads;
  return 0;
}

SafetensorsTensor hf_tensor(const ModelFile& m, const TensorView& v, DType dtype) {
  auto hf = gguf_to_hf_name(v.name);
  if (!hf) fail("{}: tensor '{}' has no Hugging Face Llama counterpart", m.path, v.name);
  SafetensorsTensor t;
  t.name = *hf;
  t.type = dtype;
  t.shape = v.shape;
  const int heads = qk_heads(m, v.name);
  if (heads == 0 && v.type == dtype && uint64_t(v.nbytes) == safetensors_nbytes(t)) {
    t.data = v.data;  // already in the output type: written straight from the mapping
    return t;
  }
  // Converted when written, so only one converted tensor is in memory at a time.
  t.produce = [v, dtype, heads]() {
    Tensor f = to_float(v);
    if (heads) f = permute_qk_normal_to_neox(f, heads, v.name);
    return encode(f.data, dtype);
  };
  return t;
}

}  // namespace

std::optional<std::string> hf_to_gguf_name(const std::string& hf) { return map_name(hf, true); }
std::optional<std::string> gguf_to_hf_name(const std::string& gguf) { return map_name(gguf, false); }

Tensor permute_qk_normal_to_neox(const Tensor& w, int n_heads, const std::string& name) {
  if (w.shape.size() != 2) fail("tensor '{}': shape {} cannot be split into {} heads", name, shape_str(w.shape), n_heads);
  const TensorView view{name, DType::F32, w.shape, w.data.data(), w.data.size() * sizeof(float)};
  const std::vector<uint8_t> bytes = permute_qk_rows(view, n_heads, RopeStyle::Normal, RopeStyle::NeoX);
  Tensor out(w.shape);
  std::memcpy(out.data.data(), bytes.data(), bytes.size());
  return out;
}

ModelFile load_safetensors_model(const std::string& path) {
  const Layout files = locate(path);
  ModelFile m;
  m.path = path;
  m.container = "safetensors";
  const json config = read_json_file(files.config, "config");
  const JsonFields cfg(files.config, config);
  m.config = parse_config(cfg);
  if (cfg.find("torch_dtype")) m.metadata["hf.torch_dtype"] = cfg.get_string("torch_dtype");

  const std::optional<GptqScheme> gptq = parse_quantization(cfg);

  SafetensorsSet set = open_safetensors(files.weights);
  for (auto& shard : set.shards) m.storage.push_back(shard);
  for (const auto& [k, v] : set.metadata) m.metadata["safetensors." + k] = v;
  std::map<std::string, const TensorView*> by_name;
  for (const TensorView& t : set.tensors) by_name[t.name] = &t;
  std::map<std::string, std::string> source_of;  // canonical name -> the file's name for it
  for (const TensorView& t : set.tensors) {
    // A GPTQ module "<module>.qweight" (+ qzeros, scales, g_idx) stands for "<module>.weight".
    const bool packed = t.name.ends_with(kQweight);
    const std::string module = packed ? t.name.substr(0, t.name.size() - kQweight.size()) : "";
    auto name = hf_to_gguf_name(packed ? module + ".weight" : t.name);
    if (!name) continue;  // rotary_emb.inv_freq and the like: derived, not needed
    // With tie_word_embeddings transformers ignores a stored lm_head; so do we.
    if (*name == "output.weight" && m.config.tied_embeddings) continue;
    if (auto [it, fresh] = source_of.emplace(*name, t.name); !fresh)
      fail("{}: tensors '{}' and '{}' both hold '{}'", files.weights, printable(it->second), printable(t.name), *name);
    if (packed) {
      if (!gptq) fail("{}: tensor '{}' is GPTQ-packed but {} has no quantization_config", files.weights, t.name, files.config);
      auto find = [&](const char* suffix) {
        auto it = by_name.find(module + suffix);
        return it == by_name.end() ? nullptr : it->second;
      };
      const GptqModule mod{module, &t, find(".qzeros"), find(".scales"), find(".g_idx")};
      m.tensors.push_back(gptq_packed_view(files.weights, *name, *gptq, mod, m.storage));
      continue;
    }
    TensorView v = t;
    v.name = *name;
    m.tensors.push_back(std::move(v));
  }
  m.config.tied_embeddings = m.config.tied_embeddings || !m.find("output.weight");

  if (path_exists(files.vocab)) {
    const json vocab = read_json_file(files.vocab, "vocabulary");
    m.vocab = parse_vocab(JsonFields(files.vocab, vocab));
  }
  m.config.validate(files.config);
  check_llama_tensors(m);
  return m;
}

nlohmann::ordered_json hf_config_json(const ModelFile& m, DType dtype) { return config_json(m, dtype); }
SafetensorsTensor hf_float_tensor(const ModelFile& m, const TensorView& v, DType dtype) { return hf_tensor(m, v, dtype); }
int hf_permuted_heads(const ModelFile& m, const std::string& name) { return qk_heads(m, name); }

void write_hf_folder(const ModelFile& m, const std::string& dir, const std::vector<SafetensorsTensor>& tensors,
                     const nlohmann::ordered_json& config, const nlohmann::ordered_json* quantize_config,
                     const ShardLayout& shards) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec)) fail("{}: cannot create folder: {}", dir, ec.message());
  // transformers refuses safetensors files whose metadata lacks format "pt".
  write_safetensors_sharded(dir, tensors, {{"format", "pt"}}, shards);

  // Stale side files would be loaded with the new weights.
  const fs::path vocab_path = fs::path(dir) / kVocabFile;
  if (m.vocab)
    write_json_file(vocab_path.string(), vocab_json(*m.vocab));
  else
    fs::remove(vocab_path, ec);
  const fs::path quantize_path = fs::path(dir) / kQuantizeConfigFile;
  if (quantize_config)
    write_json_file(quantize_path.string(), *quantize_config);
  else
    fs::remove(quantize_path, ec);
  // config.json last: until it exists the folder is not a loadable model.
  write_json_file((fs::path(dir) / kConfigFile).string(), config);
}

void save_safetensors_model(const ModelFile& m, const std::string& dir, DType dtype, const ShardLayout& shards) {
  if (dtype != DType::F32 && dtype != DType::F16 && dtype != DType::BF16)
    fail("{}: safetensors output type must be f32, f16 or bf16, not {}", dir, dtype_name(dtype));
  m.config.validate(m.path);
  check_llama_tensors(m);  // fail before anything is written
  std::vector<SafetensorsTensor> tensors;
  for (const TensorView& v : m.tensors) {
    if (v.name == "output.weight" && m.config.tied_embeddings) continue;
    tensors.push_back(hf_tensor(m, v, dtype));
  }
  write_hf_folder(m, dir, tensors, config_json(m, dtype), nullptr, shards);
}

}  // namespace quantkit
