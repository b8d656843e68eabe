// Hostile model files through the CLI. Each case corrupts one small valid file written by
// quantkit's own writers (fuzz/seed_models.h) and runs `quantkit inspect` on it: the run
// must exit with 1 (a quantkit::Error, not a crash, a signal or an internal error) and
// print exactly one line on stderr naming the file. Under `make test-asan` the CLI is
// instrumented, so a sanitizer report fails the case too (extra lines, other exit code).
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>

#include "../fuzz/seed_models.h"
#include "io/model_io.h"
#include "quantkit/quantize.h"
#include "test_util.h"

namespace {

using namespace quantkit;
using Bytes = std::string;

// ---- byte editing -------------------------------------------------------------------------

template <class T>
T get(const Bytes& b, size_t at) {
  T v;
  std::memcpy(&v, b.data() + at, sizeof v);
  return v;
}

template <class T>
Bytes with(Bytes b, size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
  return b;
}

Bytes replace_first(Bytes b, const std::string& from, const std::string& to) {
  const size_t at = b.find(from);
  EXPECT_NE(at, Bytes::npos) << "'" << from << "' not in the file";
  if (at != Bytes::npos) b.replace(at, from.size(), to);
  return b;
}

// ---- where the fields of a GGUF file are ----------------------------------------------------

struct GgufLayout {
  struct Kv {
    std::string key;
    size_t key_at, type_at, value_at;
  };
  struct Info {
    std::string name;
    size_t name_at, n_dims_at, ne_at, type_at, offset_at;
  };
  std::vector<Kv> kvs;
  std::vector<Info> infos;

  const Kv& kv(const std::string& key) const {
    for (const auto& k : kvs)
      if (k.key == key) return k;
    throw std::runtime_error("no metadata key " + key);
  }
  const Info& info(const std::string& name) const {
    for (const auto& i : infos)
      if (i.name == name) return i;
    throw std::runtime_error("no tensor " + name);
  }
};

// Walks a valid GGUF file, recording where each field sits (so a case can corrupt exactly one).
class GgufWalker {
 public:
  explicit GgufWalker(const Bytes& b) : b_(b) {}

  GgufLayout walk() {
    GgufLayout l;
    pos_ = 8;
    const uint64_t n_tensors = take<uint64_t>(), n_kv = take<uint64_t>();
    for (uint64_t i = 0; i < n_kv; ++i) {
      GgufLayout::Kv kv;
      kv.key_at = pos_;
      kv.key = string();
      kv.type_at = pos_;
      const uint32_t type = take<uint32_t>();
      kv.value_at = pos_;
      skip_value(type);
      l.kvs.push_back(kv);
    }
    for (uint64_t i = 0; i < n_tensors; ++i) {
      GgufLayout::Info ti;
      ti.name_at = pos_;
      ti.name = string();
      ti.n_dims_at = pos_;
      const uint32_t n_dims = take<uint32_t>();
      ti.ne_at = pos_;
      pos_ += 8 * n_dims;
      ti.type_at = pos_;
      pos_ += 4;
      ti.offset_at = pos_;
      pos_ += 8;
      l.infos.push_back(ti);
    }
    return l;
  }

 private:
  template <class T>
  T take() {
    T v = get<T>(b_, pos_);
    pos_ += sizeof v;
    return v;
  }
  std::string string() {
    const uint64_t n = take<uint64_t>();
    std::string s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  void skip_value(uint32_t type) {
    static const size_t kSize[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == 8) {
      string();
    } else if (type == 9) {
      const uint32_t elem = take<uint32_t>();
      const uint64_t n = take<uint64_t>();
      for (uint64_t i = 0; i < n; ++i) skip_value(elem);
    } else {
      pos_ += kSize[type];
    }
  }
  const Bytes& b_;
  size_t pos_ = 0;
};

// ---- the valid files ----------------------------------------------------------------------

ModelFile packed_tiny() {
  QuantizeOptions o;
  o.format = "int4:g8";
  o.embedding_format = "int8:row";
  return quantize_model(qk_seed::tiny_model(), o, nullptr, 1).model;
}

struct Fixture {
  std::string dir;
  Bytes gguf, qk, checkpoint, tokenizer, st, config, vocab;
  GgufLayout gguf_layout, qk_layout;
  nlohmann::ordered_json st_header;
  Bytes st_data;

