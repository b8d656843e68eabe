// Vector-codebook formats.
//
// A row of W is cut into vectors of d consecutive inputs (the last one zero-padded when d
// does not divide cols; its padding is stored and counted like any coordinate but carries
// no weight in the fit, and the decoder drops it).
//
//  vq:d<D>:k<K>[:r<R>][:rs][:i<N>]
//      one codebook of K codewords of D dims (k-means); each vector stores its index.
//  rvq:d<D>:<M>x<K>[:r<R>][:rs][:i<N>]
//      residual VQ: M codebooks, stage m quantizes what stages < m left; the decoder sums
//      the M codewords.
//  grvq:d<D>:g<G>:<M>x<K>[:r<R>][:rs][:i<N>]
//      group-residual VQ (HiFi-Codec): the D dims are split into G sub-vectors of D/G
//      dims, each quantized by its own M-stage RVQ.
//  Options: r<R> one set of codebooks per R rows (default: per tensor); rs a fp16 scale per
//  row dividing the row before clustering (rows of different norms share codewords);
//  i<N> k-means Lloyd iterations (default 20, or 8 when K > 4096).
//
//  Layout per codebook block (the R rows, or the tensor):
//    fp32 block scale T = max|w| (codewords are stored relative to it, so fp16 holds them
//    whatever the magnitude of the weights); the G*M codebooks (group-major, then stage)
//    as K * D/G fp16 values each; with rs, one fp16 row scale per row (relative to T);
//    then per row, per vector, per group, per stage: a ceil(log2 K)-bit index.
//    w = T * s_row * sum_m codebook[group][m][index].
//  bits = blocks * (32 + G*M*K*(D/G)*16) + rows*16 [rs] + rows*ceil(cols/D)*G*M*ceil(log2 K)
//  e.g. vq:d4:k256 on 4096x4096: 8/4 + (256*4*16 + 32)/(4096*4096) bits/weight.
//
//  fsq:l<L1>x<L2>x...[:g<G>|:row|:tensor]
//      finite scalar quantization (Mentzer et al. 2023) for post-training use: a vector of
//      d = number of listed levels; coordinate j takes one of L_j values evenly spaced on
//      [-s, s] (no tanh: values beyond the scale s clip to it), and the vector stores its
//      mixed-radix code sum_j q_j * prod_{i<j} L_i in ceil(log2 prod L) bits (a shorter
//      last vector: ceil(log2 of the product of its levels)). The codebook is implicit.
//      Scales: a fp32 tensor scale T = max|w| and a fp16 scale per group of G inputs (or
//      row) relative to T, chosen by a (weighted) clipping search; :tensor keeps only one
//      fp32 scale. Default grouping g128, not written in the spec.
//  bits = 32 + groups*16 [not tensor] + rows * (full vectors * ceil(log2 prod L) + tail)
//
// Importance (per input column) weights every fit: k-means runs with per-coordinate
// weights (see formats/kmeans.h for why scaling the space cannot replace that when one
// codebook serves all column positions), row scales are refit by weighted least squares,
// and FSQ scales minimise the weighted error.
#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <numeric>
#include <optional>

#include "formats/vector_quant.h"

#include "formats/common.h"
#include "formats/kmeans.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

// ceil(log2(count)): bits of an index into `count` values (0 for count <= 1).
int bits_for(uint64_t count) {
  int b = 0;
  while (b < 64 && (uint64_t(1) << b) < count) ++b;
  return b;
}

float round_f16(float v) { return f16_to_f32(f32_to_f16(v)); }

// Digits without a leading zero (one spelling per number), at most 9 of them.
std::optional<int64_t> parse_number(const std::string& s) {
  if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  if (s.size() > 1 && s[0] == '0') return std::nullopt;
  return std::stoll(s);
}

// "8x5x5" -> {8, 5, 5}; nullopt unless every field is a number.
std::optional<std::vector<int64_t>> parse_product(const std::string& s) {
  std::vector<int64_t> out;
  size_t start = 0;
  for (;;) {
    const size_t x = s.find('x', start);
    auto v = parse_number(s.substr(start, x == std::string::npos ? std::string::npos : x - start));
    if (!v) return std::nullopt;
    out.push_back(*v);
    if (x == std::string::npos) return out;
    start = x + 1;
  }
}

// Removes from tokens[1..] the first token accepted by `match` and returns what it parsed.
template <typename T, typename Match>
std::optional<T> take_token(std::vector<std::string>& tokens, Match match) {
  for (size_t i = 1; i < tokens.size(); ++i)
    if (std::optional<T> v = match(tokens[i])) {
      tokens.erase(tokens.begin() + std::ptrdiff_t(i));
      return v;
    }
  return std::nullopt;
}

void check_range(const char* what, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) fail("{} {} is out of range [{}, {}]", what, v, lo, hi);
}

// =========================================================================================
// Codebook formats: vq, rvq, grvq (vq is one group of one stage).
// =========================================================================================

struct CodebookParams {
  std::string family;             // "vq", "rvq" or "grvq"
  int64_t dim = 4;                // D: inputs per vector
  int64_t groups = 1;             // G: sub-vectors per vector, each its own residual VQ
  int64_t stages = 1;             // M: residual stages
  int64_t k = 256;                // codewords per codebook
  int64_t rows_per_codebook = 0;  // R (0: one set of codebooks for the tensor)
  bool row_scale = false;
  int iterations = 0;  // Lloyd iterations (0: default)

