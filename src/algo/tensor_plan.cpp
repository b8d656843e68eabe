// Which storage each tensor gets: rules, the embeddings' higher precision, and the shape
// fallbacks (llama.cpp types fall back along llama.cpp's own ladder, quantkit formats pad
// the rows with zero columns up to the format's block).
#include <regex>

#include "formats/ggml_formats.h"
#include "quantkit/error.h"
#include "quantkit/format.h"
#include "quantkit/quantize.h"

namespace quantkit {
namespace {

bool is_float_spec(const std::string& s) { return s == "f16" || s == "f32" || s == "bf16"; }

// A 32-wide llama.cpp type of similar precision for the 256-wide K-quants.
std::string ggml_fallback(const std::string& spec) {
  if (spec == "q2_k" || spec == "q3_k") return "iq4_nl";
  if (spec == "q4_k") return "q5_0";
  if (spec == "q5_k") return "q5_1";
  if (spec == "q6_k") return "q8_0";
  return "f16";
}

const std::string& requested_spec(const TensorView& t, const QuantizeOptions& opt) {
  for (const TensorRule& r : opt.rules)
    if (std::regex_search(t.name, std::regex(r.pattern))) return r.spec;
  if (t.name == "token_embd.weight" || t.name == "output.weight") return opt.embedding_format;
  return opt.format;
}

TensorPlan resolve_format(TensorPlan p, int64_t rows, int64_t cols) {
  std::unique_ptr<Format> f = make_format(p.requested);
  p.spec = f->spec();
  p.stored_cols = cols;
  std::string why = f->check_shape(rows, cols);
  if (why.empty()) return p;
  if (formats::ggml_type_for_spec(p.spec)) {
    // Padding would make the file unreadable for llama.cpp: walk its fallback ladder.
    for (std::string s = ggml_fallback(p.spec); !is_float_spec(s); s = ggml_fallback(s)) {
      if (make_format(s)->check_shape(rows, cols).empty()) {
        p.note = fmt::format("{} -> {}: {}", p.spec, s, why);
        p.spec = s;
        return p;
      }
    }
    p.note = fmt::format("{} -> f16: {}", p.spec, why);
    p.kind = TensorPlan::Float;
    p.spec = "f16";
    return p;
  }
  for (int64_t pad = 1; pad <= 4096; ++pad) {
    if (f->check_shape(rows, cols + pad).empty()) {
      p.stored_cols = cols + pad;
      p.note = fmt::format("padded {} -> {} columns: {}", cols, cols + pad, why);
      return p;
    }
  }
  p.note = fmt::format("{} -> f16: {}", p.spec, why);
  p.kind = TensorPlan::Float;
  p.spec = "f16";
  return p;
}

}  // namespace

const char* method_name(QuantMethod m) {
  switch (m) {
    case QuantMethod::Rtn: return "rtn";
    case QuantMethod::Weighted: return "weighted";
    case QuantMethod::Gptq: return "gptq";
  }
  return "?";
}

QuantMethod method_from_name(const std::string& name) {
  for (QuantMethod m : {QuantMethod::Rtn, QuantMethod::Weighted, QuantMethod::Gptq})
    if (name == method_name(m)) return m;
  fail("unknown method '{}' (valid: rtn, weighted, gptq)", name);
}

TensorRule TensorRule::parse(const std::string& text) {
  const size_t eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    fail("rule '{}' must be PATTERN=SPEC (e.g. 'ffn_down=q8_0')", text);
  TensorRule r{text.substr(0, eq), text.substr(eq + 1)};
  try {
    std::regex check(r.pattern);
  } catch (const std::regex_error& e) {
    fail("rule '{}': '{}' is not a valid regular expression ({})", text, r.pattern, e.what());
  }
  if (r.spec != "keep" && !is_float_spec(r.spec)) make_format(r.spec);  // fails early on a bad spec
  return r;
}

TensorPlan plan_tensor(const TensorView& t, const QuantizeOptions& opt) {
  TensorPlan p;
  if (t.shape.size() != 2) {  // norms and other vectors stay FP32
    p.kind = TensorPlan::Float;
    p.requested = p.spec = "f32";
    return p;
  }
  p.requested = requested_spec(t, opt);
  if (p.requested == "keep") {
    p.spec = t.type == DType::QK ? t.format : dtype_name(t.type);
    return p;
  }
  if (is_float_spec(p.requested)) {
    p.kind = TensorPlan::Float;
    p.spec = p.requested;
    return p;
  }
  p.kind = TensorPlan::Quantize;
  return resolve_format(std::move(p), t.shape[0], t.shape[1]);
}

}  // namespace quantkit
