// quantize_model: the data flow of `quantkit quantize`. Tensors are planned, then
// quantized one by one; with calibration, layer by layer: capture the layer's input
// Hessians on the current hidden states, quantize its seven matrices, swap the quantized
// weights into the FP model and advance the hidden states through it. The stages and how
// the processes of a distributed job share them: src/dist/quantize_job.cpp.
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>

#include "formats/ggml_encode.h"
#include "formats/ggml_formats.h"
#include "dist/quantize_job.h"
#include "io/llama_tensors.h"
#include "kernels/gemm.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"
#include "quantkit/packed_tensor.h"
#include "quantkit/quantize.h"
#include "quantkit/thread_pool.h"

namespace quantkit {
namespace {

using Clock = std::chrono::steady_clock;

// ---- non-finite input weights ------------------------------------------------------------

// Thrown for a non-finite weight; quantize_model adds the file name.
struct NonFiniteWeight : Error {
  using Error::Error;
};

[[noreturn]] void nonfinite_error(const std::string& tensor, int64_t flat, int64_t cols, float value) {
  throw NonFiniteWeight(fmt::format("tensor '{}': weight at row {}, col {} is {} (--allow-nonfinite replaces "
                                    "non-finite weights by 0)", tensor, flat / cols, flat % cols, value));
}

void check_finite(const std::string& tensor, const std::vector<float>& w, int64_t cols) {
  const auto bad = std::find_if(w.begin(), w.end(), [](float x) { return !std::isfinite(x); });
  if (bad != w.end()) nonfinite_error(tensor, bad - w.begin(), std::max<int64_t>(cols, 1), *bad);
}

// Whether a stored 16-bit float is NaN or infinite (all exponent bits set).
bool half_nonfinite(uint16_t h, DType t) {
  const uint16_t exp = t == DType::F16 ? 0x7c00 : 0x7f80;
  return (h & exp) == exp;
}

// Tensors whose weights can be read as floats (others are never quantized).
bool has_float_values(const TensorView& v) {
  const DTypeTraits* t = dtype_traits(uint32_t(v.type));
  return v.type == DType::QK || (t && t->to_float);
}

// Replaces the non-finite weights of v by 0, in a copy kept in `storage`: f32/f16/bf16 keep
// their type (zeroed elements), any other type becomes f32. Returns how many were replaced.
int64_t zero_nonfinite(TensorView& v, std::vector<std::shared_ptr<const void>>& storage) {
  if (v.type == DType::F16 || v.type == DType::BF16) {
    const auto* h = static_cast<const uint16_t*>(v.data);
    const size_t n = size_t(v.numel());
    int64_t count = 0;
    for (size_t i = 0; i < n; ++i) count += half_nonfinite(h[i], v.type);
    if (!count) return 0;
    auto copy = std::make_shared<std::vector<uint16_t>>(h, h + n);
    for (uint16_t& x : *copy)
      if (half_nonfinite(x, v.type)) x = 0;
    v.data = copy->data();
    storage.push_back(copy);
    return count;
  }
  Tensor f = to_float(v);
  int64_t count = 0;
  for (float& x : f.data)
    if (!std::isfinite(x)) x = 0.0f, ++count;
  if (!count) return 0;
  auto copy = std::make_shared<std::vector<float>>(std::move(f.data));
  v.type = DType::F32;
  v.format.clear();
  v.stored_cols = 0;
  v.data = copy->data();
  v.nbytes = copy->size() * sizeof(float);
  storage.push_back(copy);
  return count;
}

// The --allow-nonfinite policy over a whole model: counts per replaced tensor.
std::map<std::string, int64_t> zero_nonfinite(ModelFile& m) {
  std::map<std::string, int64_t> replaced;
  for (TensorView& t : m.tensors)
    if (has_float_values(t))
      if (const int64_t n = zero_nonfinite(t, m.storage)) replaced[t.name] = n;
  return replaced;
}

// Calibration runs the input model before any tensor is quantized: its weights are checked
// first, so a NaN is reported by tensor rather than as a broken Hessian.
void check_finite(const ModelFile& m) {
  for (const TensorView& t : m.tensors)
    if (has_float_values(t)) check_finite(t.name, to_float(t).data, t.shape.empty() ? 1 : t.shape.back());
}

std::vector<float> pad_columns(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t stored) {
  if (stored == cols) return w;
  std::vector<float> out(static_cast<size_t>(rows * stored), 0.0f);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(&out[size_t(r * stored)], &w[size_t(r * cols)], size_t(cols) * 4);
  return out;
}

// The report's error statistics, summed row by row (rows in order, so the totals do not
// depend on the thread count). Four partial sums per quantity keep the adds independent.
struct ErrorSums {
  double err = 0, ref = 0, werr = 0, wref = 0;

