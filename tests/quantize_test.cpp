// Whole-model quantization: tensor plans (rules, fallbacks, padding), the packed-tensor
// container (.qk / GGUF) round trip, the runtime on packed weights, and the CLI.
#include "quantkit/quantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/linear.h"
#include "quantkit/packed_tensor.h"
#include "quantkit/tokenizer.h"
#include "model_test_util.h"
#include "test_util.h"

using namespace quantkit;

namespace {

const ModelFile& aidreams() {
  static const ModelFile m = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  return m;
}

TensorView fake(const std::string& name, std::vector<int64_t> shape) {
  TensorView t;
  t.name = name;
  t.shape = std::move(shape);
  return t;
}

QuantizeOptions with_format(const std::string& f) {
  QuantizeOptions o;
  o.format = f;
  return o;
}

using qk_test::logits_of;

}  // namespace

TEST(TensorPlan, NormsStayF32AndEmbeddingsGetHigherPrecision) {
  const auto o = with_format("int3:g32");
  EXPECT_EQ(plan_tensor(fake("blk.0.attn_norm.weight", {64}), o).spec, "f32");
  EXPECT_EQ(plan_tensor(fake("token_embd.weight", {512, 64}), o).spec, "q8_0");
  EXPECT_EQ(plan_tensor(fake("output.weight", {512, 64}), o).spec, "q8_0");
  const TensorPlan p = plan_tensor(fake("blk.0.attn_q.weight", {64, 64}), o);
  EXPECT_EQ(p.kind, TensorPlan::Quantize);
  EXPECT_EQ(p.spec, "int3:g32");
  EXPECT_EQ(p.stored_cols, 64);
  EXPECT_TRUE(p.note.empty());
}

TEST(TensorPlan, LlamaCppTypesFallBackAlongTheLadder) {
  // q4_k needs rows of 256: 64 columns fall back to q5_0, 172 columns to f16.
  const auto o = with_format("q4_k");
  const TensorPlan a = plan_tensor(fake("blk.0.attn_q.weight", {64, 64}), o);
  EXPECT_EQ(a.spec, "q5_0");
  EXPECT_NE(a.note.find("q4_k -> q5_0"), std::string::npos) << a.note;
  const TensorPlan b = plan_tensor(fake("blk.0.ffn_down.weight", {64, 172}), o);
  EXPECT_EQ(b.kind, TensorPlan::Float);
  EXPECT_EQ(b.spec, "f16");
  EXPECT_NE(b.note.find("172"), std::string::npos) << b.note;
  EXPECT_EQ(plan_tensor(fake("blk.0.attn_q.weight", {256, 512}), o).spec, "q4_k");
}

TEST(TensorPlan, QuantkitFormatsPadToTheirBlock) {
  // A Hadamard-rotated q4_0 is not a llama.cpp tensor: its rows are padded with zero
  // columns to the 32-wide blocks instead of falling back.
  const TensorPlan p = plan_tensor(fake("blk.0.ffn_down.weight", {64, 172}), with_format("rht:q4_0"));
  ASSERT_EQ(p.kind, TensorPlan::Quantize);
  EXPECT_EQ(p.stored_cols, 192);
  EXPECT_NE(p.note.find("padded 172 -> 192"), std::string::npos) << p.note;
  // Formats that take any row length are used as they are.
  EXPECT_EQ(plan_tensor(fake("blk.0.ffn_down.weight", {64, 172}), with_format("e8:b2")).stored_cols, 172);
}

TEST(TensorPlan, RulesFirstMatchWins) {
  QuantizeOptions o = with_format("q4_0");
  o.rules = {TensorRule::parse("ffn_down=keep"), TensorRule::parse("blk\\.0\\..*=f16"), TensorRule::parse("attn=q8_0"),
             TensorRule::parse("token_embd=int8:row")};
  EXPECT_EQ(plan_tensor(fake("blk.0.ffn_down.weight", {64, 172}), o).kind, TensorPlan::Keep);
  EXPECT_EQ(plan_tensor(fake("blk.0.attn_q.weight", {64, 64}), o).spec, "f16");
  EXPECT_EQ(plan_tensor(fake("blk.1.attn_q.weight", {64, 64}), o).spec, "q8_0");
  EXPECT_EQ(plan_tensor(fake("blk.1.ffn_up.weight", {172, 64}), o).spec, "q4_0");
  EXPECT_EQ(plan_tensor(fake("token_embd.weight", {512, 64}), o).spec, "int8:row");
  EXPECT_THROW(TensorRule::parse("no-equals-sign"), Error);
  EXPECT_THROW(TensorRule::parse("([=q4_0"), Error);
  EXPECT_THROW(TensorRule::parse("attn=q9_9"), Error);
}

