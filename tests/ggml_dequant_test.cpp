// The ggml block decoders against llama.cpp: tests/data/ggml/<type>.bin hold blocks that
// llama.cpp quantized and the floats llama.cpp decodes them to (written by
// tests/tools/gen_ggml_vectors.sh); quantkit must reproduce those floats bit for bit.
// Plus hand-computed blocks for the simplest types and the length checks.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "io/ggml_blocks.h"
#include "io/ggml_dequant.h"
#include "quantkit/dtype.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"

using namespace quantkit;

namespace {

struct Vector {
  uint32_t type_id = 0;
  uint32_t n_values = 0;
  std::vector<uint8_t> blocks;
  std::vector<float> expected;
};

uint32_t read_u32(const std::vector<uint8_t>& buf, size_t at) {
  uint32_t v;
  std::memcpy(&v, buf.data() + at, 4);
  return v;
}

// Loads a QKTV file: "QKTV", u32 type id, u32 n_values, u32 n_bytes, blocks, f32 values.
// Failures are reported through gtest; the caller checks HasFatalFailure().
void load_vector(const std::string& path, Vector* out) {
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << "cannot open " << path << " (regenerate with tests/tools/gen_ggml_vectors.sh)";
  const std::vector<uint8_t> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(buf.size(), 16u) << path;
  ASSERT_EQ(std::memcmp(buf.data(), "QKTV", 4), 0) << path << ": bad magic";
  out->type_id = read_u32(buf, 4);
  out->n_values = read_u32(buf, 8);
  const uint32_t n_bytes = read_u32(buf, 12);
  ASSERT_EQ(buf.size(), 16 + size_t(n_bytes) + 4 * size_t(out->n_values)) << path << ": truncated";
  out->blocks.assign(buf.begin() + 16, buf.begin() + 16 + n_bytes);
  out->expected.resize(out->n_values);
  std::memcpy(out->expected.data(), buf.data() + 16 + n_bytes, 4 * size_t(out->n_values));
}

// Counts values whose bit patterns differ (so -0.0 vs 0.0 and NaN payloads count too) and
// reports the first few.
int count_bit_mismatches(const std::vector<float>& want, const std::vector<float>& got) {
  int mismatches = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &want[i], 4);
    std::memcpy(&b, &got[i], 4);
    if (a != b && ++mismatches <= 5)
      ADD_FAILURE() << "value " << i << ": llama.cpp " << want[i] << " (0x" << std::hex << a
                    << "), quantkit " << got[i] << " (0x" << b << ")" << std::dec;
  }
  return mismatches;
}

void expect_matches_llama_cpp(DType type) {
  const std::string name = dtype_name(type);
  SCOPED_TRACE(name);
  Vector v;
  load_vector(std::string(QK_TESTDATA_DIR) + "/ggml/" + name + ".bin", &v);
  if (testing::Test::HasFatalFailure()) return;

  ASSERT_EQ(v.type_id, uint32_t(type)) << "file holds a different ggml type";
  const auto& traits = dtype_traits(type);
  ASSERT_EQ(v.n_values % traits.block_size, 0) << "vector is not whole blocks";
  // The block geometry in quantkit's type table agrees with llama.cpp's.
  ASSERT_EQ(dtype_row_bytes(type, v.n_values), v.blocks.size());

  std::vector<float> got(v.n_values, -1.0f);
  dequantize(type, v.blocks.data(), got.data(), v.n_values);
  EXPECT_EQ(count_bit_mismatches(v.expected, got), 0);

  // Blocks inside a mapped file need not be aligned: decode from an odd address too.
  std::vector<uint8_t> shifted(v.blocks.size() + 1);
  std::memcpy(shifted.data() + 1, v.blocks.data(), v.blocks.size());
  std::vector<float> got_unaligned(v.n_values, -1.0f);
  dequantize(type, shifted.data() + 1, got_unaligned.data(), v.n_values);
  EXPECT_EQ(count_bit_mismatches(v.expected, got_unaligned), 0);
}

}  // namespace