  // importance: per column, or empty (weight 1: the weighted sums equal the plain ones).
  static ErrorSums of_row(const float* w, const float* q, int64_t cols, const std::vector<float>& importance) {
    double e[4] = {}, r[4] = {}, we[4] = {}, wr[4] = {};
    const float* imp = importance.empty() ? nullptr : importance.data();
    for (int64_t j = 0; j < cols; ++j) {
      const double d = double(w[j]) - q[j], x = w[j];
      e[j % 4] += d * d, r[j % 4] += x * x;
      if (imp) we[j % 4] += imp[j] * d * d, wr[j % 4] += imp[j] * x * x;
    }
    ErrorSums s;
    s.err = (e[0] + e[1]) + (e[2] + e[3]), s.ref = (r[0] + r[1]) + (r[2] + r[3]);
    s.werr = imp ? (we[0] + we[1]) + (we[2] + we[3]) : s.err;
    s.wref = imp ? (wr[0] + wr[1]) + (wr[2] + wr[3]) : s.ref;
    return s;
  }
  void add(const ErrorSums& o) { err += o.err, ref += o.ref, werr += o.werr, wref += o.wref; }
  void report(TensorReport& rep) const {
    rep.weighted_rel_error = wref > 0 ? werr / wref : 0;
    rep.sqnr_db = err > 0 ? 10 * std::log10(ref / err) : INFINITY;
  }
};

void fill_errors(TensorReport& rep, const Tensor& w, const Tensor& q, const std::vector<float>& importance) {
  const int64_t cols = w.cols();
  ErrorSums total;
  for (int64_t r = 0; r < w.rows(); ++r)
    total.add(ErrorSums::of_row(&w.data[size_t(r * cols)], &q.data[size_t(r * cols)], cols, importance));
  total.report(rep);
}

TensorView view_of(const TensorView& src, DType type, const std::vector<uint8_t>& bytes) {
  TensorView v;
  v.name = src.name;
  v.type = type;
  v.shape = src.shape;
  v.data = bytes.data();
  v.nbytes = bytes.size();
  return v;
}

QuantizedTensor store_float(const TensorView& src, const Tensor& w, DType type) {
  QuantizedTensor q;
  q.bytes = std::make_shared<std::vector<uint8_t>>(size_t(w.numel()) * dtype_traits(type).type_size);
  q.decoded = w;
  for (size_t i = 0; i < w.data.size(); ++i) {
    float& d = q.decoded.data[i];
    if (type == DType::F32) continue;
    const uint16_t h = type == DType::F16 ? f32_to_f16(d) : f32_to_bf16(d);
    std::memcpy(q.bytes->data() + 2 * i, &h, 2);
    d = type == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
  }
  if (type == DType::F32) std::memcpy(q.bytes->data(), w.data.data(), q.bytes->size());
  q.view = view_of(src, type, *q.bytes);
  return q;
}

QuantizedTensor store_packed(const TensorView& src, const Format& f, int64_t stored_cols, Packed packed) {
  QuantizedTensor q;
  const int64_t cols = src.shape[1];
  q.decoded = Tensor(src.shape);
  dequantize_cropped(f, packed, cols, q.decoded.data.data());
  q.bytes = std::make_shared<std::vector<uint8_t>>(std::move(packed.bytes));
  q.view = view_of(src, DType::QK, *q.bytes);
  if (auto ggml = formats::ggml_type_for_spec(f.spec())) {
    q.view.type = *ggml;  // the packed bytes are ggml's blocks: a plain llama.cpp tensor
  } else {
    q.view.format = f.spec();
    q.view.stored_cols = stored_cols;
  }
  return q;
}

// The calibration Hessian (mean x x^T) zero-padded to `cols` inputs.
std::vector<double> padded_hessian(const InputHessian& h, int64_t cols) {
  const std::vector<double> mean = h.mean();
  std::vector<double> out(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t i = 0; i < h.width; ++i)
    std::copy(&mean[size_t(i * h.width)], &mean[size_t(i * h.width)] + h.width, &out[size_t(i * cols)]);
  return out;
}

double hessian_error(const Format& f, const std::vector<float>& w, const Packed& p, const std::vector<double>& h) {
  std::vector<float> q(static_cast<size_t>(p.rows * p.cols));
  f.dequantize(p, q.data());
  return sampled_hessian_error(w.data(), q.data(), p.rows, p.cols, h).error;
}

// Whether round-to-nearest into a llama.cpp block type can go row by row: its rows are
// encoded independently (the rows' bytes concatenate to the tensor's) and can be read one
// by one from the input.
bool streams_by_rows(const TensorView& src, const TensorPlan& plan) {
  if (plan.kind != TensorPlan::Quantize || src.shape.size() != 2 || plan.stored_cols != src.shape[1]) return false;
  const std::optional<DType> type = formats::ggml_type_for_spec(plan.spec);
  if (!type || !ggml::can_encode(*type) || src.type == DType::QK) return false;
  const DTypeTraits* t = dtype_traits(uint32_t(src.type));
  return t && t->to_float && src.shape[1] % t->block_size == 0 &&
         uint64_t(src.shape[0]) * dtype_row_bytes(src.type, src.shape[1]) <= src.nbytes;
}

// a = min(a, v), atomically.
void lower_to(std::atomic<int64_t>& a, int64_t v) {
  for (int64_t cur = a; v < cur && !a.compare_exchange_weak(cur, v);) {
  }
}

// Round to nearest into a llama.cpp block type, row by row: each row is converted from the
// input, encoded (formats/ggml_encode.h: exactly the bytes the format's quantize writes for
// the row), decoded and compared, while it is in cache. Memory: the output bytes and one
// row of floats per thread, instead of three float copies of the tensor. The threads take
// blocks of rows from a shared counter, so a thread slowed down by other work does not
// hold the tensor up. decoded: filled when asked (calibration installs it).
QuantizedTensor quantize_by_rows(const TensorView& src, DType type, bool keep_decoded) {
  const int64_t rows = src.shape[0], cols = src.shape[1], block = 16;
  const size_t in_row = dtype_row_bytes(src.type, cols), out_row = dtype_row_bytes(type, cols);
  QuantizedTensor q;
  q.bytes = std::make_shared<std::vector<uint8_t>>(size_t(rows) * out_row);
  if (keep_decoded) q.decoded = Tensor(src.shape);
  std::vector<ErrorSums> row_sums(static_cast<size_t>(rows));
  std::atomic<int64_t> next{0}, first_bad{rows * cols};  // flat index of the first non-finite weight
  const std::vector<float> no_importance;
  ThreadPool& pool = global_pool();
  pool.parallel_for(pool.size(), [&](int64_t, int64_t) {
    std::vector<float> w(static_cast<size_t>(cols)), dq(static_cast<size_t>(cols));
    for (int64_t r0; (r0 = next.fetch_add(block)) < rows;)
      for (int64_t r = r0; r < std::min(rows, r0 + block); ++r) {
        dequantize(src.type, static_cast<const uint8_t*>(src.data) + size_t(r) * in_row, w.data(), cols);
        const int64_t bad = std::find_if(w.begin(), w.end(), [](float x) { return !std::isfinite(x); }) - w.begin();
        if (bad < cols) {
          lower_to(first_bad, r * cols + bad);
          continue;
        }
        uint8_t* out = q.bytes->data() + size_t(r) * out_row;
        ggml::encode_row(type, w.data(), cols, nullptr, out);
        float* decoded = keep_decoded ? &q.decoded.data[size_t(r * cols)] : dq.data();
        dequantize(type, out, decoded, cols);
        row_sums[size_t(r)] = ErrorSums::of_row(w.data(), decoded, cols, no_importance);
      }
  });
  if (first_bad < rows * cols) {
    const int64_t r = first_bad / cols, c = first_bad % cols;
    std::vector<float> w(static_cast<size_t>(cols));
    dequantize(src.type, static_cast<const uint8_t*>(src.data) + size_t(r) * in_row, w.data(), cols);
    nonfinite_error(src.name, first_bad, cols, w[size_t(c)]);
  }
  ErrorSums total;
  for (const ErrorSums& e : row_sums) total.add(e);
  q.view = view_of(src, type, *q.bytes);
  total.report(q.report);
  return q;
}

// The plan, size and method columns of a tensor's report.
void describe(TensorReport& rep, const TensorView& src, const TensorPlan& plan, const TensorView& out,
              bool calibrated, const char* method) {
  rep.name = src.name;
  rep.plan = plan;
  rep.rows = src.shape.size() == 2 ? src.shape[0] : 1;
  rep.cols = src.shape.back();
  rep.bits_per_weight = 8.0 * double(out.nbytes) / double(src.numel());
  rep.calibrated = calibrated;
  rep.method = plan.kind == TensorPlan::Quantize ? method : "-";
}

// Quantizes one tensor according to its plan. h: its input Hessian (null: uncalibrated).
// keep_decoded: also return the decoded weights (otherwise they may be left empty).
QuantizedTensor quantize_one(const TensorView& src, const TensorPlan& plan, QuantMethod method,
                             const InputHessian* h, const GptqOptions& gptq, bool keep_decoded) {
  const auto t0 = Clock::now();
  if (h && h->width != src.shape.back()) h = nullptr;
  if (!h && streams_by_rows(src, plan)) {
    QuantizedTensor q = quantize_by_rows(src, *formats::ggml_type_for_spec(plan.spec), keep_decoded);
    describe(q.report, src, plan, q.view, false, method_name(QuantMethod::Rtn));
    q.report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return q;
  }
  const Tensor w = to_float(src);
  check_finite(src.name, w.data, w.cols());
  QuantizedTensor q;
  std::vector<float> importance;
  if (h) importance = h->importance();
  const QuantMethod used = h ? method : QuantMethod::Rtn;
  QuantMethod picked = used;
  switch (plan.kind) {
    case TensorPlan::Keep:
      q.view = src;
      q.decoded = w;
      break;
    case TensorPlan::Float:
      q = store_float(src, w, dtype_from_name(plan.spec));
      break;
    case TensorPlan::Quantize: {
      const int64_t rows = src.shape[0], cols = src.shape[1], sc = plan.stored_cols;
      std::unique_ptr<Format> f = make_format(plan.spec);
      const std::vector<float> wp = pad_columns(w.data, rows, cols, sc);
      std::vector<float> imp = importance;
      imp.resize(importance.empty() ? 0 : size_t(sc), 0.0f);  // padding columns carry no weight
      std::vector<double> hp;
      if (h) hp = padded_hessian(*h, sc);
      // Candidates, best first by intent; with a Hessian the one with the lowest output
      // error tr((W-Q) H (W-Q)^T) is kept: the diagonal importance only approximates H and
      // can lose to plain rounding (seen with binary/ternary grids on aidreams260K).
      Packed packed = f->quantize(wp.data(), rows, sc, nullptr);
      if (used != QuantMethod::Rtn) {
        double best = hessian_error(*f, wp, packed, hp);
        auto consider = [&](Packed cand, QuantMethod m) {
          const double e = hessian_error(*f, wp, cand, hp);
          if (e <= best) best = e, packed = std::move(cand), picked = m;
        };
        picked = QuantMethod::Rtn;
        consider(f->quantize(wp.data(), rows, sc, imp.data()), QuantMethod::Weighted);
        if (used == QuantMethod::Gptq) consider(gptq_quantize(*f, wp.data(), rows, sc, hp.data(), gptq).packed, QuantMethod::Gptq);
      }
      q = store_packed(src, *f, sc, std::move(packed));
      break;
    }
  }
  TensorReport& rep = q.report;
  describe(rep, src, plan, q.view, h != nullptr, method_name(picked));
  fill_errors(rep, w, q.decoded, importance);
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return q;
}

// GGUF stores Q/K in the Normal rope layout; packed rows cannot be permuted after the fact,
// so a NeoX (Hugging Face) model is brought to the Normal layout before quantizing.
ModelFile normal_rope_layout(const ModelFile& in) {
  ModelFile m = in;
  if (in.config.rope_style == RopeStyle::Normal) return m;
  for (TensorView& t : m.tensors) {
    const bool q = t.name.ends_with(".attn_q.weight"), k = t.name.ends_with(".attn_k.weight");
    if (!q && !k) continue;
    auto bytes = std::make_shared<std::vector<uint8_t>>(
        permute_qk_rows(t, q ? in.config.n_heads : in.config.n_kv_heads, in.config.rope_style, RopeStyle::Normal));
    t.data = bytes->data();
    t.nbytes = bytes->size();
    m.storage.push_back(bytes);
  }
  m.config.rope_style = RopeStyle::Normal;
  return m;
}

}  // namespace

HessianError sampled_hessian_error(const float* w, const float* q, int64_t rows, int64_t cols,
                                   const std::vector<double>& h) {
  const int64_t stride = std::max<int64_t>(1, rows / 256), n = (rows + stride - 1) / stride;
  std::vector<double> e(static_cast<size_t>(2 * n * cols)), eh(e.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const size_t at = size_t(i * stride * cols + j);
      e[size_t(i * cols + j)] = double(w[at]) - q[at];
      e[size_t((n + i) * cols + j)] = w[at];
    }
  // Rows in fixed blocks, one single-threaded call each: the bits do not depend on --threads.
  kernels::for_fixed_blocks(2 * n, 32, [&](int64_t r0, int64_t r1) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(r1 - r0), int(cols), int(cols), 1.0,
                &e[size_t(r0 * cols)], int(cols), h.data(), int(cols), 0.0, &eh[size_t(r0 * cols)], int(cols));
  });
  HessianError r;
  for (size_t i = 0; i < size_t(n * cols); ++i) r.error += e[i] * eh[i];
  for (size_t i = size_t(n * cols); i < e.size(); ++i) r.reference += e[i] * eh[i];
  r.error /= double(n);
  r.reference /= double(n);
  return r;
}