TEST(QuantizeModel, RtnQ40MatchesTheFormatTensorByTensor) {
  const ModelFile& in = aidreams();
  const QuantizeResult r = quantize_model(in, with_format("q4_0"), nullptr, 1);
  ASSERT_EQ(r.model.tensors.size(), in.tensors.size());
  auto f = make_format("q4_0");
  const TensorView& q = *r.model.find("blk.2.attn_v.weight");
  EXPECT_EQ(q.type, DType::Q4_0);
  const Tensor w = to_float(in.get("blk.2.attn_v.weight"));
  const Packed direct = f->quantize(w.data.data(), 64, 64, nullptr);
  ASSERT_EQ(direct.bytes.size(), q.nbytes);
  EXPECT_EQ(0, std::memcmp(direct.bytes.data(), q.data, q.nbytes));
  EXPECT_EQ(r.model.find("blk.0.ffn_down.weight")->type, DType::F16);
  EXPECT_EQ(r.model.find("blk.0.ffn_norm.weight")->type, DType::F32);
  EXPECT_EQ(r.model.find("token_embd.weight")->type, DType::Q8_0);
  EXPECT_LT(r.output_bytes, r.input_bytes / 4);
  for (const auto& t : r.tensors) EXPECT_GT(t.sqnr_db, t.plan.kind == TensorPlan::Quantize ? 15.0 : 40.0) << t.name;
}

TEST(QuantizeModel, MethodsWithoutCalibrationTextFail) {
  EXPECT_THROW(quantize_model(aidreams(), [] {
    QuantizeOptions o = with_format("int4:g32");
    o.method = QuantMethod::Gptq;
    return o;
  }(), nullptr, 1), Error);
}

// A quantkit-only format survives GGUF (.qk) writing and loading bit for bit, and the
// runtime on the packed weights gives the logits of the in-memory result.
TEST(QuantizeModel, PackedFormatsRoundTripThroughTheQkContainer) {
  const ModelFile& in = aidreams();
  for (const char* spec : {"int3:g32", "e8:b2"}) {
    const QuantizeResult r = quantize_model(in, with_format(spec), nullptr, 1);
    const std::string path = qk_test::temp_dir("qk_roundtrip") + "/m.qk";
    save_gguf_model(r.model, path);
    const ModelFile back = load_model(path);
    ASSERT_EQ(back.tensors.size(), r.model.tensors.size());
    for (size_t i = 0; i < back.tensors.size(); ++i) {
      const TensorView &a = r.model.tensors[i], &b = back.tensors[i];
      EXPECT_EQ(a.name, b.name);
      EXPECT_EQ(a.type, b.type) << a.name;
      EXPECT_EQ(a.shape, b.shape) << a.name;
      EXPECT_EQ(a.format, b.format) << a.name;
      EXPECT_EQ(a.stored_cols, b.stored_cols) << a.name;
      ASSERT_EQ(a.nbytes, b.nbytes) << a.name;
      EXPECT_EQ(0, std::memcmp(a.data, b.data, a.nbytes)) << a.name;
    }
    const TensorView& down = *back.find("blk.1.ffn_down.weight");
    EXPECT_EQ(down.type, DType::QK);
    EXPECT_EQ(down.format, spec);
    // The runtime keeps the packed bytes (or their integer-kernel layout, at most 4 bits per
    // 2-, 3- or 4-bit code plus scales), never FP32 weights.
    PackedLinear lin(down);
    EXPECT_LE(lin.weight_bytes(), std::max<size_t>(packed_tensor_bytes(down), size_t(down.numel()) * 5 / 8 + 64))
        << lin.path();
    const std::vector<int> tokens = {1, 403, 407, 261, 378, 288, 285, 500};
    const std::vector<float> l1 = logits_of(r.model, tokens), l2 = logits_of(back, tokens);
    EXPECT_EQ(l1, l2) << spec;
  }
}