  int64_t sub_dim() const { return dim / groups; }
  int index_bits() const { return bits_for(uint64_t(k)); }
  int64_t codes_per_vector() const { return groups * stages; }
  int64_t vectors_per_row(int64_t cols) const { return (cols + dim - 1) / dim; }
  int64_t block_rows(int64_t rows) const { return rows_per_codebook ? std::min(rows, rows_per_codebook) : rows; }
  int64_t blocks(int64_t rows) const { return (rows + block_rows(rows) - 1) / block_rows(rows); }
  uint64_t codebook_bits() const { return 32 + uint64_t(groups * stages * k * sub_dim()) * 16; }
  int lloyd_iterations() const { return iterations ? iterations : k <= 4096 ? 20 : 8; }
};

// One codebook block, decoded or about to be written.
struct CodebookBlock {
  int64_t row0 = 0, rows = 0;
  float scale = 0;                            // fp32 T
  std::vector<float> row_scales;              // fp16 values (row_scale only)
  std::vector<std::vector<float>> codebooks;  // [group * stages + stage]: k x sub_dim fp16 values
  std::vector<uint32_t> indices;              // [row][vector][group][stage]
};

// k-means settings for codebook training: k-means++ (on 64 points per codeword) while its
// O(64 k^2 d) sequential cost is affordable (k <= 1024: well under a second), random init
// beyond; Lloyd on up to 1024 points per codeword, or 2^18 points for small k (a 4-level
// codebook fit on 4096 points would miss the Lloyd-Max optimum).
KMeansOptions training_options(const CodebookParams& p, uint64_t seed) {
  KMeansOptions o;
  o.k = p.k;
  o.iterations = p.lloyd_iterations();
  o.init = p.k <= 1024 ? KMeansInit::PlusPlus : KMeansInit::Random;
  o.max_points_per_centroid = std::max<int64_t>(1024, (int64_t(1) << 18) / p.k);
  o.tolerance = 1e-5;
  o.seed = seed;
  o.fp16_centroids = true;
  return o;
}

// Rounds of codebook refinement after the greedy residual training, and their iterations.
constexpr int kRefineRounds = 2;
constexpr int kRefineIterations = 5;

// Codebooks and codes of one M-stage residual quantizer over a point set.
struct ResidualCodes {
  std::vector<std::vector<float>> codebooks;  // per stage, k x d
  std::vector<std::vector<int32_t>> index;    // per stage, n
};

void add_codewords(std::vector<float>& residual, const std::vector<float>& codebook, const std::vector<int32_t>& index,
                   int64_t d, float sign) {
  for (size_t i = 0; i < index.size(); ++i)
    for (int64_t l = 0; l < d; ++l) residual[i * size_t(d) + size_t(l)] += sign * codebook[size_t(index[i] * d + l)];
}

// Greedy residual training (stage m clusters what stages < m left), then rounds of
// refinement: each stage's codebook is re-fit by Lloyd on the target the other stages
// leave, and its codes re-chosen. Each step starts from the current codebook and codes, so
// it can only lower the weighted error (up to fp16 rounding and Lloyd's training sample).
// Measured on 2^20 N(0,1): +0.07 dB for rvq:d8:2x256, +0.34 dB for rvq:d4:4x16.
ResidualCodes train_residual(const PointSet& points, const CodebookParams& p, uint64_t seed) {
  const int64_t n = points.n, d = points.d;
  ResidualCodes rc;
  std::vector<float> residual(points.x, points.x + n * d);
  PointSet target = points;
  target.x = residual.data();
  for (int64_t m = 0; m < p.stages; ++m) {
    KMeansResult r = kmeans(target, training_options(p, seed + uint64_t(m)));
    rc.codebooks.push_back(std::move(r.centroids));
    rc.index.push_back(std::move(r.assignment));
    add_codewords(residual, rc.codebooks.back(), rc.index.back(), d, -1.0f);
  }
  for (int round = 0; p.stages > 1 && round < kRefineRounds; ++round)
    for (int64_t m = 0; m < p.stages; ++m) {
      add_codewords(residual, rc.codebooks[size_t(m)], rc.index[size_t(m)], d, 1.0f);
      KMeansOptions o = training_options(p, seed + uint64_t(m));
      o.initial = rc.codebooks[size_t(m)].data();
      o.iterations = kRefineIterations;
      KMeansResult r = kmeans(target, o);
      rc.codebooks[size_t(m)] = std::move(r.centroids);
      rc.index[size_t(m)] = std::move(r.assignment);
      add_codewords(residual, rc.codebooks[size_t(m)], rc.index[size_t(m)], d, -1.0f);
    }
  return rc;
}

class CodebookFormat : public RowFormat {
 public:
  explicit CodebookFormat(CodebookParams p) : p_(std::move(p)) {
    check_range("vector dimension d", p_.dim, 1, 64);
    check_range("codebook size k", p_.k, 2, 65536);
    check_range("stages", p_.stages, 1, 8);
    check_range("groups", p_.groups, 1, p_.dim);
    if (p_.dim % p_.groups) fail("groups g{} must divide the vector dimension d{}", p_.groups, p_.dim);
    if (p_.rows_per_codebook) check_range("rows per codebook r", p_.rows_per_codebook, 1, int64_t(1) << 30);
    check_range("k-means iterations i", p_.iterations, 0, 1000);
  }

  std::string spec() const override {
    std::string s = fmt::format("{}:d{}", p_.family, p_.dim);
    if (p_.family == "grvq") s += fmt::format(":g{}", p_.groups);
    s += p_.family == "vq" ? fmt::format(":k{}", p_.k) : fmt::format(":{}x{}", p_.stages, p_.k);
    if (p_.rows_per_codebook) s += fmt::format(":r{}", p_.rows_per_codebook);
    if (p_.row_scale) s += ":rs";
    if (p_.iterations) s += fmt::format(":i{}", p_.iterations);
    return s;
  }

