// The model as files describe it: Llama hyper-parameters, the tokenizer vocabulary and
// named weight tensors, independent of the container (GGUF, safetensors, llama2.c).
//
// Canonical tensor names are GGUF's (token_embd.weight, blk.N.attn_q.weight, ...,
// output_norm.weight, output.weight), shapes row-major [out, in]. Q/K weights are stored
// in the layout the file's rope style expects (RopeStyle::Normal for llama2.c/GGUF,
// RopeStyle::NeoX for Hugging Face); the runtime applies the matching rotation.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "quantkit/tensor.h"

namespace quantkit {

enum class RopeStyle { Normal, NeoX };  // Normal: pairs (2i, 2i+1); NeoX: pairs (i, i + d/2)

struct LlamaConfig {
  int dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int hidden_dim = 0;
  int vocab_size = 0;
  int max_seq_len = 0;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeStyle rope_style = RopeStyle::Normal;
  bool tied_embeddings = false;  // no output.weight: the head reuses token_embd.weight

  int head_dim() const { return n_heads ? dim / n_heads : 0; }
  int kv_dim() const { return n_heads ? n_kv_heads * head_dim() : 0; }
  void validate(const std::string& file) const;  // throws Error on absurd values
};

enum class TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

// SentencePiece-style vocabulary (tokenizer.ggml.model = "llama"). Token texts use
// U+2581 for spaces as in GGUF / SentencePiece; byte tokens are "<0xNN>".
struct Vocab {
  std::string model = "llama";
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<TokenType> types;
  int bos_id = 1;
  int eos_id = 2;
  int unk_id = 0;
  bool add_bos = true;
  bool add_space_prefix = true;
  int max_token_length = 0;
};

class MappedFile;

// A loaded model: hyper-parameters, vocabulary, weights. Views point into the memory
// mappings (or owned buffers) held by `storage`.
struct ModelFile {
  std::string path;
  std::string container;  // "gguf", "safetensors", "llama2c"
  LlamaConfig config;
  std::optional<Vocab> vocab;
  std::vector<TensorView> tensors;                    // in file order
  std::map<std::string, std::string> metadata;        // other scalar metadata, printed by inspect
  std::vector<std::shared_ptr<const void>> storage;   // keeps mappings/buffers alive

  const TensorView* find(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // throws Error naming file + tensor
};

// Opens any model quantkit reads: a GGUF file, a safetensors file or folder (with
// config.json, optionally sharded), or a llama2.c checkpoint (its tokenizer given
// separately). Detects the container from the magic bytes / folder contents.
ModelFile load_model(const std::string& path, const std::string& tokenizer_path = "");

}  // namespace quantkit
