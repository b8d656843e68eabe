// Container conversions of the real model: every path must compute the same model.
#include <gtest/gtest.h>

#include <cstring>

#include "quantkit/eval.h"
#include "quantkit/llama.h"
#include "quantkit/tokenizer.h"
#include "test_util.h"

using namespace quantkit;

namespace {

double ppl_of(const std::string& path, const std::string& tok_path = "") {
  ModelFile f = load_model(path, tok_path);
  EXPECT_TRUE(f.vocab.has_value()) << path;
  Tokenizer tok(*f.vocab);
  LlamaModel m(f);
  EvalOptions opt;
  opt.ctx = 128;
  auto tokens = tok.encode(read_text(qk_test::shared("data/aidreams-eval.txt"), "<|endoftext|>"), true);
  return evaluate(m, nullptr, tokens, tok.bos(), opt).llamacpp.ppl;
}

}  // namespace

TEST(Convert, GgufRoundTripIsBitIdentical) {
  const std::string dir = qk_test::temp_dir("conv_gguf");
  auto r = qk_test::run_cli("convert " + qk_test::model_path() + " " + dir + "/a.gguf --tokenizer " +
                            qk_test::tokenizer_path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ModelFile orig = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  ModelFile back = load_model(dir + "/a.gguf");
  EXPECT_EQ(back.container, "gguf");
  ASSERT_EQ(back.tensors.size(), orig.tensors.size());
  for (const auto& t : orig.tensors) {
    const TensorView& b = back.get(t.name);
    EXPECT_EQ(b.shape, t.shape) << t.name;
    ASSERT_EQ(b.nbytes, t.nbytes) << t.name;
    EXPECT_EQ(std::memcmp(b.data, t.data, t.nbytes), 0) << t.name;
  }
  EXPECT_EQ(back.vocab->tokens, orig.vocab->tokens);
  EXPECT_EQ(back.vocab->scores, orig.vocab->scores);
  EXPECT_EQ(back.vocab->types, orig.vocab->types);
  EXPECT_EQ(back.config.rope_style, RopeStyle::Normal);
  EXPECT_EQ(back.config.tied_embeddings, true);
  EXPECT_EQ(back.config.max_seq_len, 128);
  // Writing the read-back file again gives the same bytes.
  r = qk_test::run_cli("convert " + dir + "/a.gguf " + dir + "/b.gguf");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(qk_test::read_file(dir + "/a.gguf"), qk_test::read_file(dir + "/b.gguf"));
  EXPECT_DOUBLE_EQ(ppl_of(dir + "/a.gguf"), ppl_of(qk_test::model_path(), qk_test::tokenizer_path()));
}

TEST(Convert, SafetensorsModelEvaluatesLikeTheOriginal) {
  const std::string dir = qk_test::temp_dir("conv_st");
  auto r = qk_test::run_cli("convert " + qk_test::model_path() + " " + dir + "/hf --tokenizer " +
                            qk_test::tokenizer_path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ModelFile hf = load_model(dir + "/hf");
  EXPECT_EQ(hf.container, "safetensors");
  EXPECT_EQ(hf.config.rope_style, RopeStyle::NeoX);  // Q/K were permuted to the HF layout
  const double original = ppl_of(qk_test::model_path(), qk_test::tokenizer_path());
  const double converted = ppl_of(dir + "/hf");
  std::printf("ppl original %.6f, safetensors %.6f\n", original, converted);
  EXPECT_NEAR(converted, original, 1e-5 * original);
  // HF -> GGUF brings Q/K back to llama.cpp's layout: same model again.
  r = qk_test::run_cli("convert " + dir + "/hf " + dir + "/back.gguf");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NEAR(ppl_of(dir + "/back.gguf"), original, 1e-5 * original);
}

TEST(Convert, F16GgufIsCloseToF32) {
  const std::string dir = qk_test::temp_dir("conv_f16");
  auto r = qk_test::run_cli("convert " + qk_test::model_path() + " " + dir + "/h.gguf --type f16 --tokenizer " +
                            qk_test::tokenizer_path());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ModelFile h = load_model(dir + "/h.gguf");
  EXPECT_EQ(h.get("blk.0.attn_q.weight").type, DType::F16);
  EXPECT_EQ(h.get("blk.0.attn_norm.weight").type, DType::F32);
  const double original = ppl_of(qk_test::model_path(), qk_test::tokenizer_path());
  EXPECT_NEAR(ppl_of(dir + "/h.gguf"), original, 2e-3 * original);
}

TEST(Convert, BadArgumentsFailCleanly) {
  const std::string dir = qk_test::temp_dir("conv_bad");
  auto r = qk_test::run_cli("convert " + qk_test::model_path() + " " + dir + "/x.gguf --type q4_0");
  EXPECT_NE(r.exit_code, 0);
  r = qk_test::run_cli("convert " + qk_test::shared("data/aidreams-eval.txt") + " " + dir + "/x.gguf");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(qk_test::count_lines(r.err), 1) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.gguf"));
}