  std::string describe() const override {
    std::string what = p_.family == "vq"    ? fmt::format("{}-codeword VQ", p_.k)
                       : p_.family == "rvq" ? fmt::format("{}-stage residual VQ of {} codewords", p_.stages, p_.k)
                                            : fmt::format("{} groups of {} dims, each a {}-stage residual VQ of {} codewords",
                                                          p_.groups, p_.sub_dim(), p_.stages, p_.k);
    return fmt::format("{}-dim vectors of a row, {}, fp16 codebooks per {}{}", p_.dim, what,
                       p_.rows_per_codebook ? fmt::format("{} rows", p_.rows_per_codebook) : "tensor",
                       p_.row_scale ? ", fp16 row scales" : "");
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(p_.blocks(rows)) * p_.codebook_bits() + (p_.row_scale ? uint64_t(rows) * 16 : 0) +
           uint64_t(rows * p_.vectors_per_row(cols) * p_.codes_per_vector()) * uint64_t(p_.index_bits());
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    BitWriter bw;
    const int64_t per_block = p_.block_rows(rows);
    for (int64_t b = 0; b < p_.blocks(rows); ++b) {
      const int64_t r0 = b * per_block, nr = std::min(rows, r0 + per_block) - r0;
      write_block(bw, encode_block(w + r0 * cols, r0, nr, cols, imp, uint64_t(b)), cols);
    }
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  // Each codebook block touched is read for its codebooks and the rows wanted.
  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    const int64_t per_block = p_.block_rows(b.rows);
    for (int64_t blk = r0 / per_block; blk * per_block < r0 + nr; ++blk) {
      const int64_t first = std::max(r0, blk * per_block), end = std::min(r0 + nr, (blk + 1) * per_block);
      const CodebookBlock part = read_block(b, blk, first - blk * per_block, end - first);
      decode_block(part, b.cols, out + (first - r0) * b.cols);
    }
  }

