// SplitQuant (Song & Lin 2024, "SplitQuant: Layer Splitting for Low-Bit Neural Network
// Quantization"): "split<k>:<inner spec>" (e.g. "split3:int4:row") in front of any format of
// the registry.
//
// The weights of W are split into k value clusters (lower / middle / upper for k = 3) by
// 1-D k-means over the values of the whole matrix, each weight counted with the importance
// of its input column. Cluster i's matrix W_i keeps the weights of cluster i and is 0
// elsewhere; each W_i is quantized by the inner format on its own (its own scales), and
// W ~ sum_i deq(W_i). This is the paper's "k layers whose outputs are summed": a linear
// layer is linear in its weights, so summing the dequantized matrices is the same network.
// A cluster's range is narrower than W's, so its scales resolve it more finely: the bulk of
// the weights no longer shares its grid with the outliers.
//
// Storage is exactly k times the inner format's: the packed bits are the k inner packed
// strings back to back, with no padding and nothing else (no thresholds or membership:
// decoding only sums). The zeros outside a cluster cost their full inner code each, and a
// grid without an exact 0 (midrise int, some codebooks) adds an error at every one of them;
// that error is part of the method and is not corrected.
#include <algorithm>
#include <cstring>

#include "formats/common.h"
#include "formats/scalar_grid.h"

namespace quantkit::formats {
namespace {

constexpr int kMinClusters = 2, kMaxClusters = 8;
constexpr int kMaxLloydIterations = 1000;

// Lloyd iterations of 1-D k-means on sorted (weighted) values, from centres at the
// quantiles (c + 1/2) / k: a cell is the run of sorted values nearest to its centre
// (found by binary search at the midpoints), a centre moves to its cell's weighted mean.
// Stops at a fixed point of the cell boundaries. Returns k ascending centres.
std::vector<double> kmeans_1d(const grid::SortedGroup& d, int k) {
  const int64_t n = d.size();
  std::vector<double> centre(static_cast<size_t>(k), 0.0);
  if (n == 0) return centre;
  for (int c = 0; c < k; ++c) centre[size_t(c)] = d.values()[size_t((2 * c + 1) * n / (2 * k))];
  std::vector<int64_t> bounds, next(static_cast<size_t>(k) + 1);
  for (int it = 0; it < kMaxLloydIterations; ++it) {
    next[0] = 0, next[size_t(k)] = n;
    for (int c = 1; c < k; ++c)
      next[size_t(c)] = d.first_at_least(0.5 * (centre[size_t(c - 1)] + centre[size_t(c)]), next[size_t(c - 1)]);
    if (next == bounds) break;
    bounds = next;
    for (int c = 0; c < k; ++c)
      if (bounds[size_t(c) + 1] > bounds[size_t(c)]) centre[size_t(c)] = d.mean(bounds[size_t(c)], bounds[size_t(c) + 1]);
    std::sort(centre.begin(), centre.end());
  }
  return centre;
}

// The cluster of every weight: the number of cell boundaries (midpoints of the k-means
// centres) at or below it.
std::vector<uint8_t> cluster_labels(const float* w, int64_t rows, int64_t cols, const float* imp, int k) {
  const int64_t n = rows * cols;
  std::vector<float> imp_per_weight;
  if (imp) {
    imp_per_weight.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) imp_per_weight[size_t(i)] = imp[i % cols];
  }
  const std::vector<double> centre = kmeans_1d(grid::sorted_sample(w, imp ? imp_per_weight.data() : nullptr, n), k);
  std::vector<double> bound(static_cast<size_t>(k) - 1);
  for (int c = 1; c < k; ++c) bound[size_t(c - 1)] = 0.5 * (centre[size_t(c - 1)] + centre[size_t(c)]);
  std::vector<uint8_t> label(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    label[size_t(i)] = uint8_t(std::upper_bound(bound.begin(), bound.end(), double(w[i])) - bound.begin());
  return label;
}

// Appends p's bits to bw (LSB-first bytes read as little-endian 64-bit words).
void append_bits(BitWriter& bw, const Packed& p) {
  uint64_t done = 0;
  for (; done + 64 <= p.bits; done += 64) {
    uint64_t word;
    std::memcpy(&word, &p.bytes[size_t(done / 8)], 8);
    bw.put(word, 64);
  }
  for (; done < p.bits; done += 8) bw.put(p.bytes[size_t(done / 8)], int(std::min<uint64_t>(8, p.bits - done)));
}

// Bits [first, first + count) of p as a Packed of p's shape (any bit alignment).
Packed slice_bits(const Packed& p, uint64_t first, uint64_t count) {
  BitReader br(p);
  br.seek(first);
  BitWriter bw;
  for (uint64_t done = 0; done < count;) {
    const int n = int(std::min<uint64_t>(64, count - done));
    bw.put(br.get(n), n);
    done += uint64_t(n);
  }
  return finish_packed(bw, p.rows, p.cols, count);
}

class SplitFormat : public Format {
 public:
  SplitFormat(int k, std::unique_ptr<Format> inner) : k_(k), inner_(std::move(inner)) {}

