// GPTQ checkpoints in AutoGPTQ's layout (checkpoint_format "gptq"), as transformers
// (optimum) and vLLM load them: the writer, and the per-module reader behind
// load_safetensors_model. Layout and policy: src/io/model_io.h.
//
// Per linear module, with b bits, p = 32 / b codes per int32 word, W [out, in]:
//   qweight int32 [in / p, out]: word (i, o) holds codes of inputs i*p .. i*p+p-1, LSB first;
//   qzeros  int32 [groups, out / p]: zero points of outputs o*p .. o*p+p-1, stored minus one;
//   scales  fp16  [groups, out];  g_idx int32 [in] = input / group_size;
//   W[o][i] = scales[g][o] * (code - zero), g = g_idx[i].
#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <optional>

#include "formats/int_uniform.h"
#include "io/hf_model.h"
#include "io/llama_tensors.h"
#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"
#include "quantkit/packed_tensor.h"

namespace quantkit {
namespace {

using formats::IntMode;
using formats::IntParams;
using formats::IntUnpacked;
using json = nlohmann::ordered_json;

// The linear weights of a Llama block (canonical suffixes).
constexpr const char* kLinears[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
// vLLM runs these as one fused matrix (qkv_proj, gate_up_proj) of one precision.
const std::vector<std::vector<std::string>> kFused = {{"attn_q", "attn_k", "attn_v"}, {"ffn_gate", "ffn_up"}};

int codes_per_word(int bits) { return 32 / bits; }

uint32_t field(uint32_t word, int bits, int64_t k) { return (word >> (bits * k)) & ((1u << bits) - 1); }

template <class T>
std::vector<uint8_t> bytes_of(const std::vector<T>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<uint8_t> g_idx_bytes(int64_t cols, int64_t group) {
  std::vector<int32_t> g(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) g[size_t(c)] = int32_t(group > 0 ? c / group : 0);
  return bytes_of(g);
}

std::string type_name(const TensorView& v) { return v.type == DType::QK ? v.format : dtype_name(v.type); }

// "model.layers.3.self_attn.q_proj" for "blk.3.attn_q.weight".
std::string hf_module(const std::string& name) {
  const std::string hf = gguf_to_hf_name(name).value_or(name);
  return hf.ends_with(".weight") ? hf.substr(0, hf.size() - 7) : hf;
}

// "self_attn.q_proj": the module's name inside a block.
std::string block_module(const char* suffix) {
  static const std::string prefix = "model.layers.0.";
  return hf_module(llama_tensor_name(0, suffix)).substr(prefix.size());
}

// ---- writing ----

GptqScheme scheme_of(const IntParams& p) { return {p.bits, p.group > 0 ? p.group : -1, p.mode == IntMode::Sym, true}; }

// Why GPTQ has no counterpart of int format p; empty when it has one.
std::string format_problem(const IntParams& p) {
  if (p.bits != 4 && p.bits != 8) return fmt::format("{} bits (GPTQ checkpoints hold 4 or 8)", p.bits);
  if (p.mode == IntMode::Mid) return "a midrise grid (no integer zero point)";
  if (p.group < 0) return "one scale per tensor (GPTQ has one per group or row)";
  return {};
}

// Why HF / vLLM cannot hold weight v in scheme s; empty when they can.
std::string shape_problem(const TensorView& v, const GptqScheme& s) {
  const int64_t rows = v.shape[0], cols = v.shape[1], per = codes_per_word(s.bits);
  if (v.stored_cols && v.stored_cols != cols) return fmt::format("padded from {} to {} columns", cols, v.stored_cols);
  if (s.group_size > 0 && cols % s.group_size != 0)
    return fmt::format("in_features {} is not a multiple of group_size {}", cols, s.group_size);
  if (cols % per != 0) return fmt::format("in_features {} is not a multiple of {} (codes per int32)", cols, per);
  if (rows % per != 0) return fmt::format("out_features {} is not a multiple of {} (zero points per int32)", rows, per);
  return {};
}

// A linear weight of a block and whether it can be packed.
struct Linear {
  const TensorView* v = nullptr;
  int layer = 0;
  std::string suffix;
  std::optional<IntParams> params;  // set for int-family formats
  std::string problem;              // why it goes out as fp16; empty: packed
};

std::vector<Linear> block_linears(const ModelFile& m) {
  std::vector<Linear> out;
  for (int l = 0; l < m.config.n_layers; ++l)
    for (const char* suffix : kLinears) {
      Linear lin{&m.get(llama_tensor_name(l, suffix)), l, suffix, std::nullopt, {}};
      if (lin.v->type == DType::QK) {
        try {
          lin.params = formats::int_params_of(lin.v->format);
        } catch (const Error& e) {
          fail("{}: tensor '{}': {}", m.path, lin.v->name, e.what());
        }
      }
      out.push_back(std::move(lin));
    }
  return out;
}

// The model's one scheme, from its int-format block weights; fails naming a tensor whose
// int format GPTQ cannot express or that differs from the others.
GptqScheme model_scheme(const ModelFile& m, const std::vector<Linear>& linears) {
  const Linear* first = nullptr;
  for (const Linear& l : linears) {
    if (!l.params) continue;
    if (std::string why = format_problem(*l.params); !why.empty())
      fail("{}: tensor '{}' is {}: {}; a GPTQ checkpoint cannot hold it", m.path, l.v->name, l.v->format, why);
    if (!first) {
      first = &l;
      continue;
    }
    const GptqScheme a = scheme_of(*first->params), b = scheme_of(*l.params);
    if (a.bits != b.bits || a.group_size != b.group_size || a.sym != b.sym)
      fail("{}: tensors '{}' ({}) and '{}' ({}) differ, but a GPTQ checkpoint holds one bits / group_size / sym per model",
           m.path, first->v->name, first->v->format, l.v->name, l.v->format);
  }
  if (!first) fail("{}: no layer weight is in a 4- or 8-bit int format (e.g. int4:g128): nothing for GPTQ to hold", m.path);
  return scheme_of(*first->params);
}

// A fused member that cannot be packed takes its partners in the layer to fp16.
void keep_fused_together(std::vector<Linear>& linears) {
  std::map<std::pair<int, std::string>, Linear*> at;
  for (Linear& l : linears) at[{l.layer, l.suffix}] = &l;
  for (const Linear& l : linears)
    for (const auto& group : kFused) {
      if (group.front() != l.suffix) continue;
      const Linear* bad = nullptr;
      for (const auto& s : group)
        if (!at[{l.layer, s}]->problem.empty()) bad = bad ? bad : at[{l.layer, s}];
      if (!bad) continue;
      for (const auto& s : group) {
        Linear& member = *at[{l.layer, s}];
        if (member.problem.empty()) member.problem = fmt::format("fused in vLLM with '{}', which cannot be packed", bad->v->name);
      }
    }
}

// quantization_config.modules_in_block_to_quantize (transformers and vLLM honour it):
// absent when every block weight is packed; else module names inside a block when each
// module is packed in all layers or none, else full module names.
std::optional<json> modules_to_quantize(const std::vector<Linear>& linears, int n_layers) {
  std::map<std::string, int> packed_layers;
  bool all = true;
  for (const Linear& l : linears) {
    packed_layers[l.suffix] += l.problem.empty();
    all = all && l.problem.empty();
  }
  if (all) return std::nullopt;
  bool uniform = true;
  for (const auto& [suffix, n] : packed_layers) uniform = uniform && (n == 0 || n == n_layers);
  json names = json::array();
  if (uniform) {
    for (const char* suffix : kLinears)
      if (packed_layers[suffix] == n_layers) names.push_back(block_module(suffix));
  } else {
    for (const Linear& l : linears)
      if (l.problem.empty()) names.push_back(hf_module(l.v->name));
  }
  return json::array({names});
}

json quantization_config(const GptqScheme& s, const std::optional<json>& modules) {
  json q;
  q["quant_method"] = "gptq";
  q["bits"] = s.bits;
  q["group_size"] = s.group_size;
  q["desc_act"] = false;  // g_idx is column / group_size: no act-order permutation
  q["sym"] = s.sym;
  q["checkpoint_format"] = "gptq";
  if (modules) q["modules_in_block_to_quantize"] = *modules;
  return q;
}

// v1 stores zero - 1, so zero 0 has no encoding: such a group is mirrored (codes
// q -> 2^b-1-q, zero -> 2^b-1, scale -> -scale), which decodes to exactly the same weights.
void mirror_zero_groups(IntUnpacked& u, int bits) {
  const int32_t top = (1 << bits) - 1;
  const int64_t ng = u.n_groups();
  for (int64_t r = 0; r < u.rows; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      const size_t gi = size_t(r * ng + g);
      if (u.zero[gi] != 0.0f) continue;
      u.zero[gi] = float(top);
      u.scale[gi] = -u.scale[gi];
      for (int64_t c = g * u.group; c < std::min(u.cols, (g + 1) * u.group); ++c) {
        int32_t& q = u.q[size_t(r * u.cols + c)];
        q = top - q;
      }
    }
}

// The input row of each output row: NeoX order for Q/K of a Normal-layout model.
std::vector<int32_t> source_rows(const TensorView& v, int heads) {
  std::vector<int32_t> rows(static_cast<size_t>(v.shape[0]));
  std::iota(rows.begin(), rows.end(), 0);
  if (!heads) return rows;
  const TensorView index{v.name, DType::I32, {v.shape[0], 1}, rows.data(), rows.size() * sizeof(int32_t)};
  const std::vector<uint8_t> permuted = permute_qk_rows(index, heads, RopeStyle::Normal, RopeStyle::NeoX);
  std::memcpy(rows.data(), permuted.data(), permuted.size());
  return rows;
}

struct GptqParts {
  std::vector<uint8_t> qweight, qzeros, scales;
};

GptqParts gptq_parts(const TensorView& v, const IntParams& p, int heads) {
  IntUnpacked u = formats::unpack_int(packed_of(v), p);
  mirror_zero_groups(u, p.bits);
  const std::vector<int32_t> src = source_rows(v, heads);
  const int b = p.bits;
  const int64_t per = codes_per_word(b), rows = u.rows, cols = u.cols, ng = u.n_groups();
  std::vector<uint32_t> qweight(static_cast<size_t>(cols / per * rows)), qzeros(static_cast<size_t>(ng * (rows / per)));
  std::vector<uint16_t> scales(static_cast<size_t>(ng * rows));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* q = &u.q[size_t(src[size_t(r)] * cols)];
    for (int64_t w = 0; w < cols / per; ++w) {
      uint32_t word = 0;
      for (int64_t k = 0; k < per; ++k) word |= uint32_t(q[w * per + k]) << (b * k);
      qweight[size_t(w * rows + r)] = word;
    }
    for (int64_t g = 0; g < ng; ++g) {
      const size_t gi = size_t(src[size_t(r)] * ng + g);
      scales[size_t(g * rows + r)] = f32_to_f16(u.scale[gi]);
      qzeros[size_t(g * (rows / per) + r / per)] |= uint32_t(int32_t(u.zero[gi]) - 1) << (b * (r % per));
    }
  }
  return {bytes_of(qweight), bytes_of(qzeros), bytes_of(scales)};
}

// The four tensors of a packed module. qweight, qzeros and scales come from one
// unpacking, done when the first of them is written; each is released once taken.
void add_packed_module(std::vector<SafetensorsTensor>& out, const ModelFile& m, const TensorView& v, const IntParams& p,
                       const GptqScheme& s) {
  const std::string hf = hf_module(v.name);
  const int64_t rows = v.shape[0], cols = v.shape[1], per = codes_per_word(s.bits);
  const int64_t groups = s.group_size > 0 ? cols / s.group_size : 1;
  const int heads = hf_permuted_heads(m, v.name);
  auto parts = std::make_shared<std::optional<GptqParts>>();
  auto take = [&](std::vector<uint8_t> GptqParts::*member) {
    return [parts, v, p, heads, member] {
      if (!*parts) *parts = gptq_parts(v, p, heads);
      return std::move((**parts).*member);
    };
  };
  out.push_back({hf + ".qweight", DType::I32, {cols / per, rows}, nullptr, take(&GptqParts::qweight)});
  out.push_back({hf + ".qzeros", DType::I32, {groups, rows / per}, nullptr, take(&GptqParts::qzeros)});
  out.push_back({hf + ".scales", DType::F16, {groups, rows}, nullptr, take(&GptqParts::scales)});
  out.push_back({hf + ".g_idx", DType::I32, {cols}, nullptr, [cols, g = s.group_size] { return g_idx_bytes(cols, g); }});
}

// ---- reading ----

const int32_t* int32_data(const std::string& file, const std::string& module, const TensorView& t, size_t dims) {
  if (t.type != DType::I32 || t.shape.size() != dims)
    fail("{}: GPTQ module '{}': '{}' must be a {}-D I32 tensor, is {} {}", file, module, t.name, dims, dtype_name(t.type),
         shape_str(t.shape));
  return static_cast<const int32_t*>(t.data);
}

void expect_shape(const std::string& file, const std::string& module, const TensorView& t, std::vector<int64_t> shape) {
  if (t.shape != shape)
    fail("{}: GPTQ module '{}': '{}' has shape {}, expected {}", file, module, t.name, shape_str(t.shape), shape_str(shape));
}

}  // namespace

GptqReport save_gptq_safetensors(const ModelFile& m, const std::string& dir, const ShardLayout& shards) {
  m.config.validate(m.path);
  check_llama_tensors(m);  // fail before anything is written
  std::vector<Linear> linears = block_linears(m);
  const GptqScheme s = model_scheme(m, linears);
  for (Linear& l : linears)
    l.problem = l.params ? shape_problem(*l.v, s) : fmt::format("{} is not an int format", type_name(*l.v));
  keep_fused_together(linears);
  if (std::none_of(linears.begin(), linears.end(), [](const Linear& l) { return l.problem.empty(); }))
    fail("{}: no layer weight can be packed for GPTQ ('{}': {})", m.path, linears.front().v->name, linears.front().problem);

  GptqReport report;
  report.bits = s.bits;
  report.group_size = s.group_size;
  report.sym = s.sym;
  std::map<std::string, const Linear*> linear_of;
  for (const Linear& l : linears) linear_of[l.v->name] = &l;
  std::vector<SafetensorsTensor> tensors;
  for (const TensorView& v : m.tensors) {
    if (v.name == "output.weight" && m.config.tied_embeddings) continue;
    const auto it = linear_of.find(v.name);
    const Linear* l = it == linear_of.end() ? nullptr : it->second;
    if (l && l->problem.empty()) {
      add_packed_module(tensors, m, v, *l->params, s);
      report.packed.push_back(v.name);
      continue;
    }
    tensors.push_back(hf_float_tensor(m, v, DType::F16));
    const bool quantized = v.type != DType::F32 && v.type != DType::F16 && v.type != DType::BF16;
    if (l)
      report.dequantized.push_back({v.name, type_name(v), l->problem});
    else if (quantized)
      report.dequantized.push_back({v.name, type_name(v), "GPTQ quantizes only the linear layers of the blocks"});
  }

  const json qc = quantization_config(s, modules_to_quantize(linears, m.config.n_layers));
  json config = hf_config_json(m, DType::F16);
  config["quantization_config"] = qc;
  write_hf_folder(m, dir, tensors, config, &qc, shards);
  return report;
}

TensorView gptq_packed_view(const std::string& file, const std::string& name, const GptqScheme& s,
                            const GptqModule& mod, std::vector<std::shared_ptr<const void>>& storage) {
  if (!mod.qzeros || !mod.scales) fail("{}: GPTQ module '{}' lacks its {}", file, mod.hf, mod.qzeros ? "scales" : "qzeros");
  const int b = s.bits;
  const int64_t per = codes_per_word(b);
  const uint32_t* qweight = reinterpret_cast<const uint32_t*>(int32_data(file, mod.hf, *mod.qweight, 2));
  const uint32_t* qzeros = reinterpret_cast<const uint32_t*>(int32_data(file, mod.hf, *mod.qzeros, 2));
  // Both dims >= 1 bound each by the tensor's bytes, so the product below cannot overflow.
  const int64_t words = mod.qweight->shape[0], rows = mod.qweight->shape[1];
  const int64_t cols = words >= 1 && rows >= 1 ? words * per : 0;
  if (cols < 1 || rows % per != 0)
    fail("{}: GPTQ module '{}': qweight shape {} does not hold {}-bit codes of a matrix with out_features a multiple of {}",
         file, mod.hf, shape_str(mod.qweight->shape), b, per);
  const int64_t group = s.group_size > 0 ? s.group_size : cols, ng = (cols + group - 1) / group;
  expect_shape(file, mod.hf, *mod.qzeros, {ng, rows / per});
  expect_shape(file, mod.hf, *mod.scales, {ng, rows});
  if (mod.g_idx) {
    const int32_t* g_idx = int32_data(file, mod.hf, *mod.g_idx, 1);
    expect_shape(file, mod.hf, *mod.g_idx, {cols});
    for (int64_t c = 0; c < cols; ++c)
      if (g_idx[c] != c / group)
        fail("{}: GPTQ module '{}': g_idx[{}] = {}, not column / group_size: act-order permutations are not supported yet",
             file, mod.hf, c, g_idx[c]);
  }
  const DType st = mod.scales->type;
  if (st != DType::F16 && st != DType::BF16 && st != DType::F32)
    fail("{}: GPTQ module '{}': scales must be F16, BF16 or F32, not {}", file, mod.hf, dtype_name(st));
  const Tensor scales = to_float(*mod.scales);

  IntUnpacked u;
  u.rows = rows;
  u.cols = cols;
  u.group = group;
  u.q.resize(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) u.q[size_t(r * cols + c)] = int32_t(field(qweight[(c / per) * rows + r], b, c % per));
  const int32_t top = (1 << b) - 1, mid = 1 << (b - 1);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      const int32_t zero = int32_t(field(qzeros[g * (rows / per) + r / per], b, r % per)) + (s.zeros_minus_one ? 1 : 0);
      if (s.sym && zero != mid)
        fail("{}: GPTQ module '{}': zero point {} in group {} of output {}, but the checkpoint is symmetric ({})", file,
             mod.hf, zero, g, r, mid);
      if (zero > top)
        fail("{}: GPTQ module '{}': zero point {} in group {} of output {} does not fit {} bits", file, mod.hf, zero, g, r, b);
      u.scale.push_back(scales.data[size_t(g * rows + r)]);
      u.zero.push_back(float(zero));
    }

  IntParams p;
  p.bits = b;
  p.group = s.group_size > 0 ? s.group_size : 0;
  p.mode = s.sym ? IntMode::Sym : IntMode::Asym;
  Packed packed;
  try {
    packed = formats::pack_int(u, p);
  } catch (const Error& e) {
    fail("{}: GPTQ module '{}': {}", file, mod.hf, e.what());
  }
  auto bytes = std::make_shared<std::vector<uint8_t>>(std::move(packed.bytes));
  storage.push_back(bytes);
  TensorView v;
  v.name = name;
  v.type = DType::QK;
  v.shape = {rows, cols};
  v.data = bytes->data();
  v.nbytes = bytes->size();
  v.format = formats::make_int_format(p)->spec();
  v.stored_cols = cols;
  return v;
}

}  // namespace quantkit
