// Decoders of ggml's block-quantized types. Block layouts are documented in
// io/ggml_blocks.h; each decoder first unpacks a block's bit-packed codes into one byte
// per weight, then applies the block's scales with shared helpers.
//
// Results match llama.cpp's decoders bit for bit (tests/ggml_dequant_test.cpp checks
// committed vectors). That does not depend on evaluation order or on the compiler fusing
// multiply-adds: every product here is exact in float (an f16 scale has 11 significant
// bits, sub-block scales at most 7 and codes at most 6, so d * sc * q needs at most 23 of
// float's 24), which leaves the final "+ offset" as the only rounding step. (Q8_K's f32
// scale times its code rounds once, with nothing after it.)
#include "io/ggml_dequant.h"

#include <cstring>

#include "io/ggml_blocks.h"
#include "quantkit/error.h"
#include "quantkit/fp16.h"

namespace quantkit {

ggml::ScaleMin ggml::kquant_scale_min(const uint8_t* packed, int j) {
  if (j < 4) return {uint8_t(packed[j] & 63), uint8_t(packed[j + 4] & 63)};
  return {uint8_t((packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4)),
          uint8_t((packed[j + 4] >> 4) | ((packed[j] >> 6) << 4))};
}

namespace {

using namespace ggml;

// Decodes n values stored as consecutive Blocks. Blocks are copied out of the byte
// stream, so src needs no alignment.
template <typename Block, typename DecodeBlock>
void decode_blocks(const char* type_name, const void* src, float* dst, int64_t n,
                   DecodeBlock decode_block) {
  if (n < 0 || n % Block::kValues != 0)
    fail("{} values are not a multiple of the {} block size {}", n, type_name, Block::kValues);
  const auto* bytes = static_cast<const uint8_t*>(src);
  const int64_t n_blocks = n / Block::kValues;
  for (int64_t i = 0; i < n_blocks; ++i) {
    Block block;
    std::memcpy(&block, bytes + size_t(i) * sizeof(Block), sizeof(Block));
    decode_block(block, dst + i * Block::kValues);
  }
}

// ---- scale application ----------------------------------------------------------------

// out[i] = scale * codes[i] (symmetric types).
void apply_scale(float scale, const int8_t* codes, int count, float* out) {
  for (int i = 0; i < count; ++i) out[i] = scale * float(codes[i]);
}

// out[i] = scale * codes[i] + offset (affine types). K-quants subtract dmin * m; they pass
// offset = -(dmin * m), which gives the same float since negation is exact.
void apply_scale_offset(float scale, float offset, const uint8_t* codes, int count, float* out) {
  for (int i = 0; i < count; ++i) out[i] = scale * float(codes[i]) + offset;
}

// ---- code unpacking: 32-weight blocks -------------------------------------------------

// 4-bit codes: weight j in the low nibble of qs[j], weight j + 16 in the high nibble.
void unpack_nibbles_32(const uint8_t* qs, uint8_t* codes) {
  for (int j = 0; j < kQK / 2; ++j) {
    codes[j] = qs[j] & 0x0f;
    codes[j + kQK / 2] = qs[j] >> 4;
  }
}

// Adds the 5th bit of each code: bit j of the little-endian u32 qh belongs to weight j.
void add_fifth_bits_32(const uint8_t* qh, uint8_t* codes) {
  for (int j = 0; j < kQK; ++j) codes[j] |= uint8_t(((qh[j / 8] >> (j % 8)) & 1) << 4);
}

// Unsigned codes to signed codes centred on zero (Q4_0: -8, Q5_0: -16).
void recentre(const uint8_t* codes, int bias, int count, int8_t* out) {
  for (int i = 0; i < count; ++i) out[i] = int8_t(int(codes[i]) - bias);
}

// ---- code unpacking and scales: 256-weight K-quant super-blocks ------------------------

// 2-bit codes (Q2_K, Q3_K): weight 128h + 32k + l is bits 2k..2k+1 of qs[32h + l].
void unpack_crumbs_256(const uint8_t* qs, uint8_t* codes) {
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k)
      for (int l = 0; l < 32; ++l) codes[128 * h + 32 * k + l] = (qs[32 * h + l] >> (2 * k)) & 3;
}

// 4-bit codes (Q4_K, Q5_K): weight 64c + l is the low nibble of qs[32c + l] and weight
// 64c + 32 + l its high nibble.
void unpack_nibbles_256(const uint8_t* qs, uint8_t* codes) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      codes[64 * c + l] = qs[32 * c + l] & 0x0f;
      codes[64 * c + 32 + l] = qs[32 * c + l] >> 4;
    }
}

