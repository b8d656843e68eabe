#include "quantkit/mixed_precision.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "io/llama_tensors.h"
#include "quantkit/error.h"
#include "quantkit/eval.h"

namespace quantkit {
namespace {

// The input Hessian (mean x x^T) each 2-D tensor sees in the FP model: layer inputs from
// calibration, the head's normalised states; token_embd (a lookup) gets the diagonal of
// token frequencies as its "Hessian" over rows instead (see embedding_damage).
struct Hessians {
  std::map<std::string, std::vector<double>> of;  // tensor name -> cols x cols
  std::vector<double> token_frequency;            // vocab
};

Hessians calibrate(const ModelFile& in, const std::vector<int>& tokens, int bos, const CalibrationOptions& opt) {
  Hessians hs;
  LlamaModel model(in);
  Calibrator cal(model, tokens, bos, opt);
  static const std::pair<const char*, LinearInput> kInputs[] = {
      {"attn_q", LinearInput::Attention}, {"attn_k", LinearInput::Attention},
      {"attn_v", LinearInput::Attention}, {"attn_output", LinearInput::AttentionOutput},
      {"ffn_gate", LinearInput::Ffn},     {"ffn_up", LinearInput::Ffn},
      {"ffn_down", LinearInput::FfnDown}};
  for (int l = 0; l < in.config.n_layers; ++l) {
    const LayerHessians lh = cal.capture(l);
    for (const auto& [suffix, which] : kInputs) hs.of[llama_tensor_name(l, suffix)] = lh.of(which).mean();
    cal.advance(l);
  }
  const std::vector<double> head = cal.capture_head().mean();
  hs.of[in.config.tied_embeddings ? "token_embd.weight#head" : "output.weight"] = head;
  hs.token_frequency.assign(size_t(in.config.vocab_size), 0.0);
  for (int w = 0; w < cal.windows(); ++w)
    for (int t : cal.window_tokens(w)) hs.token_frequency[size_t(t)] += 1.0;
  return hs;
}

double relative(double err, double ref) { return ref > 0 ? err / ref : err; }

double plain_relative_error(const Tensor& w, const Tensor& q) {
  double e = 0, r = 0;
  for (size_t i = 0; i < w.data.size(); ++i) {
    const double d = double(w.data[i]) - q.data[i];
    e += d * d, r += double(w.data[i]) * w.data[i];
  }
  return relative(e, r);
}

// token_embd as a lookup table: row t's error counts as often as token t occurs.
double embedding_damage(const Tensor& w, const Tensor& q, const std::vector<double>& freq) {
  const int64_t rows = w.rows(), cols = w.cols();
  double e = 0, r = 0;
  for (int64_t t = 0; t < rows; ++t) {
    double et = 0, rt = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double x = w.data[size_t(t * cols + j)], d = x - q.data[size_t(t * cols + j)];
      et += d * d, rt += x * x;
    }
    e += freq[size_t(t)] * et, r += freq[size_t(t)] * rt;
  }
  return relative(e, r);
}

double hessian_damage(const std::string& name, const Tensor& w, const Tensor& q, const Hessians& hs) {
  auto rel = [&](const std::vector<double>& h) {
    const HessianError he = sampled_hessian_error(w.data.data(), q.data.data(), w.rows(), w.cols(), h);
    return relative(he.error, he.reference);
  };
  if (name == "token_embd.weight") {
    double d = embedding_damage(w, q, hs.token_frequency);
    if (auto head = hs.of.find("token_embd.weight#head"); head != hs.of.end()) d += rel(head->second);
    return d;
  }
  auto it = hs.of.find(name);
  return it == hs.of.end() ? plain_relative_error(w, q) : rel(it->second);
}

// KL(FP || model with one tensor replaced by q) on the first windows of the calibration text.
class MeasuredDamage {
 public:
  MeasuredDamage(const ModelFile& in, const std::vector<int>& tokens, int bos, int ctx, int windows)
      : in_(in), fp_(in), bos_(bos) {
    const size_t n = std::min(tokens.size(), size_t(ctx) * size_t(windows));
    tokens_.assign(tokens.begin(), tokens.begin() + int64_t(n));
    opt_.ctx = ctx;
  }

