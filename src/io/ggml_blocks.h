// Byte layouts of ggml's block-quantized tensor types, as stored in GGUF files.
//
// Shared by the decoders (ggml_dequant.cpp) and the encoders, so the two can never
// disagree about where a field lives. Every struct is packed (alignment 1, so any byte
// offset in a mapped file is a valid block address) and its size is pinned by a
// static_assert to the size ggml uses. Half-precision fields hold raw IEEE binary16
// bits (decode with quantkit::f16_to_f32); all multi-byte fields are little-endian.
//
// Each struct carries kValues, the number of weights one block encodes, so generic
// code can walk a row block by block.
#pragma once
#include <cstddef>
#include <cstdint>

namespace quantkit::ggml {

inline constexpr int kQK = 32;           // weights per block of the "legacy" types
inline constexpr int kQK_K = 256;        // weights per K-quant super-block
inline constexpr int kKScaleBytes = 12;  // packed 6-bit scales of Q3_K/Q4_K/Q5_K

// ---- 32-weight blocks -----------------------------------------------------------------
// Packing of 4-bit fields in qs[16] (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL): the low nibble of
// qs[j] is weight j and the high nibble is weight j + 16.
// Packing of the 5th bit in qh[4] (Q5_0, Q5_1): bit j of the little-endian u32 is the
// high bit of weight j.

// x = d * (q - 8), q a 4-bit unsigned code.
struct __attribute__((packed)) BlockQ4_0 {
  static constexpr int kValues = kQK;
  uint16_t d;           // scale (f16)
  uint8_t qs[kQK / 2];  // 4-bit codes
};
static_assert(sizeof(BlockQ4_0) == 18);

// x = d * q + m, q a 4-bit unsigned code.
struct __attribute__((packed)) BlockQ4_1 {
  static constexpr int kValues = kQK;
  uint16_t d;           // scale (f16)
  uint16_t m;           // offset, the block minimum (f16)
  uint8_t qs[kQK / 2];  // 4-bit codes
};
static_assert(sizeof(BlockQ4_1) == 20);

// x = d * (q - 16), q a 5-bit unsigned code split over qs (low 4) and qh (bit 4).
struct __attribute__((packed)) BlockQ5_0 {
  static constexpr int kValues = kQK;
  uint16_t d;           // scale (f16)
  uint8_t qh[4];        // 5th bits, one per weight
  uint8_t qs[kQK / 2];  // low 4 bits
};
static_assert(sizeof(BlockQ5_0) == 22);

// x = d * q + m, q a 5-bit unsigned code split over qs (low 4) and qh (bit 4).
struct __attribute__((packed)) BlockQ5_1 {
  static constexpr int kValues = kQK;
  uint16_t d;           // scale (f16)
  uint16_t m;           // offset, the block minimum (f16)
  uint8_t qh[4];        // 5th bits, one per weight
  uint8_t qs[kQK / 2];  // low 4 bits
};
static_assert(sizeof(BlockQ5_1) == 24);

// x = d * q, q a signed byte.
struct __attribute__((packed)) BlockQ8_0 {
  static constexpr int kValues = kQK;
  uint16_t d;       // scale (f16)
  int8_t qs[kQK];   // codes
};
static_assert(sizeof(BlockQ8_0) == 34);

// x = d * q, q a signed byte. s caches d * sum(q) for dot products; decoding ignores it.
struct __attribute__((packed)) BlockQ8_1 {
  static constexpr int kValues = kQK;
  uint16_t d;       // scale (f16)
  uint16_t s;       // d * sum(qs) (f16)
  int8_t qs[kQK];   // codes
};
static_assert(sizeof(BlockQ8_1) == 36);

// x = d * kIQ4NLValues[q], q a 4-bit index into a fixed non-uniform codebook.
struct __attribute__((packed)) BlockIQ4_NL {
  static constexpr int kValues = kQK;
  uint16_t d;           // scale (f16)
  uint8_t qs[kQK / 2];  // 4-bit codebook indices
};
static_assert(sizeof(BlockIQ4_NL) == 18);

// The IQ4_NL codebook: a 4-bit index selects one of these levels.
inline constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// ---- 256-weight K-quant super-blocks --------------------------------------------------
// A super-block is split into sub-blocks (16 or 32 weights) that each have a small
// integer scale (and for the "affine" types a min); the integer scales are themselves
// scaled by the super-block's d (and dmin). Sub-block s covers weights [s*len, (s+1)*len).
//
// Packing of 2-bit fields in qs[64] (Q2_K, Q3_K): each 128-weight half h uses bytes
// qs[32h .. 32h+31]; weight 128h + 32k + l is bits (2k, 2k+1) of qs[32h + l].
//
// Packing of 4-bit fields in qs[128] (Q4_K, Q5_K): each 64-weight chunk c uses bytes
// qs[32c .. 32c+31]; weight 64c + l is the low nibble of qs[32c + l], weight 64c + 32 + l
// the high nibble.

// x = d * sc * q - dmin * m over 16 sub-blocks of 16, q a 2-bit code.
struct __attribute__((packed)) BlockQ2_K {
  static constexpr int kValues = kQK_K;
  uint8_t scales[kQK_K / 16];  // per sub-block: low nibble sc, high nibble m
  uint8_t qs[kQK_K / 4];       // 2-bit codes
  uint16_t d;                  // scale of the sc values (f16)
  uint16_t dmin;               // scale of the m values (f16)
};
static_assert(sizeof(BlockQ2_K) == 84);

// x = d * (sc - 32) * (q - 4) over 16 sub-blocks of 16, q a 3-bit code whose low 2 bits
// are in qs and whose high bit is in hmask: weight 32k + l (k = 0..7) has its high bit at
// bit k of hmask[l].
// The 16 six-bit sc values are packed in scales[12]: the low 4 bits of sc[i] are the
// low nibble of scales[i] for i < 8 and the high nibble of scales[i - 8] for i >= 8; the
// high 2 bits of sc[i] are bits (2*(i/4), 2*(i/4)+1) of scales[8 + i%4].
struct __attribute__((packed)) BlockQ3_K {
  static constexpr int kValues = kQK_K;
  uint8_t hmask[kQK_K / 8];     // high bit of each code
  uint8_t qs[kQK_K / 4];        // low 2 bits of each code
  uint8_t scales[kKScaleBytes]; // 16 packed 6-bit scales, biased by 32
  uint16_t d;                   // scale of the scales (f16)
};
static_assert(sizeof(BlockQ3_K) == 110);

// x = d * sc * q - dmin * m over 8 sub-blocks of 32, q a 4-bit code.
// The 8 six-bit (sc, m) pairs are packed in scales[12]: for j < 4, sc = scales[j] & 63
// and m = scales[j + 4] & 63; for j >= 4 the low 4 bits come from the nibbles of
// scales[j + 4] (sc low, m high) and the high 2 bits from the top 2 bits of scales[j - 4]
// (sc) and scales[j] (m).
struct __attribute__((packed)) BlockQ4_K {
  static constexpr int kValues = kQK_K;
  uint16_t d;                    // scale of the sc values (f16)
  uint16_t dmin;                 // scale of the m values (f16)
  uint8_t scales[kKScaleBytes];  // 8 packed 6-bit (sc, m) pairs
  uint8_t qs[kQK_K / 2];         // 4-bit codes
};
static_assert(sizeof(BlockQ4_K) == 144);

// As Q4_K with a 5th code bit: the high bit of weight 32s + l (sub-block s) is bit s of
// qh[l].
struct __attribute__((packed)) BlockQ5_K {
  static constexpr int kValues = kQK_K;
  uint16_t d;                    // scale of the sc values (f16)
  uint16_t dmin;                 // scale of the m values (f16)
  uint8_t scales[kKScaleBytes];  // 8 packed 6-bit (sc, m) pairs, as Q4_K
  uint8_t qh[kQK_K / 8];         // 5th bit of each code
  uint8_t qs[kQK_K / 2];         // low 4 bits of each code
};
static_assert(sizeof(BlockQ5_K) == 176);

// x = d * sc * (q - 32) over 16 sub-blocks of 16, q a 6-bit code and sc a signed byte.
// Each 128-weight half h uses ql[64h .. 64h+63] and qh[32h .. 32h+31]; its quarter k
// (weights 128h + 32k + l, l < 32) takes the low 4 bits from ql[64h + 32*(k&1) + l]
// (low nibble for k < 2, high nibble for k >= 2) and the high 2 bits from bits
// (2k, 2k+1) of qh[32h + l].
struct __attribute__((packed)) BlockQ6_K {
  static constexpr int kValues = kQK_K;
  uint8_t ql[kQK_K / 2];       // low 4 bits of each code
  uint8_t qh[kQK_K / 4];       // high 2 bits of each code
  int8_t scales[kQK_K / 16];   // per sub-block scale
  uint16_t d;                  // scale of the scales (f16)
};
static_assert(sizeof(BlockQ6_K) == 210);

// x = d * q, q a signed byte; bsums caches the sum of each 16 codes for dot products
// and is ignored when decoding. ggml uses it for activations, rarely in files.
struct __attribute__((packed)) BlockQ8_K {
  static constexpr int kValues = kQK_K;
  float d;                     // scale (f32, not f16)
  int8_t qs[kQK_K];            // codes
  int16_t bsums[kQK_K / 16];   // sum of qs per 16 codes
};
static_assert(sizeof(BlockQ8_K) == 292);

}  // namespace quantkit::ggml
