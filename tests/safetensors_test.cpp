// safetensors reader/writer, sharded index, Hugging Face Llama load/save and the Q/K
// rope-layout permutation; every malformed input must give a one-line Error naming
// the file.
#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "formats_test_util.h"
#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"

using namespace quantkit;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A fresh folder per test under gtest's temp dir.
std::string test_dir() {
  const auto* info = testing::UnitTest::GetInstance()->current_test_info();
  fs::path d = fs::path(testing::TempDir()) / fmt::format("qk_{}_{}", info->test_suite_name(), info->name());
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char(v >> (8 * i));
  return s;
}

// A safetensors file with a hand-written header and `data_bytes` zero bytes of data.
std::string raw_file(const std::string& dir, const std::string& header, size_t data_bytes) {
  std::string path = dir + "/raw.safetensors";
  write_bytes(path, le64(header.size()) + header + std::string(data_bytes, '\0'));
  return path;
}

// Runs fn and returns the Error message; fails the test if no Error is thrown.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no quantkit::Error thrown";
  return "";
}

// The error is one line, names `path` and mentions `what`.
void expect_error(const std::function<void()>& fn, const std::string& path, const std::string& what) {
  std::string msg = error_of(fn);
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find(what), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

void expect_bad_file(const std::string& header, size_t data_bytes, const std::string& what) {
  std::string path = raw_file(test_dir(), header, data_bytes);
  expect_error([&] { SafetensorsFile f(path); }, path, what);
}

template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> view_bytes(const TensorView& v) {
  const auto* p = static_cast<const uint8_t*>(v.data);
  return std::vector<uint8_t>(p, p + v.nbytes);
}

std::vector<float> random_floats(size_t n, uint32_t seed) { return qk_test::gaussian_mt32(n, seed); }

}  // namespace

// ---- file round trip ----

TEST(SafetensorsFile, RoundTripsTypesShapesAndMetadata) {
  std::string path = test_dir() + "/t.safetensors";
  std::vector<float> f32 = random_floats(6, 1);
  std::vector<uint16_t> f16 = {f32_to_f16(1.5f), f32_to_f16(-2.0f), f32_to_f16(0.25f), 0x7c00};
  std::vector<uint16_t> bf16 = {f32_to_bf16(3.0f), f32_to_bf16(-0.5f), 0, 0x3f80};
  std::vector<int32_t> i32 = {-7, 0, 123456};
  std::vector<uint8_t> u8 = {1, 2, 3, 4, 5};  // odd size: must not misalign what follows
  std::vector<float> scalar = {42.0f};
  auto b_f32 = bytes_of(f32), b_f16 = bytes_of(f16), b_bf16 = bytes_of(bf16), b_i32 = bytes_of(i32),
       b_scalar = bytes_of(scalar);
  std::vector<SafetensorsTensor> in = {
      {"u8", DType::U8, {5}, u8.data(), {}},        {"a.f32", DType::F32, {2, 3}, b_f32.data(), {}},
      {"b.f16", DType::F16, {4}, b_f16.data(), {}}, {"c.bf16", DType::BF16, {2, 2}, nullptr, [&] { return b_bf16; }},
      {"d.i32", DType::I32, {3}, b_i32.data(), {}}, {"scalar", DType::F32, {}, b_scalar.data(), {}},
      {"empty", DType::F16, {0, 4}, nullptr, {}},
  };
  write_safetensors(path, in, {{"format", "pt"}, {"note", "hello"}});

  std::string raw = read_bytes(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | uint8_t(raw[size_t(i)]);
  EXPECT_EQ(header_len % 8, 0u) << "header padded to 8 bytes";
  EXPECT_EQ(raw[8], '{');

  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hello"}}));
  ASSERT_EQ(f.tensors().size(), in.size());
  const std::vector<uint8_t> expect[] = {u8, b_f32, b_f16, b_bf16, b_i32, b_scalar, {}};
  for (size_t i = 0; i < in.size(); ++i) {
    const TensorView* v = f.find(in[i].name);
    ASSERT_NE(v, nullptr) << in[i].name;
    EXPECT_EQ(v->type, in[i].type) << in[i].name;
    EXPECT_EQ(v->shape, in[i].shape) << in[i].name;
    EXPECT_EQ(view_bytes(*v), expect[i]) << in[i].name;
    if (v->nbytes) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(v->data) % dtype_traits(v->type).type_size, 0u) << in[i].name;
    }
  }
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(SafetensorsFile, ReadsUnalignedDataByCopying) {
  // Header of 13 bytes: data starts at offset 21, so an F32 tensor is misaligned.
  std::string header = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::string dir = test_dir(), path = dir + "/u.safetensors";
  float one = 1.0f;
  std::string data(4, '\0');
  std::memcpy(data.data(), &one, 4);
  write_bytes(path, le64(header.size()) + header + data);
  SafetensorsFile f(path);
  const TensorView& v = f.tensors().at(0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % 4, 0u);
  EXPECT_EQ(to_float(v).data, std::vector<float>{1.0f});
}

