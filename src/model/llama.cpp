#include "quantkit/llama.h"

#include <cmath>
#include <cstring>

#include "kernels/vec_ops.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

namespace quantkit {
namespace {

std::vector<float> vector_of(const TensorView& v) { return to_float(v).data; }

void rms_norm(const float* x, const float* w, float eps, int n, int dim, float* out) {
  for (int t = 0; t < n; ++t) {
    const float* xt = x + int64_t(t) * dim;
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += double(xt[i]) * xt[i];
    const float inv = float(1.0 / std::sqrt(ss / dim + eps));
    float* ot = out + int64_t(t) * dim;
    for (int i = 0; i < dim; ++i) ot[i] = w[i] * (xt[i] * inv);
  }
}

}  // namespace

LlamaModel::LlamaModel(const ModelFile& f) : cfg_(f.config) {
  auto layer_name = [](int l, const char* s) { return "blk." + std::to_string(l) + "." + s; };
  tok_embd_ = to_float(f.get("token_embd.weight"));
  if (tok_embd_.rows() != cfg_.vocab_size || tok_embd_.cols() != cfg_.dim)
    fail("{}: token_embd.weight has shape {}, expected [{}, {}]", f.path, shape_str(tok_embd_.shape),
         cfg_.vocab_size, cfg_.dim);
  out_norm_ = vector_of(f.get("output_norm.weight"));
  // The linear layers are converted to their kernel layouts in parallel, one whole tensor
  // per task (a packed int format re-lays every code); the tensors are looked up first, so
  // a missing one is reported by name before any work.
  std::vector<std::pair<std::unique_ptr<Linear>*, TensorView>> linears;
  linears.emplace_back(&head_, cfg_.tied_embeddings ? f.get("token_embd.weight") : f.get("output.weight"));
  layers_.resize(size_t(cfg_.n_layers));
  for (int l = 0; l < cfg_.n_layers; ++l) {
    LlamaLayer& L = layers_[size_t(l)];
    L.attn_norm = vector_of(f.get(layer_name(l, "attn_norm.weight")));
    L.ffn_norm = vector_of(f.get(layer_name(l, "ffn_norm.weight")));
    for (auto [slot, name] : {std::pair{&L.wq, "attn_q.weight"}, {&L.wk, "attn_k.weight"}, {&L.wv, "attn_v.weight"},
                              {&L.wo, "attn_output.weight"}, {&L.w_gate, "ffn_gate.weight"},
                              {&L.w_up, "ffn_up.weight"}, {&L.w_down, "ffn_down.weight"}})
      linears.emplace_back(slot, f.get(layer_name(l, name)));
  }
  global_pool().parallel_for(int64_t(linears.size()), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) *linears[size_t(i)].first = make_linear(linears[size_t(i)].second);
  });
  // RoPE angles in double precision: pos * theta^(-2i/head_dim).
  const int half = cfg_.head_dim() / 2;
  rope_cos_.resize(size_t(cfg_.max_seq_len) * half);
  rope_sin_.resize(rope_cos_.size());
  for (int p = 0; p < cfg_.max_seq_len; ++p)
    for (int i = 0; i < half; ++i) {
      double freq = std::pow(double(cfg_.rope_theta), -2.0 * i / cfg_.head_dim());
      double a = p * freq;
      rope_cos_[size_t(p) * half + i] = float(std::cos(a));
      rope_sin_[size_t(p) * half + i] = float(std::sin(a));
    }
}

