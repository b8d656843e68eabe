// Helpers shared by tests that run a model.
#pragma once
#include <vector>

#include "quantkit/llama.h"

namespace qk_test {

// Logits [tokens, vocab] of one forward pass over `tokens` from position 0.
inline std::vector<float> logits_of(const quantkit::ModelFile& f, const std::vector<int>& tokens) {
  quantkit::LlamaModel m(f);
  quantkit::KVCache cache = m.make_cache(int(tokens.size()));
  std::vector<float> out(tokens.size() * size_t(f.config.vocab_size));
  m.forward(tokens.data(), int(tokens.size()), 0, cache, out.data());
  return out;
}

// While alive, quantized layers multiply in FP32 instead of with int8 activations: for
// tests that compare two containers of the same weights, one of which is stored as floats.
struct ExactActivations {
  ExactActivations() { quantkit::set_int8_activations(false); }
  ~ExactActivations() { quantkit::set_int8_activations(true); }
};

}  // namespace qk_test
