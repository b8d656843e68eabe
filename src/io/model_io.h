// Container-specific model loaders and writers behind load_model() and `convert`.
// Each throws quantkit::Error with a one-line message naming the file on bad input.
#pragma once
#include <string>
#include <vector>

#include "io/shards.h"
#include "quantkit/model_file.h"

namespace quantkit {

// GGUF (src/io/gguf_model.cpp). Writes m.tensors with their own types and bytes, plus
// Llama hyper-parameters and the vocabulary as GGUF metadata (what llama.cpp reads).
// A GGUF split (src/io/shards.h) loads from the path of any of its shards.
ModelFile load_gguf_model(const std::string& path);
void save_gguf_model(const ModelFile& m, const std::string& path);
// The same file as a GGUF split of layout.count shards, named shard_path(path, k, count)
// (llama.cpp loads it from the first); returns the paths written.
std::vector<std::string> save_gguf_shards(const ModelFile& m, const std::string& path, const ShardLayout& layout);

// safetensors (src/io/hf_model.cpp): `path` is a .safetensors file (config.json beside
// it) or a folder with config.json and model.safetensors or model.safetensors.index.json;
// quantkit_vocab.json carries the tokenizer of models quantkit wrote.
// Hugging Face tensor names; Q/K in NeoX (half-split) rope layout. GPTQ checkpoints
// (quantization_config quant_method "gptq", 4 or 8 bits, g_idx = column / group_size) load
// each qweight/qzeros/scales module as a packed int tensor (DType::QK, "int4:g128[:asym]").
ModelFile load_safetensors_model(const std::string& path);
// Writes a Hugging Face style folder: config.json, tokenizer vocabulary
// (quantkit_vocab.json), model.safetensors, or shards + model.safetensors.index.json when the
// tensors exceed shards.max_bytes or shards.count is set. Tensors are converted to `dtype` (F32/F16/BF16);
// Q/K are permuted to the NeoX layout when m is in the Normal layout.
void save_safetensors_model(const ModelFile& m, const std::string& dir, DType dtype,
                            const ShardLayout& shards = {});

// GPTQ checkpoint (src/io/gptq_checkpoint.cpp): the layout transformers (optimum /
// AutoGPTQ, quant_method "gptq", checkpoint_format "gptq") and vLLM load. Layer weights in
// the model's one int format (int4/int8, :g<G> or :row, sym or :asym) become
// <module>.qweight int32 [in/(32/b), out] (codes packed along the input, LSB first),
// .qzeros int32 [groups, out/(32/b)] (zero point - 1), .scales fp16 [groups, out] and
// .g_idx int32 [in] (column / G); Q/K outputs permuted to the NeoX layout. Everything else
// goes out as fp16 (dequantized), as do layer weights HF cannot hold (group_size not
// dividing in_features, out_features not a multiple of 32/b, other formats) — listed in
// the report and left out of quantization_config.modules_in_block_to_quantize. Throws
// Error naming the tensor when layer weights use int formats GPTQ cannot express
// (int3, :mid, :tensor) or differ in bits / group size / symmetry.
struct GptqReport {
  int bits = 0;
  int64_t group_size = 0;  // -1: per row
  bool sym = true;
  std::vector<std::string> packed;  // canonical names written as qweight/qzeros/scales/g_idx
  struct Dequantized {
    std::string name, type, reason;  // type: format spec or dtype name
  };
  std::vector<Dequantized> dequantized;  // quantized or layer tensors written as fp16, and why
};
GptqReport save_gptq_safetensors(const ModelFile& m, const std::string& dir, const ShardLayout& shards = {});

// llama2.c (src/io/llama2c.cpp): checkpoint "version 0" + tokenizer.bin.
ModelFile load_llama2c_model(const std::string& path, const std::string& tokenizer_path);
Vocab load_llama2c_vocab(const std::string& path);

}  // namespace quantkit
