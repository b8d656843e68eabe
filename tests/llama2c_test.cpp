#include <gtest/gtest.h>

#include <cstring>

#include "io/model_io.h"
#include "quantkit/error.h"
#include "test_util.h"

using namespace quantkit;

TEST(Llama2c, ReadsAidreamsCheckpoint) {
  ModelFile m = load_model(qk_test::model_path(), qk_test::tokenizer_path());
  EXPECT_EQ(m.container, "llama2c");
  EXPECT_EQ(m.config.dim, 64);
  EXPECT_EQ(m.config.hidden_dim, 172);
  EXPECT_EQ(m.config.n_layers, 4);
  EXPECT_EQ(m.config.n_heads, 4);
  EXPECT_EQ(m.config.vocab_size, 512);
  EXPECT_EQ(m.config.max_seq_len, 128);
  EXPECT_TRUE(m.config.tied_embeddings);
  EXPECT_EQ(m.find("output.weight"), nullptr);
  EXPECT_EQ(m.get("blk.3.ffn_down.weight").shape, (std::vector<int64_t>{64, 172}));
  EXPECT_EQ(m.tensors.size(), 1u + 4 * 9 + 1);
}

// Every corruption gives a one-line error naming the file and a non-zero CLI exit.
TEST(Llama2c, RejectsMalformedCheckpoints) {
  const std::string good = qk_test::read_file(qk_test::model_path());
  const std::string dir = qk_test::temp_dir("l2c_bad");
  auto header_with = [&](int field, int32_t value) {
    std::string s = good;
    std::memcpy(&s[size_t(field) * 4], &value, 4);
    return s;
  };
  struct Case {
    const char* name;
    std::string bytes;
    const char* expect;
  } cases[] = {
      {"tiny", good.substr(0, 10), "too small"},
      {"truncated", good.substr(0, good.size() / 2), "truncated"},
      {"trailing", good + "xxxx", "trailing"},
      {"huge_dim", header_with(0, 1 << 30), "out of range"},
      {"neg_layers", header_with(2, -3), "out of range"},
      {"zero_heads", header_with(3, 0), "out of range"},
      {"kv_gt_heads", header_with(4, 64), "out of range"},
      {"dim_not_multiple", header_with(3, 3), "multiple"},
  };
  for (const auto& c : cases) {
    const std::string p = dir + "/" + c.name + ".bin";
    std::ofstream(p, std::ios::binary) << c.bytes;
    try {
      load_model(p, "");
      ADD_FAILURE() << c.name << ": no error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(p), std::string::npos) << c.name << ": " << msg;
      EXPECT_NE(msg.find(c.expect), std::string::npos) << c.name << ": " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << c.name << ": " << msg;
    }
    auto r = qk_test::run_cli("inspect " + p);
    EXPECT_EQ(r.exit_code, 1) << c.name;
    EXPECT_EQ(qk_test::count_lines(r.err), 1) << c.name << ": " << r.err;
  }
  auto r = qk_test::run_cli("inspect " + dir + "/does_not_exist.bin");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no such file"), std::string::npos) << r.err;
}
