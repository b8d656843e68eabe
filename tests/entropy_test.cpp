// rANS coder: exact round trips, size against the Shannon bound, robustness to corruption.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "quantkit/entropy.h"
#include "quantkit/error.h"
#include "quantkit/format.h"

namespace qe = quantkit::entropy;

namespace {

std::vector<uint32_t> uniform_stream(size_t n, uint32_t alphabet, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint32_t> s(n);
  for (auto& v : s) v = uint32_t(rng() % alphabet);
  return s;
}

// P(k) ~ (1 - p)^k, truncated to the alphabet.
std::vector<uint32_t> geometric_stream(size_t n, uint32_t alphabet, double p, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::geometric_distribution<uint32_t> geo(p);
  std::vector<uint32_t> s(n);
  for (auto& v : s) v = std::min(geo(rng), alphabet - 1);
  return s;
}

void expect_round_trip(const std::vector<uint32_t>& symbols, uint32_t alphabet) {
  const std::vector<uint8_t> coded = qe::encode(symbols, alphabet);
  const std::vector<uint32_t> back = qe::decode(coded);
  ASSERT_EQ(back.size(), symbols.size());
  EXPECT_TRUE(back == symbols) << "alphabet " << alphabet << ", n " << symbols.size();
  const qe::StreamLayout l = qe::inspect(coded);
  EXPECT_EQ(l.alphabet, alphabet);
  EXPECT_EQ(l.n, symbols.size());
  EXPECT_EQ(l.header_bytes + l.table_bytes + l.payload_bytes, coded.size());
  // Never (much) worse than fixed-width packing: the coder falls back to raw.
  EXPECT_LE(coded.size(), (qe::fixed_width_bits(symbols.size(), alphabet) + 7) / 8 + 16);
}

}  // namespace

TEST(EntropyRans, RoundTripUniformStreams) {
  for (uint32_t alphabet : {1u, 2u, 3u, 5u, 16u, 256u, 4097u, 65536u})
    for (size_t n : {size_t(1), size_t(2), size_t(3), size_t(1000), size_t(100001)})
      expect_round_trip(uniform_stream(n, alphabet, alphabet * 31 + n), alphabet);
}

TEST(EntropyRans, RoundTripSkewedStreams) {
  for (uint32_t alphabet : {2u, 3u, 256u, 65536u})
    for (double p : {0.9, 0.5, 0.05, 0.001}) {
      const auto s = geometric_stream(50000, alphabet, p, 7);
      expect_round_trip(s, alphabet);
      // Skewed data must actually be compressed, close to its entropy.
      const auto coded = qe::encode(s, alphabet);
      const qe::StreamLayout l = qe::inspect(coded);
      EXPECT_LT(8.0 * double(l.payload_bytes), 1.01 * qe::shannon_bits(s) + 64) << alphabet << " p=" << p;
    }
}

TEST(EntropyRans, RoundTripDegenerateStreams) {
  expect_round_trip({}, 1);
  expect_round_trip({}, 65536);
  expect_round_trip({}, 1u << 20);
  expect_round_trip({0}, 1);
  expect_round_trip(std::vector<uint32_t>(100000, 41), 256);  // one symbol: no payload at all
  EXPECT_LE(qe::encode(std::vector<uint32_t>(100000, 41), 256).size(), 16u);
  expect_round_trip(std::vector<uint32_t>(1000, 65535), 65536);
  // Two symbols, one of them once in a million: the rare one still gets frequency >= 1.
  std::vector<uint32_t> rare(1000000, 0);
  rare[123457] = 1;
  expect_round_trip(rare, 2);
  EXPECT_LT(qe::encode(rare, 2).size(), 64u);
}

