// Generates the committed encoder test vectors in tests/data/ggml_enc/: inputs, an
// importance vector, and llama.cpp's own quantization of the inputs (libggml-base from
// .peer/, see scripts/fetch-peer.sh), with and without the importance as imatrix. The
// tests (tests/formats_ggml_test.cpp) hold quantkit's encoders to be no worse than these.
// Not part of the CMake build; run tests/tools/gen_ggml_enc_vectors.sh.
//
// Files (little-endian):
//   input.bin:   char[4] "QKEI" | u32 rows | u32 cols | f32 x[rows * cols] | f32 importance[cols]
//   <type>.bin:  char[4] "QKEQ" | u32 ggml type id | u32 rows | u32 cols | u32 row_bytes
//                | u8 plain[rows * row_bytes]    ggml_quantize_chunk(..., imatrix = NULL)
//                | u8 weighted[rows * row_bytes] ggml_quantize_chunk(..., imatrix = importance)
//
// Usage: gen_ggml_enc_vectors <output dir>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"

enum { kRows = 8, kCols = 512 };

// Deterministic PRNG (splitmix64) so reruns reproduce the committed files byte for byte.
static uint64_t rng_state = 0x51454e4356454354ull;
static uint64_t next_u64(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double uniform(void) { return (double)(next_u64() >> 11) * (1.0 / 9007199254740992.0); }  // [0,1)
static float normal(void) {  // Box-Muller in double, so the inputs barely depend on libm
  double u1 = uniform(), u2 = uniform();
  if (u1 < 1e-12) u1 = 1e-12;
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// A 32-weight block of one of the awkward kinds encoders must survive.
static void special_block(float* x, int kind) {
  for (int i = 0; i < 32; ++i) {
    const float v = normal();
    switch (kind % 8) {
      case 0: x[i] = 0.0f; break;                                   // all zero
      case 1: x[i] = 0.375f; break;                                 // constant positive
      case 2: x[i] = -1.25f; break;                                 // constant negative
      case 3: x[i] = 1e-6f * v; break;                              // tiny: subnormal fp16 scales
      case 4: x[i] = 900.0f * v; break;                             // large magnitude
      case 5: x[i] = fabsf(v) + 0.5f; break;                        // positive, offset
      case 6: x[i] = -fabsf(v); break;                              // negative only
      case 7: x[i] = (i % 5 == 0) ? 0.0f : 0.25f * v; break;        // sparse zeros
    }
  }
}

static void make_input(float* x, float* importance) {
  for (int r = 0; r < kRows; ++r) {
    float* row = x + r * kCols;
    for (int c = 0; c < kCols; ++c) {
      const float v = normal();
      switch (r) {
        case 0: row[c] = v; break;                                           // N(0,1)
        case 1: row[c] = 0.02f * v * expf(0.7f * normal()); break;           // heavy tails (scale mixture)
        case 2: row[c] = 0.05f * v * (c % 61 == 0 ? 20.0f : 1.0f); break;    // outlier input channels
        case 3: row[c] = (float)(2.0 * uniform() - 1.0); break;              // uniform
        case 4: row[c] = 1e-3f * v; break;                                   // small row scale
        case 5: row[c] = c < kCols / 2 ? 0.0f : v; break;                    // half zero
        case 6: row[c] = 0.1f * v + (c % 37 == 0 ? 4.0f * normal() : 0.0f); break;  // sparse outliers
        case 7: break;                                                       // special blocks below
      }
    }
    if (r == 7)
      for (int b = 0; b < kCols / 32; ++b) special_block(row + 32 * b, b);
  }
  // Importance: log-normal spread, a few dominant columns and a few ignored ones.
  for (int c = 0; c < kCols; ++c) {
    importance[c] = expf(1.5f * normal());
    if (c % 97 == 3) importance[c] *= 100.0f;
    if (c % 89 == 5) importance[c] = 0.0f;
  }
}

static int write_all(FILE* f, const void* p, size_t n) { return fwrite(p, 1, n, f) == n; }

static int write_input(const char* dir, const float* x, const float* importance) {
  char path[4096];
  snprintf(path, sizeof path, "%s/input.bin", dir);
  FILE* f = fopen(path, "wb");
  if (!f) return perror(path), 1;
  const uint32_t header[2] = {kRows, kCols};
  int ok = write_all(f, "QKEI", 4) && write_all(f, header, sizeof header) &&
           write_all(f, x, sizeof(float) * kRows * kCols) && write_all(f, importance, sizeof(float) * kCols);
  ok = (fclose(f) == 0) && ok;
  return ok ? 0 : (fprintf(stderr, "%s: write failed\n", path), 1);
}

static int write_type(const char* dir, enum ggml_type type, const float* x, const float* importance) {
  const size_t row_bytes = ggml_row_size(type, kCols), n = row_bytes * kRows;
  uint8_t* plain = calloc(1, n);
  uint8_t* weighted = calloc(1, n);
  if (!plain || !weighted) return fprintf(stderr, "out of memory\n"), 1;
  if (ggml_quantize_chunk(type, x, plain, 0, kRows, kCols, NULL) != n ||
      ggml_quantize_chunk(type, x, weighted, 0, kRows, kCols, importance) != n)
    return fprintf(stderr, "%s: unexpected size\n", ggml_type_name(type)), 1;

  char path[4096];
  snprintf(path, sizeof path, "%s/%s.bin", dir, ggml_type_name(type));
  FILE* f = fopen(path, "wb");
  if (!f) return perror(path), 1;
  const uint32_t header[4] = {(uint32_t)type, kRows, kCols, (uint32_t)row_bytes};
  int ok = write_all(f, "QKEQ", 4) && write_all(f, header, sizeof header) && write_all(f, plain, n) &&
           write_all(f, weighted, n);
  ok = (fclose(f) == 0) && ok;
  if (!ok) return fprintf(stderr, "%s: write failed\n", path), 1;
  printf("%-7s %6zu bytes per quantization\n", ggml_type_name(type), n);
  free(plain);
  free(weighted);
  return 0;
}

int main(int argc, char** argv) {
  if (argc != 2) return fprintf(stderr, "usage: %s <output dir>\n", argv[0]), 2;
  static float x[kRows * kCols], importance[kCols];
  make_input(x, importance);
  if (write_input(argv[1], x, importance)) return 1;
  static const enum ggml_type types[] = {
      GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q2_K,
      GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K, GGML_TYPE_IQ4_NL,
  };
  for (size_t i = 0; i < sizeof types / sizeof types[0]; ++i)
    if (write_type(argv[1], types[i], x, importance)) return 1;
  ggml_quantize_free();
  return 0;
}
