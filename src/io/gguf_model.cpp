// Llama models in GGUF: hyper-parameters and the SentencePiece vocabulary under the
// metadata keys llama.cpp uses, weights under their GGUF names.
#include <algorithm>
#include <climits>
#include <filesystem>
#include <map>
#include <set>

#include "core/checked_math.h"
#include "io/gguf.h"
#include "io/llama_tensors.h"
#include "io/model_io.h"
#include "io/shards.h"
#include "io/untrusted.h"
#include "quantkit/error.h"
#include "quantkit/mapped_file.h"
#include "quantkit/packed_tensor.h"

namespace quantkit {
namespace {

namespace key {
constexpr const char* kArch = "general.architecture";
constexpr const char* kName = "general.name";
constexpr const char* kFileType = "general.file_type";
constexpr const char* kContext = "llama.context_length";
constexpr const char* kDim = "llama.embedding_length";
constexpr const char* kLayers = "llama.block_count";
constexpr const char* kHidden = "llama.feed_forward_length";
constexpr const char* kHeads = "llama.attention.head_count";
constexpr const char* kKvHeads = "llama.attention.head_count_kv";
constexpr const char* kRmsEps = "llama.attention.layer_norm_rms_epsilon";
constexpr const char* kRopeBase = "llama.rope.freq_base";
constexpr const char* kRopeDims = "llama.rope.dimension_count";
constexpr const char* kVocabSize = "llama.vocab_size";
constexpr const char* kTokModel = "tokenizer.ggml.model";
constexpr const char* kTokens = "tokenizer.ggml.tokens";
constexpr const char* kScores = "tokenizer.ggml.scores";
constexpr const char* kTokTypes = "tokenizer.ggml.token_type";
constexpr const char* kBos = "tokenizer.ggml.bos_token_id";
constexpr const char* kEos = "tokenizer.ggml.eos_token_id";
constexpr const char* kUnk = "tokenizer.ggml.unknown_token_id";
constexpr const char* kAddBos = "tokenizer.ggml.add_bos_token";
constexpr const char* kAddSpace = "tokenizer.ggml.add_space_prefix";
}  // namespace key

// Tensors in a quantkit format are stored as 1-D I8 byte arrays; these keys give each
// one's format spec and [rows, cols, stored_cols].
std::string packed_format_key(const std::string& tensor) { return "quantkit.packed." + tensor + ".format"; }
std::string packed_shape_key(const std::string& tensor) { return "quantkit.packed." + tensor + ".shape"; }

// Typed metadata access that names the file and key on any failure, and records which
// keys were consumed (the rest go to ModelFile::metadata).
class Meta {
 public:
  explicit Meta(const GgufReader& r) : r_(r) {}

  const GgufValue* find(const char* k) {
    used_.insert(k);
    return r_.find(k);
  }

  const GgufValue& get(const char* k) {
    const GgufValue* v = find(k);
    if (!v) fail("{}: missing metadata key '{}'", r_.path(), printable(k));
    return *v;
  }

  // Runs f(value), prefixing any type error with the file and key.
  template <typename F>
  auto convert(const char* k, const GgufValue& v, F f) -> decltype(f(v)) {
    try {
      return f(v);
    } catch (const Error& e) {
      fail("{}: metadata '{}': {}", r_.path(), printable(k), e.what());
    }
  }

  // A non-negative int; per-layer arrays (newer llama.cpp files) must hold one value.
  int get_int(const char* k, std::optional<int> def = std::nullopt) {
    const GgufValue* v = def ? find(k) : &get(k);
    if (!v) return *def;
    int64_t x = convert(k, *v, [&](const GgufValue& g) { return g.is_array() ? uniform(k, g) : g.as_int(); });
    if (x < 0 || x > INT_MAX) fail("{}: metadata '{}' = {} is out of range", r_.path(), k, x);
    return int(x);
  }

  float get_float(const char* k, std::optional<float> def = std::nullopt) {
    const GgufValue* v = def ? find(k) : &get(k);
    if (!v) return *def;
    const double x = convert(k, *v, [](const GgufValue& g) { return g.as_float(); });
    const std::optional<float> f = checked_float(x);
    if (!f) fail("{}: metadata '{}' = {} is out of range for a float", r_.path(), k, x);
    return *f;
  }

