#include "quantkit/calibration.h"

#include <gtest/gtest.h>

#include <cmath>

#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/tokenizer.h"
#include "test_util.h"

using namespace quantkit;

namespace {
struct Setup {
  ModelFile file = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  Tokenizer tok{*file.vocab};
  LlamaModel model{file};
  std::vector<int> calib = tok.encode(read_text(qk_test::shared("data/aidreams-calib.txt"), "<|endoftext|>"), true);
};
Setup& setup() {
  static Setup s;
  return s;
}
}  // namespace

TEST(Calibration, HessianIsTheSumOfOuterProducts) {
  auto& s = setup();
  Calibrator cal(s.model, s.calib, s.tok.bos(), {3, 64});
  ASSERT_EQ(cal.windows(), 3);
  LayerHessians h = cal.capture(0);
  const InputHessian& ffn_down = h.of(LinearInput::FfnDown);
  EXPECT_EQ(ffn_down.width, 172);
  EXPECT_EQ(ffn_down.tokens, 3 * 64);
  // Recompute the attention-input Hessian of layer 0 directly from the observer.
  std::vector<double> direct(64 * 64, 0.0);
  KVCache cache = s.model.make_cache(64);
  for (int w = 0; w < 3; ++w) {
    std::vector<int> win(s.calib.begin() + w * 64, s.calib.begin() + (w + 1) * 64);
    win[0] = s.tok.bos();
    std::vector<float> x(64 * 64);
    s.model.embed(win.data(), 64, x.data());
    s.model.forward_layer(0, x.data(), 64, 0, cache, [&](int, LinearInput which, const float* in, int n, int width) {
      if (which != LinearInput::Attention) return;
      for (int t = 0; t < n; ++t)
        for (int i = 0; i < width; ++i)
          for (int j = 0; j < width; ++j) direct[size_t(i) * width + j] += double(in[t * width + i]) * in[t * width + j];
    });
  }
  const InputHessian& attn = h.of(LinearInput::Attention);
  for (size_t i = 0; i < direct.size(); ++i) ASSERT_NEAR(attn.xtx[i], direct[i], 1e-9 * (1 + std::fabs(direct[i])));
  auto imp = attn.importance();
  EXPECT_NEAR(imp[5], direct[5 * 64 + 5] / 192.0, 1e-6);
}

TEST(Calibration, AdvancingAllLayersReproducesTheForwardPass) {
  auto& s = setup();
  Calibrator cal(s.model, s.calib, s.tok.bos(), {2, 32});
  for (int l = 0; l < s.model.config().n_layers; ++l) {
    cal.capture(l);  // must not disturb the states
    cal.advance(l);
  }
  // The final states through the head give exactly the logits of a plain forward pass.
  const int vocab = s.model.config().vocab_size;
  for (int w = 0; w < cal.windows(); ++w) {
    std::vector<float> a(32 * vocab), b(32 * vocab);
    s.model.head(cal.hidden(w).data(), 32, a.data());
    KVCache cache = s.model.make_cache(32);
    s.model.forward(cal.window_tokens(w).data(), 32, 0, cache, b.data());
    ASSERT_EQ(a, b) << w;
  }
}

TEST(Calibration, RejectsTooLittleText) {
  auto& s = setup();
  std::vector<int> few(s.calib.begin(), s.calib.begin() + 10);
  EXPECT_THROW(Calibrator(s.model, few, s.tok.bos(), {4, 64}), Error);
  EXPECT_THROW(Calibrator(s.model, s.calib, s.tok.bos(), {4, 4096}), Error);
}
