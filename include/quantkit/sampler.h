// Next-token choice: argmax at temperature 0, else temperature softmax with nucleus
// (top-p) truncation, from a seeded xorshift generator (reproducible everywhere).
#pragma once
#include <cstdint>
#include <vector>

namespace quantkit {

class Sampler {
 public:
  Sampler(float temperature, float top_p, uint64_t seed);
  int sample(const float* logits, int n);

 private:
  float next_uniform();  // [0, 1)
  float temp_, top_p_;
  uint64_t state_;
  std::vector<std::pair<float, int>> probs_;
};

}  // namespace quantkit
