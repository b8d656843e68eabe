// GGUF reader/writer and GGUF model loading: round trips of every value type and of
// tensor bytes, the Llama model mapping, and a malformed file for every check.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <random>

#include "io/gguf.h"
#include "io/llama_tensors.h"
#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/mapped_file.h"

using namespace quantkit;

namespace {

std::string temp_path(const std::string& name) { return testing::TempDir() + "quantkit_gguf_" + name; }

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

// Raw little-endian GGUF builder, independent of GgufWriter, so tests can corrupt anything.
struct Raw {
  std::vector<uint8_t> b;

  template <typename T>
  Raw& pod(T v) {
    const uint8_t* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof v);
    return *this;
  }
  Raw& u32(uint32_t v) { return pod(v); }
  Raw& u64(uint64_t v) { return pod(v); }
  Raw& i64(int64_t v) { return pod(v); }
  Raw& bytes(const std::string& s) {
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Raw& str(const std::string& s) { return u64(s.size()).bytes(s); }
  Raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return bytes("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  }
  Raw& kv_u32(const std::string& key, uint32_t v) { return str(key).u32(uint32_t(GgufType::U32)).u32(v); }
  Raw& kv_str(const std::string& key, const std::string& v) { return str(key).u32(uint32_t(GgufType::String)).str(v); }
  // Tensor info with ne[] in GGUF order.
  Raw& tensor(const std::string& name, std::vector<int64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(uint32_t(ne.size()));
    for (int64_t n : ne) i64(n);
    return u32(type).u64(offset);
  }
  Raw& pad(size_t align = 32) {
    while (b.size() % align) b.push_back(0);
    return *this;
  }
  Raw& zeros(size_t n) {
    b.insert(b.end(), n, 0);
    return *this;
  }
};

// Asserts that reading `path` throws a one-line quantkit::Error naming the file and
// containing `needle`.
template <typename F>
void expect_error(const std::string& path, const std::string& needle, F&& f) {
  try {
    f();
    ADD_FAILURE() << "no error for " << path << " (expected '" << needle << "')";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

void expect_read_error(const std::string& name, const std::vector<uint8_t>& bytes, const std::string& needle) {
  std::string path = temp_path(name + ".gguf");
  write_bytes(path, bytes);
  expect_error(path, needle, [&] { GgufReader r(path); });
}

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto& x : out) x = uint8_t(rng());
  return out;
}

}  // namespace

// ---- values -----------------------------------------------------------------------------

TEST(GgufValue, TypedAccessors) {
  EXPECT_EQ(GgufValue::u8(200).as_int(), 200);
  EXPECT_EQ(GgufValue::i8(-5).as_int(), -5);
  EXPECT_EQ(GgufValue::i16(-30000).as_int(), -30000);
  EXPECT_EQ(GgufValue::u32(4000000000u).as_int(), 4000000000LL);
  EXPECT_EQ(GgufValue::i64(-(int64_t(1) << 40)).as_int(), -(int64_t(1) << 40));
  EXPECT_EQ(GgufValue::u64(~uint64_t(0)).as_uint(), ~uint64_t(0));
  EXPECT_THROW(GgufValue::u64(~uint64_t(0)).as_int(), Error);  // above INT64_MAX
  EXPECT_THROW(GgufValue::i32(-1).as_uint(), Error);
  EXPECT_DOUBLE_EQ(GgufValue::f32(1.5f).as_float(), 1.5);
  EXPECT_DOUBLE_EQ(GgufValue::i32(-7).as_float(), -7.0);
  EXPECT_THROW(GgufValue::f32(1.0f).as_int(), Error);
  EXPECT_THROW(GgufValue::string("x").as_int(), Error);
  EXPECT_THROW(GgufValue::string("x").as_float(), Error);
  EXPECT_THROW(GgufValue::u8(1).as_bool(), Error);
  EXPECT_THROW(GgufValue::boolean(true).as_int(), Error);
  EXPECT_TRUE(GgufValue::boolean(true).as_bool());
  EXPECT_EQ(GgufValue::string("héllo").as_string(), "héllo");
  EXPECT_THROW(GgufValue::u32(1).as_string(), Error);

  auto strs = GgufValue::array(std::vector<std::string>{"a", "", "c"});
  EXPECT_EQ(strs.as_string_array(), (std::vector<std::string>{"a", "", "c"}));
  EXPECT_THROW(strs.as_float_array(), Error);
  EXPECT_THROW(strs.as_string(), Error);
  auto ints = GgufValue::array(std::vector<int16_t>{-1, 2, 300});
  EXPECT_EQ(ints.as_int_array(), (std::vector<int64_t>{-1, 2, 300}));
  EXPECT_EQ(ints.as_float_array(), (std::vector<float>{-1.0f, 2.0f, 300.0f}));
  EXPECT_THROW(ints.as_string_array(), Error);
  auto floats = GgufValue::array(std::vector<double>{0.5, -2.25});
  EXPECT_EQ(floats.as_float_array(), (std::vector<float>{0.5f, -2.25f}));
  EXPECT_THROW(floats.as_int_array(), Error);
  EXPECT_EQ(ints.element(2), GgufValue::i16(300));
  EXPECT_THROW(ints.element(3), Error);
  EXPECT_EQ(ints.to_display(), "[i16 x 3]");
  EXPECT_EQ(GgufValue::string("a\nb").to_display(), "a\\nb");
}

TEST(GgufValue, ArrayFactoryChecksElementTypes) {
  EXPECT_THROW(GgufValue::array(GgufType::U32, {GgufValue::u32(1), GgufValue::i32(2)}), Error);
  auto nested = GgufValue::array(GgufType::Array, {GgufValue::array(std::vector<uint8_t>{1, 2}),
                                                   GgufValue::array(std::vector<std::string>{"x"})});
  EXPECT_EQ(nested.array_size(), 2u);
  EXPECT_EQ(nested.element(1).as_string_array(), std::vector<std::string>{"x"});
}

// ---- round trips ------------------------------------------------------------------------

TEST(GgufRoundTrip, EveryValueType) {
  GgufWriter w;
  w.set("u8", GgufValue::u8(255));
  w.set("i8", GgufValue::i8(-128));
  w.set("u16", GgufValue::u16(65535));
  w.set("i16", GgufValue::i16(-32768));
  w.set("u32", GgufValue::u32(0xdeadbeef));
  w.set("i32", GgufValue::i32(std::numeric_limits<int32_t>::min()));
  w.set("f32", GgufValue::f32(3.14159f));
  w.set("f32.nan", GgufValue::f32(std::bit_cast<float>(0x7fc12345u)));  // payload kept
  w.set("f32.negzero", GgufValue::f32(-0.0f));
  w.set("bool.t", GgufValue::boolean(true));
  w.set("bool.f", GgufValue::boolean(false));
  w.set("string", GgufValue::string("h\xc3\xa9llo \xe2\x96\x81world"));
  w.set("string.empty", GgufValue::string(""));
  w.set("u64", GgufValue::u64(~uint64_t(0)));
  w.set("i64", GgufValue::i64(std::numeric_limits<int64_t>::min()));
  w.set("f64", GgufValue::f64(-1e300));
  w.set("arr.u8", GgufValue::array(std::vector<uint8_t>{0, 1, 255}));
  w.set("arr.i8", GgufValue::array(std::vector<int8_t>{-128, 127}));
  w.set("arr.u16", GgufValue::array(std::vector<uint16_t>{1, 65535}));
  w.set("arr.i16", GgufValue::array(std::vector<int16_t>{-2, 2}));
  w.set("arr.u32", GgufValue::array(std::vector<uint32_t>{7, 8, 9}));
  w.set("arr.i32", GgufValue::array(std::vector<int32_t>{-1, 0, 1}));
  w.set("arr.f32", GgufValue::array(std::vector<float>{0.1f, -0.0f, 1e30f}));
  w.set("arr.bool", GgufValue::array(std::vector<bool>{true, false, true}));
  w.set("arr.u64", GgufValue::array(std::vector<uint64_t>{~uint64_t(0)}));
  w.set("arr.i64", GgufValue::array(std::vector<int64_t>{-5}));
  w.set("arr.f64", GgufValue::array(std::vector<double>{2.5, -1e-300}));
  w.set("arr.string", GgufValue::array(std::vector<std::string>{"<unk>", "", "\xe2\x96\x81the"}));
  w.set("arr.empty", GgufValue::array(std::vector<float>{}));
  w.set("arr.empty_strings", GgufValue::array(std::vector<std::string>{}));
  // Nested: inner arrays of different element types, arrays of string arrays, 3 levels.
  auto inner_mixed = GgufValue::array(GgufType::Array, {GgufValue::array(std::vector<uint32_t>{1, 2}),
                                                        GgufValue::array(std::vector<std::string>{"a", "b"}),
                                                        GgufValue::array(std::vector<float>{})});
  w.set("arr.nested", inner_mixed);
  w.set("arr.nested3", GgufValue::array(GgufType::Array, {inner_mixed, GgufValue::array(GgufType::Array, {})}));
  w.set("u32", GgufValue::u32(42));  // replaces in place, keeps position

  std::string path = temp_path("values.gguf");
  w.write(path);
  GgufReader r(path);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), 32u);
  EXPECT_TRUE(r.tensors().empty());
  ASSERT_EQ(r.metadata().size(), w.metadata().size());
  for (size_t i = 0; i < r.metadata().size(); ++i) {
    EXPECT_EQ(r.metadata()[i].key, w.metadata()[i].key);
    EXPECT_TRUE(r.metadata()[i].value == w.metadata()[i].value) << r.metadata()[i].key;
  }
  EXPECT_EQ(r.metadata()[4].key, "u32");
  EXPECT_EQ(r.get("u32").as_int(), 42);
  EXPECT_EQ(std::bit_cast<uint32_t>(float(r.get("f32.nan").as_float())) & 0xffff, 0x2345u);
  EXPECT_EQ(r.get("arr.nested3").element(0).element(1).as_string_array(), (std::vector<std::string>{"a", "b"}));
  EXPECT_THROW(r.get("arr.bool").as_int_array(), Error);  // bools are not integers
}