TEST(EntropyRans, LargeAlphabetsAreSplitIntoDigits) {
  expect_round_trip(uniform_stream(20000, 1u << 20, 3), 1u << 20);
  expect_round_trip(uniform_stream(20000, 4294967295u, 4), 4294967295u);
  // Skewed over a large alphabet: the split coder must beat 20-bit fixed width.
  auto s = geometric_stream(100000, 1u << 20, 0.01, 5);
  expect_round_trip(s, 1u << 20);
  const std::vector<uint8_t> coded = qe::encode(s, 1u << 20);
  EXPECT_EQ(qe::inspect(coded).mode, 'S');
  EXPECT_LT(8.0 * double(coded.size()), 0.6 * double(qe::fixed_width_bits(s.size(), 1u << 20)));
}

TEST(EntropyRans, RejectsSymbolsOutsideTheAlphabet) {
  EXPECT_THROW(qe::encode({0, 1, 2, 3}, 3), quantkit::Error);
  EXPECT_THROW(qe::encode({0}, 0), quantkit::Error);
}

TEST(EntropyFreqTable, NormalisesToThePrecisionKeepingEverySymbol) {
  std::vector<uint64_t> counts = {1000000, 1, 0, 5, 300, 0, 1};
  for (int p : {4, 12, 16}) {
    const auto t = qe::FreqTable::from_counts(counts, p);
    EXPECT_EQ(std::accumulate(t.freq.begin(), t.freq.end(), uint64_t(0)), uint64_t(1) << p);
    for (size_t s = 0; s < counts.size(); ++s) EXPECT_EQ(t.freq[s] > 0, counts[s] > 0) << s;
  }
  // Proportional counts that divide the table exactly are kept exactly.
  const auto exact = qe::FreqTable::from_counts({1, 3, 0, 4}, 12);
  EXPECT_EQ(exact.freq, (std::vector<uint32_t>{512, 1536, 0, 2048}));
  // More distinct symbols than slots cannot be represented.
  EXPECT_THROW(qe::FreqTable::from_counts(std::vector<uint64_t>(20, 1), 4), quantkit::Error);
}

// A long stream codes within 1% of its empirical entropy, table and header counted apart,
// and never below it (the empirical entropy bounds every static code of the stream).
TEST(EntropyRans, SizeIsWithinOnePercentOfShannon) {
  struct Case { uint32_t alphabet; double p; };
  for (Case c : {Case{2, 0.2}, Case{3, 0.5}, Case{16, 0.3}, Case{256, 0.05}, Case{65536, 0.002}}) {
    const auto s = geometric_stream(1 << 20, c.alphabet, c.p, 11);
    const double h = qe::shannon_bits(s);
    const qe::StreamLayout l = qe::inspect(qe::encode(s, c.alphabet));
    ASSERT_EQ(l.mode, 'R');
    const double payload = 8.0 * double(l.payload_bytes);
    EXPECT_LE(payload, 1.01 * h + 64) << "alphabet " << c.alphabet;
    EXPECT_GE(payload, h - 64) << "alphabet " << c.alphabet;
    EXPECT_LT(double(l.table_bytes), 0.01 * payload / 8 + 64) << "alphabet " << c.alphabet;
  }
}

TEST(EntropyShannon, KnownValues) {
  EXPECT_DOUBLE_EQ(qe::shannon_bits({}), 0.0);
  EXPECT_DOUBLE_EQ(qe::shannon_bits({7, 7, 7}), 0.0);
  EXPECT_NEAR(qe::shannon_bits({0, 1, 0, 1}), 4.0, 1e-12);
  EXPECT_NEAR(qe::shannon_bits({0, 1, 2, 3, 0, 1, 2, 3}), 16.0, 1e-12);
  EXPECT_NEAR(qe::shannon_bits({5, 5, 5, 1u << 30}), 4 * (-0.75 * std::log2(0.75) - 0.25 * std::log2(0.25)), 1e-9);
  EXPECT_EQ(qe::fixed_width_bits(10, 1), 0u);
  EXPECT_EQ(qe::fixed_width_bits(10, 3), 20u);
  EXPECT_EQ(qe::fixed_width_bits(10, 256), 80u);
  EXPECT_EQ(qe::fixed_width_bits(10, 257), 90u);
}

