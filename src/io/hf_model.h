// Pieces shared by the Hugging Face writers and loader: the dequantized writer and the
// loader (src/io/hf_model.cpp) and the GPTQ checkpoint layout (src/io/gptq_checkpoint.cpp).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "quantkit/model_file.h"

namespace quantkit {

// config.json of m (Llama hyper-parameters, torch_dtype, BOS/EOS ids).
nlohmann::ordered_json hf_config_json(const ModelFile& m, DType dtype);

// Tensor v under its Hugging Face name in `dtype` (F32/F16/BF16), Q/K rows permuted to the
// NeoX layout when m is in the Normal layout; converted lazily when written.
SafetensorsTensor hf_float_tensor(const ModelFile& m, const TensorView& v, DType dtype);

// Heads whose rows must be permuted from Normal to NeoX for tensor `name` of m; 0 if none.
int hf_permuted_heads(const ModelFile& m, const std::string& name);

// Writes a Hugging Face folder: the tensors (sharded as `shards` says), the tokenizer
// (quantkit_vocab.json), quantize_config.json when given (else a stale one is removed), and
// config.json last, so the folder is a loadable model only once everything is in place.
void write_hf_folder(const ModelFile& m, const std::string& dir, const std::vector<SafetensorsTensor>& tensors,
                     const nlohmann::ordered_json& config, const nlohmann::ordered_json* quantize_config,
                     const ShardLayout& shards);

// ---- GPTQ checkpoints (src/io/gptq_checkpoint.cpp) ----

// config.json "quantization_config" of a GPTQ checkpoint.
struct GptqScheme {
  int bits = 4;               // 4 or 8
  int64_t group_size = 128;   // -1: one group per row
  bool sym = true;            // zero points all 2^(bits-1)
  bool zeros_minus_one = true;  // checkpoint_format "gptq" (v1) stores zero - 1; "gptq_v2" the zero
};

// The tensors of one GPTQ linear module "<hf>.qweight" etc. (g_idx may be absent).
struct GptqModule {
  std::string hf;  // "model.layers.0.self_attn.q_proj"
  const TensorView* qweight = nullptr;
  const TensorView* qzeros = nullptr;
  const TensorView* scales = nullptr;
  const TensorView* g_idx = nullptr;
};

// The module as a quantkit packed view (DType::QK, int format of the scheme) named `name`;
// its bytes are appended to `storage`. Throws Error "<file>: ..." naming the module when
// its tensors do not match the scheme or g_idx is not the plain column / group_size.
TensorView gptq_packed_view(const std::string& file, const std::string& name, const GptqScheme& s,
                            const GptqModule& mod, std::vector<std::shared_ptr<const void>>& storage);

}  // namespace quantkit
