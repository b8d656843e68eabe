#include "io/llama_tensors.h"

#include <cstring>

#include "quantkit/error.h"
#include "quantkit/packed_tensor.h"

namespace quantkit {

std::string llama_tensor_name(int layer, const char* suffix) { return fmt::format("blk.{}.{}.weight", layer, suffix); }

std::vector<LlamaTensorSpec> llama_tensor_specs(const LlamaConfig& c) {
  const int64_t dim = c.dim, kv = c.kv_dim(), hidden = c.hidden_dim, vocab = c.vocab_size;
  std::vector<LlamaTensorSpec> specs;
  specs.push_back({"token_embd.weight", {vocab, dim}});
  for (int l = 0; l < c.n_layers; ++l) {
    specs.push_back({llama_tensor_name(l, "attn_norm"), {dim}});
    specs.push_back({llama_tensor_name(l, "attn_q"), {dim, dim}});
    specs.push_back({llama_tensor_name(l, "attn_k"), {kv, dim}});
    specs.push_back({llama_tensor_name(l, "attn_v"), {kv, dim}});
    specs.push_back({llama_tensor_name(l, "attn_output"), {dim, dim}});
    specs.push_back({llama_tensor_name(l, "ffn_norm"), {dim}});
    specs.push_back({llama_tensor_name(l, "ffn_gate"), {hidden, dim}});
    specs.push_back({llama_tensor_name(l, "ffn_down"), {dim, hidden}});
    specs.push_back({llama_tensor_name(l, "ffn_up"), {hidden, dim}});
  }
  specs.push_back({"output_norm.weight", {dim}});
  specs.push_back({"output.weight", {vocab, dim}, !c.tied_embeddings});
  return specs;
}

namespace {

// Fails if the tensor's data is smaller than its type and shape require.
void check_tensor_bytes(const ModelFile& m, const TensorView& t) {
  const DTypeTraits* tr = dtype_traits(uint32_t(t.type));
  if (!tr) fail("{}: tensor '{}' has unknown type id {}", m.path, t.name, uint32_t(t.type));
  if (t.type == DType::QK) {
    uint64_t need = 0;
    try {
      need = packed_tensor_bytes(t);
    } catch (const Error& e) {
      fail("{}: {}", m.path, e.what());
    }
    if (t.nbytes != need)
      fail("{}: tensor '{}' ({}) holds {} bytes, the format needs exactly {}", m.path, t.name, t.format, t.nbytes, need);
    return;
  }
  int64_t cols = t.shape.empty() ? 1 : t.shape.back();
  if (cols % tr->block_size != 0)
    fail("{}: tensor '{}': row length {} is not a multiple of the {} block size {}", m.path, t.name, cols,
         tr->name, tr->block_size);
  uint64_t need = uint64_t(t.numel() / tr->block_size) * tr->type_size;
  if (t.nbytes < need)
    fail("{}: tensor '{}' ({} {}) holds {} bytes, needs {}", m.path, t.name, tr->name, shape_str(t.shape),
         t.nbytes, need);
}

}  // namespace

void check_llama_tensors(const ModelFile& m) {
  for (const auto& spec : llama_tensor_specs(m.config)) {
    const TensorView* t = m.find(spec.name);
    if (!t) {
      if (!spec.required) continue;
      fail("{}: tensor '{}' is missing (expected shape {})", m.path, spec.name, shape_str(spec.shape));
    }
    if (t->shape != spec.shape)
      fail("{}: tensor '{}' has shape {}, expected {}", m.path, spec.name, shape_str(t->shape),
           shape_str(spec.shape));
    check_tensor_bytes(m, *t);
  }
}

std::vector<uint8_t> permute_qk_rows(const TensorView& t, int n_heads, RopeStyle from, RopeStyle to) {
  if (t.shape.size() != 2 || n_heads < 1 || t.shape[0] % n_heads != 0)
    fail("tensor '{}': shape {} cannot be split into {} heads", t.name, shape_str(t.shape), n_heads);
  const int64_t rows = t.shape[0], head_dim = rows / n_heads, half = head_dim / 2;
  if (head_dim % 2 != 0) fail("tensor '{}': head dim {} is odd: RoPE needs an even head size", t.name, head_dim);
  if (t.type == DType::QK) fail("tensor '{}': rows of a quantkit-format tensor cannot be permuted", t.name);
  const DTypeTraits* tr = dtype_traits(uint32_t(t.type));
  if (!tr || t.shape[1] % tr->block_size != 0)
    fail("tensor '{}': rows of {} elements do not split into blocks of type id {}", t.name, t.shape[1],
         uint32_t(t.type));
  const size_t row_bytes = size_t(t.shape[1] / tr->block_size) * tr->type_size;
  if (t.nbytes < row_bytes * size_t(rows))
    fail("tensor '{}': holds {} bytes, needs {}", t.name, t.nbytes, row_bytes * size_t(rows));
  const uint8_t* src = static_cast<const uint8_t*>(t.data);
  std::vector<uint8_t> out(row_bytes * size_t(rows));
  if (from == to) {
    std::memcpy(out.data(), src, out.size());
    return out;
  }
  // Within a head, Normal row 2i+j holds what NeoX row j*half+i holds (j = 0, 1).
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        int64_t normal = h * head_dim + 2 * i + j, neox = h * head_dim + j * half + i;
        int64_t dst_row = to == RopeStyle::Normal ? normal : neox;
        int64_t src_row = to == RopeStyle::Normal ? neox : normal;
        std::memcpy(out.data() + size_t(dst_row) * row_bytes, src + size_t(src_row) * row_bytes, row_bytes);
      }
    }
  }
  return out;
}

}  // namespace quantkit
