// The Llama weights a config implies, under their canonical (GGUF) names, and the checks
// every loader runs on them, so each container reports a wrong or missing tensor the
// same way.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quantkit/model_file.h"

namespace quantkit {

// "blk.<layer>.<suffix>.weight", e.g. llama_tensor_name(3, "attn_q") = "blk.3.attn_q.weight".
std::string llama_tensor_name(int layer, const char* suffix);

struct LlamaTensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // row-major [out, in]
  bool required = true;
};

// Every tensor of a Llama model in GGUF order: token_embd, per layer attn_norm, attn_q,
// attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_down, ffn_up, then output_norm and
// output (required unless the config ties the embeddings).
std::vector<LlamaTensorSpec> llama_tensor_specs(const LlamaConfig& c);

// Throws Error "<m.path>: ..." if a required tensor is missing, a tensor has the wrong
// shape (naming expected and actual), or its data is too small for its type and shape.
void check_llama_tensors(const ModelFile& m);

// Reorders the rows of a Q or K weight ([n_heads * head_dim, in], any dtype: rows are
// permuted whole) from one rope layout to the other. Normal pairs rows (2i, 2i+1) of each
// head; NeoX pairs (i, i + head_dim/2). Returns the permuted bytes (a copy of the input
// when from == to).
std::vector<uint8_t> permute_qk_rows(const TensorView& t, int n_heads, RopeStyle from, RopeStyle to);

}  // namespace quantkit