  // VPTQ-style second-order VQ: codebooks (and scales) come from importance-weighted
  // k-means on the initial weights; GPTQ then fixes one vector column block (d inputs) at
  // a time, each row's sub-vector coded by greedy residual search against the fixed
  // codebooks, and feeds the error forward.
  std::unique_ptr<ColumnEncoder> column_encoder(const float* w, int64_t rows, int64_t cols, const float* imp,
                                                bool) const override;

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    const int64_t per_vector = p_.codes_per_vector();
    std::vector<SymbolStream> streams;
    for (int64_t g = 0; g < p_.groups; ++g)
      for (int64_t m = 0; m < p_.stages; ++m) {
        std::string name = "index";
        if (p_.groups > 1) name += fmt::format(".g{}", g);
        if (p_.stages > 1) name += fmt::format(".s{}", m);
        streams.push_back({name, uint32_t(p_.k), {}});
      }
    for (const CodebookBlock& blk : read_blocks(pk))
      for (size_t i = 0; i < blk.indices.size(); ++i) streams[i % size_t(per_vector)].symbols.push_back(blk.indices[i]);
    return streams;
  }

  // The decoded blocks, for kernels that multiply on the codes (kernels/lut_vq.h).
  CodebookUnpacked unpack(const Packed& pk) const {
    CodebookUnpacked u{pk.rows, pk.cols, p_.dim, p_.groups, p_.stages, p_.k, p_.sub_dim(), p_.vectors_per_row(pk.cols), {}};
    for (CodebookBlock& b : read_blocks(pk))
      u.blocks.push_back({b.row0, b.rows, b.scale, std::move(b.row_scales), std::move(b.codebooks), std::move(b.indices)});
    return u;
  }

 private:
  // Rows [r0, r0 + nr) (w points at row r0): scale, row scales, codebooks, codes.
  CodebookBlock encode_block(const float* w, int64_t r0, int64_t nr, int64_t cols, const float* imp,
                             uint64_t block_seed) const {
    CodebookBlock blk;
    blk.row0 = r0;
    blk.rows = nr;
    float amax = 0;
    for (int64_t i = 0; i < nr * cols; ++i) amax = std::max(amax, std::fabs(w[i]));
    blk.scale = std::isfinite(amax) ? amax : 0.0f;
    // y = w / T in [-1, 1]; with rs each row is further divided by its fp16 RMS.
    std::vector<float> y(size_t(nr * cols), 0.0f);
    if (blk.scale > 0)
      for (int64_t i = 0; i < nr * cols; ++i) y[size_t(i)] = w[i] / blk.scale;
    std::vector<float> z = y;
    if (p_.row_scale) {
      blk.row_scales.resize(static_cast<size_t>(nr));
      for (int64_t r = 0; r < nr; ++r) {
        double ss = 0;
        for (int64_t c = 0; c < cols; ++c) ss += double(y[size_t(r * cols + c)]) * y[size_t(r * cols + c)];
        const float s = round_f16(float(std::sqrt(ss / double(cols))));
        blk.row_scales[size_t(r)] = s;
        for (int64_t c = 0; c < cols; ++c) z[size_t(r * cols + c)] = s > 0 ? y[size_t(r * cols + c)] / s : 0.0f;
      }
    }
    const int64_t nv = p_.vectors_per_row(cols), per_vector = p_.codes_per_vector();
    blk.codebooks.resize(static_cast<size_t>(per_vector));
    blk.indices.assign(size_t(nr * nv * per_vector), 0);
    for (int64_t g = 0; g < p_.groups; ++g) {
      SubVectors sv = sub_vectors(z, nr, cols, g, imp, blk.row_scales);
      const ResidualCodes rc = train_residual(sv.points(), p_, 0x5EED0000ull + block_seed * 1000 + uint64_t(g) * 10);
      for (int64_t m = 0; m < p_.stages; ++m) {
        blk.codebooks[size_t(g * p_.stages + m)] = rc.codebooks[size_t(m)];
        for (int64_t v = 0; v < nr * nv; ++v)
          blk.indices[size_t(v * per_vector + g * p_.stages + m)] = uint32_t(rc.index[size_t(m)][size_t(v)]);
      }
    }
    if (p_.row_scale) refit_row_scales(blk, y, cols, imp);
    return blk;
  }

  // The sub-vectors of group g (dims [g*D/G, (g+1)*D/G) of each vector) of the rows of z,
  // with their weights: importance of the column times the squared row scale (the error
  // of a row divided by s is s^2 times smaller), zero on padding.
  struct SubVectors {
    std::vector<float> x, w;
    int64_t n = 0, d = 0;
    PointSet::Weights weighting = PointSet::Weights::None;
    PointSet points() const { return {x.data(), n, d, weighting, w.empty() ? nullptr : w.data()}; }
  };

  SubVectors sub_vectors(const std::vector<float>& z, int64_t nr, int64_t cols, int64_t g, const float* imp,
                         const std::vector<float>& row_scales) const {
    SubVectors sv;
    const int64_t nv = p_.vectors_per_row(cols), d = p_.sub_dim();
    sv.n = nr * nv;
    sv.d = d;
    const bool padded = cols % p_.dim != 0;
    sv.weighting = imp || padded       ? PointSet::Weights::PerCoordinate
                   : row_scales.size() ? PointSet::Weights::PerPoint
                                       : PointSet::Weights::None;
    sv.x.assign(size_t(sv.n * d), 0.0f);
    if (sv.weighting == PointSet::Weights::PerCoordinate) sv.w.assign(size_t(sv.n * d), 0.0f);
    if (sv.weighting == PointSet::Weights::PerPoint) sv.w.assign(size_t(sv.n), 0.0f);
    for (int64_t r = 0; r < nr; ++r) {
      const float rw = row_scales.empty() ? 1.0f : row_scales[size_t(r)] * row_scales[size_t(r)];
      for (int64_t v = 0; v < nv; ++v) {
        const int64_t i = r * nv + v;
        if (sv.weighting == PointSet::Weights::PerPoint) sv.w[size_t(i)] = rw;
        for (int64_t l = 0; l < d; ++l) {
          const int64_t c = v * p_.dim + g * d + l;
          if (c >= cols) continue;  // padding: zero, weight zero
          sv.x[size_t(i * d + l)] = z[size_t(r * cols + c)];
          if (sv.weighting == PointSet::Weights::PerCoordinate) sv.w[size_t(i * d + l)] = (imp ? imp[c] : 1.0f) * rw;
        }
      }
    }
    return sv;
  }

  // Coordinate l of group g of vector `vec` (row-major over the block): the sum of its
  // stages' codewords.
  float codeword_sum(const CodebookBlock& blk, int64_t vec, int64_t g, int64_t l) const {
    const int64_t d = p_.sub_dim();
    float s = 0;
    for (int64_t m = 0; m < p_.stages; ++m) {
      const int64_t cb = g * p_.stages + m;
      const uint32_t idx = blk.indices[size_t(vec * p_.codes_per_vector() + cb)];
      s += blk.codebooks[size_t(cb)][size_t(int64_t(idx) * d + l)];
    }
    return s;
  }

  // Row r of the block without its row scale: sum over stages of the codewords, in y/s units.
  void decode_row_unscaled(const CodebookBlock& blk, int64_t r, int64_t cols, float* out) const {
    const int64_t nv = p_.vectors_per_row(cols), d = p_.sub_dim();
    for (int64_t v = 0; v < nv; ++v)
      for (int64_t g = 0; g < p_.groups; ++g)
        for (int64_t l = 0; l < d; ++l) {
          const int64_t c = v * p_.dim + g * d + l;
          if (c >= cols) continue;
          out[c] = codeword_sum(blk, r * nv + v, g, l);
        }
  }

  // Least-squares row scale given the codes: s = sum imp y q / sum imp q^2 (fp16), kept
  // only when it lowers the row's weighted error.
  void refit_row_scales(CodebookBlock& blk, const std::vector<float>& y, int64_t cols, const float* imp) const {
    std::vector<float> q(static_cast<size_t>(cols)), candidate(static_cast<size_t>(cols));
    for (int64_t r = 0; r < blk.rows; ++r) {
      decode_row_unscaled(blk, r, cols, q.data());
      const float* yr = y.data() + r * cols;
      double num = 0, den = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double wt = imp ? imp[c] : 1.0;
        num += wt * yr[c] * q[size_t(c)];
        den += wt * double(q[size_t(c)]) * q[size_t(c)];
      }
      if (den <= 0) continue;
      const float old_s = blk.row_scales[size_t(r)], new_s = round_f16(float(num / den));
      if (!std::isfinite(new_s)) continue;
      auto err = [&](float s) {
        for (int64_t c = 0; c < cols; ++c) candidate[size_t(c)] = s * q[size_t(c)];
        return weighted_sse(yr, candidate.data(), imp, cols);
      };
      if (err(new_s) < err(old_s)) blk.row_scales[size_t(r)] = new_s;
    }
  }

  void decode_block(const CodebookBlock& blk, int64_t cols, float* out) const {
    for (int64_t r = 0; r < blk.rows; ++r) {
      float* row = out + r * cols;
      decode_row_unscaled(blk, r, cols, row);
      const float s = blk.scale * (p_.row_scale ? blk.row_scales[size_t(r)] : 1.0f);
      for (int64_t c = 0; c < cols; ++c) row[c] *= s;
    }
  }

  void write_block(BitWriter& bw, const CodebookBlock& blk, int64_t cols) const {
    bw.put_f32(blk.scale);
    for (const auto& cb : blk.codebooks)
      for (float v : cb) bw.put_f16(v);
    for (float s : blk.row_scales) bw.put_f16(s);
    for (uint32_t idx : blk.indices) bw.put(idx, p_.index_bits());
  }

  std::vector<CodebookBlock> read_blocks(const Packed& pk) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    std::vector<CodebookBlock> blocks;
    const int64_t per_block = p_.block_rows(pk.rows);
    for (int64_t b = 0; b < p_.blocks(pk.rows); ++b)
      blocks.push_back(read_block(PackedBits::of(pk), b, 0, std::min(pk.rows, (b + 1) * per_block) - b * per_block));
    return blocks;
  }

  // Block b's scale and codebooks with its rows [first, first + n) (block-local): every
  // block before b is full, so b starts at b times a full block's bits.
  CodebookBlock read_block(const PackedBits& bits, int64_t b, int64_t first, int64_t n) const {
    const int64_t per_block = p_.block_rows(bits.rows), per_row = p_.vectors_per_row(bits.cols) * p_.codes_per_vector();
    const uint64_t scale_bits = p_.row_scale ? 16 : 0, index_bits = uint64_t(per_row) * uint64_t(p_.index_bits());
    const uint64_t start = uint64_t(b) * (p_.codebook_bits() + uint64_t(per_block) * (scale_bits + index_bits));
    const int64_t block_rows = std::min(bits.rows, (b + 1) * per_block) - b * per_block;
    BitReader br(bits);
    br.seek(start);
    CodebookBlock blk;
    blk.row0 = b * per_block + first;
    blk.rows = n;
    blk.scale = br.get_f32();
    blk.codebooks.resize(size_t(p_.codes_per_vector()));
    for (auto& cb : blk.codebooks) {
      cb.resize(size_t(p_.k * p_.sub_dim()));
      for (float& v : cb) v = br.get_f16();
    }
    const uint64_t scales_at = br.position(), indices_at = scales_at + uint64_t(block_rows) * scale_bits;
    if (p_.row_scale) {
      br.seek(scales_at + uint64_t(first) * scale_bits);
      blk.row_scales.resize(size_t(n));
      for (float& s : blk.row_scales) s = br.get_f16();
    }
    br.seek(indices_at + uint64_t(first) * index_bits);
    blk.indices.resize(size_t(n * per_row));
    for (uint32_t& idx : blk.indices) {
      idx = uint32_t(br.get(p_.index_bits()));
      if (idx >= uint32_t(p_.k)) fail("packed {}: codeword index {} >= k = {}", spec(), idx, p_.k);
    }
    return blk;
  }

  CodebookParams p_;
  friend class CodebookColumnEncoder;
};