TEST(GgufRoundTrip, TensorBytesAreBitIdentical) {
  auto f32 = random_bytes(3 * 5 * 4, 1);
  auto f16 = random_bytes(7 * 2, 2);
  auto q8 = random_bytes(2 * 2 * 34, 3);  // [2, 64] in Q8_0: 2 blocks per row
  auto bf16 = random_bytes(2 * 3 * 4 * 2 * 2, 4);
  GgufWriter w;
  w.set("general.name", GgufValue::string("t"));
  w.add_tensor("a.f32", DType::F32, {3, 5}, f32.data(), f32.size());
  w.add_tensor("b.f16", DType::F16, {7}, f16.data(), f16.size());
  w.add_tensor("c.q8_0", DType::Q8_0, {2, 64}, q8.data(), q8.size());
  w.add_tensor("d.bf16", DType::BF16, {2, 3, 4, 2}, bf16.data(), bf16.size());
  std::string path = temp_path("tensors.gguf");
  w.write(path);

  GgufReader r(path);
  ASSERT_EQ(r.tensors().size(), 4u);
  const auto& t = r.tensors();
  EXPECT_EQ(t[0].shape, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(t[1].shape, (std::vector<int64_t>{7}));
  EXPECT_EQ(t[2].shape, (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(t[3].shape, (std::vector<int64_t>{2, 3, 4, 2}));
  EXPECT_EQ(r.tensor_infos()[2].ne[0], 64);  // GGUF order is innermost first
  EXPECT_EQ(r.tensor_infos()[3].n_dims, 4u);
  EXPECT_EQ(t[2].type, DType::Q8_0);
  const std::vector<uint8_t>* blobs[] = {&f32, &f16, &q8, &bf16};
  const uint8_t* base = r.mapping()->data();
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_EQ(t[i].nbytes, blobs[i]->size());
    EXPECT_EQ(std::memcmp(t[i].data, blobs[i]->data(), t[i].nbytes), 0) << t[i].name;
    EXPECT_EQ((static_cast<const uint8_t*>(t[i].data) - base) % 32, 0) << t[i].name;
  }
  EXPECT_EQ(r.find_tensor("c.q8_0"), &t[2]);
  EXPECT_EQ(r.find_tensor("nope"), nullptr);
  EXPECT_EQ(r.data_offset() % 32, 0u);
}

TEST(GgufRoundTrip, NonDefaultAlignment) {
  for (uint32_t align : {1u, 8u, 64u, 4096u}) {
    auto a = random_bytes(5 * 4, 5), b = random_bytes(3 * 34, 6);
    GgufWriter w;
    w.set_alignment(align);
    w.add_tensor("a", DType::F32, {5}, a.data(), a.size());
    w.add_tensor("b", DType::Q8_0, {96}, b.data(), b.size());
    std::string path = temp_path("align.gguf");
    w.write(path);
    GgufReader r(path);
    EXPECT_EQ(r.alignment(), align);
    EXPECT_EQ(r.get(kGgufAlignmentKey), GgufValue::u32(align));
    const uint8_t* base = r.mapping()->data();
    for (const auto& t : r.tensors()) EXPECT_EQ((static_cast<const uint8_t*>(t.data) - base) % align, 0) << align;
    EXPECT_EQ(std::memcmp(r.tensors()[0].data, a.data(), a.size()), 0);
    EXPECT_EQ(std::memcmp(r.tensors()[1].data, b.data(), b.size()), 0);
  }
}

TEST(GgufRoundTrip, WriteIsDeterministicAndRewritable) {
  auto a = random_bytes(64, 7);
  GgufWriter w;
  w.set("k", GgufValue::string("v"));
  w.add_tensor("a", DType::F32, {16}, a.data(), a.size());
  std::string p1 = temp_path("det1.gguf"), p2 = temp_path("det2.gguf");
  w.write(p1);
  w.write(p2);
  w.write(p2);  // overwrite in place
  EXPECT_EQ(read_bytes(p1), read_bytes(p2));
}

TEST(GgufWriter, RejectsInvalidInput) {
  GgufWriter w;
  std::vector<uint8_t> buf(4096);
  EXPECT_THROW(w.set_alignment(48), Error);
  EXPECT_THROW(w.set_alignment(0), Error);
  EXPECT_THROW(w.set(kGgufAlignmentKey, GgufValue::u64(32)), Error);
  EXPECT_THROW(w.set("", GgufValue::u8(0)), Error);
  EXPECT_THROW(w.add_tensor("x", DType::F32, {4}, buf.data(), 15), Error);       // wrong size
  EXPECT_THROW(w.add_tensor("x", DType::Q8_0, {33}, buf.data(), 34), Error);     // partial block
  EXPECT_THROW(w.add_tensor("x", DType::F32, {}, buf.data(), 4), Error);         // 0 dims
  EXPECT_THROW(w.add_tensor("x", DType::F32, {1, 1, 1, 1, 1}, buf.data(), 4), Error);
  EXPECT_THROW(w.add_tensor("x", DType::F32, {0}, buf.data(), 0), Error);
  EXPECT_THROW(w.add_tensor("x", DType::U8, {4}, buf.data(), 4), Error);         // not a ggml type
  EXPECT_THROW(w.add_tensor(std::string(64, 'n'), DType::F32, {1}, buf.data(), 4), Error);
  w.add_tensor("x", DType::F32, {4}, buf.data(), 16);
  EXPECT_THROW(w.add_tensor("x", DType::F32, {4}, buf.data(), 16), Error);       // duplicate
}

// ---- model level ------------------------------------------------------------------------

namespace {

struct TinyModel {
  ModelFile m;
  std::vector<std::vector<float>> buffers;
};

// A 2-layer GQA llama with random F32 weights and a small SentencePiece-style vocab.
TinyModel make_tiny_model(bool with_output = true, int kv_heads = 2) {
  TinyModel tm;
  ModelFile& m = tm.m;
  m.path = "memory";
  m.container = "memory";
  LlamaConfig& c = m.config;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = kv_heads, c.hidden_dim = 64, c.vocab_size = 12;
  c.max_seq_len = 128, c.rms_eps = 1e-6f, c.rope_theta = 500000.0f, c.tied_embeddings = !with_output;
  Vocab v;
  v.tokens = {"<unk>", "<s>", "</s>", "<0x00>", "<0x41>", "\xe2\x96\x81", "\xe2\x96\x81the", "a", "b", "ab", "\xe2\x96\x81" "ab",
              "\xc3\xa9\xc3\xa9\xc3\xa9"};
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    v.scores.push_back(-float(i) * 0.5f);
    v.types.push_back(i == 0 ? TokenType::Unknown : i < 3 ? TokenType::Control : i < 5 ? TokenType::Byte : TokenType::Normal);
  }
  v.add_bos = true, v.add_space_prefix = false;
  v.max_token_length = 8;
  m.vocab = v;
  m.metadata["general.name"] = "tiny";

  std::mt19937 rng(42);
  std::normal_distribution<float> nd;
  tm.buffers.reserve(64);
  for (const auto& spec : llama_tensor_specs(c)) {
    if (!spec.required && !with_output) continue;
    TensorView t;
    t.name = spec.name;
    t.type = DType::F32;
    t.shape = spec.shape;
    auto& buf = tm.buffers.emplace_back(size_t(shape_numel(spec.shape)));
    for (auto& x : buf) x = nd(rng);
    t.data = buf.data();
    t.nbytes = buf.size() * 4;
    m.tensors.push_back(t);
  }
  return tm;
}

void expect_same_tensor_bytes(const TensorView& a, const TensorView& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.type, b.type) << a.name;
  EXPECT_EQ(a.shape, b.shape) << a.name;
  ASSERT_EQ(a.nbytes, b.nbytes) << a.name;
  EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << a.name;
}

}  // namespace