TEST(GgmlDequant, Q4_0MatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q4_0); }
TEST(GgmlDequant, Q4_1MatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q4_1); }
TEST(GgmlDequant, Q5_0MatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q5_0); }
TEST(GgmlDequant, Q5_1MatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q5_1); }
TEST(GgmlDequant, Q8_0MatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q8_0); }
// llama.cpp has no Q8_1 decoder: the expected floats are d*q computed by the generator
// from llama.cpp-quantized blocks, so this pins the layout rather than llama.cpp's math.
TEST(GgmlDequant, Q8_1MatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q8_1); }
TEST(GgmlDequant, Q2_KMatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q2_K); }
TEST(GgmlDequant, Q3_KMatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q3_K); }
TEST(GgmlDequant, Q4_KMatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q4_K); }
TEST(GgmlDequant, Q5_KMatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q5_K); }
TEST(GgmlDequant, Q6_KMatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q6_K); }
TEST(GgmlDequant, Q8_KMatchesLlamaCpp) { expect_matches_llama_cpp(DType::Q8_K); }
TEST(GgmlDequant, IQ4_NLMatchesLlamaCpp) { expect_matches_llama_cpp(DType::IQ4_NL); }

TEST(GgmlDequant, Q8_0HandBuiltBlock) {
  // d = 0.25 and codes -128, -120, ..., 120: weight j is 0.25 * (8j - 128) = 2j - 32.
  ggml::BlockQ8_0 blocks[2];
  blocks[0].d = 0x3400;  // 0.25
  for (int j = 0; j < 32; ++j) blocks[0].qs[j] = int8_t(8 * j - 128);
  // A second block with a negative scale and the extreme codes, to check the stride.
  blocks[1].d = 0xc000;  // -2.0
  for (int j = 0; j < 32; ++j) blocks[1].qs[j] = int8_t(j % 2 ? 127 : -128);

  float out[64];
  dequantize(DType::Q8_0, blocks, out, 64);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], float(2 * j - 32)) << j;
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[32 + j], j % 2 ? -254.0f : 256.0f) << j;
}

TEST(GgmlDequant, Q4_0HandBuiltBlock) {
  // d = 2; qs[j] holds code j in its low nibble (weight j) and code 15 - j in its high
  // nibble (weight j + 16). Codes are offset by 8, so weight j = 2 * (j - 8) and weight
  // j + 16 = 2 * (7 - j).
  ggml::BlockQ4_0 block;
  block.d = 0x4000;  // 2.0
  for (int j = 0; j < 16; ++j) block.qs[j] = uint8_t(j | (15 - j) << 4);

  float out[32];
  dequantize(DType::Q4_0, &block, out, 32);
  const float expected[32] = {-16, -14, -12, -10, -8, -6, -4, -2, 0,  2,  4,   6,   8,   10,  12,  14,
                              14,  12,  10,  8,   6,  4,  2,  0,  -2, -4, -6, -8, -10, -12, -14, -16};
  for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], expected[j]) << j;
}

TEST(GgmlDequant, RejectsPartialBlocks) {
  std::vector<uint8_t> bytes(4096, 0);
  std::vector<float> out(2048);
  EXPECT_THROW(dequantize(DType::Q4_0, bytes.data(), out.data(), 33), Error);
  EXPECT_THROW(dequantize(DType::Q8_0, bytes.data(), out.data(), 31), Error);
  EXPECT_THROW(dequantize(DType::Q4_K, bytes.data(), out.data(), 255), Error);
  EXPECT_THROW(dequantize(DType::IQ4_NL, bytes.data(), out.data(), 48), Error);
  // The decoders check too, for callers that bypass quantkit::dequantize.
  EXPECT_THROW(dequant_q6_k(bytes.data(), out.data(), 300), Error);
  EXPECT_THROW(dequant_q5_0(bytes.data(), out.data(), -32), Error);
  // Whole blocks (and nothing at all) are fine.
  EXPECT_NO_THROW(dequantize(DType::Q4_K, bytes.data(), out.data(), 512));
  EXPECT_NO_THROW(dequantize(DType::Q4_0, bytes.data(), out.data(), 0));
}