class CodebookColumnEncoder : public ColumnEncoder {
 public:
  CodebookColumnEncoder(const CodebookFormat& f, const float* w, int64_t rows, int64_t cols, const float* imp)
      : f_(f), p_(f.p_), rows_(rows), cols_(cols) {
    if (imp) imp_.assign(imp, imp + cols);
    const int64_t per_block = p_.block_rows(rows);
    for (int64_t b = 0; b < p_.blocks(rows); ++b) {
      const int64_t r0 = b * per_block, nr = std::min(rows, r0 + per_block) - r0;
      blocks_.push_back(f.encode_block(w + r0 * cols, r0, nr, cols, imp, uint64_t(b)));
    }
  }

  int64_t step() const override { return p_.dim; }

  void encode(int64_t c, const float* cur, int64_t rs, int64_t cs, float* deq) override {
    const int64_t v = c / p_.dim, nv = p_.vectors_per_row(cols_), d = p_.sub_dim(), per_vector = p_.codes_per_vector();
    const int64_t width = std::min(p_.dim, cols_ - c), per_block = p_.block_rows(rows_);
    std::vector<float> target(static_cast<size_t>(d)), weight(static_cast<size_t>(d));
    for (int64_t r = 0; r < rows_; ++r) {
      CodebookBlock& blk = blocks_[size_t(r / per_block)];
      const int64_t br = r - blk.row0;
      const float s = blk.scale * (p_.row_scale ? blk.row_scales[size_t(br)] : 1.0f);
      for (int64_t g = 0; g < p_.groups; ++g) {
        for (int64_t l = 0; l < d; ++l) {
          const int64_t j = g * d + l;  // column offset within the vector
          const bool real = j < width && s != 0.0f;
          target[size_t(l)] = real ? cur[r * rs + j * cs] / s : 0.0f;
          weight[size_t(l)] = real ? (imp_.empty() ? 1.0f : imp_[size_t(c + j)]) : 0.0f;
        }
        for (int64_t m = 0; m < p_.stages; ++m) {
          const int64_t cb = g * p_.stages + m;
          const std::vector<float>& book = blk.codebooks[size_t(cb)];
          const uint32_t best = nearest(book, target, weight);
          blk.indices[size_t((br * nv + v) * per_vector + cb)] = best;
          for (int64_t l = 0; l < d; ++l) target[size_t(l)] -= book[size_t(int64_t(best) * d + l)];
        }
        for (int64_t l = 0; l < d; ++l) {
          const int64_t j = g * d + l;
          if (j >= width) continue;
          deq[j * rows_ + r] = f_.codeword_sum(blk, br * nv + v, g, l) * s;
        }
      }
    }
  }

  Packed finish() override {
    BitWriter bw;
    for (const CodebookBlock& blk : blocks_) f_.write_block(bw, blk, cols_);
    return finish_packed(bw, rows_, cols_, f_.storage_bits(rows_, cols_));
  }

 private:
  // Index of the codeword closest to t in the weighted squared distance.
  uint32_t nearest(const std::vector<float>& book, const std::vector<float>& t, const std::vector<float>& wt) const {
    const int64_t d = int64_t(t.size());
    uint32_t best = 0;
    float best_e = INFINITY;
    for (int64_t k = 0; k < p_.k; ++k) {
      const float* cw = &book[size_t(k * d)];
      float e = 0;
      for (int64_t l = 0; l < d; ++l) e += wt[size_t(l)] * (cw[l] - t[size_t(l)]) * (cw[l] - t[size_t(l)]);
      if (e < best_e) best_e = e, best = uint32_t(k);
    }
    return best;
  }