  double operator()(const std::string& name, const Tensor& q) const {
    ModelFile m = in_;
    for (TensorView& t : m.tensors)
      if (t.name == name) {
        t = TensorView();
        t.name = name;
        t.type = DType::F32;
        t.shape = q.shape;
        t.data = q.data.data();
        t.nbytes = q.data.size() * sizeof(float);
      }
    const LlamaModel model(m);
    return evaluate(model, &fp_, tokens_, bos_, opt_).kl.mean;
  }

 private:
  const ModelFile& in_;
  LlamaModel fp_;
  int bos_;
  std::vector<int> tokens_;
  EvalOptions opt_;
};

}  // namespace

std::vector<std::string> default_candidates() {
  return {"ternary:absmean:row", "ptq161:p20", "e8:b2",  "int2:g32", "tcq:b3",  "int3:g32", "iq4_nl",
          "nvfp4",               "q4_k",       "int4:g32", "q5_k",   "q6_k",    "q8_0"};
}

const char* damage_name(DamageEstimate d) {
  switch (d) {
    case DamageEstimate::Hessian: return "hessian";
    case DamageEstimate::Measured: return "measured";
    case DamageEstimate::DataFree: return "data-free";
  }
  return "?";
}

Sensitivity measure_sensitivity(const ModelFile& in, const SensitivityOptions& opt, const std::vector<int>* calib,
                                int bos, const SensitivityProgress& progress) {
  if (opt.candidates.empty()) fail("no candidate formats");
  const bool needs_data = opt.damage != DamageEstimate::DataFree || opt.method != QuantMethod::Rtn;
  if (needs_data && !calib)
    fail("{} damage with method {} needs calibration text (--calib)", damage_name(opt.damage), method_name(opt.method));
  Hessians hs;
  if (calib) hs = calibrate(in, *calib, bos, opt.calibration);
  std::unique_ptr<MeasuredDamage> measured;
  if (opt.damage == DamageEstimate::Measured)
    measured = std::make_unique<MeasuredDamage>(in, *calib, bos, opt.calibration.ctx, opt.measure_windows);

  Sensitivity s;
  std::vector<const TensorView*> matrices;
  for (const TensorView& t : in.tensors) {
    s.params += t.numel();
    if (t.shape.size() == 2) matrices.push_back(&t);
    else s.fixed_bytes += uint64_t(t.numel()) * 4;  // norms stay f32
  }
  int done = 0;
  for (const TensorView* t : matrices) {
    if (progress) progress(done++, int(matrices.size()), t->name);
    TensorChoices tc;
    tc.name = t->name;
    tc.params = t->numel();
    const Tensor w = to_float(*t);
    InputHessian h;  // the method's Hessian, in InputHessian form (mean, tokens = 1)
    const auto found = hs.of.find(t->name);
    if (found != hs.of.end()) {
      h.width = int(t->shape[1]);
      h.tokens = 1;
      h.xtx = found->second;
    }
    for (const std::string& spec : opt.candidates) {
      QuantizeOptions qo;
      qo.format = qo.embedding_format = spec;
      const TensorPlan plan = plan_tensor(*t, qo);
      const QuantizedTensor q = quantize_tensor(*t, plan, opt.method, h.width ? &h : nullptr, opt.gptq);
      TensorOption o;
      o.spec = spec;
      o.stored = plan.spec;
      o.bytes = q.view.nbytes;
      o.damage = opt.damage == DamageEstimate::Measured ? (*measured)(t->name, q.decoded)
                 : opt.damage == DamageEstimate::Hessian ? hessian_damage(t->name, w, q.decoded, hs)
                                                         : plain_relative_error(w, q.decoded);
      tc.options.push_back(std::move(o));
    }
    s.tensors.push_back(std::move(tc));
  }
  if (progress) progress(done, int(matrices.size()), "");
  return s;
}

