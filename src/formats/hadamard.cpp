// Randomized Hadamard transform (RHT) incoherence processing, as in QuIP# / QTIP:
// "rht:<inner spec>" (e.g. "rht:int4:g128", "rht:e8:b2") works in front of any format of
// the registry.
//
// W' = R W C^T with R (rows) and C (columns) random orthogonal transforms built from
// random signs and fast Walsh-Hadamard transforms; W' is quantized by the inner format and
// dequantization inverts the transforms: W ~ R^T Q' C. Outliers are spread over whole
// rows and columns, so W' is close to i.i.d. Gaussian whatever W looks like.
//
// A transform of dimension n: P = the largest power of two <= n. When n = P it is H S (S a
// random diagonal of signs, H the orthonormal Hadamard matrix of size P, applied by the
// fast transform in n log n). Otherwise it is two overlapping Hadamard blocks,
// H_b S_b H_a S_a with H_a acting on elements [0, P) and H_b on [n - P, n): both are
// orthogonal, together they cover every element and spread any element over at least P >
// n/2 outputs, with no padding (so the inner format stores exactly rows x cols weights).
// The 64-bit seed of the signs is stored (counted): bits = 64 + inner bits. A row of W mixes
// every row of Q' (R^T is dense), so rows cannot be decoded alone (dequantize_rows: false);
// the runtime instead multiplies y = R^T Q' (C x) with the inner format's kernels (rotated()).
//
// Importance (one value d_j per input column) becomes the matrix C diag(d) C^T for W', of
// which the inner format can only use a diagonal: we pass diag(C diag(d) C^T), which is
// exact for n = P (every column gets the mean of d) and, for two blocks, its expectation
// over the random signs S_b (the mean of d over the first block, then over the second).
// The importance thus only still acts through its block means.
#include <cmath>
#include <cstring>

#include "formats/common.h"
#include "formats/lattice_util.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

constexpr int kSeedBits = 64;

// One contiguous vector (stride 1, width 1): for h >= 8 the butterflies of a block are
// contiguous runs the compiler vectorizes. Each element sees the same operations in the
// same order as in the strided form, so the results are bit-identical.
void fwht_vector(float* data, int64_t n) {
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h) {
      float* __restrict a = data + i;
      float* __restrict b = data + i + h;
      for (int64_t j = 0; j < h; ++j) {
        const float x = a[j], y = b[j];
        a[j] = x + y;
        b[j] = x - y;
      }
    }
  const float norm = float(1.0 / std::sqrt(double(n)));
  for (int64_t i = 0; i < n; ++i) data[i] *= norm;
}

// In place, orthonormal Walsh-Hadamard transform of n (a power of two) elements; element i
// is the `width` contiguous floats at data + i * stride.
void fwht(float* data, int64_t n, int64_t stride, int64_t width) {
  if (stride == 1 && width == 1) return fwht_vector(data, n);
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        float* a = data + j * stride;
        float* b = data + (j + h) * stride;
        for (int64_t c = 0; c < width; ++c) {
          const float x = a[c], y = b[c];
          a[c] = x + y;
          b[c] = x - y;
        }
      }
  const float norm = float(1.0 / std::sqrt(double(n)));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < width; ++c) data[i * stride + c] *= norm;
}

void apply_signs(float* data, const std::vector<float>& signs, int64_t stride, int64_t width) {
  for (size_t i = 0; i < signs.size(); ++i)
    for (int64_t c = 0; c < width; ++c) data[int64_t(i) * stride + c] *= signs[i];
}

// A random orthogonal transform of dimension n (see the file comment).
class RandomHadamard {
 public:
  RandomHadamard(int64_t n, lattice::SplitMix64& rng) : n_(n), p_(1) {
    while (p_ * 2 <= n_) p_ *= 2;
    first_ = random_signs(n_, rng);
    if (p_ < n_) second_ = random_signs(n_, rng);
  }

  // Elements i < n at data + i * stride, `width` floats each.
  void forward(float* data, int64_t stride, int64_t width) const {
    apply_signs(data, first_, stride, width);
    fwht(data, p_, stride, width);
    if (p_ == n_) return;
    apply_signs(data, second_, stride, width);
    fwht(data + (n_ - p_) * stride, p_, stride, width);
  }

