// Python bindings of models: loading, perplexity / KL evaluation, whole-model quantization.
#include <filesystem>
#include <memory>
#include <optional>

#include "bindings.h"
#include "io/model_io.h"
#include "quantkit/error.h"
#include "quantkit/eval.h"
#include "quantkit/html_report.h"
#include "quantkit/mixed_precision.h"
#include "quantkit/quantize.h"
#include "quantkit/tokenizer.h"

namespace quantkit::python {
namespace {

// A loaded model ready to run. The runtime points into the file's mappings, so both live
// on the heap and die together.
class PyModel {
 public:
  PyModel(const std::string& path, const std::string& tokenizer)
      : file_(std::make_unique<ModelFile>(load_model(path, tokenizer))), model_(std::make_unique<LlamaModel>(*file_)) {
    if (file_->vocab) tokenizer_.emplace(*file_->vocab);
  }

  const ModelFile& file() const { return *file_; }
  const LlamaModel& runtime() const { return *model_; }

  // ref: the reference for KL (null: perplexity only); ctx 0: the model's context.
  EvalResult evaluate(const std::string& text, const PyModel* ref, int ctx, int64_t max_tokens) const {
    if (!tokenizer_) fail("{}: the model carries no tokenizer; pass tokenizer= to load_model", file_->path);
    EvalOptions eo;
    eo.ctx = ctx > 0 ? ctx : file_->config.max_seq_len;
    eo.max_tokens = max_tokens;
    const std::vector<int> tokens = tokenizer_->encode(text, true);
    return quantkit::evaluate(*model_, ref ? ref->model_.get() : nullptr, tokens, tokenizer_->bos(), eo);
  }

  std::vector<int> encode(const std::string& text) const {
    if (!tokenizer_) fail("{}: the model carries no tokenizer; pass tokenizer= to load_model", file_->path);
    return tokenizer_->encode(text, true);
  }