TEST(GgufModel, RoundTrip) {
  TinyModel tm = make_tiny_model();
  std::string path = temp_path("model.gguf");
  save_gguf_model(tm.m, path);
  ModelFile m = load_gguf_model(path);

  EXPECT_EQ(m.container, "gguf");
  EXPECT_EQ(m.path, path);
  const LlamaConfig &a = tm.m.config, &b = m.config;
  EXPECT_EQ(b.dim, a.dim);
  EXPECT_EQ(b.n_layers, a.n_layers);
  EXPECT_EQ(b.n_heads, a.n_heads);
  EXPECT_EQ(b.n_kv_heads, a.n_kv_heads);
  EXPECT_EQ(b.hidden_dim, a.hidden_dim);
  EXPECT_EQ(b.vocab_size, a.vocab_size);
  EXPECT_EQ(b.max_seq_len, a.max_seq_len);
  EXPECT_EQ(b.rms_eps, a.rms_eps);
  EXPECT_EQ(b.rope_theta, a.rope_theta);
  EXPECT_EQ(b.rope_style, RopeStyle::Normal);
  EXPECT_FALSE(b.tied_embeddings);

  ASSERT_TRUE(m.vocab.has_value());
  const Vocab &va = *tm.m.vocab, &vb = *m.vocab;
  EXPECT_EQ(vb.model, "llama");
  EXPECT_EQ(vb.tokens, va.tokens);
  EXPECT_EQ(vb.scores, va.scores);
  EXPECT_EQ(vb.types, va.types);
  EXPECT_EQ(vb.bos_id, va.bos_id);
  EXPECT_EQ(vb.eos_id, va.eos_id);
  EXPECT_EQ(vb.unk_id, va.unk_id);
  EXPECT_EQ(vb.add_bos, va.add_bos);
  EXPECT_EQ(vb.add_space_prefix, va.add_space_prefix);
  EXPECT_EQ(vb.max_token_length, 6);  // bytes of "<0x00>", "\xe2\x96\x81the"

  ASSERT_EQ(m.tensors.size(), tm.m.tensors.size());
  for (size_t i = 0; i < m.tensors.size(); ++i) expect_same_tensor_bytes(m.tensors[i], tm.m.tensors[i]);
  EXPECT_EQ(m.metadata.at("general.name"), "tiny");
  EXPECT_EQ(m.metadata.at("general.file_type"), "0");
  EXPECT_EQ(m.metadata.count("llama.embedding_length"), 0u);  // consumed into config
  EXPECT_FALSE(m.storage.empty());

  // The keys and value types llama.cpp checks strictly.
  GgufReader r(path);
  EXPECT_EQ(r.get("general.architecture").as_string(), "llama");
  EXPECT_EQ(r.get("general.alignment").type(), GgufType::U32);
  EXPECT_EQ(r.get("llama.block_count").type(), GgufType::U32);
  EXPECT_EQ(r.get("llama.rope.dimension_count").as_int(), 8);
  EXPECT_EQ(r.get("llama.attention.layer_norm_rms_epsilon").type(), GgufType::F32);
  EXPECT_EQ(r.get("tokenizer.ggml.token_type").array_type(), GgufType::I32);
  EXPECT_EQ(r.get("tokenizer.ggml.bos_token_id").type(), GgufType::U32);
  EXPECT_EQ(r.get("tokenizer.ggml.add_bos_token").type(), GgufType::Bool);
}