TEST(QuantizeModel, PaddedTensorsRunAndRoundTrip) {
  const QuantizeResult r = quantize_model(aidreams(), with_format("rht:q4_0"), nullptr, 1);
  const TensorView& down = *r.model.find("blk.0.ffn_down.weight");
  EXPECT_EQ(down.type, DType::QK);
  EXPECT_EQ(down.stored_cols, 192);
  const std::string path = qk_test::temp_dir("qk_padded") + "/m.qk";
  save_gguf_model(r.model, path);
  const ModelFile back = load_model(path);
  EXPECT_EQ(back.get("blk.0.ffn_down.weight").stored_cols, 192);
  const Tensor a = to_float(down), b = to_float(back.get("blk.0.ffn_down.weight"));
  EXPECT_EQ(a.shape, (std::vector<int64_t>{64, 172}));
  EXPECT_EQ(a.data, b.data);
  const Tensor w = to_float(aidreams().get("blk.0.ffn_down.weight"));
  double err = 0, ref = 0;
  for (size_t i = 0; i < w.data.size(); ++i) err += std::pow(w.data[i] - a.data[i], 2), ref += std::pow(w.data[i], 2);
  EXPECT_GT(10 * std::log10(ref / err), 15.0);
}

TEST(QuantizeModel, CorruptPackedTensorsAreClearErrors) {
  const QuantizeResult r = quantize_model(aidreams(), with_format("int3:g32"), nullptr, 1);
  ModelFile short_one = r.model;
  for (TensorView& t : short_one.tensors)
    if (t.name == "blk.0.attn_q.weight") t.nbytes -= 1;
  const std::string dir = qk_test::temp_dir("qk_corrupt");
  EXPECT_THROW(save_gguf_model(short_one, dir + "/short.qk"), Error);
  EXPECT_FALSE(std::filesystem::exists(dir + "/short.qk"));
  // A format spec in the file that does not parse: "int3:g32" -> "int9:g32" in place.
  const std::string path = dir + "/bad.qk";
  save_gguf_model(r.model, path);
  std::string bytes = qk_test::read_file(path);
  const size_t at = bytes.find("int3:g32");
  ASSERT_NE(at, std::string::npos);
  bytes[at + 3] = '9';
  {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  }
  try {
    load_model(path);
    FAIL() << "an invalid packed format loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("int9:g32"), std::string::npos) << e.what();
  }
}

TEST(QuantizeModel, Q80WithGptqIsWithinHalfAPercentOfFp32) {
  const ModelFile& in = aidreams();
  Tokenizer tok(*in.vocab);
  const auto calib = tok.encode(read_text(qk_test::shared("data/aidreams-calib.txt"), "<|endoftext|>"), true);
  const auto eval = tok.encode(read_text(qk_test::shared("data/aidreams-eval.txt"), "<|endoftext|>"), true);
  QuantizeOptions o = with_format("q8_0");
  o.method = QuantMethod::Gptq;
  o.calibration = {64, 128};
  const QuantizeResult r = quantize_model(in, o, &calib, tok.bos());
  EXPECT_EQ(r.calibration_windows, 64);
  LlamaModel fp(in), q(r.model);
  EvalOptions eo;
  eo.ctx = 128;
  const double p_fp = evaluate(fp, nullptr, eval, tok.bos(), eo).llamacpp.ppl;
  const double p_q = evaluate(q, nullptr, eval, tok.bos(), eo).llamacpp.ppl;
  std::printf("q8_0 gptq: PPL %.4f vs FP32 %.4f (%+.3f%%)\n", p_q, p_fp, 100 * (p_q / p_fp - 1));
  EXPECT_LT(std::abs(p_q / p_fp - 1), 0.005);
}