KVCache LlamaModel::make_cache(int capacity, const KVSpec& kv) const {
  if (capacity > cfg_.max_seq_len) capacity = cfg_.max_seq_len;
  KVCache c;
  c.capacity = capacity;
  if (!kv.is_plain()) {
    c.quant = std::make_unique<QuantizedKV>(kv, cfg_.n_layers, cfg_.kv_dim(), cfg_.head_dim(), capacity);
    return c;
  }
  const size_t per_layer = size_t(capacity) * cfg_.kv_dim();
  if (kv.k.kind == KVKind::F16) c.k16.assign(cfg_.n_layers, std::vector<uint16_t>(per_layer));
  else c.k.assign(cfg_.n_layers, std::vector<float>(per_layer));
  if (kv.v.kind == KVKind::F16) c.v16.assign(cfg_.n_layers, std::vector<uint16_t>(per_layer));
  else c.v.assign(cfg_.n_layers, std::vector<float>(per_layer));
  return c;
}

size_t LlamaModel::weight_bytes() const {
  size_t b = head_->weight_bytes();
  for (const auto& L : layers_)
    for (const Linear* w : {L.wq.get(), L.wk.get(), L.wv.get(), L.wo.get(), L.w_gate.get(), L.w_up.get(), L.w_down.get()})
      b += w->weight_bytes();
  return b;
}

void LlamaModel::rope(float* x, int n, int pos, int n_heads) const {
  const int hd = cfg_.head_dim(), half = hd / 2, width = n_heads * hd;
  // Normal pairs adjacent dims (2i, 2i+1); NeoX pairs dim i with i + head_dim/2.
  const int stride = cfg_.rope_style == RopeStyle::Normal ? 2 : 1;
  const int partner = cfg_.rope_style == RopeStyle::Normal ? 1 : half;
  for (int t = 0; t < n; ++t) {
    const float* c = &rope_cos_[size_t(pos + t) * half];
    const float* s = &rope_sin_[size_t(pos + t) * half];
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + int64_t(t) * width + h * hd;
      for (int i = 0; i < half; ++i) {
        float& a = v[i * stride];
        float& b = v[i * stride + partner];
        const float a0 = a, b0 = b;
        a = a0 * c[i] - b0 * s[i];
        b = a0 * s[i] + b0 * c[i];
      }
    }
  }
}

void LlamaModel::attention(const float* q, int n, int pos, const AttentionKV& kv, float* out) const {
  const int hd = cfg_.head_dim(), dim = cfg_.dim;
  const int group = cfg_.n_heads / cfg_.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(hd));
  // Heads are independent; each thread takes whole heads so results do not depend on
  // the thread count.
  global_pool().parallel_for(cfg_.n_heads, [&](int64_t h0, int64_t h1) {
    std::vector<float> att(size_t(pos + n));
    // A batch decodes each head's packed positions once (keys channel-major, so a query's
    // scores are one pass of axpys over them); one query reads them in place.
    const bool decode = kv.quant && n > 1;
    const int kmax = decode ? kv.quant->quantized_keys(pos + n) : 0;
    const int vmax = decode ? kv.quant->quantized_values(pos + n) : 0;
    thread_local std::vector<float> kdec, vdec;
    int decoded_kvh = -1;  // query heads of one kv head are consecutive: decode it once
    for (int64_t h = h0; h < h1; ++h) {
      const int kvh = int(h) / group;
      if (decode && kvh != decoded_kvh) {
        decoded_kvh = kvh;
        kdec.resize(size_t(kmax) * hd);
        vdec.resize(size_t(vmax) * hd);
        kv.quant->decode_head_keys(kv.layer, kvh, kmax, kdec.data(), size_t(kmax));
        kv.quant->decode_head_values(kv.layer, kvh, vmax, vdec.data());
      }
      for (int t = 0; t < n; ++t) {
        const float* qt = q + int64_t(t) * dim + h * hd;
        const int len = pos + t + 1;  // causal: positions 0..pos+t
        // Positions below the cuts are read packed.
        const int kcut = kv.quant ? kv.quant->quantized_keys(len) : 0;
        const int vcut = kv.quant ? kv.quant->quantized_values(len) : 0;
        float mx = -INFINITY;
        if (kcut > 0 && decode) {
          std::fill(att.begin(), att.begin() + kcut, 0.0f);
          kernels::mix_rows_f32(qt, 1.0f, kdec.data(), kmax, hd, att.data(), kcut);
          for (int j = 0; j < kcut; ++j) att[j] *= scale;
        } else if (kcut > 0) {
          kv.quant->key_scores(kv.layer, kvh, qt, scale, kcut, att.data());
        }
        for (int j = 0; j < kcut; ++j) mx = std::max(mx, att[j]);
        // Positions [kcut, len) from the FP32 rows K (FP16 rows K16 when set), which hold
        // positions from k_first on.
        if (len > kcut) {
          const int64_t at = kvh * kv.head_stride + int64_t(kcut - kv.k_first) * kv.row_stride;
          if (kv.k16) kernels::dot_rows_f16(qt, kv.k16 + at, kv.row_stride, len - kcut, hd, scale, att.data() + kcut);
          else kernels::dot_rows_f32(qt, kv.k + at, kv.row_stride, len - kcut, hd, scale, att.data() + kcut);
          for (int j = kcut; j < len; ++j) mx = std::max(mx, att[j]);
        }
        const float sum = kernels::exp_shifted_sum(att.data(), len, mx);
        float* ot = out + int64_t(t) * dim + h * hd;
        std::fill(ot, ot + hd, 0.0f);
        if (vcut > 0 && decode) kernels::mix_rows_f32(att.data(), sum, vdec.data(), hd, vcut, ot, hd);
        else if (vcut > 0) kv.quant->mix_values(kv.layer, kvh, att.data(), sum, vcut, ot);
        if (len > vcut) {
          const int64_t at = kvh * kv.head_stride + int64_t(vcut - kv.v_first) * kv.row_stride;
          if (kv.v16) kernels::mix_rows_f16(att.data() + vcut, sum, kv.v16 + at, kv.row_stride, len - vcut, ot, hd);
          else kernels::mix_rows_f32(att.data() + vcut, sum, kv.v + at, kv.row_stride, len - vcut, ot, hd);
        }
      }
    }
  });
}

