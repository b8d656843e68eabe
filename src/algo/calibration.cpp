#include "quantkit/calibration.h"

#include <cblas.h>

#include <atomic>
#include <cmath>

#include "quantkit/error.h"
#include "quantkit/thread_pool.h"

namespace quantkit {

std::vector<float> InputHessian::importance() const {
  std::vector<float> imp(static_cast<size_t>(width));
  for (int j = 0; j < width; ++j) imp[size_t(j)] = tokens ? float(xtx[size_t(j) * width + j] / double(tokens)) : 0.0f;
  return imp;
}

std::vector<double> InputHessian::mean() const {
  std::vector<double> h = xtx;
  if (tokens)
    for (double& v : h) v /= double(tokens);
  return h;
}

namespace {

// Fixed point: a Hessian entry v is held as round(v * 2^56). A chunk's entries stay below
// 2^56 and there are at most 2^15 chunks, so sums stay below 2^127: no overflow.
constexpr double kUnit = 0x1p56, kLimit = 0x1p56;
constexpr int64_t kMaxChunks = int64_t(1) << 15;

// |v| < kLimit, finite. Powers of two scale exactly; the low 64 bits of an integer-valued
// double below 2^112 are themselves a double (its low mantissa bits), so the split is exact.
ExactSum to_fixed(double v) {
  const double s = std::nearbyint(std::fabs(v) * kUnit);
  const double hi = std::floor(s * 0x1p-64), lo = s - hi * 0x1p64;
  const ExactSum mag = (ExactSum(uint64_t(hi)) << 64) + ExactSum(uint64_t(lo));
  return v < 0 ? ExactSum(0) - mag : mag;
}

size_t upper_offset(int64_t row, int64_t width) { return size_t(row * width - row * (row - 1) / 2); }

const char* input_name(size_t which) {
  static const char* kNames[] = {"attention", "attention output", "FFN", "FFN down"};
  return kNames[which];
}

}  // namespace

HessianSum::HessianSum(int width) : width_(width), terms_(upper_offset(width, width), ExactSum(0)) {}

bool HessianSum::add_chunk(const float* x, int64_t n, std::vector<double>& scratch) {
  const int64_t w = width_;
  std::vector<double> xd(x, x + n * w);
  scratch.resize(size_t(w * w));
  // One call on this thread (the pool keeps OpenBLAS single-threaded): H's bits must not
  // depend on --threads.
  ThreadPool& pool = global_pool();
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, int(w), int(n), 1.0, xd.data(), int(w), 0.0, scratch.data(),
              int(w));
  std::atomic<bool> ok{true};
  pool.parallel_for(w, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const double* row = &scratch[size_t(i * w)];
      ExactSum* out = &terms_[upper_offset(i, w)];
      for (int64_t j = i; j < w; ++j) {
        if (!(std::fabs(row[j]) < kLimit)) {
          ok = false;
          return;
        }
        out[j - i] += to_fixed(row[j]);
      }
    }
  });
  return ok;
}

void HessianSum::add(const HessianSum& other) {
  for (size_t i = 0; i < terms_.size(); ++i) terms_[i] += other.terms_[i];
}

InputHessian HessianSum::finish(int64_t tokens) const {
  const int64_t w = width_;
  InputHessian h;
  h.width = width_;
  h.tokens = tokens;
  h.xtx.assign(size_t(w * w), 0.0);
  global_pool().parallel_for(w, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const ExactSum* row = &terms_[upper_offset(i, w)];
      for (int64_t j = i; j < w; ++j) {
        const double v = double(static_cast<__int128>(row[j - i])) / kUnit;
        h.xtx[size_t(i * w + j)] = v;
        h.xtx[size_t(j * w + i)] = v;
      }
    }
  });
  return h;
}

int chunk_windows(int windows, int ctx) { return std::max(1, std::min(2048 / ctx, windows / 16)); }