namespace {

// Saves a tiny model, lets `edit` change its metadata and tensor list, and writes the
// result with GgufWriter directly (bypassing save_gguf_model's checks).
std::string write_variant(const std::string& name,
                          const std::function<void(std::vector<GgufKV>&, std::vector<TensorView>&)>& edit,
                          int kv_heads = 2) {
  std::string base = temp_path("base_" + name + ".gguf");
  save_gguf_model(make_tiny_model(true, kv_heads).m, base);
  GgufReader r(base);
  std::vector<GgufKV> kvs = r.metadata();
  std::vector<TensorView> tensors = r.tensors();
  edit(kvs, tensors);
  GgufWriter w;
  for (const auto& kv : kvs) w.set(kv.key, kv.value);
  for (const auto& t : tensors) w.add_tensor(t.name, t.type, t.shape, t.data, t.nbytes);
  std::string path = temp_path(name + ".gguf");
  w.write(path);
  return path;
}

// A tiny model with metadata `key` replaced by `value`, or removed when value is null.
std::string model_with_key(const std::string& name, const std::string& key, const GgufValue* value) {
  return write_variant(name, [&](std::vector<GgufKV>& kvs, std::vector<TensorView>&) {
    std::erase_if(kvs, [&](const GgufKV& kv) { return kv.key == key; });
    if (value) kvs.push_back({key, *value});
  });
}

}  // namespace