  const CodebookFormat& f_;
  const CodebookParams& p_;
  int64_t rows_, cols_;
  std::vector<float> imp_;
  std::vector<CodebookBlock> blocks_;
};

std::unique_ptr<ColumnEncoder> CodebookFormat::column_encoder(const float* w, int64_t rows, int64_t cols,
                                                              const float* imp, bool) const {
  return std::make_unique<CodebookColumnEncoder>(*this, w, rows, cols, imp);
}

// vq:d<D>:k<K>..., rvq:d<D>:<M>x<K>..., grvq:d<D>:g<G>:<M>x<K>...
std::unique_ptr<Format> parse_codebook(const std::vector<std::string>& tokens, const std::string& family) {
  if (tokens[0] != family) return nullptr;
  std::vector<std::string> rest = tokens;
  CodebookParams p;
  p.family = family;
  if (family != "vq") {
    auto mk = take_token<std::vector<int64_t>>(rest, [](const std::string& t) {
      auto v = parse_product(t);
      return v && v->size() == 2 ? v : std::nullopt;
    });
    if (!mk) fail("missing <M>x<K> (stages x codewords)");
    p.stages = (*mk)[0];
    p.k = (*mk)[1];
  }
  SpecTokens t(rest);
  auto d = t.take_int("d");
  if (!d) fail("missing d<D> (vector dimension)");
  p.dim = *d;
  if (family == "vq") {
    auto k = t.take_int("k");
    if (!k) fail("missing k<K> (codebook size)");
    p.k = *k;
  }
  if (family == "grvq") {
    auto g = t.take_int("g");
    if (!g) fail("missing g<G> (groups)");
    p.groups = *g;
  }
  if (auto r = t.take_int("r")) {
    if (*r < 1) fail("rows per codebook r{} must be at least 1", *r);
    p.rows_per_codebook = *r;
  }
  p.row_scale = t.take_flag("rs");
  if (auto it = t.take_int("i")) {
    if (*it < 1) fail("k-means iterations i{} must be at least 1", *it);
    p.iterations = int(std::min<int64_t>(*it, 100000));
  }
  t.finish();
  return std::make_unique<CodebookFormat>(std::move(p));
}

// =========================================================================================
// FSQ
// =========================================================================================

class FsqFormat : public RowFormat {
 public:
  FsqFormat(std::vector<int64_t> levels, Grouping grouping) : levels_(std::move(levels)), grouping_(grouping) {
    check_range("number of FSQ levels", int64_t(levels_.size()), 1, 16);
    uint64_t prod = 1;
    for (int64_t l : levels_) {
      check_range("FSQ level count", l, 2, 65536);
      prod *= uint64_t(l);
      if (prod > (uint64_t(1) << 32)) fail("the product of the FSQ levels exceeds 2^32");
    }
    codes_ = prod;
  }

  std::string spec() const override {
    std::string s = "fsq:l";
    for (size_t j = 0; j < levels_.size(); ++j) {
      if (j) s += 'x';
      s += std::to_string(levels_[j]);
    }
    if (!(grouping_.kind == Grouping::Group && grouping_.size == kDefaultGroup)) {
      s += ':';
      s += grouping_.spec();
    }
    return s;
  }