 private:
  std::unique_ptr<ModelFile> file_;
  std::unique_ptr<LlamaModel> model_;
  std::optional<Tokenizer> tokenizer_;
};

// Names a Python string in result documents (the CLI names the file).
std::string text_label(const std::string& text) { return fmt::format("(Python string, {} characters)", text.size()); }

py::dict config_of(const ModelFile& f) {
  const LlamaConfig& c = f.config;
  return py::dict(py::arg("dim") = c.dim, py::arg("n_layers") = c.n_layers, py::arg("n_heads") = c.n_heads,
                  py::arg("n_kv_heads") = c.n_kv_heads, py::arg("hidden_dim") = c.hidden_dim,
                  py::arg("vocab_size") = c.vocab_size, py::arg("context") = c.max_seq_len,
                  py::arg("rms_eps") = c.rms_eps, py::arg("rope_theta") = c.rope_theta,
                  py::arg("tied_embeddings") = c.tied_embeddings);
}

py::array_t<float> tensor_of(const PyModel& m, const std::string& name) {
  Tensor t;
  {
    Unlocked unlocked;
    t = to_float(m.file().get(name));
  }
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  return to_numpy(std::move(t.data), std::move(shape));
}

// Arguments of quantize_model, converted from Python before the GIL is released.
struct QuantizeCall {
  std::string in, out, spec, method, tokenizer, embedding_format;
  std::optional<std::string> calib_text, eval_text;
  std::optional<double> target_bpw;
  std::vector<std::string> candidates, overrides;
  bool measure = false, act_order = true;
  int ctx = 0, calib_windows = 0;
  double damp = 0.01;
};

QuantizeOptions options_of(const QuantizeCall& c, const ModelFile& in) {
  if (c.spec.empty() == !c.target_bpw) fail("quantize_model: give either spec or target_bpw");
  QuantizeOptions o;
  o.format = c.spec;
  if (!o.format.empty()) make_format(o.format);  // a bad spec fails before any work
  o.method = method_from_name(c.method);
  o.embedding_format = c.embedding_format;
  for (const auto& r : c.overrides) o.rules.push_back(TensorRule::parse(r));
  o.calibration.ctx = c.ctx ? c.ctx : std::min(256, in.config.max_seq_len);
  if (c.calib_windows) o.calibration.windows = c.calib_windows;
  o.gptq.damp = c.damp;
  o.gptq.act_order = c.act_order;
  if (o.method != QuantMethod::Rtn && !c.calib_text) fail("quantize_model: method '{}' needs calib_text", c.method);
  return o;
}

// Mixed precision: measure, allocate within the budget, and turn the choice into rules.
nlohmann::json plan_mixed(const QuantizeCall& c, const ModelFile& in, QuantizeOptions& opt,
                          const std::vector<int>* calib, int bos) {
  SensitivityOptions so;
  so.candidates = c.candidates.empty() ? default_candidates() : c.candidates;
  for (const auto& s : so.candidates) make_format(s);
  so.method = opt.method;
  so.calibration = opt.calibration;
  so.gptq = opt.gptq;
  if (c.measure && !calib) fail("quantize_model: measure=True needs calib_text (KL is measured on it)");
  so.damage = !calib ? DamageEstimate::DataFree : c.measure ? DamageEstimate::Measured : DamageEstimate::Hessian;
  const Sensitivity s = measure_sensitivity(in, so, calib, bos);
  const uint64_t budget = uint64_t(*c.target_bpw * double(s.params) / 8.0);
  const Allocation a = allocate(s, budget);
  const std::vector<TensorRule> rules = allocation_rules(s, a);
  opt.rules.insert(opt.rules.begin(), rules.begin(), rules.end());
  opt.format = "mixed";
  return report::mixed_precision_json(s, a, budget, so.damage, so.candidates);
}

nlohmann::json run_quantize(const QuantizeCall& c) {
  const std::string ext = std::filesystem::path(c.out).extension().string();
  if (ext != ".gguf" && ext != ".qk") fail("{}: quantize_model writes .gguf or .qk (the CLI also writes safetensors)", c.out);
  const ModelFile in = load_model(c.in, c.tokenizer);
  QuantizeOptions opt = options_of(c, in);
  std::optional<Tokenizer> tok;
  if (in.vocab) tok.emplace(*in.vocab);
  std::vector<int> calib;
  if (c.calib_text) {
    if (!tok) fail("{}: the model carries no tokenizer; pass tokenizer=", c.in);
    calib = tok->encode(*c.calib_text, true);
  }
  const std::vector<int>* calib_ptr = c.calib_text ? &calib : nullptr;
  const int bos = tok ? tok->bos() : 1;
  nlohmann::json mixed;
  if (c.target_bpw) mixed = plan_mixed(c, in, opt, calib_ptr, bos);
  const QuantizeResult r = quantize_model(in, opt, calib_ptr, bos);
  save_gguf_model(r.model, c.out);
  nlohmann::json j = report::quantize_json(in, r, {c.in, c.out, opt.format, c.method});
  if (!mixed.is_null()) j["mixed_precision"] = mixed;
  if (c.eval_text) {  // the written file against the input, as `quantize --eval` does
    if (!tok) fail("{}: the model carries no tokenizer; pass tokenizer=", c.in);
    const ModelFile qfile = load_model(c.out);
    const LlamaModel qmodel(qfile), ref(in);
    EvalOptions eo;
    eo.ctx = in.config.max_seq_len;
    const EvalResult e = evaluate(qmodel, &ref, tok->encode(*c.eval_text, true), tok->bos(), eo);
    j["eval"] = report::eval_json(e, text_label(*c.eval_text));
  }
  return j;
}

}  // namespace

void bind_models(py::module_& m) {
  py::class_<PyModel>(m, "Model", "A loaded model (GGUF, .qk, safetensors, llama2.c) with its runtime.")
      .def_property_readonly("path", [](const PyModel& p) { return p.file().path; })
      .def_property_readonly("container", [](const PyModel& p) { return p.file().container; })
      .def_property_readonly("config", [](const PyModel& p) { return config_of(p.file()); })
      .def_property_readonly("tensor_names", [](const PyModel& p) {
        std::vector<std::string> names;
        for (const auto& t : p.file().tensors) names.push_back(t.name);
        return names;
      })
      .def("tensor", &tensor_of, py::arg("name"), "A weight tensor decoded to float32 (row-major [out, in]).")
      .def("encode", &PyModel::encode, py::arg("text"), "Token ids of text (BOS first).")
      .def("perplexity", [](const PyModel& p, const std::string& text, int ctx) {
        Unlocked unlocked;
        return p.evaluate(text, nullptr, ctx, 0).llamacpp.ppl;
      }, py::arg("text"), py::arg("ctx") = 0,
           "Perplexity on text, llama.cpp convention (second half of each window of ctx tokens; 0: model context).")
      .def("kl_divergence", [](const PyModel& p, const PyModel& ref, const std::string& text, int ctx) {
        Unlocked unlocked;
        return p.evaluate(text, &ref, ctx, 0).kl.mean;
      }, py::arg("ref"), py::arg("text"), py::arg("ctx") = 0, "Mean KL(ref || this model) per scored token.")
      .def("evaluate", [](const PyModel& p, const std::string& text, const PyModel* ref, int ctx, int64_t max_tokens) {
        nlohmann::json j;
        {
          Unlocked unlocked;
          j = report::eval_json(p.evaluate(text, ref, ctx, max_tokens), text_label(text));
        }
        return to_python(j);
      }, py::arg("text"), py::arg("ref") = nullptr, py::arg("ctx") = 0, py::arg("max_tokens") = 0,
           "Perplexity (both conventions, 95% interval) and, with ref, KL statistics: a dict.")
      .def("__repr__", [](const PyModel& p) { return fmt::format("Model('{}', {})", p.file().path, p.file().container); });

  m.def("load_model", [](const std::string& path, const std::string& tokenizer) {
    Unlocked unlocked;
    return std::make_unique<PyModel>(path, tokenizer);
  }, py::arg("path"), py::arg("tokenizer") = "", "Loads a model; llama2.c checkpoints need tokenizer=PATH.");

  m.def("read_text", &read_text, py::arg("path"), py::arg("separator") = "",
        "A text file; each line holding only separator (e.g. '<|endoftext|>') is removed.");

  m.def("quantize_model", [](const std::string& in, const std::string& out, const std::optional<std::string>& spec,
                             std::optional<double> target_bpw, const std::string& method,
                             std::optional<std::string> calib_text, const std::string& tokenizer,
                             std::optional<std::string> eval_text, const std::string& embedding_format,
                             std::vector<std::string> candidates, std::vector<std::string> overrides, bool measure,
                             int ctx, int calib_windows, double damp, bool act_order) {
    const QuantizeCall c{in, out, spec.value_or(""), method, tokenizer, embedding_format, std::move(calib_text),
                         std::move(eval_text), target_bpw, std::move(candidates), std::move(overrides), measure,
                         act_order, ctx, calib_windows, damp};
    nlohmann::json j;
    {
      Unlocked unlocked;
      j = run_quantize(c);
    }
    return to_python(j);
  }, py::arg("in_path"), py::arg("out_path"), py::arg("spec") = py::none(), py::arg("target_bpw") = py::none(),
        py::arg("method") = "rtn", py::arg("calib_text") = py::none(), py::kw_only(), py::arg("tokenizer") = "",
        py::arg("eval_text") = py::none(), py::arg("embedding_format") = "q8_0",
        py::arg("candidates") = std::vector<std::string>{}, py::arg("overrides") = std::vector<std::string>{},
        py::arg("measure") = false, py::arg("ctx") = 0, py::arg("calib_windows") = 0, py::arg("damp") = 0.01,
        py::arg("act_order") = true,
        "Quantizes a model file to .gguf/.qk: one format (spec) or mixed precision within target_bpw; "
        "calib_text/eval_text are texts (see read_text). Returns the result dict of `quantize --json`.");
}

}  // namespace quantkit::python