TEST(GgufModel, TiedEmbeddings) {
  TinyModel tm = make_tiny_model(/*with_output=*/false);
  std::string path = temp_path("tied.gguf");
  save_gguf_model(tm.m, path);
  ModelFile m = load_gguf_model(path);
  EXPECT_TRUE(m.config.tied_embeddings);
  EXPECT_EQ(m.find("output.weight"), nullptr);
  EXPECT_EQ(m.tensors.size(), tm.m.tensors.size());
}

TEST(GgufModel, OptionalKeysTakeLlamaCppDefaults) {
  std::string path = write_variant("defaults", [](std::vector<GgufKV>& kvs, std::vector<TensorView>&) {
    std::erase_if(kvs, [](const GgufKV& kv) {
      return kv.key == "llama.attention.head_count_kv" || kv.key == "llama.rope.freq_base" ||
             kv.key == "llama.vocab_size" || kv.key == "llama.rope.dimension_count" || kv.key == "general.name" ||
             (kv.key.rfind("tokenizer.ggml.", 0) == 0 && kv.key != "tokenizer.ggml.model" &&
              kv.key != "tokenizer.ggml.tokens");
    });
  }, /*kv_heads=*/4);
  ModelFile m = load_gguf_model(path);
  EXPECT_EQ(m.config.n_kv_heads, 4);
  EXPECT_EQ(m.config.rope_theta, 10000.0f);
  EXPECT_EQ(m.config.vocab_size, 12);  // from the token list
  EXPECT_EQ(m.metadata.count("general.name"), 0u);
  ASSERT_TRUE(m.vocab.has_value());
  EXPECT_EQ(m.vocab->scores, std::vector<float>(12, 0.0f));
  EXPECT_EQ(m.vocab->types, std::vector<TokenType>(12, TokenType::Normal));
  EXPECT_EQ(m.vocab->bos_id, 1);
  EXPECT_TRUE(m.vocab->add_space_prefix);

  // Without head_count_kv, a GQA model's K/V shapes no longer match.
  std::string gqa = write_variant("defaults_gqa", [](std::vector<GgufKV>& kvs, std::vector<TensorView>&) {
    std::erase_if(kvs, [](const GgufKV& kv) { return kv.key == "llama.attention.head_count_kv"; });
  });
  expect_error(gqa, "'blk.0.attn_k.weight' has shape [16, 32], expected [32, 32]", [&] { load_gguf_model(gqa); });
}

TEST(GgufModel, NeoXModelIsPermutedToNormalLayout) {
  TinyModel tm = make_tiny_model();
  tm.m.config.rope_style = RopeStyle::NeoX;
  std::string path = temp_path("neox.gguf");
  save_gguf_model(tm.m, path);
  ModelFile m = load_gguf_model(path);
  EXPECT_EQ(m.config.rope_style, RopeStyle::Normal);
  const TensorView& q_src = tm.m.get("blk.1.attn_q.weight");
  const TensorView& k_src = tm.m.get("blk.0.attn_k.weight");
  auto q = permute_qk_rows(q_src, 4, RopeStyle::NeoX, RopeStyle::Normal);
  auto k = permute_qk_rows(k_src, 2, RopeStyle::NeoX, RopeStyle::Normal);
  EXPECT_EQ(std::memcmp(m.get("blk.1.attn_q.weight").data, q.data(), q.size()), 0);
  EXPECT_EQ(std::memcmp(m.get("blk.0.attn_k.weight").data, k.data(), k.size()), 0);
  expect_same_tensor_bytes(m.get("blk.0.attn_v.weight"), tm.m.get("blk.0.attn_v.weight"));
  // Row 1 of a Normal head (pair 0, second half) is NeoX row head_dim/2 = 4.
  const float* src = static_cast<const float*>(q_src.data);
  const float* dst = static_cast<const float*>(m.get("blk.1.attn_q.weight").data);
  EXPECT_EQ(dst[1 * 32], src[4 * 32]);
}

TEST(GgufModel, QkPermutationRoundTrips) {
  TinyModel tm = make_tiny_model();
  const TensorView& q = tm.m.get("blk.0.attn_q.weight");
  auto neox = permute_qk_rows(q, 4, RopeStyle::Normal, RopeStyle::NeoX);
  TensorView nv = q;
  nv.data = neox.data();
  auto back = permute_qk_rows(nv, 4, RopeStyle::NeoX, RopeStyle::Normal);
  EXPECT_EQ(std::memcmp(back.data(), q.data, q.nbytes), 0);
  EXPECT_NE(std::memcmp(neox.data(), q.data, q.nbytes), 0);
}