  std::string describe() const override {
    return fmt::format("FSQ: {}-dim vectors, {} codes in {} bits per vector (implicit codebook), scale per {}",
                       levels_.size(), codes_, bits_for(codes_),
                       grouping_.kind == Grouping::Group ? fmt::format("{} inputs", grouping_.size) : grouping_.spec());
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    const uint64_t scales = grouping_.kind == Grouping::Tensor ? 32 : 32 + 16 * uint64_t(grouping_.count(rows, cols));
    return scales + uint64_t(rows) * row_code_bits(cols);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const Scales sc = fit_scales(w, rows, cols, imp);
    BitWriter bw;
    bw.put_f32(sc.tensor);
    if (grouping_.kind != Grouping::Tensor)
      for (float r : sc.relative) bw.put_f16(r);
    const std::vector<float> group_scale = absolute_scales(sc, rows, cols);
    std::vector<uint32_t> level(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c)
        level[size_t(c)] = quantize_level(w[r * cols + c], group_scale[size_t(group_of(r, c, rows, cols))], levels_of(c));
      write_row_codes(bw, level, cols);
    }
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  // The scales come first (fp32 tensor scale, fp16 group scales), then the rows' codes.
  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    const int64_t cols = b.cols;
    BitReader sr(b);
    const float tensor = sr.get_f32();
    const bool groups = grouping_.kind == Grouping::Group, tensor_only = grouping_.kind == Grouping::Tensor;
    const int64_t per_row = groups ? grouping_.count(1, cols) : 1;
    const uint64_t codes_at = 32 + (tensor_only ? 0 : 16 * uint64_t(grouping_.count(b.rows, cols)));
    std::vector<float> row_scale(size_t(per_row), tensor);  // absolute scales of the row's groups
    BitReader br = row_reader(b, codes_at, row_code_bits(cols), r0);
    for (int64_t r = 0; r < nr; ++r) {
      if (!tensor_only) {
        sr.seek(32 + 16 * uint64_t(group_of(r0 + r, 0, b.rows, cols)));
        for (float& s : row_scale) s = tensor * sr.get_f16();
      }
      for (int64_t c0 = 0; c0 < cols; c0 += dim()) {
        const int64_t n = std::min(dim(), cols - c0);
        uint64_t code = br.get(code_bits(n));
        for (int64_t j = 0; j < n; ++j) {
          const int64_t L = levels_[size_t(j)];
          const uint32_t q = uint32_t(code % uint64_t(L));
          code /= uint64_t(L);
          out[r * cols + c0 + j] = level_value(q, L) * row_scale[size_t(groups ? (c0 + j) / grouping_.size : 0)];
        }
      }
    }
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    BitReader br(pk);
    read_scales(br, pk);
    SymbolStream s{"code", uint32_t(std::min<uint64_t>(codes_, UINT32_MAX)), {}};
    for (int64_t r = 0; r < pk.rows; ++r)
      for (int64_t c0 = 0; c0 < pk.cols; c0 += dim()) s.symbols.push_back(uint32_t(br.get(code_bits(std::min(dim(), pk.cols - c0)))));
    return {s};
  }

  static constexpr int64_t kDefaultGroup = 128;

 private:
  int64_t dim() const { return int64_t(levels_.size()); }
  int64_t levels_of(int64_t col) const { return levels_[size_t(col % dim())]; }

  // Bits of the code of a vector of its first n levels.
  int code_bits(int64_t n) const {
    uint64_t prod = 1;
    for (int64_t j = 0; j < n; ++j) prod *= uint64_t(levels_[size_t(j)]);
    return bits_for(prod);
  }
  uint64_t row_code_bits(int64_t cols) const {
    return uint64_t(cols / dim()) * uint64_t(code_bits(dim())) + uint64_t(code_bits(cols % dim()));
  }

  // Level q of L evenly spaced values on [-1, 1].
  static float level_value(uint32_t q, int64_t L) { return float(2 * int64_t(q) - (L - 1)) / float(L - 1); }

  // The grid of one dimension at scale s: level q = nearest of w * inv + half, clamped.
  struct Grid {
    float inv = 0, half = 0, top = 0, unit = 0;  // unit: spacing of the levels on [-1, 1]
    Grid() = default;
    Grid(float scale, int64_t L) : half(0.5f * float(L - 1)), top(float(L - 1)), unit(1.0f / half) {
      inv = scale > 0 ? half / scale : 0.0f;
    }
    // Clamped first, so truncating t + 0.5 rounds to nearest (halves up) without a libm call.
    uint32_t level(float w) const { return uint32_t(std::clamp(w * inv + half, 0.0f, top) + 0.5f); }
  };
  static uint32_t quantize_level(float w, float scale, int64_t L) { return Grid(scale, L).level(w); }

  void write_row_codes(BitWriter& bw, const std::vector<uint32_t>& level, int64_t cols) const {
    for (int64_t c0 = 0; c0 < cols; c0 += dim()) {
      const int64_t n = std::min(dim(), cols - c0);
      uint64_t code = 0;
      for (int64_t j = n - 1; j >= 0; --j) code = code * uint64_t(levels_[size_t(j)]) + level[size_t(c0 + j)];
      bw.put(code, code_bits(n));
    }
  }

  // Group index of weight (r, c) in Grouping order.
  int64_t group_of(int64_t r, int64_t c, int64_t rows, int64_t cols) const {
    switch (grouping_.kind) {
      case Grouping::Tensor: return 0;
      case Grouping::Row: return r;
      default: return r * ((cols + grouping_.size - 1) / grouping_.size) + c / grouping_.size;
    }
  }

  struct Scales {
    float tensor = 0;             // fp32: the scale itself (tensor) or max|w| (groups)
    std::vector<float> relative;  // fp16 per group, relative to `tensor`
  };

  std::vector<float> absolute_scales(const Scales& sc, int64_t rows, int64_t cols) const {
    if (grouping_.kind == Grouping::Tensor) return {sc.tensor};
    std::vector<float> s(sc.relative.size());
    for (size_t i = 0; i < s.size(); ++i) s[i] = sc.tensor * sc.relative[i];
    return s;
  }

  Scales read_scales(BitReader& br, const Packed& pk) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    Scales sc;
    sc.tensor = br.get_f32();
    if (grouping_.kind != Grouping::Tensor) {
      sc.relative.resize(size_t(grouping_.count(pk.rows, pk.cols)));
      for (float& r : sc.relative) r = br.get_f16();
    }
    return sc;
  }

  // Weighted squared error of rows [r0, r1) x cols [c0, c1) at scale s.
  double block_error(const float* w, int64_t cols, int64_t r0, int64_t r1, int64_t c0, int64_t c1, float s,
                     const float* imp) const {
    if (!(s > 0)) return weighted_zero_error(w, cols, r0, r1, c0, c1, imp);
    std::array<Grid, 16> grids{};  // at most 16 dimensions
    for (size_t j = 0; j < levels_.size(); ++j) grids[j] = Grid(s, levels_[j]);
    // In units of s (so float neither overflows at 1e30 nor underflows at 1e-30), scaled back at the end.
    const float inv_s = 1.0f / s;
    double e = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = w + r * cols;
      float row = 0;  // one row of a group: float is ample for choosing a scale
      for (int64_t c = c0, j = c0 % dim(); c < c1; ++c, j = j + 1 == dim() ? 0 : j + 1) {
        const Grid& g = grids[size_t(j)];
        const float diff = x[c] * inv_s - (float(g.level(x[c])) - g.half) * g.unit;
        row += (imp ? imp[c] : 1.0f) * diff * diff;
      }
      e += double(row);
    }
    return e * double(s) * double(s);
  }

  // sum imp w^2: the error when everything decodes to zero.
  static double weighted_zero_error(const float* w, int64_t cols, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                                    const float* imp) {
    double e = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) e += (imp ? double(imp[c]) : 1.0) * double(w[r * cols + c]) * w[r * cols + c];
    return e;
  }

  // Clipping search: coarse grid of scales from max|w| down to 20% of it, then a finer
  // grid around the best. `err` sees the scale as it will be stored.
  static float search_clip(float amax, const std::function<double(float)>& err) {
    constexpr int kCoarse = 32, kFine = 12;
    const float step = amax * 0.8f / kCoarse;
    const float best = search_scale(amax, 0.2f, kCoarse, err);
    const float hi = best + step, lo = std::max(best - step, step * 0.5f);
    const float fine = search_scale(hi, lo / hi, kFine, err);
    return err(fine) < err(best) ? fine : best;
  }

  Scales fit_scales(const float* w, int64_t rows, int64_t cols, const float* imp) const {
    Scales sc;
    float amax = 0;
    for (int64_t i = 0; i < rows * cols; ++i) amax = std::max(amax, std::fabs(w[i]));
    if (!std::isfinite(amax)) amax = 0;
    if (grouping_.kind == Grouping::Tensor) {
      if (amax > 0) sc.tensor = search_clip(amax, [&](float s) { return tensor_error(w, rows, cols, s, imp); });
      return sc;
    }
    sc.tensor = amax;
    std::vector<std::array<int64_t, 4>> groups;
    grouping_.for_each(rows, cols, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) { groups.push_back({r0, r1, c0, c1}); });
    sc.relative.assign(groups.size(), 0.0f);
    if (amax == 0) return sc;
    global_pool().parallel_for(int64_t(groups.size()), [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        // Plain locals, not a structured binding: clang before 16 cannot capture bindings.
        const int64_t r0 = groups[size_t(g)][0], r1 = groups[size_t(g)][1], c0 = groups[size_t(g)][2],
                      c1 = groups[size_t(g)][3];
        float gmax = 0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) gmax = std::max(gmax, std::fabs(w[r * cols + c]));
        if (gmax == 0) continue;
        // The stored value is the fp16 ratio to T; search over what decodes.
        auto stored = [&](float s) { return amax * round_f16(s / amax); };
        const float s = search_clip(gmax, [&](float s) { return block_error(w, cols, r0, r1, c0, c1, stored(s), imp); });
        sc.relative[size_t(g)] = round_f16(s / amax);
      }
    });
    return sc;
  }

  // Error of the whole tensor at scale s, summed per row in row order (thread-count independent).
  double tensor_error(const float* w, int64_t rows, int64_t cols, float s, const float* imp) const {
    std::vector<double> per_row(static_cast<size_t>(rows));
    global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) per_row[size_t(r)] = block_error(w, cols, r, r + 1, 0, cols, s, imp);
    });
    return std::accumulate(per_row.begin(), per_row.end(), 0.0);
  }

  std::vector<int64_t> levels_;
  Grouping grouping_;
  uint64_t codes_ = 1;
};