void LlamaModel::store_kv(KVCache& cache, int l, int pos, int n, const float* k, const float* v) const {
  const int hd = cfg_.head_dim(), kv_dim = cfg_.kv_dim();
  // One side: FP32 rows copied, FP16 rows rounded (round to nearest even).
  auto put = [&](std::vector<std::vector<float>>& f32, std::vector<std::vector<uint16_t>>& f16, const float* src,
                 size_t dst) {
    if (!f32.empty()) std::memcpy(&f32[l][dst], src, sizeof(float) * hd);
    else
      for (int i = 0; i < hd; ++i) f16[l][dst + i] = f32_to_f16(src[i]);
  };
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < cfg_.n_kv_heads; ++h) {
      const size_t dst = (size_t(h) * cache.capacity + size_t(pos + t)) * hd, src = size_t(t) * kv_dim + size_t(h) * hd;
      put(cache.k, cache.k16, k + src, dst);
      put(cache.v, cache.v16, v + src, dst);
    }
}

void LlamaModel::embed(const int* tokens, int n, float* x) const {
  const int dim = cfg_.dim;
  for (int t = 0; t < n; ++t) {
    if (tokens[t] < 0 || tokens[t] >= cfg_.vocab_size)
      fail("token id {} is outside the vocabulary of {}", tokens[t], cfg_.vocab_size);
    std::memcpy(x + size_t(t) * dim, &tok_embd_.data[size_t(tokens[t]) * dim], sizeof(float) * dim);
  }
}