TEST(GgufModel, LlamaTensorNames) {
  EXPECT_EQ(llama_tensor_name(3, "attn_q"), "blk.3.attn_q.weight");
  LlamaConfig c;
  c.dim = 8, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 1, c.hidden_dim = 16, c.vocab_size = 5;
  auto specs = llama_tensor_specs(c);
  ASSERT_EQ(specs.size(), 12u);
  EXPECT_EQ(specs[3].name, "blk.0.attn_k.weight");
  EXPECT_EQ(specs[3].shape, (std::vector<int64_t>{4, 8}));
  EXPECT_TRUE(specs.back().required);
}

TEST(GgufModel, MissingTensorIsNamed) {
  std::string path = write_variant("missing", [](std::vector<GgufKV>&, std::vector<TensorView>& ts) {
    std::erase_if(ts, [](const TensorView& t) { return t.name == "blk.1.ffn_down.weight"; });
  });
  expect_error(path, "'blk.1.ffn_down.weight' is missing (expected shape [32, 64])", [&] { load_gguf_model(path); });

  TinyModel tm = make_tiny_model();
  tm.m.tensors.erase(tm.m.tensors.begin() + 3);  // blk.0.attn_k.weight
  expect_error("memory", "'blk.0.attn_k.weight' is missing", [&] { save_gguf_model(tm.m, temp_path("x.gguf")); });
}

TEST(GgufModel, WrongShapeNamesExpectedAndActual) {
  std::string path = write_variant("shape", [](std::vector<GgufKV>&, std::vector<TensorView>& ts) {
    for (auto& t : ts)
      if (t.name == "blk.0.attn_q.weight") t.shape = {16, 64};  // same byte size
  });
  expect_error(path, "'blk.0.attn_q.weight' has shape [16, 64], expected [32, 32]", [&] { load_gguf_model(path); });
}

TEST(GgufModel, WrongArchitecture) {
  auto v = GgufValue::string("gpt2");
  std::string path = model_with_key("arch", "general.architecture", &v);
  expect_error(path, "unsupported architecture 'gpt2'", [&] { load_gguf_model(path); });
  std::string missing = model_with_key("noarch", "general.architecture", nullptr);
  expect_error(missing, "general.architecture", [&] { load_gguf_model(missing); });
}

TEST(GgufModel, BadHyperParameters) {
  auto s = GgufValue::string("32");
  std::string p1 = model_with_key("dimstr", "llama.embedding_length", &s);
  expect_error(p1, "llama.embedding_length", [&] { load_gguf_model(p1); });
  std::string p2 = model_with_key("nolayers", "llama.block_count", nullptr);
  expect_error(p2, "llama.block_count", [&] { load_gguf_model(p2); });
  auto big = GgufValue::u64(uint64_t(1) << 40);
  std::string p3 = model_with_key("bigctx", "llama.context_length", &big);
  expect_error(p3, "out of range", [&] { load_gguf_model(p3); });
  auto rope = GgufValue::u32(4);
  std::string p4 = model_with_key("rope", "llama.rope.dimension_count", &rope);
  expect_error(p4, "partial rotary", [&] { load_gguf_model(p4); });
  auto vs = GgufValue::u32(13);
  std::string p5 = model_with_key("vsize", "llama.vocab_size", &vs);
  expect_error(p5, "vocabulary has 12 tokens", [&] { load_gguf_model(p5); });
  // Per-layer arrays are accepted when uniform.
  auto ff = GgufValue::array(std::vector<uint32_t>{64, 64});
  std::string p6 = model_with_key("ffarr", "llama.feed_forward_length", &ff);
  EXPECT_EQ(load_gguf_model(p6).config.hidden_dim, 64);
}

TEST(GgufModel, BadVocabulary) {
  auto scores = GgufValue::array(std::vector<float>{1, 2, 3});
  std::string p1 = model_with_key("scores", "tokenizer.ggml.scores", &scores);
  expect_error(p1, "tokenizer.ggml.scores has 3 entries", [&] { load_gguf_model(p1); });
  auto eos = GgufValue::u32(12);
  std::string p2 = model_with_key("eos", "tokenizer.ggml.eos_token_id", &eos);
  expect_error(p2, "tokenizer.ggml.eos_token_id = 12 is out of range", [&] { load_gguf_model(p2); });
  auto types = GgufValue::array(std::vector<int32_t>(12, 9));
  std::string p3 = model_with_key("ttype", "tokenizer.ggml.token_type", &types);
  expect_error(p3, "not a valid token type", [&] { load_gguf_model(p3); });
  std::string p4 = model_with_key("notokens", "tokenizer.ggml.tokens", nullptr);
  expect_error(p4, "tokenizer.ggml.tokens", [&] { load_gguf_model(p4); });
}