QuantizedTensor quantize_tensor(const TensorView& src, const TensorPlan& plan, QuantMethod method,
                                const InputHessian* h, const GptqOptions& gptq) {
  return quantize_one(src, plan, method, h, gptq, true);
}

uint64_t stored_bytes(const TensorView& src, const TensorPlan& plan) {
  switch (plan.kind) {
    case TensorPlan::Keep:
      return src.nbytes;
    case TensorPlan::Float:
      return uint64_t(src.numel()) * dtype_traits(dtype_from_name(plan.spec)).type_size;
    case TensorPlan::Quantize:
      return (make_format(plan.spec)->storage_bits(src.shape[0], plan.stored_cols) + 7) / 8;
  }
  return src.nbytes;
}

// What quantize_one allocates, by its branches: rows streamed (output + one row per thread;
// independent of this machine's thread count, so every rank of a job computes the same),
// or the float copies (input, padded, decoded, dequantized candidate), packed candidates,
// the padded mean Hessian and GPTQ's FP32 factor and column-major copies.
uint64_t quantize_working_bytes(const TensorView& src, const TensorPlan& plan, QuantMethod method, bool calibrated) {
  const uint64_t out = stored_bytes(src, plan), n = uint64_t(src.numel());
  const uint64_t rows = src.shape.size() == 2 ? uint64_t(src.shape[0]) : 1, cols = uint64_t(src.shape.back());
  if (!calibrated && streams_by_rows(src, plan)) return out + 8 * 64 * cols + 32 * rows;  // rows of up to 64 threads
  uint64_t bytes = 8 * n + out;  // input and decoded floats, the stored bytes
  if (plan.kind != TensorPlan::Quantize) return bytes;
  const uint64_t sc = uint64_t(plan.stored_cols), ns = rows * sc;
  bytes += 4 * ns + 2 * out + 32 * rows;
  if (calibrated && method != QuantMethod::Rtn) bytes += 16 * sc * sc + 4 * ns + 32 * std::min<uint64_t>(rows, 256) * sc;
  if (calibrated && method == QuantMethod::Gptq) bytes += 8 * sc * sc + 12 * ns;
  return bytes;
}

