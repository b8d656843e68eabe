// Small valid models written by quantkit's own writers (or, for llama2.c, which quantkit
// only reads, laid out here from the format's definition): the seed corpus of the fuzz
// targets and the starting point of every corruption in tests/malformed_files_test.cpp.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "io/llama_tensors.h"
#include "quantkit/model_file.h"

namespace qk_seed {

// Deterministic floats in [-scale, scale) (xorshift32): seeds stay byte-identical.
inline std::vector<float> floats(size_t n, uint32_t seed, float scale = 0.1f) {
  std::vector<float> out(n);
  uint32_t x = seed * 2654435761u + 1;
  for (float& v : out) {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    v = scale * (float(x >> 8) / float(1 << 23) - 1.0f);
  }
  return out;
}

// SentencePiece-style vocabulary of n >= 12 tokens: <unk>, BOS, EOS, two byte tokens, a few
// merges, then filler.
inline quantkit::Vocab tiny_vocab(int n) {
  using quantkit::TokenType;
  quantkit::Vocab v;
  v.tokens = {"<unk>", "<s>", "</s>", "<0x41>", "<0x0A>", "\xe2\x96\x81", "a", "b", "ab", "\xe2\x96\x81" "ab",
              "\xe2\x96\x81the", "\xc3\xa9"};
  for (int i = int(v.tokens.size()); i < n; ++i) v.tokens.push_back("t" + std::to_string(i));
  v.tokens.resize(size_t(n));
  for (int i = 0; i < n; ++i) {
    v.scores.push_back(-0.5f * float(i));
    v.types.push_back(i == 0 ? TokenType::Unknown : i < 3 ? TokenType::Control : i < 5 ? TokenType::Byte : TokenType::Normal);
  }
  v.add_space_prefix = true;
  for (const auto& t : v.tokens) v.max_token_length = std::max(v.max_token_length, int(t.size()));
  return v;
}

// A Llama with dim 16, 2 heads, 1 KV head, hidden 32, vocab 16, context 16, f32 weights
// owned by m.storage, Q/K in the Normal rope layout.
inline quantkit::ModelFile tiny_model(int n_layers = 1, bool tied = false, uint32_t seed = 1) {
  using namespace quantkit;
  ModelFile m;
  m.path = "tiny";
  m.container = "memory";
  LlamaConfig& c = m.config;
  c.dim = 16, c.n_layers = n_layers, c.n_heads = 2, c.n_kv_heads = 1, c.hidden_dim = 32, c.vocab_size = 16;
  c.max_seq_len = 16, c.rms_eps = 1e-5f, c.rope_theta = 10000.0f, c.rope_style = RopeStyle::Normal;
  c.tied_embeddings = tied;
  for (const auto& spec : llama_tensor_specs(c)) {
    if (!spec.required && tied) continue;
    const bool norm = spec.shape.size() == 1;
    auto buf = std::make_shared<std::vector<float>>(norm ? std::vector<float>(size_t(spec.shape[0]), 1.0f)
                                                         : floats(size_t(shape_numel(spec.shape)), seed++));
    m.tensors.push_back({spec.name, DType::F32, spec.shape, buf->data(), buf->size() * 4, "", 0});
    m.storage.push_back(buf);
  }
  m.vocab = tiny_vocab(c.vocab_size);
  m.metadata["general.name"] = "tiny";
  return m;
}

namespace detail {
template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}
inline void put_tensor(std::string& out, const quantkit::ModelFile& m, const std::string& name) {
  const quantkit::TensorView& t = m.get(name);
  out.append(static_cast<const char*>(t.data), t.nbytes);
}
}  // namespace detail

// The llama2.c checkpoint ("version 0") of an f32 model in the Normal rope layout: seven
// int32 (dim, hidden, layers, heads, kv heads, vocab (negative: untied head), context),
// each tensor kind stacked over the layers, two RoPE tables, then the head if untied.
inline std::string llama2c_checkpoint(const quantkit::ModelFile& m) {
  using detail::put;
  const quantkit::LlamaConfig& c = m.config;
  std::string out;
  for (int32_t v : {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                    c.tied_embeddings ? c.vocab_size : -c.vocab_size, c.max_seq_len})
    put(out, v);
  detail::put_tensor(out, m, "token_embd.weight");
  for (const char* kind : {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                           "ffn_down", "ffn_up"})
    for (int l = 0; l < c.n_layers; ++l) detail::put_tensor(out, m, quantkit::llama_tensor_name(l, kind));
  detail::put_tensor(out, m, "output_norm.weight");
  out.append(size_t(c.max_seq_len) * size_t(c.head_dim() / 2) * 4 * 2, '\0');  // unused RoPE tables
  if (!c.tied_embeddings) detail::put_tensor(out, m, "output.weight");
  return out;
}

// The llama2.c tokenizer file of a vocabulary in SentencePiece spelling: int32
// max_token_length, then per token float score, int32 length, bytes (spaces as ' ',
// BOS/EOS as "\n<s>\n" / "\n</s>\n").
inline std::string llama2c_tokenizer(const quantkit::Vocab& v) {
  using detail::put;
  std::vector<std::string> texts;
  int32_t max_len = 1;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    std::string t = v.tokens[i];
    if (i == 1 || i == 2) {
      t = "\n" + t + "\n";
    } else {
      for (size_t p; (p = t.find("\xe2\x96\x81")) != std::string::npos;) t.replace(p, 3, " ");
    }
    max_len = std::max(max_len, int32_t(t.size()));
    texts.push_back(std::move(t));
  }
  std::string out;
  put(out, max_len);
  for (size_t i = 0; i < texts.size(); ++i) {
    put(out, v.scores[i]);
    put(out, int32_t(texts[i].size()));
    out += texts[i];
  }
  return out;
}

}  // namespace qk_seed