// One extra high bit per code, stored as 32 bytes where bit s of bits[l] belongs to weight
// 32s + l. Q3_K's hmask and Q5_K's qh share this layout; `shift` is where the bit lands.
void add_high_bits_256(const uint8_t* bits, int shift, uint8_t* codes) {
  for (int s = 0; s < 8; ++s)
    for (int l = 0; l < 32; ++l) codes[32 * s + l] |= uint8_t(((bits[l] >> s) & 1) << shift);
}

// The 16 signed scales of Q3_K (6 bits, biased by 32), from the packing described at
// BlockQ3_K.
void unpack_q3_k_scales(const uint8_t* packed, int8_t* scales) {
  for (int i = 0; i < 16; ++i) {
    const int low = i < 8 ? packed[i] & 0x0f : packed[i - 8] >> 4;
    const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
    scales[i] = int8_t((low | high << 4) - 32);
  }
}

// Affine K-quants (Q4_K, Q5_K): 8 sub-blocks of 32 with 6-bit scale and min each.
void apply_kquant_scale_min(const uint8_t* packed_scales, float d, float dmin,
                            const uint8_t* codes, float* out) {
  for (int j = 0; j < 8; ++j) {
    const ScaleMin sm = kquant_scale_min(packed_scales, j);
    apply_scale_offset(d * float(sm.scale), -(dmin * float(sm.min)), codes + 32 * j, 32,
                       out + 32 * j);
  }
}

}  // namespace

// ---- 32-weight block types --------------------------------------------------------------

void dequant_q4_0(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ4_0>("q4_0", src, dst, n, [](const BlockQ4_0& b, float* out) {
    uint8_t codes[kQK];
    int8_t centred[kQK];
    unpack_nibbles_32(b.qs, codes);
    recentre(codes, 8, kQK, centred);
    apply_scale(f16_to_f32(b.d), centred, kQK, out);
  });
}

void dequant_q4_1(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ4_1>("q4_1", src, dst, n, [](const BlockQ4_1& b, float* out) {
    uint8_t codes[kQK];
    unpack_nibbles_32(b.qs, codes);
    apply_scale_offset(f16_to_f32(b.d), f16_to_f32(b.m), codes, kQK, out);
  });
}

void dequant_q5_0(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ5_0>("q5_0", src, dst, n, [](const BlockQ5_0& b, float* out) {
    uint8_t codes[kQK];
    int8_t centred[kQK];
    unpack_nibbles_32(b.qs, codes);
    add_fifth_bits_32(b.qh, codes);
    recentre(codes, 16, kQK, centred);
    apply_scale(f16_to_f32(b.d), centred, kQK, out);
  });
}

void dequant_q5_1(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ5_1>("q5_1", src, dst, n, [](const BlockQ5_1& b, float* out) {
    uint8_t codes[kQK];
    unpack_nibbles_32(b.qs, codes);
    add_fifth_bits_32(b.qh, codes);
    apply_scale_offset(f16_to_f32(b.d), f16_to_f32(b.m), codes, kQK, out);
  });
}