Allocation allocate(const Sensitivity& s, uint64_t budget_bytes) {
  uint64_t min_bytes = s.fixed_bytes;
  for (const auto& t : s.tensors) {
    uint64_t m = std::numeric_limits<uint64_t>::max();
    for (const auto& o : t.options) m = std::min(m, o.bytes);
    min_bytes += m;
  }
  if (budget_bytes < min_bytes)
    fail("target {:.4f} bits/weight ({} bytes) is below the smallest mix of the candidates: {:.4f} bits/weight ({} bytes)",
         8.0 * double(budget_bytes) / double(s.params), budget_bytes, 8.0 * double(min_bytes) / double(s.params),
         min_bytes);
  // Costs in units of u bytes, rounded up: any choice that fits the discretised budget
  // fits the real one.
  const uint64_t free_bytes = budget_bytes - s.fixed_bytes;
  constexpr uint64_t kBins = 20000;
  const uint64_t u = std::max<uint64_t>(1, (free_bytes + kBins - 1) / kBins);
  const size_t cap = size_t(free_bytes / u), n = s.tensors.size();
  const double inf = std::numeric_limits<double>::infinity();
  // best[i][b]: least damage of tensors [0, i) within b units; pick[i][b]: option of tensor i-1.
  std::vector<std::vector<double>> best(n + 1, std::vector<double>(cap + 1, inf));
  std::vector<std::vector<int>> pick(n + 1, std::vector<int>(cap + 1, -1));
  std::fill(best[0].begin(), best[0].end(), 0.0);
  for (size_t i = 0; i < n; ++i) {
    const auto& opts = s.tensors[i].options;
    for (size_t b = 0; b <= cap; ++b)
      for (size_t k = 0; k < opts.size(); ++k) {
        const size_t c = size_t((opts[k].bytes + u - 1) / u);
        if (c > b || best[i][b - c] == inf) continue;
        const double d = best[i][b - c] + opts[k].damage;
        if (d < best[i + 1][b]) best[i + 1][b] = d, pick[i + 1][b] = int(k);
      }
  }
  if (best[n][cap] == inf)  // only through rounding up: the budget is within n units of the minimum
    fail("target {} bytes is too close to the smallest mix ({} bytes) to allocate; raise it slightly", budget_bytes,
         min_bytes);
  Allocation a;
  a.specs.resize(n);
  a.bytes = s.fixed_bytes;
  a.damage = best[n][cap];
  for (size_t i = n, b = cap; i > 0; --i) {
    const TensorOption& o = s.tensors[i - 1].options[size_t(pick[i][b])];
    a.specs[i - 1] = o.spec;
    a.bytes += o.bytes;
    b -= size_t((o.bytes + u - 1) / u);
  }
  return a;
}

Allocation uniform(const Sensitivity& s, const std::string& spec) {
  Allocation a;
  a.bytes = s.fixed_bytes;
  for (const auto& t : s.tensors) {
    auto it = std::find_if(t.options.begin(), t.options.end(), [&](const TensorOption& o) { return o.spec == spec; });
    if (it == t.options.end()) fail("'{}' is not one of the measured candidates", spec);
    a.specs.push_back(spec);
    a.bytes += it->bytes;
    a.damage += it->damage;
  }
  return a;
}

std::vector<TensorRule> allocation_rules(const Sensitivity& s, const Allocation& a) {
  std::vector<TensorRule> rules;
  for (size_t i = 0; i < s.tensors.size(); ++i) {
    std::string escaped;
    for (char c : s.tensors[i].name) {
      if (std::string_view(".[]()*+?^$|\\{}").find(c) != std::string_view::npos) escaped += '\\';
      escaped += c;
    }
    rules.push_back({"^" + escaped + "$", a.specs[i]});
  }
  return rules;
}

}  // namespace quantkit