TEST(SafetensorsFile, WriterRejectsUnsupportedInput) {
  std::string path = test_dir() + "/w.safetensors";
  std::vector<uint8_t> buf(64);
  expect_error([&] { write_safetensors(path, {{"q", DType::Q4_0, {32}, buf.data(), {}}}); }, "q4_0", "safetensors");
  expect_error(
      [&] {
        write_safetensors(path, {{"a", DType::F32, {1}, buf.data(), {}}, {"a", DType::F32, {1}, buf.data(), {}}});
      },
      path, "twice");
  expect_error(
      [&] {
        write_safetensors(path, {{"a", DType::F32, {2}, nullptr, [] { return std::vector<uint8_t>(3); }}});
      },
      path, "produced 3 bytes");
  EXPECT_FALSE(fs::exists(path)) << "a failed write leaves no file";
}

// ---- shards + index ----

TEST(SafetensorsIndex, ShardedRoundTrip) {
  std::string dir = test_dir();
  std::vector<std::vector<float>> data;
  std::vector<SafetensorsTensor> in;
  for (int i = 0; i < 6; ++i) data.push_back(random_floats(16, 10 + i));  // 64 bytes each
  for (int i = 0; i < 6; ++i) in.push_back({fmt::format("t{}", i), DType::F32, {4, 4}, data[size_t(i)].data(), {}});

  write_bytes(dir + "/model.safetensors", "stale");
  auto files = write_safetensors_sharded(dir, in, {{"format", "pt"}}, 150);  // two tensors per shard
  ASSERT_EQ(files.size(), 4u);
  EXPECT_EQ(files[0], "model-00001-of-00003.safetensors");
  EXPECT_EQ(files[2], "model-00003-of-00003.safetensors");
  EXPECT_EQ(files[3], "model.safetensors.index.json");
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors")) << "stale single file removed";

  json idx = json::parse(read_bytes(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(idx["metadata"]["total_size"], 6 * 64);
  EXPECT_EQ(idx["weight_map"]["t0"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(idx["weight_map"]["t5"], "model-00003-of-00003.safetensors");

  SafetensorsSet set = open_safetensors(dir + "/model.safetensors.index.json");
  EXPECT_EQ(set.shards.size(), 3u);
  EXPECT_EQ(set.metadata.at("format"), "pt");
  ASSERT_EQ(set.tensors.size(), 6u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(set.tensors[size_t(i)].name, fmt::format("t{}", i));
    EXPECT_EQ(to_float(set.tensors[size_t(i)]).data, data[size_t(i)]);
  }

  // Under the limit: one file, and the now-stale index goes away.
  files = write_safetensors_sharded(dir, in, {}, 1 << 20);
  EXPECT_EQ(files, std::vector<std::string>{"model.safetensors"});
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(open_safetensors(dir + "/model.safetensors").tensors.size(), 6u);
}

TEST(SafetensorsIndex, OversizedTensorGetsItsOwnShard) {
  std::string dir = test_dir();
  std::vector<float> big(64), small(4);
  std::vector<SafetensorsTensor> in = {{"s0", DType::F32, {4}, small.data(), {}},
                                       {"big", DType::F32, {64}, big.data(), {}},
                                       {"s1", DType::F32, {4}, small.data(), {}}};
  auto files = write_safetensors_sharded(dir, in, {}, 100);
  EXPECT_EQ(files.size(), 4u);  // s0 | big | s1 | index
  EXPECT_EQ(open_safetensors(dir + "/" + files.back()).tensors.size(), 3u);
}

TEST(SafetensorsIndex, RejectsMissingShard) {
  std::string dir = test_dir(), index = dir + "/model.safetensors.index.json";
  write_bytes(index, R"({"metadata":{},"weight_map":{"a":"model-00001-of-00001.safetensors"}})");
  expect_error([&] { open_safetensors(index); }, index, "model-00001-of-00001.safetensors");
}

TEST(SafetensorsIndex, RejectsTensorNotInShard) {
  std::string dir = test_dir(), index = dir + "/model.safetensors.index.json";
  std::vector<float> x(4);
  write_safetensors(dir + "/shard.safetensors", {{"a", DType::F32, {4}, x.data(), {}}});
  write_bytes(index, R"({"weight_map":{"a":"shard.safetensors","b":"shard.safetensors"}})");
  expect_error([&] { open_safetensors(index); }, index, "'b'");
}

TEST(SafetensorsIndex, RejectsShardOutsideFolder) {
  std::string dir = test_dir(), index = dir + "/model.safetensors.index.json";
  write_bytes(index, R"({"weight_map":{"a":"../x.safetensors"}})");
  expect_error([&] { open_safetensors(index); }, index, "beside the index");
}

// ---- Q/K permutation ----

namespace {

Tensor row_indexed(int64_t rows, int64_t cols) {  // row r holds r*1000 + c
  Tensor w({rows, cols});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) w.data[size_t(r * cols + c)] = float(r * 1000 + c);
  return w;
}

// Rotates q in place at position pos: Normal pairs (2i, 2i+1), NeoX pairs (i, i+hd/2).
void rope(std::vector<float>& q, int hd, int pos, RopeStyle style) {
  for (int i = 0; i < hd / 2; ++i) {
    float theta = float(pos) * std::pow(10000.0f, -2.0f * float(i) / float(hd));
    int a = style == RopeStyle::Normal ? 2 * i : i, b = style == RopeStyle::Normal ? 2 * i + 1 : i + hd / 2;
    float x = q[size_t(a)], y = q[size_t(b)];
    q[size_t(a)] = x * std::cos(theta) - y * std::sin(theta);
    q[size_t(b)] = x * std::sin(theta) + y * std::cos(theta);
  }
}

std::vector<float> matvec_head(const Tensor& w, int head, int hd, const std::vector<float>& x) {
  std::vector<float> out(static_cast<size_t>(hd));
  int64_t cols = w.shape[1];
  for (int r = 0; r < hd; ++r)
    for (int64_t c = 0; c < cols; ++c) out[size_t(r)] += w.data[size_t((head * hd + r) * cols + c)] * x[size_t(c)];
  return out;
}

}  // namespace

TEST(SafetensorsPermute, MatchesFormula) {
  const int heads = 3, hd = 8, cols = 5;
  Tensor w = row_indexed(heads * hd, cols);
  Tensor p = permute_qk_normal_to_neox(w, heads, "q");
  ASSERT_EQ(p.shape, w.shape);
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < hd / 2; ++i)
      for (int c = 0; c < cols; ++c) {
        EXPECT_EQ(p.data[size_t((h * hd + i) * cols + c)], w.data[size_t((h * hd + 2 * i) * cols + c)]);
        EXPECT_EQ(p.data[size_t((h * hd + hd / 2 + i) * cols + c)], w.data[size_t((h * hd + 2 * i + 1) * cols + c)]);
      }
}

TEST(SafetensorsPermute, IsABijectionUndoneByLlamaCppPermute) {
  const int heads = 4, hd = 6, cols = 3, rows = heads * hd;
  Tensor w = row_indexed(rows, cols);
  Tensor p = permute_qk_normal_to_neox(w, heads, "k");
  std::set<float> seen;
  for (int r = 0; r < rows; ++r) seen.insert(p.data[size_t(r * cols)]);
  EXPECT_EQ(seen.size(), size_t(rows)) << "every source row used exactly once";
  // llama.cpp's HF->GGUF permute: reshape(heads, 2, hd/2, cols).swapaxes(1, 2).
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < hd / 2; ++i)
      for (int j = 0; j < 2; ++j)
        for (int c = 0; c < cols; ++c)
          EXPECT_EQ(w.data[size_t((h * hd + 2 * i + j) * cols + c)],
                    p.data[size_t((h * hd + j * hd / 2 + i) * cols + c)]);
}

TEST(SafetensorsPermute, PreservesAttentionScores) {
  // q·k after rope must be the same for (Normal, W) and (NeoX, permuted W).
  const int heads = 2, hd = 8, dim = 16;
  Tensor wq({heads * hd, dim}), wk({heads * hd, dim});
  wq.data = random_floats(wq.data.size(), 3);
  wk.data = random_floats(wk.data.size(), 4);
  Tensor pq = permute_qk_normal_to_neox(wq, heads, "q"), pk = permute_qk_normal_to_neox(wk, heads, "k");
  std::vector<float> xq = random_floats(dim, 5), xk = random_floats(dim, 6);
  for (int h = 0; h < heads; ++h) {
    auto score = [&](const Tensor& a, const Tensor& b, RopeStyle s) {
      auto q = matvec_head(a, h, hd, xq), k = matvec_head(b, h, hd, xk);
      rope(q, hd, 7, s);
      rope(k, hd, 3, s);
      double dot = 0;
      for (int i = 0; i < hd; ++i) dot += double(q[size_t(i)]) * k[size_t(i)];
      return dot;
    };
    EXPECT_NEAR(score(wq, wk, RopeStyle::Normal), score(pq, pk, RopeStyle::NeoX), 1e-4);
  }
}

TEST(SafetensorsPermute, RejectsIndivisibleShape) {
  Tensor w({10, 2});
  expect_error([&] { permute_qk_normal_to_neox(w, 3, "blk.0.attn_q.weight"); }, "blk.0.attn_q.weight", "heads");
  expect_error([&] { permute_qk_normal_to_neox(w, 2, "blk.0.attn_q.weight"); }, "blk.0.attn_q.weight", "even");
}

TEST(SafetensorsNames, MapBothWays) {
  EXPECT_EQ(hf_to_gguf_name("model.layers.12.self_attn.o_proj.weight"), "blk.12.attn_output.weight");
  EXPECT_EQ(hf_to_gguf_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(hf_to_gguf_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(hf_to_gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"), std::nullopt);
  EXPECT_EQ(hf_to_gguf_name("model.layers.01.mlp.up_proj.weight"), std::nullopt);
  EXPECT_EQ(gguf_to_hf_name("blk.1.ffn_down.weight"), "model.layers.1.mlp.down_proj.weight");
  EXPECT_EQ(gguf_to_hf_name("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(gguf_to_hf_name("rope_freqs.weight"), std::nullopt);
}

// ---- model round trip ----

namespace {

// A random 2-layer Llama with owned float32 storage, Q/K in the Normal layout.
ModelFile tiny_llama(bool tied) {
  ModelFile m;
  m.path = "tiny";
  m.container = "gguf";
  LlamaConfig& c = m.config;
  c.dim = 8, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 1, c.hidden_dim = 16, c.vocab_size = 10;
  c.max_seq_len = 32, c.rms_eps = 1e-5f, c.rope_theta = 500000.0f, c.rope_style = RopeStyle::Normal;
  c.tied_embeddings = tied;
  uint32_t seed = 100;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    auto buf = std::make_shared<std::vector<float>>(random_floats(size_t(shape_numel(shape)), seed++));
    m.tensors.push_back({name, DType::F32, std::move(shape), buf->data(), buf->size() * 4, "", 0});
    m.storage.push_back(buf);
  };
  add("token_embd.weight", {c.vocab_size, c.dim});
  for (int l = 0; l < c.n_layers; ++l) {
    auto b = [&](const char* s) { return fmt::format("blk.{}.{}", l, s); };
    add(b("attn_norm.weight"), {c.dim});
    add(b("attn_q.weight"), {c.dim, c.dim});
    add(b("attn_k.weight"), {c.kv_dim(), c.dim});
    add(b("attn_v.weight"), {c.kv_dim(), c.dim});
    add(b("attn_output.weight"), {c.dim, c.dim});
    add(b("ffn_norm.weight"), {c.dim});
    add(b("ffn_gate.weight"), {c.hidden_dim, c.dim});
    add(b("ffn_up.weight"), {c.hidden_dim, c.dim});
    add(b("ffn_down.weight"), {c.dim, c.hidden_dim});
  }
  add("output_norm.weight", {c.dim});
  if (!tied) add("output.weight", {c.vocab_size, c.dim});
  Vocab v;
  for (int i = 0; i < c.vocab_size; ++i) {
    v.tokens.push_back(i < 3 ? std::vector<std::string>{"<unk>", "<s>", "</s>"}[size_t(i)]
                             : fmt::format("\u2581t{}", i));
    v.scores.push_back(-float(i));
    v.types.push_back(i < 3 ? TokenType::Control : TokenType::Normal);
  }
  v.add_space_prefix = false;
  v.max_token_length = 5;  // "<unk>"
  m.vocab = v;
  return m;
}

// The expected loaded weight: q/k permuted to NeoX, everything else unchanged.
Tensor expected_weight(const ModelFile& m, const TensorView& v) {
  Tensor f = to_float(v);
  if (v.name.find("attn_q") != std::string::npos) return permute_qk_normal_to_neox(f, m.config.n_heads, v.name);
  if (v.name.find("attn_k") != std::string::npos) return permute_qk_normal_to_neox(f, m.config.n_kv_heads, v.name);
  return f;
}

void expect_same_model(const ModelFile& src, const ModelFile& got, float tol) {
  EXPECT_EQ(got.container, "safetensors");
  EXPECT_EQ(got.config.dim, src.config.dim);
  EXPECT_EQ(got.config.n_layers, src.config.n_layers);
  EXPECT_EQ(got.config.n_heads, src.config.n_heads);
  EXPECT_EQ(got.config.n_kv_heads, src.config.n_kv_heads);
  EXPECT_EQ(got.config.hidden_dim, src.config.hidden_dim);
  EXPECT_EQ(got.config.vocab_size, src.config.vocab_size);
  EXPECT_EQ(got.config.max_seq_len, src.config.max_seq_len);
  EXPECT_EQ(got.config.rms_eps, src.config.rms_eps);
  EXPECT_EQ(got.config.rope_theta, src.config.rope_theta);
  EXPECT_EQ(got.config.rope_style, RopeStyle::NeoX);
  EXPECT_EQ(got.config.tied_embeddings, src.config.tied_embeddings);
  ASSERT_TRUE(got.vocab.has_value());
  EXPECT_EQ(got.vocab->tokens, src.vocab->tokens);
  EXPECT_EQ(got.vocab->scores, src.vocab->scores);
  EXPECT_EQ(got.vocab->types, src.vocab->types);
  EXPECT_EQ(got.vocab->add_space_prefix, src.vocab->add_space_prefix);
  EXPECT_EQ(got.vocab->max_token_length, src.vocab->max_token_length);
  ASSERT_EQ(got.tensors.size(), src.tensors.size());
  for (const TensorView& s : src.tensors) {
    const TensorView* g = got.find(s.name);
    ASSERT_NE(g, nullptr) << s.name;
    EXPECT_EQ(g->shape, s.shape) << s.name;
    Tensor want = expected_weight(src, s), have = to_float(*g);
    for (size_t i = 0; i < want.data.size(); ++i)
      ASSERT_NEAR(have.data[i], want.data[i], tol * std::fabs(want.data[i]) + 1e-30f) << s.name << " [" << i << "]";
  }
}

}  // namespace

TEST(SafetensorsModel, RoundTripF32PermutesQK) {
  std::string dir = test_dir() + "/out";
  ModelFile src = tiny_llama(false);
  save_safetensors_model(src, dir, DType::F32);
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  json cfg = json::parse(read_bytes(dir + "/config.json"));
  EXPECT_EQ(cfg["model_type"], "llama");
  EXPECT_EQ(cfg["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(cfg["torch_dtype"], "float32");
  EXPECT_EQ(cfg["rms_norm_eps"], 1e-05);
  SafetensorsFile st(dir + "/model.safetensors");
  EXPECT_NE(st.find("model.layers.1.self_attn.k_proj.weight"), nullptr);
  EXPECT_NE(st.find("lm_head.weight"), nullptr);
  EXPECT_EQ(st.metadata().at("format"), "pt");

  ModelFile got = load_safetensors_model(dir);
  expect_same_model(src, got, 0.0f);
  // The .safetensors file or config.json name the same model.
  EXPECT_EQ(load_safetensors_model(dir + "/model.safetensors").tensors.size(), src.tensors.size());
  EXPECT_EQ(load_safetensors_model(dir + "/config.json").tensors.size(), src.tensors.size());
}

TEST(SafetensorsModel, RoundTripShardedF16Tied) {
  std::string dir = test_dir();
  ModelFile src = tiny_llama(true);
  save_safetensors_model(src, dir, DType::F16, 400);
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  ModelFile got = load_safetensors_model(dir);
  EXPECT_EQ(got.find("output.weight"), nullptr);
  EXPECT_EQ(got.tensors.front().type, DType::F16);
  expect_same_model(src, got, 1.0f / 1024);
  // Re-saving a NeoX model does not permute again.
  std::string again = dir + "/again";
  save_safetensors_model(got, again, DType::F32);
  ModelFile got2 = load_safetensors_model(again);
  for (const TensorView& t : got.tensors) EXPECT_EQ(to_float(*got2.find(t.name)).data, to_float(t).data) << t.name;
}

TEST(SafetensorsModel, IgnoresUnknownTensorsAndTiesWithoutLmHead) {
  std::string dir = test_dir();
  ModelFile src = tiny_llama(false);
  save_safetensors_model(src, dir, DType::F32);
  // Rewrite the weights with an extra rotary buffer and without lm_head.
  std::vector<float> inv_freq(4, 1.0f);
  std::vector<SafetensorsTensor> tensors;
  SafetensorsFile st(dir + "/model.safetensors");
  for (const TensorView& t : st.tensors())
    if (t.name != "lm_head.weight") tensors.push_back({t.name, t.type, t.shape, t.data, {}});
  tensors.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::F32, {4}, inv_freq.data(), {}});
  write_safetensors(dir + "/model2.safetensors", tensors);
  ModelFile got = load_safetensors_model(dir + "/model2.safetensors");
  EXPECT_TRUE(got.config.tied_embeddings);
  EXPECT_EQ(got.tensors.size(), src.tensors.size() - 1);
  EXPECT_EQ(got.find("output.weight"), nullptr);
}

TEST(SafetensorsModel, RejectsNonFloatOutputType) {
  std::string dir = test_dir() + "/out";
  expect_error([&] { save_safetensors_model(tiny_llama(false), dir, DType::Q8_0); }, dir, "not q8_0");
  EXPECT_FALSE(fs::exists(dir));
}

// ---- malformed files ----

TEST(SafetensorsMalformed, TruncatedHeaderLength) {
  std::string path = test_dir() + "/short.safetensors";
  write_bytes(path, std::string(5, '\0'));
  expect_error([&] { SafetensorsFile f(path); }, path, "too short");
}

TEST(SafetensorsMalformed, HeaderLengthBeyondFile) {
  std::string path = test_dir() + "/long.safetensors";
  write_bytes(path, le64(1000) + "{}      ");
  expect_error([&] { SafetensorsFile f(path); }, path, "exceeds the file size");
}

TEST(SafetensorsMalformed, HugeHeaderLength) {
  std::string path = test_dir() + "/huge.safetensors";
  write_bytes(path, le64(~uint64_t(0)) + "{}      ");
  expect_error([&] { SafetensorsFile f(path); }, path, "exceeds");
}

TEST(SafetensorsMalformed, InvalidJson) { expect_bad_file("{\"a\": [1, 2\n", 0, "header is not valid JSON"); }

TEST(SafetensorsMalformed, HeaderNotAnObject) { expect_bad_file("[1, 2]  ", 0, "not a JSON object"); }

TEST(SafetensorsMalformed, OffsetsOutOfRange) {
  expect_bad_file(R"({"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}})", 16,
                  "outside the 16-byte data buffer");
}

TEST(SafetensorsMalformed, ReversedOffsets) {
  expect_bad_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 16, "reversed");
}

TEST(SafetensorsMalformed, SizeMismatchWithShape) {
  expect_bad_file(R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 16, "needs 16");
}

TEST(SafetensorsMalformed, OverflowingShape) {
  expect_bad_file(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, "too large");
}

TEST(SafetensorsMalformed, OverlappingTensors) {
  expect_bad_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  16, "overlap");
}

