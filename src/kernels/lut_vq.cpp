#include "kernels/lut_vq.h"

#include <algorithm>
#include <array>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "formats/vector_quant.h"
#include "kernels/avx512_state.h"
#include "quantkit/thread_pool.h"

namespace quantkit::kernels {
namespace {

bool has_avx512() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
#else
  return false;
#endif
}

// Tokens whose look-ups share one pass over a row's indices.
constexpr int kTokensPerPass = 4;

// out[c] = sum_l xs[l] bt[l * k + c] for c < k: one codeword table.
void table_scalar(const float* xs, const float* bt, int64_t sd, int64_t k, float* out) {
  for (int64_t c = 0; c < k; ++c) out[c] = xs[0] * bt[c];
  for (int64_t l = 1; l < sd; ++l)
    for (int64_t c = 0; c < k; ++c) out[c] += xs[l] * bt[l * k + c];
}

// One row against nt <= kTokensPerPass tables: sums[t] = sum_i tab[t][i * k + idx[i]].
template <typename Idx>
void gather_scalar(const Idx* idx, int64_t codes, int64_t k, const float* const* tab, int nt, float* sums) {
  for (int t = 0; t < nt; ++t) {
    float s = 0;
    for (int64_t i = 0; i < codes; ++i) s += tab[t][i * k + idx[i]];
    sums[t] = s;
  }
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) void table_avx512(const float* xs, const float* bt, int64_t sd, int64_t k,
                                                     float* out) {
  for (int64_t c = 0; c < k; c += 16) {
    const __mmask16 m = k - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (k - c)) - 1);
    __m512 acc = _mm512_mul_ps(_mm512_set1_ps(xs[0]), _mm512_maskz_loadu_ps(m, bt + c));
    for (int64_t l = 1; l < sd; ++l)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(xs[l]), _mm512_maskz_loadu_ps(m, bt + l * k + c), acc);
    _mm512_mask_storeu_ps(out + c, m, acc);
  }
}

__attribute__((target("avx512f"))) inline __m512i load16(const uint8_t* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
__attribute__((target("avx512f"))) inline __m512i load16(const uint16_t* p) {
  return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// 16 codes per step: their table offsets i * k + idx[i] computed once, gathered per token.
// Offsets fit int32: a table holds at most kLutTableBytes / 4 floats.
template <typename Idx>
__attribute__((target("avx512f"))) void gather_avx512(const Idx* idx, int64_t codes, int64_t k,
                                                      const float* const* tab, int nt, float* sums) {
  __m512 acc[kTokensPerPass];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const __m512i kv = _mm512_set1_epi32(int(k));
  __m512i base = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), kv);
  const __m512i step = _mm512_set1_epi32(int(16 * k));
  int64_t i = 0;
  for (; i + 16 <= codes; i += 16) {
    const __m512i off = _mm512_add_epi32(load16(idx + i), base);
    base = _mm512_add_epi32(base, step);
    for (int t = 0; t < nt; ++t) acc[t] = _mm512_add_ps(acc[t], _mm512_i32gather_ps(off, tab[t], 4));
  }
  for (int t = 0; t < nt; ++t) {
    float s = _mm512_reduce_add_ps(acc[t]);
    for (int64_t j = i; j < codes; ++j) s += tab[t][j * k + idx[j]];
    sums[t] = s;
  }
}

// An R x T block of dot products of length cols, 16 columns per step.
template <int R, int T>
__attribute__((target("avx512f"))) void dot_block_avx512(const float* w, int64_t ldw, const float* x, int64_t ldx,
                                                         int64_t cols, float* y, int64_t ldy) {
  __m512 acc[R][T];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  for (int64_t c = 0; c < cols; c += 16) {
    const __mmask16 m = cols - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (cols - c)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_ps(m, w + r * ldw + c);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + c);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

using DotBlock = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t);

template <int R, int... T>
constexpr std::array<DotBlock, sizeof...(T)> dot_row(std::integer_sequence<int, T...>) {
  return {dot_block_avx512<R, T + 1>...};
}
constexpr std::array<std::array<DotBlock, 4>, 4> kDotBlocks = {
    dot_row<1>(std::make_integer_sequence<int, 4>{}), dot_row<2>(std::make_integer_sequence<int, 4>{}),
    dot_row<3>(std::make_integer_sequence<int, 4>{}), dot_row<4>(std::make_integer_sequence<int, 4>{})};
#endif

void table_one(const float* xs, const float* bt, int64_t sd, int64_t k, float* out) {
#if defined(__x86_64__)
  if (has_avx512()) return table_avx512(xs, bt, sd, k, out);
#endif
  table_scalar(xs, bt, sd, k, out);
}

