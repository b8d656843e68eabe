// llama2.c checkpoints ("version 0": 7 int32 header, float32 tensors stacked per kind)
// and llama2.c tokenizer files (max_token_length, then per token score/len/bytes).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>

#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/mapped_file.h"

namespace quantkit {
namespace {

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// Reads the header and turns it into a validated config.
LlamaConfig config_from_header(const Llama2cHeader& h, const std::string& path) {
  LlamaConfig c;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  // A positive vocab size means the classifier shares the token embedding.
  c.tied_embeddings = h.vocab_size > 0;
  c.vocab_size = h.vocab_size == INT32_MIN ? 0 : std::abs(h.vocab_size);
  c.max_seq_len = h.seq_len;
  c.rope_style = RopeStyle::Normal;
  c.rms_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.validate(path);
  return c;
}

// Canonical order, layer by layer (the checkpoint stacks each kind over all layers).
void sort_llama_tensors(std::vector<TensorView>& tensors) {
  static const char* kOrder[] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"};
  auto rank = [](const std::string& name) -> std::pair<int, int> {
    if (name == "token_embd.weight") return {-1, 0};
    if (name.rfind("blk.", 0) != 0) return {1 << 30, name == "output.weight"};
    const size_t dot = name.find('.', 4);
    const int layer = std::stoi(name.substr(4, dot - 4));
    const std::string kind = name.substr(dot + 1, name.rfind('.') - dot - 1);
    for (int i = 0; i < 9; ++i)
      if (kind == kOrder[i]) return {layer, i};
    return {layer, 9};
  };
  std::stable_sort(tensors.begin(), tensors.end(),
                   [&](const TensorView& a, const TensorView& b) { return rank(a.name) < rank(b.name); });
}

}  // namespace

ModelFile load_llama2c_model(const std::string& path, const std::string& tokenizer_path) {
  auto file = std::make_shared<MappedFile>(path);
  if (file->size() < sizeof(Llama2cHeader))
    fail("{}: too small for a llama2.c checkpoint ({} bytes, header needs {})", path, file->size(),
         sizeof(Llama2cHeader));
  Llama2cHeader h;
  std::memcpy(&h, file->data(), sizeof h);
  ModelFile m;
  m.path = path;
  m.container = "llama2c";
  m.config = config_from_header(h, path);
  const LlamaConfig& c = m.config;

  const int64_t dim = c.dim, hidden = c.hidden_dim, L = c.n_layers, vocab = c.vocab_size;
  const int64_t kv_dim = c.kv_dim(), head = c.head_dim();
  uint64_t offset = sizeof(Llama2cHeader);
  const uint64_t size = file->size();
  // Slices the next `count` stacked tensors of `shape` out of the file.
  auto take = [&](const std::string& kind, int64_t count, std::vector<int64_t> shape,
                  const std::function<std::string(int64_t)>& name) {
    const uint64_t bytes = uint64_t(shape_numel(shape)) * 4;
    uint64_t total, end;
    if (mul_overflows(bytes, uint64_t(count), &total) || add_overflows(offset, total, &end) || end > size)
      fail("{}: truncated: tensor {} needs bytes up to {}, file has {}", path, kind, offset + total, size);
    for (int64_t i = 0; i < count; ++i) {
      m.tensors.push_back({name(i), DType::F32, shape, file->data() + offset, bytes});
      offset += bytes;
    }
  };
  auto layer = [](const char* suffix) {
    return [suffix](int64_t l) { return "blk." + std::to_string(l) + "." + suffix; };
  };
  auto single = [](const char* n) { return [n](int64_t) { return std::string(n); }; };
  take("token_embedding", 1, {vocab, dim}, single("token_embd.weight"));
  take("rms_att", L, {dim}, layer("attn_norm.weight"));
  take("wq", L, {dim, dim}, layer("attn_q.weight"));
  take("wk", L, {kv_dim, dim}, layer("attn_k.weight"));
  take("wv", L, {kv_dim, dim}, layer("attn_v.weight"));
  take("wo", L, {dim, dim}, layer("attn_output.weight"));
  take("rms_ffn", L, {dim}, layer("ffn_norm.weight"));
  take("w1", L, {hidden, dim}, layer("ffn_gate.weight"));
  take("w2", L, {dim, hidden}, layer("ffn_down.weight"));
  take("w3", L, {hidden, dim}, layer("ffn_up.weight"));
  take("rms_final", 1, {dim}, single("output_norm.weight"));
  // Two unused RoPE tables (freq_cis_real/imag) follow; skip them.
  const uint64_t rope_tables = uint64_t(c.max_seq_len) * uint64_t(head / 2) * 4 * 2;
  if (offset + rope_tables > size) fail("{}: truncated: RoPE tables end past the file end", path);
  offset += rope_tables;
  if (!c.tied_embeddings) take("wcls", 1, {vocab, dim}, single("output.weight"));
  if (offset != size)
    fail("{}: {} trailing bytes after the last tensor (wrong header or not a llama2.c checkpoint)", path,
         size - offset);
  sort_llama_tensors(m.tensors);
  m.storage.push_back(file);
  m.metadata["general.name"] = path.substr(path.find_last_of('/') + 1);
  if (!tokenizer_path.empty()) {
    m.vocab = load_llama2c_vocab(tokenizer_path);
    if (int(m.vocab->tokens.size()) != c.vocab_size)
      fail("{}: tokenizer has {} tokens but the model {} has vocab_size {}", tokenizer_path,
           m.vocab->tokens.size(), path, c.vocab_size);
  }
  return m;
}

Vocab load_llama2c_vocab(const std::string& path) {
  MappedFile f(path);
  const uint8_t* p = f.data();
  const uint64_t size = f.size();
  uint64_t off = 0;
  auto read_i32 = [&](const char* what) {
    if (size - off < 4) fail("{}: truncated while reading {} of token {}", path, what, off);
    int32_t v;
    std::memcpy(&v, p + off, 4);
    off += 4;
    return v;
  };
  Vocab v;
  v.max_token_length = read_i32("max_token_length");
  if (v.max_token_length <= 0 || v.max_token_length > 4096)
    fail("{}: max_token_length {} is out of range [1, 4096]", path, v.max_token_length);
  while (off < size) {
    const size_t id = v.tokens.size();
    if (id >= (1u << 24)) fail("{}: more than {} tokens", path, 1u << 24);
    int32_t score_bits = read_i32("score");
    float score;
    std::memcpy(&score, &score_bits, 4);
    if (std::isnan(score)) fail("{}: score of token {} is NaN", path, id);  // merges are ordered by score
    int32_t len = read_i32("length");
    if (len < 0 || len > v.max_token_length)
      fail("{}: token {} has length {} outside [0, max_token_length={}]", path, id, len, v.max_token_length);
    if (size - off < uint64_t(len)) fail("{}: truncated inside the bytes of token {}", path, id);
    std::string text(reinterpret_cast<const char*>(p + off), size_t(len));
    off += uint64_t(len);
    // llama2.c stores BOS/EOS as "\n<s>\n"/"\n</s>\n" and spaces as real spaces; quantkit's
    // vocabulary uses SentencePiece's spelling so one tokenizer serves GGUF and llama2.c.
    TokenType type = TokenType::Normal;
    if (id == 0) {
      type = TokenType::Unknown;
    } else if (text == "\n<s>\n" || text == "\n</s>\n") {
      text = text.substr(1, text.size() - 2);
      type = TokenType::Control;
    } else if (text.size() == 6 && text.compare(0, 3, "<0x") == 0 && text[5] == '>') {
      type = TokenType::Byte;
    } else {
      std::string spm;
      for (char ch : text) spm += ch == ' ' ? std::string("\xE2\x96\x81") : std::string(1, ch);
      text = std::move(spm);
    }
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.types.push_back(type);
  }
  if (v.tokens.size() < 3) fail("{}: only {} tokens, need at least <unk>, BOS, EOS", path, v.tokens.size());
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  return v;
}

}  // namespace quantkit