  bool get_bool(const char* k, bool def) {
    const GgufValue* v = find(k);
    return v ? convert(k, *v, [](const GgufValue& g) { return g.as_bool(); }) : def;
  }

  const std::string& path() const { return r_.path(); }
  const GgufReader& reader() const { return r_; }
  bool used(const std::string& k) const { return used_.count(k) != 0; }

 private:
  int64_t uniform(const char* k, const GgufValue& arr) {
    std::vector<int64_t> xs = arr.as_int_array();
    if (xs.empty()) fail("{}: metadata '{}' is an empty array", r_.path(), k);
    for (int64_t x : xs)
      if (x != xs[0]) fail("{}: metadata '{}' differs between layers, which is not supported", r_.path(), k);
    return xs[0];
  }

  const GgufReader& r_;
  std::set<std::string> used_;
};

void check_architecture(Meta& meta) {
  const GgufValue& v = meta.get(key::kArch);
  const std::string& arch = meta.convert(key::kArch, v, [](const GgufValue& g) -> const std::string& {
    return g.as_string();
  });
  if (arch != "llama")
    fail("{}: unsupported architecture '{}' (only 'llama' is supported)", meta.path(), printable(arch));
}

TokenType token_type_from(const Meta& meta, int64_t t, size_t i) {
  if (t == 0) return TokenType::Normal;  // GGUF "undefined"
  if (t < 1 || t > 6) fail("{}: {}[{}] = {} is not a valid token type", meta.path(), key::kTokTypes, i, t);
  return TokenType(t);
}

int token_id(Meta& meta, const char* k, int def, size_t n_tokens) {
  int id = meta.get_int(k, def);
  if (size_t(id) >= n_tokens) fail("{}: {} = {} is out of range (vocabulary of {})", meta.path(), k, id, n_tokens);
  return id;
}

// The SentencePiece vocabulary, if the file carries one quantkit reads.
std::optional<Vocab> load_vocab(Meta& meta, ModelFile& m) {
  const GgufValue* model = meta.find(key::kTokModel);
  if (!model) return std::nullopt;
  std::string name = meta.convert(key::kTokModel, *model, [](const GgufValue& g) { return g.as_string(); });
  if (name != "llama") {
    m.metadata[key::kTokModel] = name;  // other tokenizers load without a vocabulary
    return std::nullopt;
  }
  Vocab v;
  v.model = name;
  v.tokens = meta.convert(key::kTokens, meta.get(key::kTokens), [](const GgufValue& g) { return g.as_string_array(); });
  const size_t n = v.tokens.size();
  if (n == 0 || n > (size_t(1) << 24)) fail("{}: {} holds {} tokens", meta.path(), key::kTokens, n);

  if (const GgufValue* s = meta.find(key::kScores)) {
    v.scores = meta.convert(key::kScores, *s, [](const GgufValue& g) { return g.as_float_array(); });
    if (v.scores.size() != n)
      fail("{}: {} has {} entries, {} has {}", meta.path(), key::kScores, v.scores.size(), key::kTokens, n);
    for (size_t i = 0; i < n; ++i)  // the tokenizer orders merges by score: NaN has no order
      if (std::isnan(v.scores[i])) fail("{}: {}[{}] is NaN", meta.path(), key::kScores, i);
  } else {
    v.scores.assign(n, 0.0f);
  }
  if (const GgufValue* t = meta.find(key::kTokTypes)) {
    std::vector<int64_t> types = meta.convert(key::kTokTypes, *t, [](const GgufValue& g) { return g.as_int_array(); });
    if (types.size() != n)
      fail("{}: {} has {} entries, {} has {}", meta.path(), key::kTokTypes, types.size(), key::kTokens, n);
    v.types.reserve(n);
    for (size_t i = 0; i < n; ++i) v.types.push_back(token_type_from(meta, types[i], i));
  } else {
    v.types.assign(n, TokenType::Normal);
  }
  v.bos_id = token_id(meta, key::kBos, v.bos_id, n);
  v.eos_id = token_id(meta, key::kEos, v.eos_id, n);
  v.unk_id = token_id(meta, key::kUnk, v.unk_id, n);
  v.add_bos = meta.get_bool(key::kAddBos, v.add_bos);
  v.add_space_prefix = meta.get_bool(key::kAddSpace, v.add_space_prefix);
  for (const auto& tok : v.tokens) v.max_token_length = std::max(v.max_token_length, int(tok.size()));
  return v;
}

// llama.vocab_size, else the token list's length, else the embedding's rows.
int vocab_size(Meta& meta, const ModelFile& m) {
  std::optional<int> from_tokens;
  if (m.vocab) {
    from_tokens = int(m.vocab->tokens.size());
  } else if (const GgufValue* t = meta.reader().find(key::kTokens); t && t->is_array()) {
    from_tokens = int(std::min<size_t>(t->array_size(), INT_MAX));
  }
  if (meta.reader().find(key::kVocabSize)) {
    int n = meta.get_int(key::kVocabSize);
    if (from_tokens && *from_tokens != n)
      fail("{}: {} = {} but the vocabulary has {} tokens", meta.path(), key::kVocabSize, n, *from_tokens);
    return n;
  }
  if (from_tokens) return *from_tokens;
  const TensorView* embd = m.find("token_embd.weight");
  if (embd && embd->shape.size() == 2 && embd->shape[0] <= INT_MAX) return int(embd->shape[0]);
  fail("{}: cannot tell the vocabulary size (no {}, no {}, no token_embd.weight)", meta.path(), key::kVocabSize,
       key::kTokens);
}

LlamaConfig load_config(Meta& meta, const ModelFile& m) {
  LlamaConfig c;
  c.max_seq_len = meta.get_int(key::kContext);
  c.dim = meta.get_int(key::kDim);
  c.n_layers = meta.get_int(key::kLayers);
  c.hidden_dim = meta.get_int(key::kHidden);
  c.n_heads = meta.get_int(key::kHeads);
  c.n_kv_heads = meta.get_int(key::kKvHeads, c.n_heads);
  c.rms_eps = meta.get_float(key::kRmsEps);
  c.rope_theta = meta.get_float(key::kRopeBase, 10000.0f);
  c.rope_style = RopeStyle::Normal;  // GGUF llama stores Q/K for adjacent-pair rope
  c.vocab_size = vocab_size(meta, m);
  c.tied_embeddings = m.find("output.weight") == nullptr;
  c.validate(meta.path());
  int rope_dims = meta.get_int(key::kRopeDims, c.head_dim());
  if (rope_dims != c.head_dim())
    fail("{}: {} = {} but head dim is {}; partial rotary embeddings are not supported", meta.path(), key::kRopeDims,
         rope_dims, c.head_dim());
  return c;
}

// Scalar metadata not already turned into config or vocabulary, for `inspect`.
void copy_other_metadata(const Meta& meta, ModelFile& m) {
  for (const auto& kv : meta.reader().metadata()) {
    if (kv.value.is_array() || meta.used(kv.key)) continue;
    m.metadata.emplace(kv.key, kv.value.to_display());
  }
}

// Limits on the packed-tensor metadata: a spec is short printable ASCII (make_format
// caps it at 256 bytes too) and a matrix holds at most 2^40 stored weights.
constexpr size_t kMaxSpecBytes = 256;
constexpr uint64_t kMaxPackedWeights = uint64_t(1) << 40;
constexpr const char* kPackedPrefix = "quantkit.packed.";

std::string packed_spec(Meta& meta, const std::string& key, const GgufValue& v) {
  std::string spec = meta.convert(key.c_str(), v, [](const GgufValue& g) { return g.as_string(); });
  const bool ascii = std::all_of(spec.begin(), spec.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  if (spec.empty() || spec.size() > kMaxSpecBytes || !ascii)
    fail("{}: metadata '{}' = '{}' is not a format spec (1 to {} printable ASCII bytes)", meta.path(), printable(key),
         printable(spec), kMaxSpecBytes);
  return spec;
}

// [rows, cols, stored_cols] with rows, cols >= 1, cols <= stored_cols, rows * stored_cols bounded.
std::vector<int64_t> packed_shape(Meta& meta, const std::string& key) {
  const GgufValue& v = meta.get(key.c_str());
  const std::vector<int64_t> shape = meta.convert(key.c_str(), v, [](const GgufValue& g) { return g.as_int_array(); });
  if (shape.size() != 3 || shape[0] < 1 || shape[1] < 1 || shape[2] < shape[1])
    fail("{}: metadata '{}' must be [rows, cols, stored_cols] with 1 <= cols <= stored_cols", meta.path(), printable(key));
  const std::optional<uint64_t> n = checked_product(std::span<const int64_t>(shape).subspan(0, 1), uint64_t(shape[2]));
  if (!n || *n > kMaxPackedWeights)
    fail("{}: metadata '{}': {} x {} stored weights exceed the limit of 2^40", meta.path(), printable(key), shape[0],
         shape[2]);
  return shape;
}

// Turns the I8 byte arrays that hold quantkit-format tensors back into packed views, each
// checked against its format's exact storage; packed metadata must name a tensor.
void unpack_quantkit_tensors(Meta& meta, ModelFile& m) {
  std::set<std::string> packed_keys;
  for (TensorView& t : m.tensors) {
    const std::string fk = packed_format_key(t.name), sk = packed_shape_key(t.name);
    const GgufValue* format = meta.find(fk.c_str());
    if (!format) continue;
    packed_keys.insert(fk), packed_keys.insert(sk);
    const std::vector<int64_t> shape = packed_shape(meta, sk);
    if (t.type != DType::I8 || t.shape.size() != 1)
      fail("{}: tensor '{}' holds quantkit-format bits but is not a 1-D i8 array", m.path, printable(t.name));
    t.type = DType::QK;
    t.format = packed_spec(meta, fk, *format);
    t.shape = {shape[0], shape[1]};
    t.stored_cols = shape[2];
    uint64_t need = 0;
    try {
      need = packed_tensor_bytes(t);
    } catch (const Error& e) {
      fail("{}: {}", m.path, e.what());
    }
    if (t.nbytes != need)
      fail("{}: tensor '{}' ({}) holds {} bytes, the format needs exactly {}", m.path, printable(t.name), t.format,
           t.nbytes, need);
  }
  for (const auto& kv : meta.reader().metadata())
    if (kv.key.starts_with(kPackedPrefix) && !packed_keys.count(kv.key))
      fail("{}: metadata '{}' describes no packed tensor of the file", m.path, printable(kv.key));
}

// ---- saving ---------------------------------------------------------------------------

// ggml's LLAMA_FTYPE for a model whose matrices are mostly `t` (-1: none fits).
int ggml_ftype(DType t) {
  switch (t) {
    case DType::F32: return 0;
    case DType::F16: return 1;
    case DType::Q4_0: return 2;
    case DType::Q4_1: return 3;
    case DType::Q8_0: return 7;
    case DType::Q5_0: return 8;
    case DType::Q5_1: return 9;
    case DType::Q2_K: return 10;
    case DType::Q3_K: return 11;  // Q3_K_S: all Q3_K
    case DType::Q4_K: return 14;  // Q4_K_S
    case DType::Q5_K: return 16;  // Q5_K_S
    case DType::Q6_K: return 18;
    case DType::IQ4_NL: return 25;
    case DType::BF16: return 32;
    default: return -1;
  }
}

// The type holding most weights among the matrices (1-D norms are F32 in every ftype).
std::optional<DType> dominant_matrix_type(const ModelFile& m) {
  std::map<DType, int64_t> weight_of;
  for (const auto& t : m.tensors)
    if (t.shape.size() >= 2) weight_of[t.type] += t.numel();
  std::optional<DType> best;
  int64_t best_n = -1;
  for (const auto& [type, n] : weight_of)
    if (n > best_n) best = type, best_n = n;
  return best;
}

void add_config(GgufWriter& w, const ModelFile& m, const std::string& path) {
  const LlamaConfig& c = m.config;
  w.set(key::kArch, GgufValue::string("llama"));
  auto name = m.metadata.find(key::kName);
  w.set(key::kName, GgufValue::string(name != m.metadata.end() ? name->second
                                                               : std::filesystem::path(path).stem().string()));
  w.set_alignment(kGgufDefaultAlignment);
  if (auto t = dominant_matrix_type(m); t && ggml_ftype(*t) >= 0)
    w.set(key::kFileType, GgufValue::u32(uint32_t(ggml_ftype(*t))));
  // llama.cpp checks value types strictly: counts are u32, float parameters f32.
  w.set(key::kContext, GgufValue::u32(uint32_t(c.max_seq_len)));
  w.set(key::kDim, GgufValue::u32(uint32_t(c.dim)));
  w.set(key::kLayers, GgufValue::u32(uint32_t(c.n_layers)));
  w.set(key::kHidden, GgufValue::u32(uint32_t(c.hidden_dim)));
  w.set(key::kHeads, GgufValue::u32(uint32_t(c.n_heads)));
  w.set(key::kKvHeads, GgufValue::u32(uint32_t(c.n_kv_heads)));
  w.set(key::kRmsEps, GgufValue::f32(c.rms_eps));
  w.set(key::kRopeBase, GgufValue::f32(c.rope_theta));
  w.set(key::kRopeDims, GgufValue::u32(uint32_t(c.head_dim())));
  w.set(key::kVocabSize, GgufValue::u32(uint32_t(c.vocab_size)));
}

void add_vocab(GgufWriter& w, const ModelFile& m) {
  if (!m.vocab) {
    // llama.cpp requires a tokenizer model; "no_vocab" loads the weights without one.
    w.set(key::kTokModel, GgufValue::string("no_vocab"));
    return;
  }
  const Vocab& v = *m.vocab;
  const size_t n = v.tokens.size();
  if (v.model != "llama") fail("vocabulary model '{}' cannot be written to GGUF (only 'llama')", v.model);
  if (n != size_t(m.config.vocab_size))
    fail("vocabulary has {} tokens but vocab_size is {}", n, m.config.vocab_size);
  if (!v.scores.empty() && v.scores.size() != n) fail("vocabulary has {} tokens but {} scores", n, v.scores.size());
  if (!v.types.empty() && v.types.size() != n) fail("vocabulary has {} tokens but {} token types", n, v.types.size());
  for (int id : {v.bos_id, v.eos_id, v.unk_id})
    if (id < 0 || size_t(id) >= n) fail("special token id {} is out of range (vocabulary of {})", id, n);

  std::vector<float> scores = v.scores.empty() ? std::vector<float>(n, 0.0f) : v.scores;
  std::vector<int32_t> types(n, int32_t(TokenType::Normal));
  for (size_t i = 0; i < v.types.size(); ++i) types[i] = int32_t(v.types[i]);
  w.set(key::kTokModel, GgufValue::string("llama"));
  w.set(key::kTokens, GgufValue::array(v.tokens));
  w.set(key::kScores, GgufValue::array(scores));
  w.set(key::kTokTypes, GgufValue::array(types));
  w.set(key::kBos, GgufValue::u32(uint32_t(v.bos_id)));
  w.set(key::kEos, GgufValue::u32(uint32_t(v.eos_id)));
  w.set(key::kUnk, GgufValue::u32(uint32_t(v.unk_id)));
  w.set(key::kAddBos, GgufValue::boolean(v.add_bos));
  w.set(key::kAddSpace, GgufValue::boolean(v.add_space_prefix));
}

bool is_qk_weight(const std::string& name) {
  auto ends_with = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return name.rfind("blk.", 0) == 0 && (ends_with(".attn_q.weight") || ends_with(".attn_k.weight"));
}

// Adds every tensor with its own type; Q/K of a NeoX-layout model are permuted into the
// adjacent-pair layout llama.cpp expects. Permuted copies are kept in `owned`.
void add_tensors(GgufWriter& w, const ModelFile& m, std::vector<std::vector<uint8_t>>& owned) {
  owned.reserve(2 * size_t(m.config.n_layers));
  for (const auto& t : m.tensors) {
    if (t.type == DType::QK) {
      // Q/K rows of a packed tensor cannot be permuted: quantize() stores them in the
      // Normal layout already.
      if (m.config.rope_style != RopeStyle::Normal && is_qk_weight(t.name))
        fail("tensor '{}' is packed in the NeoX rope layout; GGUF needs the Normal layout", t.name);
      w.set(packed_format_key(t.name), GgufValue::string(t.format));
      w.set(packed_shape_key(t.name),
            GgufValue::array(std::vector<int64_t>{t.shape.at(0), t.shape.at(1), t.stored_cols ? t.stored_cols : t.shape.at(1)}));
      w.add_tensor(t.name, DType::I8, {int64_t(t.nbytes)}, t.data, t.nbytes);
    } else if (m.config.rope_style != RopeStyle::Normal && is_qk_weight(t.name)) {
      bool is_q = t.name.find(".attn_q.") != std::string::npos;
      int heads = is_q ? m.config.n_heads : m.config.n_kv_heads;
      owned.push_back(permute_qk_rows(t, heads, m.config.rope_style, RopeStyle::Normal));
      w.add_tensor(t.name, t.type, t.shape, owned.back().data(), owned.back().size());
    } else {
      w.add_tensor(t.name, t.type, t.shape, t.data, t.nbytes);
    }
  }
}

}  // namespace

ModelFile load_gguf_model(const std::string& path) {
  const std::vector<std::unique_ptr<GgufReader>> shards = open_gguf_split(path);
  const GgufReader& reader = *shards[0];  // a split's metadata is in its first shard
  Meta meta(reader);
  check_architecture(meta);

  ModelFile m;
  m.path = path;
  m.container = "gguf";
  for (const auto& r : shards) {
    m.tensors.insert(m.tensors.end(), r->tensors().begin(), r->tensors().end());
    m.storage.push_back(r->mapping());
  }
  unpack_quantkit_tensors(meta, m);
  m.vocab = load_vocab(meta, m);
  m.config = load_config(meta, m);
  copy_other_metadata(meta, m);
  check_llama_tensors(m);
  return m;
}

namespace {

// The whole file of m; permuted copies of tensors go to `owned`, which must outlive writing.
GgufWriter model_writer(const ModelFile& m, const std::string& path, std::vector<std::vector<uint8_t>>& owned) {
  m.config.validate(m.path);
  check_llama_tensors(m);
  GgufWriter w;
  try {
    add_config(w, m, path);
    add_vocab(w, m);
    add_tensors(w, m, owned);
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
  return w;
}

}  // namespace

void save_gguf_model(const ModelFile& m, const std::string& path) {
  std::vector<std::vector<uint8_t>> owned;
  model_writer(m, path, owned).write(path);
}

std::vector<std::string> save_gguf_shards(const ModelFile& m, const std::string& path, const ShardLayout& layout) {
  std::vector<std::vector<uint8_t>> owned;
  const GgufWriter w = model_writer(m, path, owned);
  std::vector<uint64_t> bytes;  // as gguf-split balances: data padded to the alignment
  for (size_t i = 0; i < w.tensor_count(); ++i)
    bytes.push_back((w.tensor_nbytes(i) + kGgufDefaultAlignment - 1) / kGgufDefaultAlignment * kGgufDefaultAlignment);
  const std::vector<int> shard = plan_shards(bytes, layout.count, path);
  std::vector<OutputFile> files;
  for (size_t begin = 0; begin < shard.size();) {
    const int k = shard[begin];
    size_t end = begin;
    while (end < shard.size() && shard[end] == k) ++end;
    GgufWriter part = w.slice(begin, end, k == 0);  // the metadata in the first shard, as gguf-split
    part.set(kGgufSplitNo, GgufValue::u16(uint16_t(k)));
    part.set(kGgufSplitCount, GgufValue::u16(uint16_t(layout.count)));
    part.set(kGgufSplitTensors, GgufValue::i32(int32_t(w.tensor_count())));
    OutputFile f{shard_path(path, k, layout.count), part.file_size(), k == 0, {}};
    f.write = [part = std::move(part)](const ByteSink& sink) { part.write_to(sink); };
    files.push_back(std::move(f));
    begin = end;
  }
  return write_files(layout.comm, files);
}

}  // namespace quantkit