  Fixture() : dir(qk_test::temp_dir("malformed")) {
    const ModelFile m = qk_seed::tiny_model();
    save_gguf_model(m, dir + "/good.gguf");
    gguf = qk_test::read_file(dir + "/good.gguf");
    gguf_layout = GgufWalker(gguf).walk();
    // Kept alive: the quantized views point into its storage until the file is written.
    const ModelFile packed = packed_tiny();
    save_gguf_model(packed, dir + "/good.qk");
    qk = qk_test::read_file(dir + "/good.qk");
    qk_layout = GgufWalker(qk).walk();
    checkpoint = qk_seed::llama2c_checkpoint(m);
    tokenizer = qk_seed::llama2c_tokenizer(*m.vocab);
    save_safetensors_model(m, dir + "/good_hf", DType::F16);
    st = qk_test::read_file(dir + "/good_hf/model.safetensors");
    config = qk_test::read_file(dir + "/good_hf/config.json");
    vocab = qk_test::read_file(dir + "/good_hf/quantkit_vocab.json");
    const uint64_t n = get<uint64_t>(st, 0);
    st_header = nlohmann::ordered_json::parse(st.substr(8, n));
    st_data = st.substr(8 + n);
  }
};

const Fixture& fixture() {
  static const Fixture f;
  return f;
}

// ---- running one case ---------------------------------------------------------------------

// Runs `quantkit inspect <args>`; `named` must appear in the one error line.
void expect_rejected(const std::string& what, const std::string& args, const std::string& named) {
  const qk_test::RunResult r = qk_test::run_cli("inspect " + args);
  EXPECT_EQ(r.exit_code, 1) << what << ": " << r.err;
  EXPECT_EQ(qk_test::count_lines(r.err), 1) << what << ": " << r.err;
  EXPECT_EQ(r.err.rfind("quantkit: ", 0), 0u) << what << ": " << r.err;
  EXPECT_NE(r.err.find(named), std::string::npos) << what << ": does not name " << named << ": " << r.err;
}

std::string write(const std::string& name, const Bytes& bytes) {
  const std::string p = fixture().dir + "/" + name;
  std::ofstream(p, std::ios::binary) << bytes;
  return p;
}

void expect_bad_file(const std::string& name, const Bytes& bytes, const std::string& extra_args = "") {
  const std::string p = write(name, bytes);
  expect_rejected(name, p + extra_args, p);
}

// A Hugging Face folder: the good one with some files replaced.
void expect_bad_folder(const std::string& name, const std::map<std::string, Bytes>& files) {
  const Fixture& f = fixture();
  const std::string dir = f.dir + "/" + name;
  std::filesystem::create_directories(dir);
  std::map<std::string, Bytes> all = {{"config.json", f.config}, {"quantkit_vocab.json", f.vocab}, {"model.safetensors", f.st}};
  for (const auto& [k, v] : files) all[k] = v;
  for (const auto& [k, v] : all) std::ofstream(dir + "/" + k, std::ios::binary) << v;
  expect_rejected(name, dir, dir);
}

Bytes safetensors_with_header(const std::string& header, const Bytes& data) {
  Bytes out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// The good safetensors file with its header JSON edited.
Bytes edited_safetensors(const std::function<void(nlohmann::ordered_json&)>& edit) {
  nlohmann::ordered_json h = fixture().st_header;
  edit(h);
  std::string text = h.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return safetensors_with_header(text, fixture().st_data);
}

constexpr const char* kQ = "model.layers.0.self_attn.q_proj.weight";
constexpr const char* kK = "model.layers.0.self_attn.k_proj.weight";

}  // namespace

TEST(MalformedFiles, Gguf) {
  const Fixture& f = fixture();
  const Bytes& g = f.gguf;
  const GgufLayout& l = f.gguf_layout;
  const auto& q = l.info("blk.0.attn_q.weight");
  const auto& k = l.info("blk.0.attn_k.weight");
  expect_bad_file("g_trunc_header.gguf", g.substr(0, 3));
  expect_bad_file("g_trunc_metadata.gguf", g.substr(0, l.kv("tokenizer.ggml.tokens").value_at + 20));
  expect_bad_file("g_trunc_infos.gguf", g.substr(0, q.type_at + 2));
  expect_bad_file("g_trunc_data.gguf", g.substr(0, g.size() - 10));
  expect_bad_file("g_magic.gguf", with(g, 0, uint32_t(0x58554747)));  // "GGUX"
  expect_bad_file("g_version1.gguf", with(g, 4, uint32_t(1)));
  expect_bad_file("g_version99.gguf", with(g, 4, uint32_t(99)));
  expect_bad_file("g_big_endian.gguf", with(g, 4, uint32_t(0x03000000)));
  expect_bad_file("g_huge_tensor_count.gguf", with(g, 8, uint64_t(1) << 40));
  expect_bad_file("g_huge_kv_count.gguf", with(g, 16, uint64_t(1) << 60));
  expect_bad_file("g_huge_key_length.gguf", with(g, l.kvs[0].key_at, uint64_t(1) << 62));
  expect_bad_file("g_value_type.gguf", with(g, l.kv("general.name").type_at, uint32_t(99)));
  expect_bad_file("g_huge_array.gguf", with(g, l.kv("tokenizer.ggml.tokens").value_at + 4, uint64_t(1) << 61));
  expect_bad_file("g_bool_value.gguf", with(g, l.kv("tokenizer.ggml.add_bos_token").value_at, uint8_t(2)));
  expect_bad_file("g_utf8_key.gguf", with(g, l.kv("general.name").key_at + 8, uint8_t(0xff)));
  expect_bad_file("g_ctrl_name.gguf", with(g, q.name_at + 8, uint8_t('\n')));
  expect_bad_file("g_duplicate_tensor.gguf", replace_first(g, "blk.0.attn_k.weight", "blk.0.attn_q.weight"));
  expect_bad_file("g_duplicate_key.gguf", replace_first(g, "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"));
  expect_bad_file("g_zero_dims.gguf", with(g, q.n_dims_at, uint32_t(0)));
  expect_bad_file("g_five_dims.gguf", with(g, q.n_dims_at, uint32_t(5)));
  expect_bad_file("g_negative_dim.gguf", with(g, q.ne_at, int64_t(-16)));
  expect_bad_file("g_overflowing_dims.gguf", with(with(g, q.ne_at, int64_t(1) << 40), q.ne_at + 8, int64_t(1) << 40));
  expect_bad_file("g_dtype_unknown.gguf", with(g, q.type_at, uint32_t(99)));
  expect_bad_file("g_dtype_block.gguf", with(g, q.type_at, uint32_t(2)));  // q4_0 blocks of 32 in rows of 16
  expect_bad_file("g_offset_outside.gguf", with(g, q.offset_at, uint64_t(1) << 40));
  expect_bad_file("g_offset_overflow.gguf", with(g, q.offset_at, uint64_t(0) - 32));
  expect_bad_file("g_misaligned.gguf", with(g, q.offset_at, get<uint64_t>(g, q.offset_at) + 4));
  expect_bad_file("g_overlap.gguf", with(g, k.offset_at, get<uint64_t>(g, q.offset_at)));
  expect_bad_file("g_alignment.gguf", with(g, l.kv("general.alignment").value_at, uint32_t(48)));
  expect_bad_file("g_architecture.gguf", replace_first(g, "llama", "ll\nma"));
  expect_bad_file("g_layers.gguf", with(g, l.kv("llama.block_count").value_at, uint32_t(3)));
  expect_bad_file("g_heads.gguf", with(g, l.kv("llama.attention.head_count").value_at, uint32_t(0)));
  expect_bad_file("g_token_type.gguf", with(g, l.kv("tokenizer.ggml.token_type").value_at + 12, int32_t(9)));
  expect_bad_file("g_bos_range.gguf", with(g, l.kv("tokenizer.ggml.bos_token_id").value_at, uint32_t(1000)));
  expect_bad_file("g_nan_score.gguf",
                  with(g, l.kv("tokenizer.ggml.scores").value_at + 12, std::numeric_limits<float>::quiet_NaN()));
  expect_bad_file("g_empty.gguf", "");
}

TEST(MalformedFiles, PackedContainer) {
  const Fixture& f = fixture();
  const Bytes& g = f.qk;
  const GgufLayout& l = f.qk_layout;
  const std::string fk = "quantkit.packed.blk.0.attn_q.weight.format", sk = "quantkit.packed.blk.0.attn_q.weight.shape";
  const size_t spec_at = l.kv(fk).value_at + 8, shape_at = l.kv(sk).value_at + 12;
  expect_bad_file("p_spec_unknown.qk", with(g, spec_at + 3, uint8_t('9')));  // int9:g8
  expect_bad_file("p_spec_newline.qk", with(g, spec_at + 4, uint8_t('\n')));
  expect_bad_file("p_rows.qk", with(g, shape_at, int64_t(17)));
  expect_bad_file("p_stored_cols.qk", with(g, shape_at + 16, int64_t(8)));
  expect_bad_file("p_huge_shape.qk", with(with(g, shape_at, int64_t(1) << 40), shape_at + 16, int64_t(1) << 40));
  expect_bad_file("p_orphan_metadata.qk", replace_first(g, fk, "quantkit.packed.blk.0.attn_z.weight.format"));
  expect_bad_file("p_not_i8.qk", with(g, l.info("blk.0.attn_q.weight").type_at, uint32_t(0)));
  expect_bad_file("p_truncated_bits.qk", g.substr(0, g.size() - 3));
}

TEST(MalformedFiles, Safetensors) {
  const Fixture& f = fixture();
  const Bytes& s = f.st;
  expect_bad_folder("s_short", {{"model.safetensors", s.substr(0, 5)}});
  expect_bad_folder("s_header_huge", {{"model.safetensors", with(s, 0, uint64_t(1) << 62)}});
  expect_bad_folder("s_header_past_end", {{"model.safetensors", with(s, 0, uint64_t(s.size()))}});
  expect_bad_folder("s_not_json", {{"model.safetensors", safetensors_with_header("{\"a\": [1, 2", f.st_data)}});
  expect_bad_folder("s_deep_json",
                    {{"model.safetensors", safetensors_with_header(std::string(100000, '[') + std::string(100000, ']'), "")}});
  expect_bad_folder("s_not_object", {{"model.safetensors", safetensors_with_header("[1, 2, 3]  ", "")}});
  expect_bad_folder("s_dtype", {{"model.safetensors", edited_safetensors([](auto& h) { h[kQ]["dtype"] = "Q4"; })}});
  expect_bad_folder("s_negative_dim",
                    {{"model.safetensors", edited_safetensors([](auto& h) { h[kQ]["shape"][0] = -16; })}});
  expect_bad_folder("s_offsets_outside", {{"model.safetensors", edited_safetensors([](auto& h) {
                      h[kQ]["data_offsets"][1] = uint64_t(1) << 40;
                    })}});
  expect_bad_folder("s_offsets_reversed", {{"model.safetensors", edited_safetensors([](auto& h) {
                      auto o = h[kQ]["data_offsets"];
                      h[kQ]["data_offsets"] = {o[1], o[0]};
                    })}});
  expect_bad_folder("s_overlap", {{"model.safetensors", edited_safetensors([](auto& h) {
                      const uint64_t q = h[kQ]["data_offsets"][0], k0 = h[kK]["data_offsets"][0], k1 = h[kK]["data_offsets"][1];
                      h[kK]["data_offsets"] = {q + 16, q + 16 + (k1 - k0)};
                    })}});
  expect_bad_folder("s_size_mismatch",
                    {{"model.safetensors", edited_safetensors([](auto& h) { h[kQ]["shape"] = {16, 15}; })}});
  expect_bad_folder("s_shape_overflow", {{"model.safetensors", edited_safetensors([](auto& h) {
                      h[kQ]["shape"] = {uint64_t(1) << 40, uint64_t(1) << 40, uint64_t(1) << 40};
                    })}});
  expect_bad_folder("s_duplicate_name", {{"model.safetensors", replace_first(s, kK, kQ)}});
  std::string bad_utf8 = kQ;
  bad_utf8[6] = '\xff';
  expect_bad_folder("s_utf8_name", {{"model.safetensors", replace_first(s, kQ, bad_utf8)}});
  expect_bad_folder("s_missing_tensor", {{"model.safetensors", edited_safetensors([](auto& h) { h.erase(kQ); })}});
  expect_bad_folder("s_llama_shape", {{"model.safetensors", edited_safetensors([](auto& h) {
                      h[kQ]["shape"] = {8, 32};  // same bytes, wrong matrix
                    })}});
  expect_bad_folder("s_metadata", {{"model.safetensors", edited_safetensors([](auto& h) { h["__metadata__"] = {{"a", 1}}; })}});
}

// The index wins over model.safetensors when both are in the folder (as in transformers).
TEST(MalformedFiles, SafetensorsIndex) {
  const Fixture& f = fixture();
  auto index = [](const std::string& weight_map) {
    return R"({"metadata": {"total_size": 1}, "weight_map": )" + weight_map + "}";
  };
  constexpr const char* kIndex = "model.safetensors.index.json";
  expect_bad_folder("i_escape", {{kIndex, index(R"({"a": "../good_hf/model.safetensors"})")}});
  expect_bad_folder("i_missing_shard", {{kIndex, index(R"({"a": "model-00009-of-00009.safetensors"})")}});
  expect_bad_folder("i_wrong_shard", {{kIndex, index(R"({"no.such.tensor": "shard.safetensors"})")}, {"shard.safetensors", f.st}});
  expect_bad_folder("i_not_a_name", {{kIndex, index(R"({"a": 7})")}});
  expect_bad_folder("i_no_weight_map", {{kIndex, R"({"metadata": {}})"}});
  expect_bad_folder("i_not_json", {{kIndex, "{\"weight_map\": "}});
}

TEST(MalformedFiles, HfConfig) {
  const Fixture& f = fixture();
  const Bytes& c = f.config;
  expect_bad_folder("c_not_json", {{"config.json", c.substr(0, c.size() / 2)}});
  expect_bad_folder("c_missing_key", {{"config.json", replace_first(c, "\"hidden_size\"", "\"hidden_sizX\"")}});
  expect_bad_folder("c_negative", {{"config.json", replace_first(c, "\"hidden_size\": 16", "\"hidden_size\": -16")}});
  expect_bad_folder("c_zero_heads",
                    {{"config.json", replace_first(c, "\"num_attention_heads\": 2", "\"num_attention_heads\": 0")}});
  expect_bad_folder("c_model_type", {{"config.json", replace_first(c, "\"model_type\": \"llama\"", "\"model_type\": \"ll\\nama\"")}});
  expect_bad_folder("c_eps_range", {{"config.json", replace_first(c, "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": 1e300")}});
  expect_bad_folder("c_duplicate_key", {{"config.json", replace_first(c, "\"hidden_size\"", "\"vocab_size\"")}});
  expect_bad_folder("c_deep", {{"config.json", std::string(50000, '[') + std::string(50000, ']')}});
  expect_bad_folder("c_huge_int", {{"config.json", replace_first(c, "\"vocab_size\": 16", "\"vocab_size\": 1e400")}});
  auto vocab_with = [&](const std::function<void(nlohmann::ordered_json&)>& edit) {
    nlohmann::ordered_json v = nlohmann::ordered_json::parse(f.vocab);
    edit(v);
    return v.dump(2);
  };
  expect_bad_folder("v_scores_length", {{"quantkit_vocab.json", replace_first(f.vocab, "\"scores\": [", "\"scores\": [0.5, ")}});
  expect_bad_folder("v_score_type", {{"quantkit_vocab.json", vocab_with([](auto& v) { v["scores"][3] = "x"; })}});
  expect_bad_folder("v_score_range", {{"quantkit_vocab.json", vocab_with([](auto& v) { v["scores"][3] = 1e300; })}});
  expect_bad_folder("v_token_type", {{"quantkit_vocab.json", vocab_with([](auto& v) { v["types"][3] = 42; })}});
  expect_bad_folder("v_bos_range", {{"quantkit_vocab.json", replace_first(f.vocab, "\"bos_id\": 1", "\"bos_id\": 99")}});
}

TEST(MalformedFiles, Llama2c) {
  const Fixture& f = fixture();
  const Bytes& m = f.checkpoint;
  const std::string tok = write("l_good_tokenizer.bin", f.tokenizer);
  const std::string with_tok = " --tokenizer " + tok;
  expect_bad_file("l_trunc_header.bin", m.substr(0, 20), with_tok);
  expect_bad_file("l_negative_dim.bin", with(m, 0, int32_t(-16)), with_tok);
  expect_bad_file("l_huge_dim.bin", with(m, 0, int32_t(1) << 30), with_tok);
  expect_bad_file("l_zero_heads.bin", with(m, 12, int32_t(0)), with_tok);
  expect_bad_file("l_vocab_int_min.bin", with(m, 20, std::numeric_limits<int32_t>::min()), with_tok);
  expect_bad_file("l_trunc_data.bin", m.substr(0, m.size() - 4), with_tok);
  expect_bad_file("l_trailing.bin", m + "junk", with_tok);
  expect_bad_file("l_huge_layers.bin", with(m, 8, int32_t(4096)), with_tok);

  const std::string model = write("l_good_model.bin", m);
  const Bytes& t = f.tokenizer;
  auto bad_tokenizer = [&](const std::string& name, const Bytes& bytes) {
    const std::string p = write(name, bytes);
    expect_rejected(name, model + " --tokenizer " + p, p);
  };
  bad_tokenizer("t_max_len.bin", with(t, 0, int32_t(0)));
  bad_tokenizer("t_negative_len.bin", with(t, 8, int32_t(-1)));
  bad_tokenizer("t_long_token.bin", with(t, 8, int32_t(1) << 30));
  bad_tokenizer("t_truncated.bin", t.substr(0, t.size() - 1));
  bad_tokenizer("t_nan_score.bin", with(t, 4, std::numeric_limits<float>::quiet_NaN()));
  bad_tokenizer("t_too_few.bin", t.substr(0, 4 + 8 + 5));
  bad_tokenizer("t_vocab_size.bin", t + t.substr(4, 8 + 5));
}