QuantizeResult quantize_model(const ModelFile& in, const QuantizeOptions& opt, const std::vector<int>* calib_tokens,
                              int bos, const QuantizeProgress& progress) {
  const auto t0 = Clock::now();
  ModelFile src = normal_rope_layout(in);
  std::map<std::string, int64_t> replaced;
  try {
    if (opt.allow_nonfinite)
      replaced = zero_nonfinite(src);
    else if (opt.method != QuantMethod::Rtn)
      check_finite(src);
  } catch (const NonFiniteWeight& e) {
    fail("{}: {}", in.path, e.what());
  }
  std::vector<TensorPlan> plans;
  for (const TensorView& t : src.tensors) plans.push_back(plan_tensor(t, opt));

  // Quantizes tensor i (h: its input Hessian or null); the stages (src/dist/quantize_job.cpp)
  // decode what they install from the stored bytes.
  auto run = [&](size_t i, const InputHessian* h) {
    QuantizedTensor q;
    try {
      q = quantize_one(src.tensors[i], plans[i], opt.method, h, opt.gptq, false);
    } catch (const NonFiniteWeight& e) {
      fail("{}: {}", in.path, e.what());
    }
    if (auto it = replaced.find(src.tensors[i].name); it != replaced.end()) {
      std::string& note = q.report.plan.note;
      note += fmt::format("{}{} non-finite weights replaced by 0", note.empty() ? "" : "; ", it->second);
    }
    return q;
  };
  QuantizeResult res = dist::run_quantize_job({in, src, plans, opt, calib_tokens, bos, progress, run});
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return res;
}

}  // namespace quantkit
