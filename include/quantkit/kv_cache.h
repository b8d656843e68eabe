// Quantized KV cache (KIVI / VidKV style).
//
// Keys are quantized per channel across a block of B consecutive tokens (asymmetric
// min/max per channel per block), values per token (asymmetric per group of channels).
// VidKV's 1.x-bit keys: per block, the top fraction of channels by magnitude get 2 bits,
// the rest 1 bit (two levels: the means of the values below / above the channel mean);
// ternary values: per token and group, absmean scale, codes {-1, 0, 1} packed 5 per byte.
// Scales and offsets are FP16. Positions that do not yet fill a key block, and the most
// recent `residual` positions, stay in FP32 until they leave the window.
// f16 stores each element rounded to FP16 (llama.cpp's default cache); with both sides
// f32 or f16 the model keeps a plain cache (KVCache) and attention reads it directly.
//
// Spec syntax: "K_SPEC,V_SPEC" or one spec for both sides ("vidkv" alone = "vidkv,ternary").
//   side   := kind[:option]...    kind := f32 | f16 | int8 | int4 | int2 | vidkv (keys) | ternary (values)
//   option := bN (key block tokens, default 32) | gN (value group channels, default one head)
//           | rN (FP32 residual window, default 0) | oF (vidkv outlier fraction, default 0.2)
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace quantkit {

enum class KVKind { F32, F16, Int, VidKV, Ternary };

struct KVSideSpec {
  KVKind kind = KVKind::F32;
  int bits = 32;           // Int: 8, 4 or 2
  int block = 32;          // keys: tokens per block
  int group = 0;           // values: channels per group (0: head_dim)
  int residual = 0;        // most recent positions kept in FP32
  double outliers = 0.2;   // VidKV keys: fraction of channels at 2 bits
  bool operator==(const KVSideSpec&) const = default;
};

struct KVSpec {
  KVSideSpec k, v;
  bool is_f32() const { return k.kind == KVKind::F32 && v.kind == KVKind::F32; }
  // Each side f32 or f16: a plain cache, no QuantizedKV.
  bool is_plain() const {
    return (k.kind == KVKind::F32 || k.kind == KVKind::F16) && (v.kind == KVKind::F32 || v.kind == KVKind::F16);
  }
  std::string str() const;  // canonical "K,V" form; parse_kv_spec(str()) == *this
  bool operator==(const KVSpec&) const = default;
};

KVSpec parse_kv_spec(const std::string& spec);
std::string kv_side_str(const KVSideSpec& side);

// Exact storage bits per element of the quantized part (codes, FP16 scales, outlier masks;
// each key block and value row rounded up to whole bytes). FP32 residual positions excluded.
double kv_bits_per_element(const KVSideSpec& side, bool key, int kv_dim, int head_dim);

// "K int4 (4.50 bits/element), V int4 (6.00 bits/element)" for a model's KV width.
std::string kv_describe(const KVSpec& spec, int kv_dim, int head_dim);

// Quantizes and decodes rows [rows, width]: keys as one block of `rows` tokens, values
// row by row. Returns the decoded rows; *bits (if set) receives the bits stored.
std::vector<float> kv_roundtrip(const KVSideSpec& side, bool key, const float* x, int rows, int width, int head_dim,
                                size_t* bits = nullptr);

// The FP32 rows attention reads after an append of positions [pos, pos + n): positions
// [k_first, pos + n) of keys (k, [pos + n - k_first, kv_dim]) and [v_first, pos + n) of
// values. For a query at position p, keys j < quantized_keys(p + 1) come from the packed
// store (QuantizedKV::key_scores), the others from k; the same for values.
struct KVRows {
  std::vector<float> k, v;
  int k_first = 0, v_first = 0;
};

// The quantized store of all layers.
class QuantizedKV {
 public:
  QuantizedKV(const KVSpec& spec, int n_layers, int kv_dim, int head_dim, int capacity);
  const KVSpec& spec() const { return spec_; }

  // Leading positions held quantized once `len` positions are cached.
  int quantized_keys(int len) const;
  int quantized_values(int len) const;

  // Stores keys/values [n, kv_dim] of positions [pos, pos + n) of a layer (pos == 0 restarts;
  // pos below the cached length rewinds, only within the FP32 tail) and fills `rows`.
  void append(int layer, int pos, int n, const float* k, const float* v, KVRows& rows);

  // Attention of one query head slice q[head_dim] against kv head `kvh` of a layer, over
  // the packed positions [0, upto) (upto <= quantized_keys(len), whole key blocks):
  // out[j] = scale * q . k_j, with k_j the decoded key.
  void key_scores(int layer, int kvh, const float* q, float scale, int upto, float* out) const;
  // out[i] += (w[j] / div) * v_j[kvh * head_dim + i] for the packed values j < upto, in order.
  void mix_values(int layer, int kvh, const float* w, float div, int upto, float* out) const;

  // A batch of queries decodes a head once instead: keys [0, upto) channel-major,
  // out[c * ld + j] (ld >= upto); values [0, upto) token-major, out[j * head_dim + c].
  void decode_head_keys(int layer, int kvh, int upto, float* out, size_t ld) const;
  void decode_head_values(int layer, int kvh, int upto, float* out) const;

  // Bytes held now (codes + scales + FP32 tail), all layers.
  size_t bytes() const;

 private:
  struct Side {
    std::vector<uint8_t> packed;  // quantized units (key blocks / value rows), fixed size each
    std::vector<float> tail;      // FP32 rows from the first unquantized position
    int quantized = 0;            // positions held in `packed`
  };
  struct Layer {
    Side k, v;
    int len = 0;
  };
  void store(Side& s, const KVSideSpec& spec, bool key, int pos, int new_len, const float* rows_new);
  void key_block_acc(const uint8_t* unit, int h0, const float* w, float* acc, size_t ld) const;
  void value_row_acc(const uint8_t* unit, int h0, float a, float* out) const;

  KVSpec spec_;
  int kv_dim_, head_dim_, capacity_;
  size_t key_unit_bytes_, value_unit_bytes_;
  std::vector<Layer> layers_;
};

}  // namespace quantkit