  std::string spec() const override { return fmt::format("split{}:{}", k_, inner_->spec()); }
  std::string describe() const override {
    return fmt::format("SplitQuant: {} value clusters, each {} ({}x storage)", k_, inner_->spec(), k_);
  }
  std::string check_shape(int64_t rows, int64_t cols) const override { return inner_->check_shape(rows, cols); }
  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(k_) * inner_->storage_bits(rows, cols);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    if (auto why = check_shape(rows, cols); !why.empty()) throw Error(why);
    const int64_t n = rows * cols;
    const std::vector<uint8_t> label = cluster_labels(w, rows, cols, imp, k_);
    std::vector<float> part(static_cast<size_t>(n));
    BitWriter bw;
    for (int c = 0; c < k_; ++c) {
      for (int64_t i = 0; i < n; ++i) part[size_t(i)] = label[size_t(i)] == c ? w[i] : 0.0f;
      append_bits(bw, inner_->quantize(part.data(), rows, cols, imp));
    }
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  void dequantize(const Packed& p, float* out) const override {
    if (dequantize_rows(p, 0, p.rows, out)) return;
    check_size(p);
    sum_layers(p.rows * p.cols, out, [&](int c, float* layer) { inner_->dequantize(layer_packed(p, c), layer); });
  }

  // The rows of every layer, decoded in place in p's bits by the inner format's row
  // decoder (when it has one: not under rht, whose transform mixes rows).
  bool dequantize_rows(const Packed& p, int64_t r0, int64_t nr, float* out) const override {
    const RowFormat* inner = row_format(*inner_);
    if (!inner) return false;
    check_size(p);
    const PackedBits all = checked_bits(*this, p);
    const uint64_t bits = inner_->storage_bits(p.rows, p.cols);
    sum_layers(nr * p.cols, out, [&](int c, float* layer) {
      inner->decode(all.sub(uint64_t(c) * bits, bits, p.rows, p.cols), r0, nr, layer);
    });
    return true;
  }

  std::vector<SymbolStream> symbols(const Packed& p) const override {
    check_size(p);
    std::vector<SymbolStream> all;
    for (int c = 0; c < k_; ++c)
      for (auto& s : inner_->symbols(layer_packed(p, c))) {
        s.name = fmt::format("split{}_{}", c, s.name);
        all.push_back(std::move(s));
      }
    return all;
  }

 private:
  void check_size(const Packed& p) const {
    if (p.bits != storage_bits(p.rows, p.cols))
      fail("packed {} holds {} bits, expected {}", spec(), p.bits, storage_bits(p.rows, p.cols));
  }

  // out[0, n) = the sum over layers c (in order) of what decode_layer(c, buffer) writes.
  template <typename DecodeLayer>
  void sum_layers(int64_t n, float* out, DecodeLayer&& decode_layer) const {
    std::fill(out, out + n, 0.0f);
    std::vector<float> layer(static_cast<size_t>(n));
    for (int c = 0; c < k_; ++c) {
      decode_layer(c, layer.data());
      for (int64_t i = 0; i < n; ++i) out[i] += layer[size_t(i)];
    }
  }

  // Cluster c's inner packed matrix.
  Packed layer_packed(const Packed& p, int c) const {
    const uint64_t bits = inner_->storage_bits(p.rows, p.cols);
    return slice_bits(p, uint64_t(c) * bits, bits);
  }

  int k_;
  std::unique_ptr<Format> inner_;
};

std::unique_ptr<Format> parse_split(const std::vector<std::string>& tokens) {
  if (tokens[0].rfind("split", 0) != 0) return nullptr;
  const auto k = int_after(tokens[0], "split");
  if (!k || *k < kMinClusters || *k > kMaxClusters)
    fail("'{}': the number of clusters k must be an integer in [{}, {}]", tokens[0], kMinClusters, kMaxClusters);
  if (tokens.size() < 2) throw Error("the inner format is required: split<k>:<spec>");
  if (tokens[1].rfind("split", 0) == 0) throw Error("split cannot be nested");
  std::string inner = tokens[1];
  for (size_t i = 2; i < tokens.size(); ++i) inner.append(":").append(tokens[i]);
  return std::make_unique<SplitFormat>(int(*k), make_format(inner));
}

Registrar reg{FormatFamily{"split", "split<k>:<spec> (k = 2..8, any other format's spec)",
                           "SplitQuant: k value clusters (1-D k-means over the weights), each quantized by the inner "
                           "format, summed (k x storage)",
                           {"split3:int4:row", "split2:int3:g64:asym", "split3:int2:row"},
                           parse_split}};

}  // namespace
}  // namespace quantkit::formats
