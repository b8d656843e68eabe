#include "quantkit/calibration.h"

#include <cblas.h>

#include "quantkit/error.h"

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

Calibrator::Calibrator(const LlamaModel& model, const std::vector<int>& tokens, int bos, const CalibrationOptions& opt)
    : model_(model), ctx_(opt.ctx) {
  if (ctx_ < 2 || ctx_ > model.config().max_seq_len)
    fail("calibration context {} must be within [2, {}] (the model's context)", ctx_, model.config().max_seq_len);
  const int64_t available = int64_t(tokens.size()) / ctx_;
  const int n = int(std::min<int64_t>(available, opt.windows));
  if (n < 1) fail("calibration text has {} tokens, fewer than one window of {}", tokens.size(), ctx_);
  const int dim = model.config().dim;
  for (int w = 0; w < n; ++w) {
    std::vector<int> win(tokens.begin() + int64_t(w) * ctx_, tokens.begin() + int64_t(w + 1) * ctx_);
    win[0] = bos;
    std::vector<float> x(size_t(ctx_) * dim);
    model.embed(win.data(), ctx_, x.data());
    windows_.push_back(std::move(win));
    hidden_.push_back(std::move(x));
  }
}

namespace {

// H += X^T X (upper triangle), FP64; x is [n, width].
void accumulate(InputHessian& h, const float* x, int n, int width, std::vector<double>& xd) {
  if (h.xtx.empty()) {
    h.width = width;
    h.xtx.assign(size_t(width) * width, 0.0);
  }
  xd.assign(x, x + size_t(n) * width);
  cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, width, n, 1.0, xd.data(), width, 1.0, h.xtx.data(), width);
  h.tokens += n;
}

void symmetrize(InputHessian& h) {
  for (int i = 0; i < h.width; ++i)
    for (int j = 0; j < i; ++j) h.xtx[size_t(i) * h.width + j] = h.xtx[size_t(j) * h.width + i];
}

}  // namespace

LayerHessians Calibrator::capture(int layer) const {
  LayerHessians out;
  std::vector<double> xd;
  KVCache cache = model_.make_cache(ctx_);
  auto observe = [&](int, LinearInput which, const float* x, int n, int width) {
    accumulate(out.inputs[size_t(which)], x, n, width, xd);
  };
  for (size_t w = 0; w < windows_.size(); ++w) {
    std::vector<float> x = hidden_[w];  // capture must not advance the states
    model_.forward_layer(layer, x.data(), ctx_, 0, cache, observe);
  }
  for (auto& h : out.inputs) symmetrize(h);
  return out;
}

InputHessian Calibrator::capture_head() const {
  InputHessian h;
  std::vector<double> xd;
  const int dim = model_.config().dim;
  std::vector<float> xn(size_t(ctx_) * dim);
  for (const auto& x : hidden_) {
    model_.output_norm(x.data(), ctx_, xn.data());
    accumulate(h, xn.data(), ctx_, dim, xd);
  }
  symmetrize(h);
  return h;
}

void Calibrator::advance(int layer) {
  KVCache cache = model_.make_cache(ctx_);
  for (auto& x : hidden_) model_.forward_layer(layer, x.data(), ctx_, 0, cache);
}

}  // namespace quantkit