TEST(SafetensorsMalformed, UnknownDtype) {
  expect_bad_file(R"({"fp8.w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4, "'fp8.w' has dtype F8_E4M3");
}

TEST(SafetensorsMalformed, NegativeDim) {
  expect_bad_file(R"({"w":{"dtype":"F32","shape":[-1,2],"data_offsets":[0,0]}})", 0, "negative dimension");
}

TEST(SafetensorsMalformed, RankTooLarge) {
  expect_bad_file(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", 1, "rank 9");
}

TEST(SafetensorsMalformed, DuplicateTensorName) {
  expect_bad_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                  R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                  2, "'w' twice");
}

TEST(SafetensorsMalformed, MissingField) {
  expect_bad_file(R"({"w":{"dtype":"U8","data_offsets":[0,1]}})", 1, "no 'shape'");
}

TEST(SafetensorsMalformed, NonStringMetadata) { expect_bad_file(R"({"__metadata__":{"n":1}})", 0, "__metadata__"); }

// ---- malformed model folders ----

namespace {

// Saves the tiny model, lets `edit` change config.json, returns the folder.
std::string model_with_config(const std::function<void(json&)>& edit) {
  std::string dir = test_dir();
  save_safetensors_model(tiny_llama(false), dir, DType::F32);
  json cfg = json::parse(read_bytes(dir + "/config.json"));
  edit(cfg);
  write_bytes(dir + "/config.json", cfg.dump());
  return dir;
}

}  // namespace

