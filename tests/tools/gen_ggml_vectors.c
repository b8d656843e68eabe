// Generates the committed ggml test vectors in tests/data/ggml/ from llama.cpp's own
// quantizers and decoders (libggml-base from .peer/, see scripts/fetch-peer.sh), so
// tests/ggml_dequant_test.cpp can prove quantkit decodes every type exactly as llama.cpp.
// Not part of the CMake build; run tests/tools/gen_ggml_vectors.sh.
//
// File format (little-endian), one file per type, <name>.bin:
//   char[4] "QKTV" | u32 ggml type id | u32 n_values | u32 n_bytes
//   u8[n_bytes]   the quantized blocks as llama.cpp wrote them
//   f32[n_values] what llama.cpp decodes them to
//
// Usage: gen_ggml_vectors <output dir>
#define _GNU_SOURCE  // RTLD_DEFAULT
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"

// The values fed to the quantizers: 32 groups of 32, i.e. four 256-weight super-blocks.
// 32-weight types use the first super-block (8 blocks, one per group kind below); the
// K-quants use all four, each exercising a different super-block-wide situation.
enum { kGroup = 32, kGroups = 32, kMaxValues = kGroup * kGroups, kSmallTypeValues = 256 };

// Deterministic PRNG (splitmix64) so reruns reproduce the committed files byte for byte.
static uint64_t rng_state = 0x5157544b56454354ull;  // "QKTVECT"
static uint64_t next_u64(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static float uniform(void) { return (float)((next_u64() >> 40) * (1.0 / 16777216.0)); }  // [0,1)
static float normal(void) {  // Box-Muller, good enough for weight-like data
  float u1 = uniform(), u2 = uniform();
  if (u1 < 1e-7f) u1 = 1e-7f;
  return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

static void fill_group(float* x, int kind) {
  for (int i = 0; i < kGroup; ++i) {
    float v = normal();
    switch (kind) {
      case 0: x[i] = v; break;                                           // plain gaussian
      case 1: x[i] = 0.05f * v + (i == 7 ? 3.0f : i == 23 ? -2.5f : 0); break;  // outliers
      case 2: x[i] = 0.0f; break;                                         // all zero
      case 3: x[i] = -fabsf(v) - 0.01f; break;                            // negative only
      case 4: x[i] = fabsf(v) + 0.5f; break;                              // positive, offset
      case 5: x[i] = 1e-6f * v; break;                                    // tiny: f16 subnormal scales
      case 6: x[i] = 900.0f * v; break;                                   // large magnitude
      case 7: x[i] = (i % 5 == 0) ? 0.0f : 0.25f * v; break;              // sparse zeros
    }
  }
}

static void make_input(float* x) {
  // Super-block 0: one group of each kind.
  for (int g = 0; g < 8; ++g) fill_group(x + g * kGroup, g);
  // Super-block 1: gaussian with a few large outliers scattered across sub-blocks.
  for (int i = 256; i < 512; ++i) x[i] = 0.1f * normal() + (i % 37 == 0 ? 4.0f * normal() : 0.0f);
  // Super-block 2: negative only, so every affine min is the block's most negative value.
  for (int i = 512; i < 768; ++i) x[i] = -fabsf(normal()) * (1.0f + (float)(i % 64) / 16.0f);
  // Super-block 3: mostly zero: one all-zero half, then sparse small values.
  for (int i = 768; i < 1024; ++i) x[i] = (i < 896 || i % 3 != 0) ? 0.0f : 0.02f * normal();
}

// Functions that ggml-quants.h exports but .peer/include does not ship; looked up at run
// time so a ggml without them falls back (or fails) with a message instead of not linking.
typedef void (*row_quantizer)(const float* x, void* y, int64_t k);
typedef void (*row_decoder)(const void* x, float* y, int64_t k);

static void* find_symbol(const char* name) { return dlsym(RTLD_DEFAULT, name); }

// Q8_1 has no decoder in ggml (it is only an activation format for dot products). Its
// documented layout is {f16 d, f16 s, int8 qs[32]} with x = d * q, which is all we
// compute here; s = d * sum(q) is not needed to decode.
static void decode_q8_1_by_layout(const void* src, float* dst, int64_t n) {
  const uint8_t* p = (const uint8_t*)src;
  for (int64_t b = 0; b < n / 32; ++b, p += 36) {
    uint16_t d_bits;
    memcpy(&d_bits, p, 2);
    const float d = ggml_fp16_to_fp32(d_bits);
    for (int j = 0; j < 32; ++j) dst[b * 32 + j] = d * (float)(int8_t)p[4 + j];
  }
}

// Q8_K's documented layout is {f32 d, int8 qs[256], int16 bsums[16]} with x = d * q;
// used only if this ggml exports no dequantize_row_q8_K.
static void decode_q8_k_by_layout(const void* src, float* dst, int64_t n) {
  const uint8_t* p = (const uint8_t*)src;
  for (int64_t b = 0; b < n / 256; ++b, p += 292) {
    float d;
    memcpy(&d, p, 4);
    for (int j = 0; j < 256; ++j) dst[b * 256 + j] = d * (float)(int8_t)p[4 + j];
  }
}

static int write_vector(const char* dir, enum ggml_type type, const float* input) {
  const struct ggml_type_traits* tr = ggml_get_type_traits(type);
  const int64_t n = tr->blck_size == 256 ? kMaxValues : kSmallTypeValues;
  const size_t n_bytes = ggml_row_size(type, n);
  uint8_t* q = calloc(1, n_bytes);
  float* y = calloc((size_t)n, sizeof(float));
  if (!q || !y) return fprintf(stderr, "out of memory\n"), 1;

  // Quantize. ggml_quantize_chunk covers the file types; Q8_1 and Q8_K are activation
  // formats it rejects, so use their reference row quantizers.
  const char* how_encoded = "ggml_quantize_chunk";
  if (type == GGML_TYPE_Q8_1 || type == GGML_TYPE_Q8_K) {
    row_quantizer quantize = (row_quantizer)tr->from_float_ref;
    how_encoded = "type_traits.from_float_ref";
    if (!quantize && type == GGML_TYPE_Q8_K) {
      quantize = (row_quantizer)find_symbol("quantize_row_q8_K_ref");
      how_encoded = "quantize_row_q8_K_ref";
    }
    if (!quantize) return fprintf(stderr, "%s: this ggml has no quantizer\n", tr->type_name), 1;
    quantize(input, q, n);
  } else {
    const size_t written = ggml_quantize_chunk(type, input, q, 0, 1, n, NULL);
    if (written != n_bytes) return fprintf(stderr, "%s: wrote %zu of %zu bytes\n", tr->type_name, written, n_bytes), 1;
  }

  // Decode with llama.cpp's own decoder wherever it has one.
  row_decoder decode = (row_decoder)tr->to_float;
  const char* how_decoded = "type_traits.to_float";
  if (!decode && type == GGML_TYPE_Q8_K) {
    decode = (row_decoder)find_symbol("dequantize_row_q8_K");
    how_decoded = "dequantize_row_q8_K";
    if (!decode) {
      decode = decode_q8_k_by_layout;
      how_decoded = "d*q from the documented layout";
    }
  }
  if (!decode && type == GGML_TYPE_Q8_1) {
    decode = decode_q8_1_by_layout;
    how_decoded = "d*q from the documented layout";
  }
  if (!decode) return fprintf(stderr, "%s: this ggml has no decoder\n", tr->type_name), 1;
  decode(q, y, n);

  char path[4096];
  snprintf(path, sizeof path, "%s/%s.bin", dir, tr->type_name);
  FILE* f = fopen(path, "wb");
  if (!f) return perror(path), 1;
  const uint32_t header[3] = {(uint32_t)type, (uint32_t)n, (uint32_t)n_bytes};
  int ok = fwrite("QKTV", 1, 4, f) == 4 && fwrite(header, 4, 3, f) == 3 &&
           fwrite(q, 1, n_bytes, f) == n_bytes && fwrite(y, 4, (size_t)n, f) == (size_t)n;
  ok = (fclose(f) == 0) && ok;
  if (!ok) return fprintf(stderr, "%s: write failed\n", path), 1;
  printf("%-7s %5lld values %5zu bytes  encoded: %-28s decoded: %s\n", tr->type_name, (long long)n,
         n_bytes, how_encoded, how_decoded);
  free(q);
  free(y);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 2) return fprintf(stderr, "usage: %s <output dir>\n", argv[0]), 2;
  static float input[kMaxValues];
  make_input(input);
  static const enum ggml_type types[] = {
      GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q8_0,
      GGML_TYPE_Q8_1, GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K,
      GGML_TYPE_Q6_K, GGML_TYPE_Q8_K, GGML_TYPE_IQ4_NL,
  };
  for (size_t i = 0; i < sizeof types / sizeof types[0]; ++i)
    if (write_vector(argv[1], types[i], input)) return 1;
  ggml_quantize_free();
  return 0;
}
