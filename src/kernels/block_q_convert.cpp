// Lossless re-layout of stored weights into BlockQMatrix (see block_q.h). Each source type
// only says how to read the scale and offset of its 32-weight (sub-)blocks; the integer
// codes are recovered from the decoded weights, c = (w - m) / d, which is exact for the
// small integers these formats store.
#include <cmath>
#include <functional>

#include "formats/int_uniform.h"
#include "io/ggml_blocks.h"
#include "io/ggml_dequant.h"
#include "kernels/block_q.h"
#include "quantkit/fp16.h"

namespace quantkit::kernels {
namespace {

struct Affine {
  float d, m;
};

// How one llama.cpp type maps onto the layout: code bits (unsigned codes 0..2^bits-1, or
// signed bytes when bits == 0), and the (d, m) of sub-block j of the type block at p.
struct GgmlSource {
  int bits = 4;
  bool has_min = false;
  float offset = 0.0f;  // when !has_min: m == -offset * d for every block
  std::function<Affine(const uint8_t* p, int j)> affine;
};

float h2f(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

template <typename Block>
Affine kquant_affine(const uint8_t* p, int j) {
  Block b;
  std::memcpy(&b, p, sizeof b);
  const ggml::ScaleMin sm = ggml::kquant_scale_min(b.scales, j);
  return {f16_to_f32(b.d) * float(sm.scale), -f16_to_f32(b.dmin) * float(sm.min)};
}

std::optional<GgmlSource> ggml_source(DType t) {
  // Offsets of d and m in the 32-blocks: both lead the block (ggml_blocks.h).
  auto d_only = [](float offset) { return [offset](const uint8_t* p, int) { return Affine{h2f(p), -offset * h2f(p)}; }; };
  auto d_and_m = [](const uint8_t* p, int) { return Affine{h2f(p), h2f(p + 2)}; };
  switch (t) {
    case DType::Q4_0: return GgmlSource{4, false, 8.0f, d_only(8.0f)};
    case DType::Q4_1: return GgmlSource{4, true, 0.0f, d_and_m};
    case DType::Q5_0: return GgmlSource{5, false, 0.0f, d_only(16.0f)};
    case DType::Q5_1: return GgmlSource{5, true, 0.0f, d_and_m};
    case DType::Q8_0: return GgmlSource{0, false, 0.0f, d_only(0.0f)};
    case DType::Q4_K: return GgmlSource{4, true, 0.0f, kquant_affine<ggml::BlockQ4_K>};
    case DType::Q5_K: return GgmlSource{5, true, 0.0f, kquant_affine<ggml::BlockQ5_K>};
    default: return std::nullopt;
  }
}

// Empty matrix of the given shape and code kind.
BlockQMatrix start(CodeKind kind, int64_t rows, int64_t cols, int64_t blocks_per_scale, bool has_min) {
  BlockQMatrix w;
  w.kind = kind;
  w.rows = rows;
  w.cols = cols;
  w.blocks_per_row = (cols + kQBlock - 1) / kQBlock;
  w.blocks_per_scale = std::min(blocks_per_scale, w.blocks_per_row);
  w.scales_per_row = (w.blocks_per_row + w.blocks_per_scale - 1) / w.blocks_per_scale;
  w.has_min = has_min;
  w.q.assign(size_t(rows * w.blocks_per_row * w.code_bytes()), 0);
  w.d.assign(size_t(rows * w.scales_per_row), 0);
  if (has_min) w.m.assign(w.d.size(), 0);
  return w;
}

// Stores code value v (U4: 0..15; S8: -128..127) of weight j of block (r, b).
void put_code(BlockQMatrix& w, int64_t r, int64_t b, int j, int v) {
  uint8_t* block = w.q.data() + (r * w.blocks_per_row + b) * w.code_bytes();
  if (w.kind == CodeKind::S8) {
    block[j] = uint8_t(int8_t(v));
  } else if (j < 16) {
    block[j] = uint8_t((block[j] & 0xf0) | v);
  } else {
    block[j - 16] = uint8_t((block[j - 16] & 0x0f) | (v << 4));
  }
}

// Sets the block (r, b)'s codes from its decoded weights, given its affine map over
// unsigned codes of `bits` bits (bits 0: signed bytes); S8 storage re-centres unsigned codes.
// Returns the (d, m) the layout stores for the block.
Affine put_block(BlockQMatrix& w, int64_t r, int64_t b, const float* x, int n, Affine a, int bits) {
  const float centre = (w.kind == CodeKind::S8 && bits > 0) ? float(1 << (bits - 1)) : 0.0f;
  for (int j = 0; j < n; ++j) {
    const float v = a.d != 0.0f ? (x[j] - a.m) / a.d : 0.0f;  // an integer up to rounding
    const int c = int(v + (v < 0.0f ? -0.5f : 0.5f));
    put_code(w, r, b, j, c - int(centre));
  }
  return {a.d, a.m + centre * a.d};
}

// 4-bit codes centred on 8 (q4_0, symmetric int4) are stored as they are but read as
// signed values c - 8: the kernel then needs no offset term.
void signed_if_centred(BlockQMatrix& w) {
  if (w.kind == CodeKind::U4 && !w.has_min && w.offset == 8.0f) w.kind = CodeKind::S4, w.offset = 0.0f;
}

void put_scale(BlockQMatrix& w, int64_t r, int64_t g, Affine a) {
  w.d[size_t(r * w.scales_per_row + g)] = f32_to_f16(a.d);
  if (w.has_min) w.m[size_t(r * w.scales_per_row + g)] = f32_to_f16(a.m);
}

// Types whose 32-block is an fp16 scale followed by the codes in the layout's own order
// (4-bit: byte j = weights j and j + 16) are copied, not decoded: q4_0 (c - 8), q8_0 and
// iq4_nl (table indices).
std::optional<BlockQMatrix> copied_blocks(DType type, const uint8_t* bytes, int64_t rows, int64_t cols) {
  CodeKind kind;
  switch (type) {
    case DType::Q4_0: kind = CodeKind::S4; break;
    case DType::Q8_0: kind = CodeKind::S8; break;
    case DType::IQ4_NL: kind = CodeKind::Lut4; break;
    default: return std::nullopt;
  }
  BlockQMatrix w = start(kind, rows, cols, 1, false);
  if (kind == CodeKind::Lut4) std::copy(std::begin(ggml::kIQ4NLValues), std::end(ggml::kIQ4NLValues), w.lut.begin());
  const size_t block_bytes = 2 + size_t(w.code_bytes());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < w.blocks_per_row; ++b) {
      const uint8_t* src = bytes + size_t(r * w.blocks_per_row + b) * block_bytes;
      std::memcpy(&w.d[size_t(r * w.blocks_per_row + b)], src, 2);
      std::memcpy(w.q.data() + (r * w.blocks_per_row + b) * w.code_bytes(), src + 2, size_t(w.code_bytes()));
    }
  return w;
}

}  // namespace

std::optional<BlockQMatrix> blockq_from_ggml(DType type, const uint8_t* bytes, int64_t rows, int64_t cols) {
  const DTypeTraits& tr = dtype_traits(type);
  if (tr.block_size <= 1 || cols % tr.block_size != 0 || tr.block_size % kQBlock != 0) return std::nullopt;
  const size_t row_bytes = dtype_row_bytes(type, cols);
  if (std::optional<BlockQMatrix> w = copied_blocks(type, bytes, rows, cols)) return w;
  const std::optional<GgmlSource> src = ggml_source(type);
  if (!src) return std::nullopt;
  BlockQMatrix w = start(src->bits == 4 ? CodeKind::U4 : CodeKind::S8, rows, cols, 1, src->has_min);
  w.offset = src->bits == 4 ? src->offset : 0.0f;  // S8 re-centring removes q5_0's offset
  signed_if_centred(w);
  const int sub_blocks = int(tr.block_size / kQBlock);
  std::vector<float> x(static_cast<size_t>(tr.block_size));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t tb = 0; tb < cols / tr.block_size; ++tb) {
      const uint8_t* p = bytes + r * row_bytes + tb * tr.type_size;
      tr.to_float(p, x.data(), tr.block_size);
      for (int j = 0; j < sub_blocks; ++j) {
        const int64_t b = tb * sub_blocks + j;
        put_scale(w, r, b, put_block(w, r, b, x.data() + j * kQBlock, kQBlock, src->affine(p, j), src->bits));
      }
    }
  return w;
}

