// `quantkit derive`: Double Rounding at the model level. One stored int8 model gives the
// int4/int3 models by re-rounding its integers; the result is bit-identical to quantizing
// the original weights with the int<b>:...:dr8 format, and runs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "quantkit/format.h"
#include "quantkit/llama.h"
#include "quantkit/model_file.h"
#include "test_util.h"

using namespace quantkit;

TEST(DeriveCli, LowerBitModelsComeFromOneStoredInt8Model) {
  const std::string dir = qk_test::temp_dir("derive");
  const std::string master = dir + "/m8.qk";
  auto q = qk_test::run_cli("quantize -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                            " -f int8:g32 -o " + master);
  ASSERT_EQ(q.exit_code, 0) << q.err;
  const ModelFile original = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  uint64_t previous = ~uint64_t(0);
  for (int bits : {4, 3, 2}) {
    const std::string out = dir + "/m" + std::to_string(bits) + ".qk";
    auto d = qk_test::run_cli("derive -m " + master + " --bits " + std::to_string(bits) + " -o " + out);
    ASSERT_EQ(d.exit_code, 0) << d.err;
    const ModelFile m = load_model(out);
    const std::string spec = "int" + std::to_string(bits) + ":g32:dr8";
    const TensorView& t = m.get("blk.2.ffn_up.weight");
    ASSERT_EQ(t.type, DType::QK);
    EXPECT_EQ(t.format, spec);
    // Same bits as quantizing the original weights with the Double Rounding format.
    const Tensor w = to_float(original.get("blk.2.ffn_up.weight"));
    const Packed direct = make_format(spec)->quantize(w.data.data(), t.shape[0], t.shape[1], nullptr);
    ASSERT_EQ(direct.bytes.size(), t.nbytes);
    EXPECT_EQ(0, std::memcmp(direct.bytes.data(), t.data, t.nbytes)) << spec;
    EXPECT_EQ(m.get("token_embd.weight").type, DType::Q8_0);  // not an int format: unchanged
    uint64_t total = 0;
    for (const auto& v : m.tensors) total += v.nbytes;
    EXPECT_LT(total, previous);
    previous = total;
    LlamaModel run(m);  // loads and runs
    KVCache cache = run.make_cache(4);
    std::vector<float> logits(size_t(4) * 512);
    const int tokens[4] = {1, 403, 407, 261};
    run.forward(tokens, 4, 0, cache, logits.data());
    for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  }
  // Errors: no int model, or more bits than stored.
  auto bad = qk_test::run_cli("derive -m " + master + " --bits 7 -o " + dir + "/x.qk");
  EXPECT_EQ(bad.exit_code, 0) << bad.err;  // 7 < 8 is fine
  auto none = qk_test::run_cli("derive -m " + qk_test::model_path() + " --tokenizer " + qk_test::tokenizer_path() +
                               " --bits 4 -o " + dir + "/y.qk");
  EXPECT_NE(none.exit_code, 0);
  EXPECT_EQ(qk_test::count_lines(none.err), 1) << none.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/y.qk"));
}