Calibrator::Calibrator(const LlamaModel& model, const std::vector<int>& tokens, int bos, const CalibrationOptions& opt,
                       int share, int shares)
    : model_(model), ctx_(opt.ctx) {
  if (ctx_ < 2 || ctx_ > model.config().max_seq_len)
    fail("calibration context {} must be within [2, {}] (the model's context)", ctx_, model.config().max_seq_len);
  const int64_t available = int64_t(tokens.size()) / ctx_;
  const int n = int(std::min<int64_t>(available, opt.windows));
  if (n < 1) fail("calibration text has {} tokens, fewer than one window of {}", tokens.size(), ctx_);
  total_windows_ = n;
  chunk_windows_ = quantkit::chunk_windows(n, ctx_);
  const int64_t chunks = (n + chunk_windows_ - 1) / chunk_windows_;
  if (chunks > kMaxChunks) fail("calibration: {} chunks of {} windows exceed {}", chunks, chunk_windows_, kMaxChunks);
  first_chunk_ = int(chunks * share / shares);
  end_chunk_ = int(chunks * (share + 1) / shares);
  first_window_ = std::min(n, first_chunk_ * chunk_windows_);
  const int end_window = std::min(n, end_chunk_ * chunk_windows_);
  const int dim = model.config().dim;
  for (int w = first_window_; w < end_window; ++w) {
    std::vector<int> win(tokens.begin() + int64_t(w) * ctx_, tokens.begin() + int64_t(w + 1) * ctx_);
    win[0] = bos;
    std::vector<float> x(size_t(ctx_) * dim);
    model.embed(win.data(), ctx_, x.data());
    windows_.push_back(std::move(win));
    hidden_.push_back(std::move(x));
  }
}

// A cache for one layer only: forward_layer touches cache.k[layer] / cache.v[layer] alone
// (each [n_kv_heads, ctx, head_dim]).
KVCache Calibrator::layer_cache(int layer) const {
  const LlamaConfig& c = model_.config();
  KVCache cache;
  cache.capacity = ctx_;
  cache.k.resize(size_t(c.n_layers));
  cache.v.resize(size_t(c.n_layers));
  cache.k[size_t(layer)].resize(size_t(ctx_) * c.kv_dim());
  cache.v[size_t(layer)].resize(size_t(ctx_) * c.kv_dim());
  return cache;
}

LayerHessianSums Calibrator::capture_sums(int layer) const {
  const LlamaConfig& c = model_.config();
  LayerHessianSums out;
  out.inputs = {HessianSum(c.dim), HessianSum(c.dim), HessianSum(c.dim), HessianSum(c.hidden_dim)};
  std::array<std::vector<float>, 4> chunk;  // this chunk's inputs, [tokens, width] each
  std::vector<double> scratch;
  KVCache cache = layer_cache(layer);
  auto observe = [&](int, LinearInput which, const float* x, int n, int width) {
    chunk[size_t(which)].insert(chunk[size_t(which)].end(), x, x + int64_t(n) * width);
  };
  for (int ch = first_chunk_; ch < end_chunk_; ++ch) {
    const int w0 = ch * chunk_windows_ - first_window_, w1 = std::min(windows(), w0 + chunk_windows_);
    for (int w = w0; w < w1; ++w) {
      std::vector<float> x = hidden_[size_t(w)];  // capture must not advance the states
      model_.forward_layer(layer, x.data(), ctx_, 0, cache, observe);
    }
    for (size_t i = 0; i < chunk.size(); ++i) {
      HessianSum& h = out.inputs[i];
      if (!h.add_chunk(chunk[i].data(), int64_t(chunk[i].size()) / h.width(), scratch))
        fail("calibration: layer {} {} input of windows {}..{} has non-finite or huge activations (an x x^T entry >= 2^56)",
             layer, input_name(i), first_window_ + w0, first_window_ + w1 - 1);
      chunk[i].clear();
    }
  }
  return out;
}

LayerHessians Calibrator::capture(int layer) const {
  LayerHessianSums sums = capture_sums(layer);
  LayerHessians out;
  for (size_t i = 0; i < out.inputs.size(); ++i) out.inputs[i] = sums.inputs[i].finish(int64_t(windows()) * ctx_);
  return out;
}

HessianSum Calibrator::capture_head_sums() const {
  const int dim = model_.config().dim;
  HessianSum h(dim);
  std::vector<double> scratch;
  std::vector<float> xn;
  for (int ch = first_chunk_; ch < end_chunk_; ++ch) {
    const int w0 = ch * chunk_windows_ - first_window_, w1 = std::min(windows(), w0 + chunk_windows_);
    xn.resize(size_t(w1 - w0) * ctx_ * dim);
    for (int w = w0; w < w1; ++w) model_.output_norm(hidden_[size_t(w)].data(), ctx_, &xn[size_t(w - w0) * ctx_ * dim]);
    if (!h.add_chunk(xn.data(), int64_t(w1 - w0) * ctx_, scratch))
      fail("calibration: the output head's input of windows {}..{} has non-finite or huge activations (an x x^T entry >= 2^56)",
           first_window_ + w0, first_window_ + w1 - 1);
  }
  return h;
}

InputHessian Calibrator::capture_head() const { return capture_head_sums().finish(int64_t(windows()) * ctx_); }

void Calibrator::advance(int layer) {
  KVCache cache = layer_cache(layer);
  for (auto& x : hidden_) model_.forward_layer(layer, x.data(), ctx_, 0, cache);
}

}  // namespace quantkit