TEST(GgufModel, OtherTokenizerLoadsWithoutVocab) {
  auto gpt2 = GgufValue::string("gpt2");
  std::string path = model_with_key("gpt2tok", "tokenizer.ggml.model", &gpt2);
  ModelFile m = load_gguf_model(path);
  EXPECT_FALSE(m.vocab.has_value());
  EXPECT_EQ(m.metadata.at("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(m.config.vocab_size, 12);
}

// ---- malformed files --------------------------------------------------------------------

namespace {

// A valid file: two KVs, two F32 tensors [2, 8] and [8].
Raw valid_raw() {
  Raw r;
  r.header(2, 2).kv_u32("general.alignment", 32).kv_str("general.name", "x");
  r.tensor("a", {8, 2}, 0, 0).tensor("b", {8}, 0, 64).pad();
  r.zeros(64 + 32);
  return r;
}

}  // namespace

TEST(GgufMalformed, ValidBaselineParses) {
  std::string path = temp_path("baseline.gguf");
  write_bytes(path, valid_raw().b);
  GgufReader r(path);
  EXPECT_EQ(r.tensors().size(), 2u);
  EXPECT_EQ(r.tensors()[0].shape, (std::vector<int64_t>{2, 8}));
}

TEST(GgufMalformed, TruncatedAtEveryByte) {
  // The last tensor's data ends exactly at the end of valid_raw(): every shorter prefix
  // is missing something and must fail cleanly.
  std::vector<uint8_t> full = valid_raw().b;
  std::string path = temp_path("trunc_sweep.gguf");
  for (size_t n = 0; n < full.size(); ++n) {
    write_bytes(path, std::vector<uint8_t>(full.begin(), full.begin() + long(n)));
    expect_error(path, n < 4 ? "too small" : "", [&] { GgufReader r(path); });
  }
}

TEST(GgufMalformed, TruncatedHeader) {
  expect_read_error("trunc_header", Raw().bytes("GGUF").u32(3).u64(0).b, "truncated file: metadata count");
  expect_read_error("trunc_magic", Raw().bytes("GG").b, "too small");
  expect_read_error("empty", {}, "too small");
}

TEST(GgufMalformed, TruncatedInsideKV) {
  Raw r;
  r.header(0, 1).str("general.name").u32(uint32_t(GgufType::String)).u64(10).bytes("abc");
  expect_read_error("trunc_kv", r.b, "truncated file: metadata 'general.name'");
  Raw r2;
  r2.header(0, 1).str("k").u32(uint32_t(GgufType::U64)).u32(0);
  expect_read_error("trunc_kv2", r2.b, "truncated file: metadata 'k'");
}

TEST(GgufMalformed, TruncatedInsideTensorInfo) {
  Raw r;
  r.header(1, 0).str("w").u32(2).i64(8);
  expect_read_error("trunc_ti", r.b, "truncated file: tensor 'w'");
}

TEST(GgufMalformed, TensorDataPastEof) {
  std::vector<uint8_t> b = valid_raw().b;
  b.pop_back();
  expect_read_error("data_eof", b, "'b': data [64, +32) extends past the end of the file");
}

TEST(GgufMalformed, BadMagic) {
  std::vector<uint8_t> b = valid_raw().b;
  b[0] = 'X';
  b[3] = '\n';
  expect_read_error("magic", b, "bad magic XGU\\x0a");
}

TEST(GgufMalformed, BadVersion) {
  expect_read_error("v1", Raw().header(0, 0, 1).b, "GGUF version 1 is not supported");
  expect_read_error("v4", Raw().header(0, 0, 4).b, "unsupported GGUF version 4");
  expect_read_error("vbig", Raw().header(0, 0, 0x03000000).b, "big-endian");
  std::string path = temp_path("v2.gguf");
  write_bytes(path, Raw().header(0, 0, 2).b);
  EXPECT_EQ(GgufReader(path).version(), 2u);
}

TEST(GgufMalformed, HugeTensorCount) {
  expect_read_error("ntensors", Raw().header(uint64_t(1) << 40, 0).b, "tensor count 1099511627776 exceeds");
  // Within the limit but more than the file holds: runs out of bytes, no huge allocation.
  expect_read_error("ntensors2", Raw().header(1 << 20, 0).b, "truncated file");
}

TEST(GgufMalformed, HugeKVCount) {
  expect_read_error("nkv", Raw().header(0, ~uint64_t(0)).b, "metadata count");
}

TEST(GgufMalformed, HugeStringLength) {
  expect_read_error("strlen", Raw().header(0, 1).u64(~uint64_t(0)).b, "string length");
  Raw r;
  r.header(0, 1).str("k").u32(uint32_t(GgufType::String)).u64(1000).bytes("short");
  expect_read_error("strlen2", r.b, "string of 1000 bytes");
}

TEST(GgufMalformed, HugeArrayLength) {
  Raw r;
  r.header(0, 1).str("k").u32(uint32_t(GgufType::Array)).u32(uint32_t(GgufType::U64)).u64(uint64_t(1) << 61);
  expect_read_error("arrlen", r.b, "array of 2305843009213693952 u64 elements does not fit");
  Raw r2;
  r2.header(0, 1).str("k").u32(uint32_t(GgufType::Array)).u32(uint32_t(GgufType::String)).u64(1000000);
  expect_read_error("arrlen2", r2.b, "does not fit");
}

TEST(GgufMalformed, BadValueTypes) {
  Raw r;
  r.header(0, 1).str("k").u32(13).u32(0);
  expect_read_error("vtype", r.b, "unknown value type id 13");
  Raw r2;
  r2.header(0, 1).str("k").u32(uint32_t(GgufType::Array)).u32(99).u64(0);
  expect_read_error("etype", r2.b, "unknown array element type id 99");
  Raw r3;
  r3.header(0, 1).str("k").u32(uint32_t(GgufType::Bool)).bytes("\x02");
  expect_read_error("bool", r3.b, "bool value 2");
}

TEST(GgufMalformed, DeeplyNestedArrays) {
  Raw r;
  r.header(0, 1).str("k").u32(uint32_t(GgufType::Array));
  for (int i = 0; i < 100; ++i) r.u32(uint32_t(GgufType::Array)).u64(1);
  r.u32(uint32_t(GgufType::U8)).u64(0);
  expect_read_error("deep", r.b, "nested deeper");
}

TEST(GgufMalformed, UnknownTensorType) {
  Raw r;
  r.header(1, 0).tensor("weird", {32}, 99, 0).pad().zeros(128);
  expect_read_error("ttype", r.b, "tensor 'weird' has unknown type id 99");
  Raw r2;
  r2.header(1, 0).tensor("u8", {32}, 1000, 0).pad().zeros(128);
  expect_read_error("ttype_u8", r2.b, "unknown type id 1000");
}

TEST(GgufMalformed, BadDimensionCount) {
  Raw r0;
  r0.header(1, 0).tensor("t", {}, 0, 0).pad().zeros(32);
  expect_read_error("ndims0", r0.b, "tensor 't' has 0 dimensions");
  Raw r5;
  r5.header(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).pad().zeros(32);
  expect_read_error("ndims5", r5.b, "tensor 't' has 5 dimensions");
}

TEST(GgufMalformed, ZeroOrNegativeDim) {
  Raw r;
  r.header(1, 0).tensor("t", {4, 0}, 0, 0).pad().zeros(32);
  expect_read_error("dim0", r.b, "ne[1] = 0");
  Raw r2;
  r2.header(1, 0).tensor("t", {-4}, 0, 0).pad().zeros(32);
  expect_read_error("dimneg", r2.b, "ne[0] = -4");
}

TEST(GgufMalformed, ElementCountOverflow) {
  Raw r;
  r.header(1, 0).tensor("t", {int64_t(1) << 32, int64_t(1) << 32}, 0, 0).pad().zeros(32);
  expect_read_error("numel", r.b, "element count overflows");
  Raw r2;  // above INT64_MAX
  r2.header(1, 0).tensor("t", {int64_t(1) << 31, int64_t(1) << 31, 2}, 0, 0).pad().zeros(32);
  expect_read_error("numel2", r2.b, "element count overflows");
  Raw r3;  // the element count fits but 4 bytes each does not
  r3.header(1, 0).tensor("t", {int64_t(1) << 31, int64_t(1) << 31}, 0, 0).pad().zeros(32);
  expect_read_error("numel3", r3.b, "byte size overflows");
  Raw r4;  // the byte size fits 64 bits but not the file
  r4.header(1, 0).tensor("t", {int64_t(1) << 30, int64_t(1) << 31}, 0, 0).pad().zeros(32);
  expect_read_error("numel4", r4.b, "extends past the end");
}

TEST(GgufMalformed, RowNotWholeBlocks) {
  Raw r;
  r.header(1, 0).tensor("q", {33}, uint32_t(DType::Q8_0), 0).pad().zeros(64);
  expect_read_error("block", r.b, "row length 33 is not a multiple of the q8_0 block size 32");
}

TEST(GgufMalformed, MisalignedOffset) {
  Raw r;
  r.header(1, 0).tensor("t", {4}, 0, 8).pad().zeros(64);
  expect_read_error("misaligned", r.b, "data offset 8 is not a multiple of the alignment 32");
}

TEST(GgufMalformed, OverlappingData) {
  Raw r;
  r.header(2, 0).tensor("a", {16}, 0, 0).tensor("b", {8}, 0, 32).pad().zeros(128);
  expect_read_error("overlap", r.b, "tensors 'a' and 'b' overlap");
}

TEST(GgufMalformed, OffsetOutOfFile) {
  Raw r;
  r.header(1, 0).tensor("t", {4}, 0, uint64_t(1) << 63).pad().zeros(64);
  expect_read_error("outside", r.b, "extends past the end of the file");
  Raw r2;  // offset + size wraps around 2^64
  r2.header(1, 0).tensor("t", {8}, 0, ~uint64_t(31)).pad().zeros(64);
  expect_read_error("wrap", r2.b, "extends past the end of the file");
}

TEST(GgufMalformed, DuplicateTensorNames) {
  Raw r;
  r.header(2, 0).tensor("a", {8}, 0, 0).tensor("a", {8}, 0, 32).pad().zeros(64);
  expect_read_error("duptensor", r.b, "duplicate tensor name 'a'");
}

TEST(GgufMalformed, DuplicateKeys) {
  Raw r;
  r.header(0, 2).kv_u32("k", 1).kv_u32("k", 2);
  expect_read_error("dupkey", r.b, "duplicate metadata key 'k'");
}

TEST(GgufMalformed, BadAlignment) {
  Raw r;
  r.header(0, 1).kv_u32("general.alignment", 48);
  expect_read_error("align48", r.b, "general.alignment = 48 is not a power of two");
  Raw r0;
  r0.header(0, 1).kv_u32("general.alignment", 0);
  expect_read_error("align0", r0.b, "general.alignment = 0 is not a power of two");
  Raw rt;
  rt.header(0, 1).kv_str("general.alignment", "32");
  expect_read_error("alignstr", rt.b, "general.alignment must be a u32");
}

TEST(GgufMalformed, NamesWithControlCharactersStayOnOneLine) {
  Raw r;
  r.header(2, 0).tensor("a\nb", {8}, 0, 0).tensor("a\nb", {8}, 0, 32).pad().zeros(64);
  expect_read_error("ctrl", r.b, "duplicate tensor name 'a\\x0ab'");
}

TEST(GgufMalformed, NotAFile) {
  std::string dir = testing::TempDir();
  expect_error(dir, "directory", [&] { GgufReader r(dir); });
  std::string missing = temp_path("does_not_exist.gguf");
  expect_error(missing, "cannot open", [&] { GgufReader r(missing); });
}