TEST(QuantizeCli, WritesGgufAndReportsJson) {
  const std::string dir = qk_test::temp_dir("quantize_cli");
  auto r = qk_test::run_cli("quantize -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                            " -f q4_0 -o " + dir + "/m.gguf --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"format\": \"q4_0\""), std::string::npos);
  EXPECT_NE(r.out.find("blk.3.ffn_down.weight"), std::string::npos);
  const ModelFile m = load_model(dir + "/m.gguf");
  EXPECT_EQ(m.get("blk.3.attn_q.weight").type, DType::Q4_0);
  ASSERT_TRUE(m.vocab.has_value());  // self-contained: the tokenizer came along
  EXPECT_EQ(m.vocab->tokens.size(), 512u);
}

TEST(QuantizeCli, BadInputIsOneLineAndWritesNothing) {
  const std::string dir = qk_test::temp_dir("quantize_cli_bad");
  const std::string base = "quantize -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path();
  for (const std::string& args : {base + " -f q9_9 -o " + dir + "/a.gguf", base + " -f q4_0 -o " + dir + "/a.txt",
                                  base + " -f q4_0 --method gptq -o " + dir + "/a.gguf",
                                  base + " -f q4_0 --override 'attn' -o " + dir + "/a.gguf",
                                  "quantize -m " + dir + "/missing.gguf -f q4_0 -o " + dir + "/a.gguf"}) {
    auto r = qk_test::run_cli(args);
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_EQ(qk_test::count_lines(r.err), 1) << args << "\n" << r.err;
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir));
}

// SplitQuant: --split K wraps the layer format; each layer weight costs K times the bits
// (reported per tensor) and the split model loads and runs from the .qk file.
TEST(QuantizeCli, SplitQuantReportsItsSizeCost) {
  const std::string dir = qk_test::temp_dir("quantize_split");
  auto r = qk_test::run_cli("quantize -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                            " -f int3:row --split 3 -o " + dir + "/m.qk --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["format"], "split3:int3:row");
  const double single = make_format("int3:row")->bits_per_weight(64, 64);
  int checked = 0;
  for (const auto& t : j["tensors"])
    if (t["name"] == "blk.1.attn_q.weight") {
      EXPECT_EQ(t["format"], "split3:int3:row");
      EXPECT_NEAR(t["bits_per_weight"].get<double>(), 3 * single, 0.01);
      ++checked;
    }
  EXPECT_EQ(checked, 1);
  const ModelFile m = load_model(dir + "/m.qk");
  EXPECT_EQ(m.get("blk.3.ffn_down.weight").format, "split3:int3:row");
  LlamaModel run(m);
  EXPECT_GT(run.weight_bytes(), 0u);
}

// A Hugging Face (NeoX rope layout) input is brought to GGUF's layout before quantizing:
// quantizing the safetensors copy of aidreams gives the same GGUF bytes as quantizing the
// llama2.c original.
TEST(QuantizeModel, SafetensorsInputGivesTheSameGguf) {
  const std::string dir = qk_test::temp_dir("quantize_hf");
  save_safetensors_model(aidreams(), dir + "/hf", DType::F32);
  const ModelFile hf = load_model(dir + "/hf");
  ASSERT_EQ(hf.config.rope_style, RopeStyle::NeoX);
  const QuantizeResult a = quantize_model(aidreams(), with_format("q4_0"), nullptr, 1);
  const QuantizeResult b = quantize_model(hf, with_format("q4_0"), nullptr, 1);
  EXPECT_EQ(b.model.config.rope_style, RopeStyle::Normal);
  for (const char* name : {"blk.1.attn_q.weight", "blk.1.attn_k.weight", "blk.2.ffn_up.weight"}) {
    const TensorView &x = a.model.get(name), &y = b.model.get(name);
    ASSERT_EQ(x.nbytes, y.nbytes) << name;
    EXPECT_EQ(0, std::memcmp(x.data, y.data, x.nbytes)) << name;
  }
  save_gguf_model(b.model, dir + "/m.gguf");
  const std::vector<int> tokens = {1, 403, 407, 261, 378};
  EXPECT_EQ(logits_of(a.model, tokens), logits_of(load_model(dir + "/m.gguf"), tokens));
}