TEST(EntropyRans, TruncatedStreamsThrow) {
  for (uint32_t alphabet : {3u, 256u, 1u << 20}) {
    const auto coded = qe::encode(geometric_stream(3000, alphabet, 0.1, 1), alphabet);
    for (size_t len = 0; len < coded.size(); ++len)
      EXPECT_THROW(qe::decode(std::span(coded.data(), len)), quantkit::Error) << "alphabet " << alphabet << " length " << len;
  }
  auto coded = qe::encode(geometric_stream(3000, 16, 0.1, 1), 16);
  coded.push_back(0);
  EXPECT_THROW(qe::decode(coded), quantkit::Error);
}

TEST(EntropyRans, CorruptedStreamsThrowOrDecodeWithoutCrashing) {
  const auto symbols = geometric_stream(5000, 64, 0.1, 2);
  const auto coded = qe::encode(symbols, 64);
  ASSERT_EQ(qe::inspect(coded).mode, 'R');
  int thrown = 0, flips = 0;
  for (size_t byte = 0; byte < coded.size(); ++byte)
    for (int bit = 0; bit < 8; ++bit, ++flips) {
      auto bad = coded;
      bad[byte] ^= uint8_t(1 << bit);
      try {
        // A flip that still decodes must not claim the original (changing only the
        // recorded alphabet, e.g. 64 -> 65, is a different, valid stream).
        const auto out = qe::decode(bad);
        EXPECT_TRUE(out != symbols || qe::inspect(bad).alphabet != 64) << "byte " << byte << " bit " << bit;
      } catch (const quantkit::Error&) {
        ++thrown;
      }
    }
  // The final-state and end-of-data checks catch almost every corruption of a rANS stream.
  EXPECT_GT(thrown, flips * 99 / 100) << thrown << " of " << flips;
}

TEST(EntropyRans, RandomGarbageNeverCrashes) {
  std::mt19937_64 rng(99);
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<uint8_t> junk(rng() % 64);
    for (auto& b : junk) b = uint8_t(rng());
    if (!junk.empty() && trial % 2) junk[0] = "RWS"[trial % 3];  // reach past the mode byte
    try {
      qe::decode(junk, 1 << 20);
    } catch (const quantkit::Error&) {
    }
  }
  // A header claiming more symbols than the caller allows is refused before any work.
  std::vector<uint8_t> huge = {'W', 1, 0xff, 0xff, 0xff, 0xff, 0x0f};  // alphabet 1, n = 2^32-1
  EXPECT_THROW(qe::decode(huge, 1000), quantkit::Error);
}

// The streams real formats produce: every registered example spec that has symbols.
TEST(EntropyRans, RoundTripsRegisteredFormatStreams) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  const int64_t rows = 64, cols = 256;
  std::vector<float> w(size_t(rows * cols));
  for (auto& v : w) v = normal(rng);
  int streams = 0;
  for (const auto& family : quantkit::format_families())
    for (const auto& spec : family.examples) {
      auto f = quantkit::make_format(spec);
      if (!f->check_shape(rows, cols).empty()) continue;
      const quantkit::Packed p = f->quantize(w.data(), rows, cols, nullptr);
      for (const auto& s : f->symbols(p)) {
        SCOPED_TRACE(spec + " stream " + s.name);
        expect_round_trip(s.symbols, s.alphabet);
        const double coded_bits = 8.0 * double(qe::encode(s.symbols, s.alphabet).size());
        EXPECT_LE(coded_bits, qe::shannon_bits(s.symbols) * 1.01 + 8.0 * 2048);
        ++streams;
      }
    }
  if (streams == 0) GTEST_SKIP() << "no registered format produces symbol streams yet";
}
