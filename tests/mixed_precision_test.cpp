// Mixed precision under a size budget: the knapsack allocation on known answers, and the
// acceptance on aidreams260K (mixed beats or ties the best uniform format that fits, at
// 2.5 / 3 / 4 / 5 bits per weight, everything counted).
#include "quantkit/mixed_precision.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <regex>

#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/tokenizer.h"
#include "test_util.h"

using namespace quantkit;

namespace {

Sensitivity toy() {
  // Two tensors, three options each: (bytes, damage).
  Sensitivity s;
  s.fixed_bytes = 10;
  s.params = 100;
  s.tensors = {{"a", 50, {{"lo", "lo", 10, 9.0}, {"mid", "mid", 20, 4.0}, {"hi", "hi", 40, 1.0}}},
               {"b", 50, {{"lo", "lo", 10, 5.0}, {"mid", "mid", 20, 1.0}, {"hi", "hi", 40, 0.5}}}};
  return s;
}

}  // namespace

TEST(Allocation, KnapsackKnownAnswers) {
  const Sensitivity s = toy();
  // Budget 50 (40 after the fixed 10): options (a, b) within 40 bytes: lo+lo 14, lo+mid 10,
  // mid+lo 9, mid+mid 5 (40 bytes) -> mid+mid.
  Allocation a = allocate(s, 50);
  EXPECT_EQ(a.specs, (std::vector<std::string>{"mid", "mid"}));
  EXPECT_EQ(a.bytes, 50u);
  EXPECT_DOUBLE_EQ(a.damage, 5.0);
  // 60 bytes: hi+lo 6, mid+mid 5 (fits 40 of 50), lo+hi 9.5, ... best within 50: mid+mid still? hi+lo = 50 -> 6.
  a = allocate(s, 60);
  EXPECT_EQ(a.specs, (std::vector<std::string>{"mid", "mid"}));
  // 70 bytes (60 free): hi+mid = 60 -> 2.0 beats mid+hi 4.5.
  a = allocate(s, 70);
  EXPECT_EQ(a.specs, (std::vector<std::string>{"hi", "mid"}));
  EXPECT_DOUBLE_EQ(a.damage, 2.0);
  EXPECT_LE(a.bytes, 70u);
  // Deterministic.
  EXPECT_EQ(allocate(s, 70).specs, a.specs);
}

TEST(Allocation, BudgetBelowTheCheapestMixNamesTheMinimum) {
  try {
    allocate(toy(), 29);
    FAIL() << "allocated below the minimum";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("30 bytes"), std::string::npos) << e.what();
  }
  EXPECT_EQ(allocate(toy(), 30).specs, (std::vector<std::string>{"lo", "lo"}));
}

TEST(Allocation, UniformAndRules) {
  const Sensitivity s = toy();
  const Allocation u = uniform(s, "hi");
  EXPECT_EQ(u.bytes, 90u);
  EXPECT_DOUBLE_EQ(u.damage, 1.5);
  EXPECT_THROW(uniform(s, "nope"), Error);
  Sensitivity named = s;
  named.tensors[0].name = "blk.0.attn_q.weight";
  const auto rules = allocation_rules(named, u);
  ASSERT_EQ(rules.size(), 2u);
  EXPECT_TRUE(std::regex_search("blk.0.attn_q.weight", std::regex(rules[0].pattern)));
  EXPECT_FALSE(std::regex_search("blk.0xattn_q.weight", std::regex(rules[0].pattern)));
  EXPECT_FALSE(std::regex_search("blk.10.attn_q.weight", std::regex(rules[0].pattern)));
}

// The acceptance: weighted method, measured damage (KL of the whole model per tensor x
// candidate on calibration windows), default candidate ladder. (The cheaper Hessian proxy
// under-rates the embedding and loses to uniform e8:b2 at 2.5 bits/weight: see the notes.)
TEST(MixedPrecision, BeatsTheBestUniformFormatThatFits) {
  const ModelFile in = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  Tokenizer tok(*in.vocab);
  const auto calib = tok.encode(read_text(qk_test::shared("data/aidreams-calib.txt"), "<|endoftext|>"), true);
  const auto eval = tok.encode(read_text(qk_test::shared("data/aidreams-eval.txt"), "<|endoftext|>"), true);
  SensitivityOptions so;
  so.candidates = default_candidates();
  so.method = QuantMethod::Weighted;
  so.damage = DamageEstimate::Measured;
  so.calibration.ctx = 128;
  const Sensitivity s = measure_sensitivity(in, so, &calib, tok.bos());
  ASSERT_EQ(s.tensors.size(), 29u);  // 28 layer matrices + the tied embedding
  const LlamaModel fp(in);
  QuantizeOptions qo;
  qo.method = QuantMethod::Weighted;
  qo.calibration.ctx = 128;
  EvalOptions eo;
  eo.ctx = 128;
  auto run = [&](const Allocation& a) {
    qo.rules = allocation_rules(s, a);
    const QuantizeResult r = quantize_model(in, qo, &calib, tok.bos());
    EXPECT_EQ(r.output_bytes, a.bytes);  // the allocation's sizes are the real ones
    const LlamaModel q(r.model);
    return evaluate(q, &fp, eval, tok.bos(), eo);
  };
  // Uniform formats, each evaluated once.
  std::vector<std::pair<double, double>> uniform_points;  // (bpw, ppl)
  for (const auto& c : so.candidates) {
    const Allocation u = uniform(s, c);
    if (u.bits_per_weight(s) > 5.0) continue;
    const EvalResult e = run(u);
    uniform_points.push_back({u.bits_per_weight(s), e.llamacpp.ppl});
    std::printf("uniform %-20s %7.4f bits/weight  PPL %9.4f  KL %.5f\n", c.c_str(), u.bits_per_weight(s),
                e.llamacpp.ppl, e.kl.mean);
  }
  int strictly_better = 0;
  for (double target : {2.5, 3.0, 4.0, 5.0}) {
    const Allocation a = allocate(s, uint64_t(target * double(s.params) / 8.0));
    EXPECT_LE(a.bits_per_weight(s), target);
    const EvalResult e = run(a);
    double best_uniform = INFINITY;
    for (const auto& [bpw, ppl] : uniform_points)
      if (bpw <= target) best_uniform = std::min(best_uniform, ppl);
    std::printf("target %.1f: mixed %.4f bits/weight PPL %.4f KL %.5f | best uniform within target PPL %.4f\n", target,
                a.bits_per_weight(s), e.llamacpp.ppl, e.kl.mean, best_uniform);
    EXPECT_LE(e.llamacpp.ppl, best_uniform * 1.005) << "target " << target;
    strictly_better += e.llamacpp.ppl < best_uniform;
  }
  EXPECT_GE(strictly_better, 2);
}