std::optional<BlockQMatrix> blockq_from_int(const std::string& spec, const Packed& p, int64_t cols) {
  const std::optional<formats::IntParams> ip = formats::int_params_of(spec);
  if (!ip || ip->master_bits) return std::nullopt;
  const formats::IntUnpacked u = formats::unpack_int(p, *ip);
  const int64_t bpr = (cols + kQBlock - 1) / kQBlock;
  int64_t bps = bpr;  // row and tensor scales: one per row
  if (ip->group > 0) {
    if (ip->group % kQBlock != 0) return std::nullopt;
    bps = ip->group / kQBlock;
  }
  // Scales must survive fp16 (per-tensor ones are fp32), zero points must be fixed unless asym.
  for (float s : u.scale)
    if (f16_to_f32(f32_to_f16(s)) != s) return std::nullopt;
  const bool asym = ip->mode == formats::IntMode::Asym;
  const int bits = ip->bits;
  BlockQMatrix w = start(bits <= 4 ? CodeKind::U4 : CodeKind::S8, p.rows, cols, bps, asym);
  const float zero0 = u.zero.empty() ? 0.0f : u.zero[0];
  w.offset = asym ? 0.0f : (bits <= 4 ? zero0 : zero0 - float(1 << (bits - 1)));
  signed_if_centred(w);
  const int64_t groups = u.n_groups();
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t g = 0; g < w.scales_per_row; ++g) {
      // Scale group g of the layout covers input columns [g*bps*32, ...): one int group.
      const int64_t ig = std::min(groups - 1, g * bps * kQBlock / std::max<int64_t>(u.group, 1));
      const float s = u.scale[size_t(r * groups + ig)], z = u.zero[size_t(r * groups + ig)];
      const float centre = bits <= 4 ? 0.0f : float(1 << (bits - 1));
      put_scale(w, r, g, {s, -s * (z - centre)});
      for (int64_t b = g * bps; b < std::min(bpr, (g + 1) * bps); ++b)
        for (int j = 0; j < kQBlock && b * kQBlock + j < cols; ++j)
          put_code(w, r, b, j, u.q[size_t(r * p.cols + b * kQBlock + j)] - int(centre));
    }
  return w;
}

}  // namespace quantkit::kernels
