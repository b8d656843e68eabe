// Synthetic Llama models (quantkit/synthetic_model.h): seeded Gaussian tensors generated one
// at a time, stored through the library's quantize path, written through the GGUF writer.
#include "quantkit/synthetic_model.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "io/llama_tensors.h"
#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/fp16.h"
#include "quantkit/quantize.h"
#include "quantkit/thread_pool.h"

namespace quantkit {
namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Normal quantiles at (i + 0.5) / 65536, by bisection on erfc (once per process, ~30 ms).
const std::vector<float>& normal_quantiles() {
  static const std::vector<float> table = [] {
    constexpr int kN = 1 << 16;
    std::vector<float> t(static_cast<size_t>(kN));
    for (int i = 0; i < kN / 2; ++i) {
      const double p = (i + 0.5) / kN;
      double lo = -9, hi = 0;  // Phi(x) = erfc(-x / sqrt 2) / 2 is increasing
      for (int it = 0; it < 48; ++it) {
        const double mid = 0.5 * (lo + hi);
        (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
      }
      t[size_t(i)] = float(0.5 * (lo + hi));
      t[size_t(kN - 1 - i)] = -t[size_t(i)];
    }
    return t;
  }();
  return table;
}

bool is_float_spec(const std::string& s) { return s == "f32" || s == "f16" || s == "bf16"; }

// GPT-2's initialisation: the projections that add into the residual stream are scaled
// down with depth so the stream's variance stays bounded.
float sigma_of(const std::string& name, int n_layers) {
  const bool residual_out = name.ends_with(".attn_output.weight") || name.ends_with(".ffn_down.weight");
  return residual_out ? 0.02f / std::sqrt(2.0f * float(n_layers)) : 0.02f;
}

// Tensor `index` in FP32: norms 1, matrices Gaussian in blocks of 64 rows, one stream each.
Tensor generate_tensor(const SyntheticOptions& opt, const LlamaTensorSpec& spec, uint64_t index) {
  Tensor w(spec.shape);
  if (spec.shape.size() == 1) {
    std::fill(w.data.begin(), w.data.end(), 1.0f);
    return w;
  }
  const int64_t rows = spec.shape[0], cols = spec.shape[1], block = 64;
  const float sigma = sigma_of(spec.name, opt.config.n_layers);
  global_pool().parallel_for((rows + block - 1) / block, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block, r1 = std::min(rows, r0 + block);
      fill_gaussian(opt.seed, (index << 32) | uint64_t(b), sigma, &w.data[size_t(r0 * cols)], (r1 - r0) * cols);
    }
  });
  return w;
}

// The float types directly, on all threads (quantize_tensor converts on one thread, then
// decodes the copy and sums the error: work nobody reads here).
std::shared_ptr<std::vector<uint8_t>> store_float(const Tensor& w, DType type) {
  const size_t size = type == DType::F32 ? 4 : 2;
  auto bytes = std::make_shared<std::vector<uint8_t>>(w.data.size() * size);
  uint8_t* out = bytes->data();
  global_pool().parallel_for(w.numel(), [&](int64_t i0, int64_t i1) {
    if (type == DType::F32) {
      std::memcpy(out + i0 * 4, &w.data[size_t(i0)], size_t(i1 - i0) * 4);
      return;
    }
    for (int64_t i = i0; i < i1; ++i) {
      const uint16_t h = type == DType::F16 ? f32_to_f16(w.data[size_t(i)]) : f32_to_bf16(w.data[size_t(i)]);
      std::memcpy(out + i * 2, &h, 2);
    }
  });
  return bytes;
}

QuantizeOptions storage_options(const SyntheticOptions& opt) {
  QuantizeOptions q;
  q.format = opt.format;
  q.embedding_format = synthetic_embedding_format(opt);
  for (const std::string& s : {q.format, q.embedding_format})
    if (!is_float_spec(s)) make_format(s);  // a bad spec fails before any work
  return q;
}

// The piece over {U+2581, a..z} with base-27 digits of k, `len` symbols, most significant first.
std::string alphabet_piece(int64_t k, int len) {
  std::string s;
  for (int i = len - 1; i >= 0; --i) {
    int64_t d = k;
    for (int j = 0; j < i; ++j) d /= 27;
    d %= 27;
    s += d == 0 ? std::string("\xE2\x96\x81") : std::string(1, char('a' + d - 1));
  }
  return s;
}

}  // namespace