template <typename Idx>
void gather_one(const Idx* idx, int64_t codes, int64_t k, const float* const* tab, int nt, float* sums) {
#if defined(__x86_64__)
  if (has_avx512()) return gather_avx512(idx, codes, k, tab, nt, sums);
#endif
  gather_scalar(idx, codes, k, tab, nt, sums);
}

// One row of codewords, padded to whole vectors, per thread.
std::vector<float>& decode_scratch() {
  thread_local std::vector<float> v;
  return v;
}

}  // namespace

std::optional<CodebookMatrix> CodebookMatrix::from_packed(const Format& f, const Packed& p, int64_t cols) {
  std::optional<formats::CodebookUnpacked> u = formats::unpack_codebook(f, p);
  if (!u) return std::nullopt;
  CodebookMatrix m;
  m.rows_ = u->rows;
  m.cols_ = std::min(cols, u->cols);
  m.dim_ = u->dim;
  m.groups_ = u->groups;
  m.stages_ = u->stages;
  m.k_ = u->k;
  m.sub_dim_ = u->sub_dim;
  m.vectors_ = u->vectors_per_row;
  m.codes_per_row_ = m.vectors_ * m.groups_ * m.stages_;
  m.block_rows_ = u->blocks.empty() ? 1 : u->blocks[0].rows;
  m.scale_.resize(static_cast<size_t>(m.rows_));
  const size_t n_idx = size_t(m.rows_ * m.codes_per_row_);
  const bool narrow = m.k_ <= 256;
  if (narrow)
    m.idx8_.reserve(n_idx);
  else
    m.idx16_.reserve(n_idx);
  const int64_t books = m.groups_ * m.stages_, book_size = m.k_ * m.sub_dim_;
  for (formats::CodebookUnpacked::Block& ub : u->blocks) {
    for (int64_t r = 0; r < ub.rows; ++r)
      m.scale_[size_t(ub.row0 + r)] = ub.scale * (ub.row_scales.empty() ? 1.0f : ub.row_scales[size_t(r)]);
    // Block-local [row][slot] order, blocks in row order: the global [row][slot] order.
    for (uint32_t i : ub.indices) {
      if (narrow)
        m.idx8_.push_back(uint8_t(i));
      else
        m.idx16_.push_back(uint16_t(i));
    }
    Block b;
    b.row0 = ub.row0;
    b.rows = ub.rows;
    b.books.resize(size_t(books * book_size));
    b.books_t.resize(b.books.size());
    for (int64_t cb = 0; cb < books; ++cb)
      for (int64_t c = 0; c < m.k_; ++c)
        for (int64_t l = 0; l < m.sub_dim_; ++l) {
          const float v = ub.codebooks[size_t(cb)][size_t(c * m.sub_dim_ + l)];
          b.books[size_t(cb * book_size + c * m.sub_dim_ + l)] = v;
          b.books_t[size_t(cb * book_size + l * m.k_ + c)] = v;
        }
    m.blocks_.push_back(std::move(b));
  }
  // A table costs K * sub_dim multiply-adds per code slot (vectorised); look-ups save
  // sub_dim per row: rows sharing a codebook must outnumber K / 16 for the table to pay.
  m.lut_ = m.k_ <= kLutMaxCodewords && m.table_bytes() <= kLutTableBytes && m.block_rows_ * 16 >= m.k_;
  return m;
}

size_t CodebookMatrix::bytes() const {
  size_t b = idx8_.size() + idx16_.size() * 2 + scale_.size() * 4;
  for (const Block& blk : blocks_) b += blk.books.size() * 4;  // books_t is a cache-friendly copy
  return b;
}

void CodebookMatrix::build_tables(const Block& b, const float* xpad, int64_t nt, float* tables, int64_t j0,
                                  int64_t j1) const {
  const int64_t books = groups_ * stages_, tsize = codes_per_row_ * k_, padded = vectors_ * dim_;
  for (int64_t t = 0; t < nt; ++t)
    for (int64_t j = j0; j < j1; ++j)
      for (int64_t g = 0; g < groups_; ++g)
        for (int64_t m = 0; m < stages_; ++m) {
          const int64_t cb = g * stages_ + m;
          table_one(xpad + t * padded + j * dim_ + g * sub_dim_, b.books_t.data() + cb * k_ * sub_dim_, sub_dim_, k_,
                    tables + t * tsize + (j * books + cb) * k_);
        }
  if (has_avx512()) clean_avx512_upper_state();
}