void LlamaModel::forward_layer(int l, float* x, int n, int pos, KVCache& cache,
                               const LinearInputObserver& observe) const {
  if (pos < 0 || pos + n > cache.capacity)
    fail("context overflow: positions {}..{} exceed the cache of {} (model context {})", pos, pos + n - 1,
         cache.capacity, cfg_.max_seq_len);
  const int dim = cfg_.dim, kv_dim = cfg_.kv_dim(), hidden = cfg_.hidden_dim;
  const size_t nd = size_t(n) * dim;
  std::vector<float> xn(nd), q(nd), att(nd), tmp(nd), gate(size_t(n) * hidden), up(gate.size());
  const LlamaLayer& L = layers_[l];
  rms_norm(x, L.attn_norm.data(), cfg_.rms_eps, n, dim, xn.data());
  if (observe) observe(l, LinearInput::Attention, xn.data(), n, dim);
  L.wq->forward(xn.data(), n, q.data());
  // The new rows go through scratch buffers: into the quantized store (which hands back
  // what to read, position-major) or scattered into the head-major FP32 cache.
  std::vector<float> knew(size_t(n) * kv_dim), vnew(knew.size());
  L.wk->forward(xn.data(), n, knew.data());
  L.wv->forward(xn.data(), n, vnew.data());
  rope(q.data(), n, pos, cfg_.n_heads);
  rope(knew.data(), n, pos, cfg_.n_kv_heads);
  KVRows rows;
  AttentionKV kv;
  if (cache.quant) {
    cache.quant->append(l, pos, n, knew.data(), vnew.data(), rows);
    kv = {.k = rows.k.data(), .v = rows.v.data(), .quant = cache.quant.get(), .layer = l, .k_first = rows.k_first,
          .v_first = rows.v_first, .head_stride = cfg_.head_dim(), .row_stride = kv_dim};
  } else {
    store_kv(cache, l, pos, n, knew.data(), vnew.data());
    kv = {.k = cache.k.empty() ? nullptr : cache.k[l].data(), .v = cache.v.empty() ? nullptr : cache.v[l].data(),
          .k16 = cache.k16.empty() ? nullptr : cache.k16[l].data(),
          .v16 = cache.v16.empty() ? nullptr : cache.v16[l].data(),
          .head_stride = int64_t(cache.capacity) * cfg_.head_dim(), .row_stride = cfg_.head_dim()};
  }
  attention(q.data(), n, pos, kv, att.data());
  if (observe) observe(l, LinearInput::AttentionOutput, att.data(), n, dim);
  L.wo->forward(att.data(), n, tmp.data());
  for (size_t i = 0; i < nd; ++i) x[i] += tmp[i];

  rms_norm(x, L.ffn_norm.data(), cfg_.rms_eps, n, dim, xn.data());
  if (observe) observe(l, LinearInput::Ffn, xn.data(), n, dim);
  L.w_gate->forward(xn.data(), n, gate.data());
  L.w_up->forward(xn.data(), n, up.data());
  global_pool().parallel_for(n, [&](int64_t t0, int64_t t1) {  // SwiGLU: silu(gate) * up
    kernels::swiglu(gate.data() + t0 * hidden, up.data() + t0 * hidden, size_t((t1 - t0) * hidden));
  });
  if (observe) observe(l, LinearInput::FfnDown, gate.data(), n, hidden);
  L.w_down->forward(gate.data(), n, tmp.data());
  for (size_t i = 0; i < nd; ++i) x[i] += tmp[i];
}

void LlamaModel::output_norm(const float* x, int n, float* out) const {
  rms_norm(x, out_norm_.data(), cfg_.rms_eps, n, cfg_.dim, out);
}

void LlamaModel::head(const float* x, int n, float* logits) const {
  std::vector<float> xn(size_t(n) * cfg_.dim);
  output_norm(x, n, xn.data());
  head_->forward(xn.data(), n, logits);
}

void LlamaModel::forward(const int* tokens, int n, int pos, KVCache& cache, float* logits) const {
  if (n <= 0) return;
  std::vector<float> x(size_t(n) * cfg_.dim);
  embed(tokens, n, x.data());
  for (int l = 0; l < cfg_.n_layers; ++l) forward_layer(l, x.data(), n, pos, cache);
  head(x.data(), n, logits);
}

}  // namespace quantkit
