// Quantizing symbol counts to a static rANS frequency table.
#include <cmath>
#include <queue>

#include "quantkit/entropy.h"
#include "quantkit/error.h"

namespace quantkit::entropy {
namespace {

// Payload bits a symbol seen `count` times gains (or loses) when its frequency moves
// from f to f + 1 (or f - 1): count * log2((f + 1) / f).
double gain_of_increment(uint64_t count, uint32_t f) { return double(count) * std::log2(double(f + 1) / double(f)); }
double loss_of_decrement(uint64_t count, uint32_t f) { return double(count) * std::log2(double(f) / double(f - 1)); }

// Rounding proportional shares rarely sums to 2^P exactly (and flooring rare symbols at 1
// adds mass). Moves the difference one unit at a time where it costs the fewest payload
// bits; the cost is convex in each frequency, so the greedy choice is the right one.
void fix_sum(std::vector<uint32_t>& freq, const std::vector<uint64_t>& counts, int64_t missing) {
  using Entry = std::pair<double, uint32_t>;  // (priority, symbol)
  if (missing > 0) {
    std::priority_queue<Entry> best_gain;
    for (uint32_t s = 0; s < freq.size(); ++s)
      if (counts[s]) best_gain.push({gain_of_increment(counts[s], freq[s]), s});
    for (; missing > 0; --missing) {
      const uint32_t s = best_gain.top().second;
      best_gain.pop();
      ++freq[s];
      best_gain.push({gain_of_increment(counts[s], freq[s]), s});
    }
  } else {
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> least_loss;
    for (uint32_t s = 0; s < freq.size(); ++s)
      if (freq[s] > 1) least_loss.push({loss_of_decrement(counts[s], freq[s]), s});
    for (; missing < 0; ++missing) {
      // Non-empty: the present symbols number at most 2^P, so mass above 1 each remains.
      const uint32_t s = least_loss.top().second;
      least_loss.pop();
      --freq[s];
      if (freq[s] > 1) least_loss.push({loss_of_decrement(counts[s], freq[s]), s});
    }
  }
}

}  // namespace

FreqTable FreqTable::from_counts(const std::vector<uint64_t>& counts, int precision) {
  if (precision < 1 || precision > 16) fail("rANS: frequency precision {} is out of range [1, 16]", precision);
  FreqTable t;
  t.precision = precision;
  t.freq.assign(counts.size(), 0);
  const uint64_t total_freq = uint64_t(1) << precision;
  uint64_t total = 0, present = 0;
  for (uint64_t c : counts) total += c, present += c > 0;
  if (present == 0) return t;
  if (present > total_freq)
    fail("rANS: {} distinct symbols do not fit a {}-bit frequency table", present, precision);
  int64_t sum = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    if (!counts[s]) continue;
    const double share = double(counts[s]) * double(total_freq) / double(total);
    t.freq[s] = uint32_t(std::max(1.0, std::floor(share + 0.5)));
    sum += t.freq[s];
  }
  fix_sum(t.freq, counts, int64_t(total_freq) - sum);
  return t;
}

double FreqTable::payload_bits(const std::vector<uint64_t>& counts) const {
  double bits = 0;
  for (size_t s = 0; s < counts.size() && s < freq.size(); ++s)
    if (counts[s]) bits += double(counts[s]) * (double(precision) - std::log2(double(freq[s])));
  return bits;
}

}  // namespace quantkit::entropy
