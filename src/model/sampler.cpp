#include "quantkit/sampler.h"

#include <algorithm>
#include <cmath>

namespace quantkit {

Sampler::Sampler(float temperature, float top_p, uint64_t seed)
    : temp_(temperature), top_p_(top_p), state_(seed ? seed : 0x9E3779B97F4A7C15ull) {}

float Sampler::next_uniform() {
  // xorshift64*
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  return float((state_ * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

int Sampler::sample(const float* logits, int n) {
  if (temp_ <= 0.0f) return int(std::max_element(logits, logits + n) - logits);
  const float mx = *std::max_element(logits, logits + n);
  probs_.resize(size_t(n));
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    const float p = std::exp((logits[i] - mx) / temp_);
    probs_[i] = {p, i};
    sum += p;
  }
  std::sort(probs_.begin(), probs_.end(), [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  // Keep the smallest prefix whose mass reaches top_p.
  double cum = 0;
  size_t keep = probs_.size();
  for (size_t i = 0; i < probs_.size(); ++i) {
    cum += probs_[i].first / sum;
    if (cum >= top_p_) {
      keep = i + 1;
      break;
    }
  }
  double mass = 0;
  for (size_t i = 0; i < keep; ++i) mass += probs_[i].first;
  const double r = next_uniform() * mass;
  double acc = 0;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs_[i].first;
    if (r < acc) return probs_[i].second;
  }
  return probs_[keep - 1].second;
}

}  // namespace quantkit