std::string synthetic_embedding_format(const SyntheticOptions& opt) {
  if (!opt.embedding_format.empty()) return opt.embedding_format;
  return is_float_spec(opt.format) ? opt.format : QuantizeOptions{}.embedding_format;  // quantize's default
}

LlamaConfig synthetic_1b_config() {
  LlamaConfig c;
  c.dim = 2048, c.n_layers = 16, c.n_heads = 16, c.n_kv_heads = 8, c.hidden_dim = 5632, c.vocab_size = 32000;
  c.max_seq_len = 2048;
  return c;
}

void fill_gaussian(uint64_t seed, uint64_t stream, float sigma, float* out, int64_t n) {
  const float* q = normal_quantiles().data();
  uint64_t state = mix64(seed * kGolden + mix64(stream + kGolden));
  for (int64_t i = 0; i < n; i += 4) {
    uint64_t r = mix64(state += kGolden);
    for (int64_t j = i; j < std::min(n, i + 4); ++j, r >>= 16) out[j] = sigma * q[r & 0xffff];
  }
}

Vocab synthetic_vocab(int n) {
  if (n < 3 + 27) fail("synthetic vocabulary: {} tokens, need at least 30 (3 special + 27 characters)", n);
  Vocab v;
  auto add = [&](std::string text, TokenType type) {
    v.tokens.push_back(std::move(text));
    v.types.push_back(type);
    v.scores.push_back(type == TokenType::Normal ? -float(v.tokens.size()) : 0.0f);
  };
  add("<unk>", TokenType::Unknown);
  add("<s>", TokenType::Control);
  add("</s>", TokenType::Control);
  if (n >= 3 + 256 + 27)
    for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), TokenType::Byte);
  int64_t count = 27;
  for (int len = 1; int(v.tokens.size()) < n; ++len, count *= 27)
    for (int64_t k = 0; k < count && int(v.tokens.size()) < n; ++k) add(alphabet_piece(k, len), TokenType::Normal);
  v.unk_id = 0, v.bos_id = 1, v.eos_id = 2;
  for (const auto& t : v.tokens) v.max_token_length = std::max(v.max_token_length, int(t.size()));
  return v;
}

ModelFile make_synthetic_model(const SyntheticOptions& opt, const SyntheticProgress& progress) {
  ModelFile m;
  m.path = "synthetic model";  // names the source in error messages until a file is written
  m.container = "gguf";
  m.config = opt.config;
  m.config.tied_embeddings = false;
  m.config.rope_style = RopeStyle::Normal;
  m.config.validate(m.path);
  const QuantizeOptions q = storage_options(opt);
  if (opt.vocab) m.vocab = synthetic_vocab(m.config.vocab_size);
  m.metadata["general.name"] = fmt::format("quantkit synth ({})", kSyntheticNote);

  const std::vector<LlamaTensorSpec> specs = llama_tensor_specs(m.config);
  for (size_t i = 0; i < specs.size(); ++i) {
    const Tensor w = generate_tensor(opt, specs[i], i);
    TensorView src;
    src.name = specs[i].name;
    src.shape = w.shape;
    src.data = w.data.data();
    src.nbytes = w.data.size() * sizeof(float);
    const TensorPlan plan = plan_tensor(src, q);
    if (plan.kind == TensorPlan::Float) {
      auto bytes = store_float(w, dtype_from_name(plan.spec));
      src.type = dtype_from_name(plan.spec), src.data = bytes->data(), src.nbytes = bytes->size();
      m.tensors.push_back(src);
      m.storage.push_back(std::move(bytes));
    } else {
      QuantizedTensor t = quantize_tensor(src, plan, QuantMethod::Rtn, nullptr, GptqOptions{});
      if (!t.bytes) fail("synthetic model: tensor '{}' was not stored", src.name);  // a Keep plan: none is made
      m.tensors.push_back(t.view);
      m.storage.push_back(std::move(t.bytes));
    }
    if (progress) progress(int(i) + 1, int(specs.size()), specs[i].name);
  }
  return m;
}

void write_synthetic_model(const SyntheticOptions& opt, const std::string& path, const SyntheticProgress& progress) {
  ModelFile m = make_synthetic_model(opt, progress);
  m.path = path;
  save_gguf_model(m, path);
}

}  // namespace quantkit