void dequant_q8_0(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ8_0>("q8_0", src, dst, n, [](const BlockQ8_0& b, float* out) {
    apply_scale(f16_to_f32(b.d), b.qs, kQK, out);
  });
}

void dequant_q8_1(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ8_1>("q8_1", src, dst, n, [](const BlockQ8_1& b, float* out) {
    apply_scale(f16_to_f32(b.d), b.qs, kQK, out);
  });
}

void dequant_iq4_nl(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockIQ4_NL>("iq4_nl", src, dst, n, [](const BlockIQ4_NL& b, float* out) {
    uint8_t indices[kQK];
    int8_t levels[kQK];
    unpack_nibbles_32(b.qs, indices);
    for (int j = 0; j < kQK; ++j) levels[j] = kIQ4NLValues[indices[j]];
    apply_scale(f16_to_f32(b.d), levels, kQK, out);
  });
}

// ---- 256-weight K-quant types -----------------------------------------------------------

void dequant_q2_k(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ2_K>("q2_K", src, dst, n, [](const BlockQ2_K& b, float* out) {
    uint8_t codes[kQK_K];
    unpack_crumbs_256(b.qs, codes);
    const float d = f16_to_f32(b.d), dmin = f16_to_f32(b.dmin);
    for (int s = 0; s < 16; ++s) {
      const float scale = d * float(b.scales[s] & 0x0f);
      const float min = dmin * float(b.scales[s] >> 4);
      apply_scale_offset(scale, -min, codes + 16 * s, 16, out + 16 * s);
    }
  });
}

void dequant_q3_k(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ3_K>("q3_K", src, dst, n, [](const BlockQ3_K& b, float* out) {
    uint8_t codes[kQK_K];
    int8_t centred[kQK_K];
    int8_t scales[16];
    unpack_crumbs_256(b.qs, codes);
    add_high_bits_256(b.hmask, 2, codes);
    recentre(codes, 4, kQK_K, centred);
    unpack_q3_k_scales(b.scales, scales);
    const float d = f16_to_f32(b.d);
    for (int s = 0; s < 16; ++s) apply_scale(d * float(scales[s]), centred + 16 * s, 16, out + 16 * s);
  });
}

void dequant_q4_k(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ4_K>("q4_K", src, dst, n, [](const BlockQ4_K& b, float* out) {
    uint8_t codes[kQK_K];
    unpack_nibbles_256(b.qs, codes);
    apply_kquant_scale_min(b.scales, f16_to_f32(b.d), f16_to_f32(b.dmin), codes, out);
  });
}

void dequant_q5_k(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ5_K>("q5_K", src, dst, n, [](const BlockQ5_K& b, float* out) {
    uint8_t codes[kQK_K];
    unpack_nibbles_256(b.qs, codes);
    add_high_bits_256(b.qh, 4, codes);
    apply_kquant_scale_min(b.scales, f16_to_f32(b.d), f16_to_f32(b.dmin), codes, out);
  });
}

void dequant_q6_k(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ6_K>("q6_K", src, dst, n, [](const BlockQ6_K& b, float* out) {
    int8_t codes[kQK_K];
    for (int h = 0; h < 2; ++h)
      for (int k = 0; k < 4; ++k)
        for (int l = 0; l < 32; ++l) {
          const int low = (b.ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0x0f;
          const int high = (b.qh[32 * h + l] >> (2 * k)) & 3;
          codes[128 * h + 32 * k + l] = int8_t((low | high << 4) - 32);
        }
    const float d = f16_to_f32(b.d);
    for (int s = 0; s < 16; ++s) apply_scale(d * float(b.scales[s]), codes + 16 * s, 16, out + 16 * s);
  });
}

void dequant_q8_k(const void* src, float* dst, int64_t n) {
  decode_blocks<BlockQ8_K>("q8_K", src, dst, n, [](const BlockQ8_K& b, float* out) {
    apply_scale(b.d, b.qs, kQK_K, out);
  });
}

}  // namespace quantkit
