// Acceptance of the quantize issue on the real model: aidreams260K calibrated on
// aidreams-calib.txt, evaluated on aidreams-eval.txt (llama.cpp's perplexity convention,
// ctx 128). For each format, perplexity must order gptq <= weighted <= rtn (0.5% noise
// allowed). One test per format so ctest runs them in parallel.
#include <gtest/gtest.h>

#include <cstdio>

#include "quantkit/eval.h"
#include "quantkit/quantize.h"
#include "quantkit/tokenizer.h"
#include "test_util.h"

using namespace quantkit;

namespace {

struct Data {
  ModelFile model = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  Tokenizer tok{*model.vocab};
  std::vector<int> calib = tok.encode(read_text(qk_test::shared("data/aidreams-calib.txt"), "<|endoftext|>"), true);
  std::vector<int> eval = tok.encode(read_text(qk_test::shared("data/aidreams-eval.txt"), "<|endoftext|>"), true);
  LlamaModel fp{model};
};

Data& data() {
  static Data d;
  return d;
}

struct Outcome {
  double ppl, kl, bits, seconds;
};

Outcome run(const std::string& spec, QuantMethod method) {
  Data& d = data();
  QuantizeOptions o;
  o.format = spec;
  o.method = method;
  o.calibration.ctx = 128;
  const QuantizeResult r = quantize_model(d.model, o, &d.calib, d.tok.bos());
  LlamaModel q(r.model);
  EvalOptions eo;
  eo.ctx = 128;
  const EvalResult e = evaluate(q, &d.fp, d.eval, d.tok.bos(), eo);
  int64_t params = 0;
  for (const auto& t : r.tensors) params += t.rows * t.cols;
  return {e.llamacpp.ppl, e.kl.mean, 8.0 * double(r.output_bytes) / double(params), r.seconds};
}

class MethodOrdering : public testing::TestWithParam<const char*> {};

TEST_P(MethodOrdering, GptqBeatsWeightedBeatsRtn) {
  const std::string spec = GetParam();
  Outcome o[3];
  const QuantMethod methods[3] = {QuantMethod::Rtn, QuantMethod::Weighted, QuantMethod::Gptq};
  for (int i = 0; i < 3; ++i) {
    o[i] = run(spec, methods[i]);
    std::printf("%-16s %-8s PPL %8.4f  KL %.5f  %.3f bits/weight (whole file)  %.2f s\n", spec.c_str(),
                method_name(methods[i]), o[i].ppl, o[i].kl, o[i].bits, o[i].seconds);
  }
  EXPECT_LE(o[1].ppl, o[0].ppl * 1.005) << spec << ": weighted worse than rtn";
  EXPECT_LE(o[2].ppl, o[1].ppl * 1.005) << spec << ": gptq worse than weighted";
  EXPECT_LE(o[2].kl, o[0].kl) << spec << ": gptq KL worse than rtn";
}

INSTANTIATE_TEST_SUITE_P(Aidreams, MethodOrdering,
                         testing::Values("q4_0", "q4_k", "int4:g32", "int3:g32", "int2:g32", "nvfp4", "e8:b2",
                                         "vq:d4:k256", "ternary:opt:g64"),
                         [](const testing::TestParamInfo<const char*>& i) {
                           std::string n = i.param;
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

}  // namespace