TEST(SafetensorsModelMalformed, MissingConfigKey) {
  std::string dir = model_with_config([](json& c) { c.erase("hidden_size"); });
  expect_error([&] { load_safetensors_model(dir); }, dir + "/config.json", "\"hidden_size\"");
}

TEST(SafetensorsModelMalformed, WrongConfigType) {
  std::string dir = model_with_config([](json& c) { c["num_hidden_layers"] = "2"; });
  expect_error([&] { load_safetensors_model(dir); }, dir + "/config.json", "\"num_hidden_layers\" must be an integer");
}

TEST(SafetensorsModelMalformed, WrongModelType) {
  std::string dir = model_with_config([](json& c) { c["model_type"] = "mistral"; });
  expect_error([&] { load_safetensors_model(dir); }, dir + "/config.json", "\"mistral\"");
}

TEST(SafetensorsModelMalformed, AbsurdConfigValue) {
  std::string dir = model_with_config([](json& c) { c["num_key_value_heads"] = 3; });
  expect_error([&] { load_safetensors_model(dir); }, dir + "/config.json", "n_kv_heads");
}

TEST(SafetensorsModelMalformed, RopeScalingRejected) {
  std::string dir = model_with_config([](json& c) { c["rope_scaling"] = {{"rope_type", "llama3"}}; });
  expect_error([&] { load_safetensors_model(dir); }, dir + "/config.json", "rope_scaling");
}

