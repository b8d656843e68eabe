// Container-specific model loaders and writers behind load_model() and `convert`.
// Each throws quantkit::Error with a one-line message naming the file on bad input.
#pragma once
#include <string>

#include "quantkit/model_file.h"

namespace quantkit {

// GGUF (src/io/gguf_model.cpp). Writes m.tensors with their own types and bytes, plus
// Llama hyper-parameters and the vocabulary as GGUF metadata (what llama.cpp reads).
ModelFile load_gguf_model(const std::string& path);
void save_gguf_model(const ModelFile& m, const std::string& path);

// safetensors (src/io/hf_model.cpp): `path` is a .safetensors file (config.json beside
// it) or a folder with config.json and model.safetensors or model.safetensors.index.json;
// quantkit_vocab.json carries the tokenizer of models quantkit wrote.
// Hugging Face tensor names; Q/K in NeoX (half-split) rope layout.
ModelFile load_safetensors_model(const std::string& path);
// Writes a Hugging Face style folder: config.json, tokenizer vocabulary
// (quantkit_vocab.json), model.safetensors, or shards + model.safetensors.index.json when the
// tensors exceed max_shard_bytes. Tensors are converted to `dtype` (F32/F16/BF16);
// Q/K are permuted to the NeoX layout when m is in the Normal layout.
void save_safetensors_model(const ModelFile& m, const std::string& dir, DType dtype,
                            uint64_t max_shard_bytes = uint64_t(5) << 30);

// llama2.c (src/io/llama2c.cpp): checkpoint "version 0" + tokenizer.bin.
ModelFile load_llama2c_model(const std::string& path, const std::string& tokenizer_path);
Vocab load_llama2c_vocab(const std::string& path);

}  // namespace quantkit