void CodebookMatrix::gather_rows(const float* tables, int64_t nt, int64_t r0, int64_t r1, float* y,
                                 int64_t ldy) const {
  const int64_t tsize = codes_per_row_ * k_;
  for (int64_t t0 = 0; t0 < nt; t0 += kTokensPerPass) {
    const int pass = int(std::min<int64_t>(kTokensPerPass, nt - t0));
    const float* tab[kTokensPerPass];
    for (int t = 0; t < pass; ++t) tab[t] = tables + (t0 + t) * tsize;
    float sums[kTokensPerPass];
    for (int64_t r = r0; r < r1; ++r) {
      const size_t at = size_t(r * codes_per_row_);
      if (idx8_.empty())
        gather_one(idx16_.data() + at, codes_per_row_, k_, tab, pass, sums);
      else
        gather_one(idx8_.data() + at, codes_per_row_, k_, tab, pass, sums);
      for (int t = 0; t < pass; ++t) y[(t0 + t) * ldy + r] = scale_[size_t(r)] * sums[t];
    }
  }
  if (has_avx512()) clean_avx512_upper_state();
}

// Tokens go in batches whose tables fit the budget together; per batch and codebook block,
// one parallel pass builds the tables (split by code slot), one multiplies (split by row).
void CodebookMatrix::matmul(const float* x, int64_t n, float* y) const {
  const int64_t tsize = codes_per_row_ * k_, padded = vectors_ * dim_;
  const int64_t batch = std::clamp<int64_t>(int64_t(kLutTableBytes / table_bytes()), 1, std::max<int64_t>(n, 1));
  thread_local std::vector<float> xpad, tables;  // grow once per calling thread
  xpad.assign(size_t(batch * padded), 0.0f);
  tables.resize(size_t(batch * tsize));
  // The workers see the calling thread's buffers through these pointers (a thread_local
  // named inside the lambdas would be each worker's own).
  float* xp = xpad.data();
  float* tab = tables.data();
  ThreadPool& pool = global_pool();
  for (int64_t t0 = 0; t0 < n; t0 += batch) {
    const int64_t nt = std::min(batch, n - t0);
    for (int64_t t = 0; t < nt; ++t) std::copy(x + (t0 + t) * cols_, x + (t0 + t + 1) * cols_, xp + t * padded);
    for (const Block& b : blocks_) {
      pool.parallel_for(vectors_, [&](int64_t j0, int64_t j1) { build_tables(b, xp, nt, tab, j0, j1); });
      pool.parallel_for(b.rows, [&](int64_t r0, int64_t r1) {
        gather_rows(tab, nt, b.row0 + r0, b.row0 + r1, y + t0 * rows_, rows_);
      });
    }
  }
}

void CodebookMatrix::decode_rows(int64_t r0, int64_t nr, float* out) const {
  if (idx8_.empty())
    decode_rows_as(idx16_.data(), r0, nr, out);
  else
    decode_rows_as(idx8_.data(), r0, nr, out);
}

// Stages summed from zero in order, then scaled: the bits Format::dequantize gives.
template <typename Idx>
void CodebookMatrix::decode_rows_as(const Idx* idx, int64_t r0, int64_t nr, float* out) const {
  std::vector<float>& v = decode_scratch();
  v.resize(size_t(vectors_ * dim_));
  for (int64_t rr = 0; rr < nr; ++rr) {
    const int64_t r = r0 + rr;
    const float* books = block_of(r).books.data();
    const Idx* code = idx + r * codes_per_row_;
    std::fill(v.begin(), v.end(), 0.0f);
    for (int64_t s = 0; s < vectors_ * groups_; ++s) {  // sub-vector s: columns [s * sub_dim, ...)
      float* o = v.data() + s * sub_dim_;
      const int64_t g = s % groups_;
      for (int64_t m = 0; m < stages_; ++m) {
        const float* cw = books + ((g * stages_ + m) * k_ + code[s * stages_ + m]) * sub_dim_;
        for (int64_t l = 0; l < sub_dim_; ++l) o[l] += cw[l];
      }
    }
    const float sc = scale_[size_t(r)];
    float* o = out + rr * cols_;
    for (int64_t c = 0; c < cols_; ++c) o[c] = v[size_t(c)] * sc;
  }
}

void tile_dot(const float* w, int64_t nr, int64_t ldw, const float* x, int64_t n, int64_t ldx, int64_t cols, float* y,
              int64_t ldy) {
#if defined(__x86_64__)
  if (has_avx512()) {
    for (int64_t t = 0; t < n; t += 4)
      for (int64_t r = 0; r < nr; r += 4) {
        const int64_t R = std::min<int64_t>(4, nr - r), T = std::min<int64_t>(4, n - t);
        kDotBlocks[size_t(R - 1)][size_t(T - 1)](w + r * ldw, ldw, x + t * ldx, ldx, cols, y + t * ldy + r, ldy);
      }
    clean_avx512_upper_state();
    return;
  }
#endif
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = 0; r < nr; ++r) {
      const float* wr = w + r * ldw;
      const float* xt = x + t * ldx;
      float acc = 0.0f;
      for (int64_t c = 0; c < cols; ++c) acc += wr[c] * xt[c];
      y[t * ldy + r] = acc;
    }
}

}  // namespace quantkit::kernels