  void inverse(float* data, int64_t stride, int64_t width) const {
    if (p_ < n_) {
      fwht(data + (n_ - p_) * stride, p_, stride, width);  // orthonormal H is its own inverse
      apply_signs(data, second_, stride, width);
    }
    fwht(data, p_, stride, width);
    apply_signs(data, first_, stride, width);
  }

  // diag(C diag(d) C^T) (its expectation over the second signs for two blocks).
  std::vector<float> transformed_importance(const float* d) const {
    std::vector<float> out(d, d + n_);
    average(out, 0);
    if (p_ < n_) average(out, n_ - p_);
    return out;
  }

 private:
  static std::vector<float> random_signs(int64_t n, lattice::SplitMix64& rng) {
    std::vector<float> s(static_cast<size_t>(n));
    uint64_t bits = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (i % 64 == 0) bits = rng.next();
      s[size_t(i)] = (bits >> (i % 64)) & 1 ? -1.0f : 1.0f;
    }
    return s;
  }

  void average(std::vector<float>& d, int64_t from) const {
    double sum = 0;
    for (int64_t i = from; i < from + p_; ++i) sum += d[size_t(i)];
    for (int64_t i = from; i < from + p_; ++i) d[size_t(i)] = float(sum / double(p_));
  }

  int64_t n_, p_;
  std::vector<float> first_, second_;
};

// The row and column transforms of a rows x cols matrix, drawn from one seed.
struct MatrixTransform {
  RandomHadamard rows, cols;

  static MatrixTransform from_seed(uint64_t seed, int64_t r, int64_t c) {
    lattice::SplitMix64 rng{seed};
    RandomHadamard col_t(c, rng);
    RandomHadamard row_t(r, rng);
    return {std::move(row_t), std::move(col_t)};
  }

  // W' = R W C^T, in place on a row-major matrix.
  void forward(float* w, int64_t r, int64_t c) const {
    global_pool().parallel_for(r, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) cols.forward(w + i * c, 1, 1);
    });
    on_column_slabs(c, [&](int64_t c0, int64_t width) { rows.forward(w + c0, c, width); });
  }

  // W = R^T W' C.
  void inverse(float* w, int64_t r, int64_t c) const {
    on_column_slabs(c, [&](int64_t c0, int64_t width) { rows.inverse(w + c0, c, width); });
    global_pool().parallel_for(r, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) cols.inverse(w + i * c, 1, 1);
    });
  }

 private:
  // The row transform mixes whole rows: run it on slabs of 64 columns, in parallel.
  template <typename Fn>
  static void on_column_slabs(int64_t c, Fn&& fn) {
    constexpr int64_t kSlab = 64;
    global_pool().parallel_for((c + kSlab - 1) / kSlab, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) fn(s * kSlab, std::min(kSlab, c - s * kSlab));
    });
  }
};

// Deterministic per shape, so that the same matrix always gives the same result; any seed
// decodes since it is stored.
uint64_t seed_for(int64_t rows, int64_t cols) {
  lattice::SplitMix64 rng{0x5248545365656421ull ^ (uint64_t(rows) << 32) ^ uint64_t(cols)};
  return rng.next();
}

// The runtime's view of a stored matrix: x <- C x before the inner format's product,
// y <- R^T y after it. Tokens are independent, so they are split across threads.
class HadamardRotation : public WeightRotation {
 public:
  explicit HadamardRotation(MatrixTransform t, int64_t rows, int64_t cols)
      : t_(std::move(t)), rows_(rows), cols_(cols) {}

  void rotate_inputs(float* x, int64_t n) const override {
    for_tokens(n, [&](int64_t i) { t_.cols.forward(x + i * cols_, 1, 1); });
  }
  void unrotate_outputs(float* y, int64_t n) const override {
    for_tokens(n, [&](int64_t i) { t_.rows.inverse(y + i * rows_, 1, 1); });
  }

 private:
  template <typename Fn>
  static void for_tokens(int64_t n, Fn&& fn) {
    if (n == 1) return fn(0);  // a few microseconds: not worth waking the pool
    global_pool().parallel_for(n, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) fn(i);
    });
  }

  MatrixTransform t_;
  int64_t rows_, cols_;
};

