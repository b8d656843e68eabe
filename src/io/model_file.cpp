#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include "io/model_io.h"
#include "quantkit/error.h"

namespace quantkit {

void LlamaConfig::validate(const std::string& file) const {
  auto check = [&](const char* what, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) fail("{}: {} = {} is out of range [{}, {}]", file, what, v, lo, hi);
  };
  check("dim", dim, 1, 1 << 17);
  check("n_layers", n_layers, 1, 4096);
  check("n_heads", n_heads, 1, 4096);
  check("n_kv_heads", n_kv_heads, 1, n_heads);
  check("hidden_dim", hidden_dim, 1, 1 << 20);
  check("vocab_size", vocab_size, 1, 1 << 24);
  check("max_seq_len", max_seq_len, 1, 1 << 24);
  if (dim % n_heads != 0) fail("{}: dim {} is not a multiple of n_heads {}", file, dim, n_heads);
  if (n_heads % n_kv_heads != 0) fail("{}: n_heads {} is not a multiple of n_kv_heads {}", file, n_heads, n_kv_heads);
  if (head_dim() % 2 != 0) fail("{}: head dim {} is odd, RoPE needs pairs", file, head_dim());
  if (!(rms_eps > 0.0f && rms_eps < 1.0f)) fail("{}: rms_eps {} is out of range (0, 1)", file, rms_eps);
  if (!(rope_theta > 0.0f)) fail("{}: rope_theta {} must be positive", file, rope_theta);
}

const TensorView* ModelFile::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorView& ModelFile::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) fail("{}: tensor '{}' is missing", path, name);
  return *t;
}

ModelFile load_model(const std::string& path, const std::string& tokenizer_path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("{}: no such file or folder", path);
  if (S_ISDIR(st.st_mode)) return load_safetensors_model(path);
  char magic[8] = {};
  {
    std::ifstream f(path, std::ios::binary);
    if (!f) fail("{}: cannot open", path);
    f.read(magic, 8);
  }
  auto ends_with = [&](const char* s) {
    size_t n = std::strlen(s);
    return path.size() >= n && path.compare(path.size() - n, n, s) == 0;
  };
  // A .gguf / .qk name without the magic gets the GGUF reader's "bad magic" message, not a
  // llama2.c header complaint.
  if (std::memcmp(magic, "GGUF", 4) == 0 || ends_with(".gguf") || ends_with(".qk")) return load_gguf_model(path);
  if (ends_with(".safetensors") || ends_with(".json")) return load_safetensors_model(path);
  return load_llama2c_model(path, tokenizer_path);
}

}  // namespace quantkit
