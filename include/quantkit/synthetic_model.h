// Synthetic Llama models for speed measurement: the shapes of a real model, seeded random
// weights, a minimal SentencePiece vocabulary, the 2-D weights stored as `quantize --method
// rtn` would store them. Speed does not depend on the values; quality numbers measured on
// these models mean nothing (random weights: for speed measurement only, never for quality).
//
// Weights: N(0, 0.02^2); the residual out-projections (attn_output, ffn_down) scaled by
// 1/sqrt(2 n_layers) as GPT-2 initialises them; norms 1; untied output head.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "quantkit/model_file.h"

namespace quantkit {

inline constexpr const char* kSyntheticNote = "random weights: for speed measurement only, never for quality";

struct SyntheticOptions {
  LlamaConfig config;            // shapes: dim, layers, heads, KV heads, hidden, vocab, context
  uint64_t seed = 0;
  std::string format = "f16";    // layer matrices: f32, f16, bf16 or any format spec (round to nearest)
  std::string embedding_format;  // token_embd/output; empty: `format` if it is a float type, else q8_0
  bool vocab = true;             // a vocabulary of config.vocab_size tokens (synthetic_vocab)
};

// What token_embd/output are stored as (opt.embedding_format resolved).
std::string synthetic_embedding_format(const SyntheticOptions& opt);

// The ~1B shape of `quantkit synth`'s defaults: dim 2048, 16 layers, 16 heads / 8 KV heads,
// hidden 5632, vocab 32000, context 2048 (0.89B parameters).
LlamaConfig synthetic_1b_config();

// Tensors done, total, name of the tensor just done.
using SyntheticProgress = std::function<void(int done, int total, const std::string& name)>;

// The model in memory. Each tensor is generated in FP32, quantized and dropped, so memory
// peaks at the stored model plus one FP32 tensor. The same bytes for any thread count.
// Throws Error on a bad config or format spec (before generating anything).
ModelFile make_synthetic_model(const SyntheticOptions& opt, const SyntheticProgress& progress = nullptr);

// make_synthetic_model written as GGUF (atomically), loadable by llama.cpp.
void write_synthetic_model(const SyntheticOptions& opt, const std::string& path,
                           const SyntheticProgress& progress = nullptr);

// n tokens: <unk>, <s>, </s>; the 256 byte tokens <0xNN> when n leaves room for them and the
// alphabet; then every string over {U+2581, a..z} by length (scores falling with the index),
// so lowercase text tokenizes into multi-character pieces with quantkit and llama.cpp alike.
// Without byte tokens (n < 286) other characters are unknown. n >= 3 + 27.
Vocab synthetic_vocab(int n);

// Fills out[0, n) with N(0, sigma^2) samples of the stream (seed, stream): each 16 bits of a
// splitmix64 sequence pick one of 65536 normal quantiles (a Gaussian at 16-bit resolution,
// tails to 4.3 sigma), about 1 ns per value. Split work by stream for thread-count
// independent results.
void fill_gaussian(uint64_t seed, uint64_t stream, float sigma, float* out, int64_t n);

}  // namespace quantkit