std::unique_ptr<Format> parse_fsq(const std::vector<std::string>& tokens) {
  if (tokens[0] != "fsq") return nullptr;
  std::vector<std::string> rest = tokens;
  auto levels = take_token<std::vector<int64_t>>(rest, [](const std::string& t) -> std::optional<std::vector<int64_t>> {
    if (t.size() < 2 || t[0] != 'l') return std::nullopt;
    return parse_product(t.substr(1));
  });
  if (!levels) fail("missing l<L1>x<L2>x... (levels per dimension)");
  SpecTokens t(rest);
  const Grouping g = Grouping::parse(t, {Grouping::Group, FsqFormat::kDefaultGroup});
  t.finish();
  return std::make_unique<FsqFormat>(std::move(*levels), g);
}

const char* kOptions = "[:r<R>][:rs][:i<N>]";

Registrar reg_vq{FormatFamily{
    "vq", fmt::format("vq:d<D>:k<K>{} (D = 1..64, K = 2..65536)", kOptions),
    "vector quantization: k-means codebook (fp16) of D-dim vectors, log2(K)-bit indices",
    {"vq:d2:k16", "vq:d4:k256", "vq:d8:k65536", "vq:d4:k256:r1024", "vq:d4:k256:rs", "vq:d8:k256"},
    [](const std::vector<std::string>& t) { return parse_codebook(t, "vq"); }}};

Registrar reg_rvq{FormatFamily{
    "rvq", fmt::format("rvq:d<D>:<M>x<K>{} (M = 1..8 stages)", kOptions),
    "residual VQ: M k-means codebooks, each quantizing the residual of the previous stages",
    {"rvq:d8:2x256", "rvq:d4:4x16", "rvq:d8:3x256", "rvq:d8:2x256:rs"},
    [](const std::vector<std::string>& t) { return parse_codebook(t, "rvq"); }}};

Registrar reg_grvq{FormatFamily{
    "grvq", fmt::format("grvq:d<D>:g<G>:<M>x<K>{} (G divides D)", kOptions),
    "group-residual VQ (HiFi-Codec): the D dims split into G groups, each its own M-stage RVQ",
    {"grvq:d8:g2:2x256", "grvq:d8:g4:1x256"},
    [](const std::vector<std::string>& t) { return parse_codebook(t, "grvq"); }}};

Registrar reg_fsq{FormatFamily{
    "fsq", "fsq:l<L1>x<L2>x...[:g<G>|:row|:tensor] (1..16 levels of 2..65536; default g128, not written)",
    "finite scalar quantization: per-dimension level counts, mixed-radix code per vector, fp16 group scales",
    {"fsq:l8x5x5x5", "fsq:l5x5x5", "fsq:l3x3x3x3x3", "fsq:l8x8x8x5x5x5", "fsq:l7x5x5x5:row"},
    parse_fsq}};

}  // namespace

std::optional<CodebookUnpacked> unpack_codebook(const Format& f, const Packed& p) {
  const auto* cf = dynamic_cast<const CodebookFormat*>(&f);
  if (!cf) return std::nullopt;
  return cf->unpack(p);
}

}  // namespace quantkit::formats