TEST(SafetensorsModelMalformed, MissingConfigFile) {
  std::string dir = test_dir();
  save_safetensors_model(tiny_llama(false), dir, DType::F32);
  fs::remove(dir + "/config.json");
  expect_error([&] { load_safetensors_model(dir); }, dir + "/config.json", "not found");
}

TEST(SafetensorsModelMalformed, NoSuchFile) {
  std::string path = test_dir() + "/nope.safetensors";
  expect_error([&] { load_safetensors_model(path); }, path, "no such file");
}

TEST(SafetensorsModelMalformed, FolderWithoutWeights) {
  std::string dir = test_dir();
  expect_error([&] { load_safetensors_model(dir); }, dir, "model.safetensors");
}

TEST(SafetensorsModelMalformed, BadVocab) {
  std::string dir = test_dir();
  save_safetensors_model(tiny_llama(false), dir, DType::F32);
  json v = json::parse(read_bytes(dir + "/quantkit_vocab.json"));
  v["bos_id"] = 10;
  write_bytes(dir + "/quantkit_vocab.json", v.dump());
  expect_error([&] { load_safetensors_model(dir); }, dir + "/quantkit_vocab.json", "\"bos_id\"");
  v["bos_id"] = 1;
  v["scores"].erase(0);
  write_bytes(dir + "/quantkit_vocab.json", v.dump());
  expect_error([&] { load_safetensors_model(dir); }, dir + "/quantkit_vocab.json", "\"scores\"");
}

TEST(SafetensorsModelMalformed, IndexNamesMissingShard) {
  std::string dir = test_dir();
  save_safetensors_model(tiny_llama(false), dir, DType::F32, 400);
  std::string shard;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("model-00002-of-", 0) == 0) shard = e.path().string();
  fs::remove(shard);
  std::string index = dir + "/model.safetensors.index.json";
  expect_error([&] { load_safetensors_model(dir); }, index, fs::path(shard).filename().string());
}
