#include "quantkit/tokenizer.h"

#include <gtest/gtest.h>

#include "io/model_io.h"
#include "quantkit/error.h"
#include "test_util.h"

using namespace quantkit;

namespace {

// A hand-made vocabulary: bytes, "▁", letters and a few merges with chosen scores.
Vocab tiny_vocab() {
  Vocab v;
  auto add = [&](std::string t, float s, TokenType ty = TokenType::Normal) {
    v.tokens.push_back(std::move(t));
    v.scores.push_back(s);
    v.types.push_back(ty);
  };
  add("<unk>", 0, TokenType::Unknown);
  add("<s>", 0, TokenType::Control);
  add("</s>", 0, TokenType::Control);
  for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 0, TokenType::Byte);
  add("\xE2\x96\x81", -1);   // 259 ▁
  add("a", -2);              // 260
  add("b", -3);              // 261
  add("ab", -10);            // 262
  add("\xE2\x96\x81" "a", -5);  // 263 ▁a  (better score than "ab")
  add("bb", -4);             // 264
  add("abb", -1);            // 265
  return v;
}

}  // namespace

TEST(Tokenizer, MergesHighestScoringPairFirst) {
  Tokenizer tok(tiny_vocab());
  // "ab" -> "▁ab": pairs ▁a (-5) and ab (-10): ▁a wins, then "▁a"+"b" is no token.
  EXPECT_EQ(tok.encode("ab", false), (std::vector<int>{263, 261}));
  // "abb": bb (-4) beats ab (-10); then "a"+"bb" = abb (-1).
  EXPECT_EQ(tok.encode(" abb", false), (std::vector<int>{259, 259, 265}));
  // Ties go left: "bbb" -> bb, b.
  EXPECT_EQ(tok.encode("bbb", false), (std::vector<int>{259, 264, 261}));
  EXPECT_EQ(tok.encode("", true), (std::vector<int>{1}));
}

TEST(Tokenizer, ByteFallbackAndDecode) {
  Tokenizer tok(tiny_vocab());
  // 'z' and 'é' (C3 A9) are not tokens: byte tokens 3 + byte.
  std::vector<int> ids = tok.encode("z\xC3\xA9", true);
  EXPECT_EQ(ids, (std::vector<int>{1, 259, 3 + 'z', 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok.decode(ids), "z\xC3\xA9");
  EXPECT_EQ(tok.decode(tok.encode(" ab  b\n", false)), " ab  b\n");
}

TEST(Tokenizer, ReadsLlama2cTokenizer) {
  Vocab v = load_llama2c_vocab(qk_test::tokenizer_path());
  ASSERT_EQ(v.tokens.size(), 512u);
  EXPECT_EQ(v.tokens[1], "<s>");
  EXPECT_EQ(v.types[1], TokenType::Control);
  EXPECT_EQ(v.tokens[2], "</s>");
  EXPECT_EQ(v.tokens[3], "<0x00>");
  EXPECT_EQ(v.types[3 + 255], TokenType::Byte);
  EXPECT_EQ(v.types[0], TokenType::Unknown);
}

TEST(Tokenizer, TinyStoriesRoundTripsExactly) {
  Tokenizer tok(load_llama2c_vocab(qk_test::shared("models/tinystories-tok512.bin")));
  const std::string text = qk_test::read_file(qk_test::shared("data/tinystories-eval.txt"));
  ASSERT_GT(text.size(), 10000u);
  std::vector<int> ids = tok.encode(text, true);
  EXPECT_EQ(tok.decode(ids), text);
  // BPE must compress: well under one token per byte.
  EXPECT_LT(double(ids.size()), 0.5 * double(text.size()));
}

TEST(Tokenizer, RejectsMalformedTokenizerFiles) {
  const std::string dir = qk_test::temp_dir("tok_bad");
  const std::string good = qk_test::read_file(qk_test::tokenizer_path());
  auto expect_error = [&](const std::string& bytes, const char* what) {
    const std::string p = dir + "/bad.bin";
    std::ofstream(p, std::ios::binary) << bytes;
    try {
      load_llama2c_vocab(p);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  };
  expect_error(good.substr(0, 2), "truncated header");
  expect_error(good.substr(0, 101), "truncated token");
  std::string huge = good;
  int32_t big = 1 << 30;
  std::memcpy(&huge[0], &big, 4);
  expect_error(huge, "absurd max_token_length");
  std::string badlen = good;
  int32_t neg = -5;
  std::memcpy(&badlen[8], &neg, 4);
  expect_error(badlen, "negative token length");
}