class RhtFormat : public Format {
 public:
  explicit RhtFormat(std::unique_ptr<Format> inner) : inner_(std::move(inner)) {}

  std::string spec() const override { return "rht:" + inner_->spec(); }
  std::string describe() const override {
    return "random Hadamard transforms of rows and columns (64-bit seed), then " + inner_->describe();
  }
  std::string check_shape(int64_t rows, int64_t cols) const override { return inner_->check_shape(rows, cols); }
  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return kSeedBits + inner_->storage_bits(rows, cols);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    if (auto why = check_shape(rows, cols); !why.empty()) throw Error(why);
    const uint64_t seed = seed_for(rows, cols);
    const MatrixTransform t = MatrixTransform::from_seed(seed, rows, cols);
    std::vector<float> rotated(w, w + rows * cols);
    t.forward(rotated.data(), rows, cols);
    std::vector<float> imp_rotated;
    if (imp) imp_rotated = t.cols.transformed_importance(imp);
    const Packed inner = inner_->quantize(rotated.data(), rows, cols, imp ? imp_rotated.data() : nullptr);
    BitWriter bw;
    bw.put(seed, kSeedBits);
    append_bits(bw, inner);
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  void dequantize(const Packed& p, float* out) const override {
    const Packed inner = inner_packed(p);
    inner_->dequantize(inner, out);
    MatrixTransform::from_seed(stored_seed(p), p.rows, p.cols).inverse(out, p.rows, p.cols);
  }

  std::optional<RotatedPacked> rotated(const Packed& p) const override {
    RotatedPacked r;
    r.inner_packed = inner_packed(p);
    r.inner = make_format(inner_->spec());
    r.rotation = std::make_unique<HadamardRotation>(MatrixTransform::from_seed(stored_seed(p), p.rows, p.cols),
                                                    p.rows, p.cols);
    return r;
  }

  std::vector<SymbolStream> symbols(const Packed& p) const override { return inner_->symbols(inner_packed(p)); }

 private:
  static void append_bits(BitWriter& bw, const Packed& p) {
    uint64_t done = 0;
    for (; done + 64 <= p.bits; done += 64) {
      uint64_t word;
      std::memcpy(&word, &p.bytes[size_t(done / 8)], 8);  // LSB-first bytes: little-endian word
      bw.put(word, 64);
    }
    for (; done < p.bits; done += 8) bw.put(p.bytes[size_t(done / 8)], int(std::min<uint64_t>(8, p.bits - done)));
  }

  uint64_t stored_seed(const Packed& p) const {
    if (p.bits != storage_bits(p.rows, p.cols))
      fail("packed {} holds {} bits, expected {}", spec(), p.bits, storage_bits(p.rows, p.cols));
    BitReader br(p);
    return br.get(kSeedBits);
  }

  // The inner format's bits follow the byte-aligned seed.
  Packed inner_packed(const Packed& p) const {
    stored_seed(p);  // checks the size
    Packed inner;
    inner.rows = p.rows;
    inner.cols = p.cols;
    inner.bits = p.bits - kSeedBits;
    inner.bytes.assign(p.bytes.begin() + kSeedBits / 8, p.bytes.end());
    return inner;
  }

  std::unique_ptr<Format> inner_;
};

std::unique_ptr<Format> parse_rht(const std::vector<std::string>& tokens) {
  if (tokens[0] != "rht") return nullptr;
  if (tokens.size() < 2) throw Error("the inner format is required: rht:<spec>");
  if (tokens[1] == "rht") throw Error("rht cannot be nested");
  std::string inner = tokens[1];
  for (size_t i = 2; i < tokens.size(); ++i) inner.append(":").append(tokens[i]);
  return std::make_unique<RhtFormat>(make_format(inner));
}

Registrar reg{FormatFamily{"rht", "rht:<spec> (any other format's spec)",
                           "randomized Hadamard transforms of rows and columns (incoherence), then the inner format",
                           {"rht:e8:b2:row", "rht:tcq:b2", "rht:int4:g128", "rht:pvq:d32:k20"},
                           parse_rht}};

}  // namespace
}  // namespace quantkit::formats
