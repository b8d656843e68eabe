// Llama-family forward pass in FP32: embeddings, RMSNorm, RoPE (Normal or NeoX
// pairing), grouped-query causal attention with a KV cache, SwiGLU FFN, tied or untied
// head. forward() takes a batch of consecutive tokens (a whole window for evaluation,
// one token for generation).
#pragma once
#include <functional>
#include <memory>
#include <vector>

#include "quantkit/kv_cache.h"
#include "quantkit/linear.h"
#include "quantkit/model_file.h"

namespace quantkit {

struct LlamaLayer {
  std::vector<float> attn_norm, ffn_norm;
  std::unique_ptr<Linear> wq, wk, wv, wo, w_gate, w_up, w_down;
};

// Keys and values of every processed position, per layer, head-major:
// [n_kv_heads, capacity, head_dim], so attention streams each head's positions from
// contiguous memory (position-major rows put every head_dim slice on its own 4 KiB page at
// real widths, where the hardware prefetchers stop). A side in f16 (--kv f16) lives in
// k16 / v16 instead of k / v. With a quantized KV spec, `quant` holds them and all stay empty.
struct KVCache {
  std::vector<std::vector<float>> k, v;
  std::vector<std::vector<uint16_t>> k16, v16;
  int capacity = 0;
  std::unique_ptr<QuantizedKV> quant;
};

// Where attention reads keys/values. Without `quant`, everything comes from k and v (or
// their FP16 forms k16 / v16, when set). With `quant`, for a query at position p keys
// j < quant->quantized_keys(p + 1) are read packed (quant->key_scores on `layer`), the
// others from k, which holds positions from k_first on (values likewise, from v_first).
// Element d of kv head h at position j is at [h * head_stride + (j - first) * row_stride + d].
struct AttentionKV {
  const float *k = nullptr, *v = nullptr;
  const uint16_t *k16 = nullptr, *v16 = nullptr;
  const QuantizedKV* quant = nullptr;
  int layer = 0, k_first = 0, v_first = 0;
  int64_t head_stride = 0, row_stride = 0;
};

// The four activations that feed a layer's linear maps (q/k/v share one, gate/up share
// one): what calibration captures to build each weight's input Hessian.
enum class LinearInput { Attention, AttentionOutput, Ffn, FfnDown };

// Sees every linear input of a layer as it is computed: x is [n, width].
using LinearInputObserver = std::function<void(int layer, LinearInput which, const float* x, int n, int width)>;

class LlamaModel {
 public:
  // Builds the runtime from a loaded file; linear layers come from make_linear().
  explicit LlamaModel(const ModelFile& file);

  const LlamaConfig& config() const { return cfg_; }
  KVCache make_cache(int capacity, const KVSpec& kv = {}) const;

  // Runs tokens[0..n) at positions pos..pos+n, appending to the cache, and writes the
  // logits of every position to logits [n, vocab].
  void forward(const int* tokens, int n, int pos, KVCache& cache, float* logits) const;

  // The same computation in steps, for layer-by-layer calibration: x is [n, dim].
  void embed(const int* tokens, int n, float* x) const;
  void forward_layer(int layer, float* x, int n, int pos, KVCache& cache,
                     const LinearInputObserver& observe = nullptr) const;
  void head(const float* x, int n, float* logits) const;
  // The head's input: RMSNorm of the last hidden states with the output norm, [n, dim].
  void output_norm(const float* x, int n, float* out) const;
  // Replaces the head's weights (calibration swaps in quantized ones).
  void set_head(std::unique_ptr<Linear> head) { head_ = std::move(head); }

  size_t weight_bytes() const;
  std::vector<LlamaLayer>& layers() { return layers_; }

 private:
  // Writes keys/values [n, kv_dim] of positions [pos, pos + n) into the head-major FP32 cache.
  void store_kv(KVCache& cache, int l, int pos, int n, const float* k, const float* v) const;
  void attention(const float* q, int n, int pos, const AttentionKV& kv, float* out) const;
  void rope(float* x, int n, int pos, int n_heads) const;

  LlamaConfig cfg_;
  Tensor tok_embd_;
  std::vector<float> out_norm_;
  std::unique_ptr<Linear> head_;
  std::vector<LlamaLayer> layers_;
  std::vector<float> rope_cos_, rope_sin_;  // [max_seq, head_dim/2]
};

}  // namespace quantkit
