// Trellis-coded quantization with QTIP's "bitshift" trellis (Tseng et al. 2024, "QTIP:
// Quantization with Trellises and Incoherence Processing"): "tcq:b<k>[:l<L>][:row|:g<G>]".
//
// Each row is cut into trellis blocks of at most 1024 consecutive weights (balanced: a row
// of n weights gives ceil(n/1024) blocks of nearly equal length). A block of T weights is a
// cyclic string of T*k bits, k per weight. Weight t reads the L-bit window of the string
// ending with its own k bits: state s_t = ((s_{t-1} << k) | b_t) mod 2^L, and the window of
// the first weights wraps around to the end of the string (tail-biting, as in QTIP: no
// start state is stored). Each of the 2^L states reconstructs to scale * c[s], where the
// codebook c is computed, never stored: the 2^L quantiles Phi^-1((i + 1/2) / 2^L) of the
// standard normal distribution, placed by a fixed pseudo-random permutation (SplitMix64
// Fisher-Yates seeded by L) so that neighbouring states get independent values (QTIP's
// random-permutation trellis code). V = 1: one weight per step.
//
// Storage: one fp16 scale per row (default) or per group of G inputs, then k bits per
// weight: bits = groups * 16 + rows * cols * k (L and the permutation come from the spec).
//
// Encoding is Viterbi over the 2^L states (2^k predecessors each), minimising the
// (importance-weighted) squared error of the block. Tail-biting: a first, short Viterbi
// pass over the wrap-around (the last and first 6L/k weights) picks the overlap bits at
// the wrap; the main pass starts from them and must end in them. On L = 8 this is within
// 0.1% of the exact tail-biting optimum (the best of all 2^(L-k) constrained passes); a
// window of 3L/k cost 0.05 dB at L = 16, blocks of 256 instead of 1024 another 0.04 dB. Blocks too short to hold
// L bits (T*k < L) are searched exhaustively. The search runs at a scale that is a fixed
// multiple of the group's RMS; the stored scale is refitted by least squares on the path.
#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <mutex>

#include "formats/common.h"
#include "formats/lattice_util.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

namespace quantkit::formats {
namespace {

constexpr int kBlock = 1024;  // longest trellis block (weights)
constexpr int kDefaultL = 16;
constexpr float kUnreachable = 1e30f;


// The computed Gaussian codebook of 2^L states (the same for every k), as fp16 numbers.
struct GaussianCodebook {
  std::vector<float> value;
  std::vector<uint16_t> value_f16;  // the same as fp16 bits (half the memory traffic)

  explicit GaussianCodebook(int L) {
    const uint32_t states = 1u << L;
    std::vector<uint32_t> perm(states);
    for (uint32_t i = 0; i < states; ++i) perm[i] = i;
    lattice::SplitMix64 rng{0x51C0DEB00C5EEDull ^ uint64_t(L)};
    for (uint32_t i = states - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(uint64_t(i) + 1)]);
    value.resize(states);
    value_f16.resize(states);
    for (uint32_t s = 0; s < states; ++s) {
      value_f16[s] = f32_to_f16(float(normal_quantile((perm[s] + 0.5) / states)));
      value[s] = f16_to_f32(value_f16[s]);
    }
  }

  // Built once per L (65536 quantiles take a few ms) and shared.
  static const GaussianCodebook& of(int L) {
    static std::mutex mu;
    static std::map<int, std::unique_ptr<GaussianCodebook>> cache;
    std::lock_guard<std::mutex> lock(mu);
    auto& entry = cache[L];
    if (!entry) entry = std::make_unique<GaussianCodebook>(L);
    return *entry;
  }
};

// The trellis geometry and its codebook.
struct TrellisCode {
  int L, k;
  uint32_t states, overlaps, branches;  // 2^L, 2^(L-k) (states sharing the next window), 2^k
  const std::vector<float>& value;      // codebook: value[s] for s < 2^L
  const std::vector<uint16_t>& value_f16;

  TrellisCode(int L_, int k_)
      : L(L_), k(k_), states(1u << L_), overlaps(1u << (L_ - k_)), branches(1u << k_),
        value(GaussianCodebook::of(L_).value), value_f16(GaussianCodebook::of(L_).value_f16) {}

  uint32_t next(uint32_t state, uint32_t bits) const { return ((state << k) | bits) & (states - 1); }

  // The states of a block from its symbols: the window of the first weights wraps around
  // the cyclic bit string (repeated as often as needed for strings shorter than L bits).
  void states_of(const uint32_t* symbols, int n, uint32_t* out) const {
    uint32_t s = 0;
    for (int filled = 0; filled < L; filled += n * k)
      for (int t = 0; t < n; ++t) s = next(s, symbols[t]);
    for (int t = 0; t < n; ++t) out[t] = s = next(s, symbols[t]);
  }
};

// ---- the Viterbi step --------------------------------------------------------------------
//
// Costs are kept per overlap u (the low L-k bits of a state, which the next state shifts
// up): m[u] = the least cost of a path whose last state ends in u. A new state s = u' + j *
// 2^(L-k) (j = its top k bits, the oldest) follows the states whose low bits are s >> k,
// so m'[u'] = min_j m[(u' >> k) + j * 2^(L-2k)] + w (x - c[s])^2, with the argmin j kept
// for the backtrack. The constant w x^2 is dropped: cost = m + c (w c - 2 w x).

void viterbi_step_scalar(const TrellisCode& code, const float* m, float* m_next, uint8_t* back, float x, float w) {
  const uint32_t U = code.overlaps, J = code.branches, stride = 1u << (code.L - 2 * code.k);
  const float* c = code.value.data();
  const float lin = -2.0f * w * x;
  for (uint32_t u = 0; u < U; ++u) {
    float best = std::numeric_limits<float>::max();
    uint8_t arg = 0;
    for (uint32_t j = 0; j < J; ++j) {
      const float v = c[u + j * U];
      const float cost = m[(u >> code.k) + j * stride] + v * (w * v + lin);
      if (cost < best) best = cost, arg = uint8_t(j);
    }
    m_next[u] = best;
    back[u] = arg;
  }
}

#if defined(__x86_64__)
// m[(u >> K) + i] for the 8 consecutive u from a multiple of 8: each m value repeats 2^K
// times.
template <int K>
__attribute__((target("avx2,fma"))) inline __m256 expand_costs(const float* p) {
  if constexpr (K == 1) {
    const __m256 four = _mm256_castps128_ps256(_mm_loadu_ps(p));
    return _mm256_permutevar8x32_ps(four, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
  } else if constexpr (K == 2) {
    const __m256 two = _mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))));
    return _mm256_permutevar8x32_ps(two, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
  } else {
    return _mm256_broadcast_ss(p);
  }
}

template <int K>
__attribute__((target("avx2,fma,f16c"))) void viterbi_step_avx2(const TrellisCode& code, const float* m, float* m_next,
                                                            uint8_t* back, float x, float w) {
  const uint32_t U = code.overlaps, stride = 1u << (code.L - 2 * K);
  const uint16_t* c = code.value_f16.data();
  const __m256 vw = _mm256_set1_ps(w), lin = _mm256_set1_ps(-2.0f * w * x);
  for (uint32_t u = 0; u < U; u += 8) {
    __m256 best = _mm256_set1_ps(std::numeric_limits<float>::max());
    __m256i arg = _mm256_setzero_si256();
    for (uint32_t j = 0; j < (1u << K); ++j) {
      const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + u + j * U)));
      const __m256 cost = _mm256_fmadd_ps(v, _mm256_fmadd_ps(vw, v, lin), expand_costs<K>(m + (u >> K) + j * stride));
      const __m256 better = _mm256_cmp_ps(cost, best, _CMP_LT_OQ);
      best = _mm256_min_ps(cost, best);
      arg = _mm256_blendv_epi8(arg, _mm256_set1_epi32(int(j)), _mm256_castps_si256(better));
    }
    _mm256_storeu_ps(m_next + u, best);
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(arg), _mm256_extracti128_si256(arg, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(back + u), _mm_packus_epi16(words, words));
  }
}

#endif  // __x86_64__

using StepFn = void (*)(const TrellisCode&, const float*, float*, uint8_t*, float, float);

StepFn choose_step(int k) {
#if !defined(__x86_64__)
  return viterbi_step_scalar;
#else
  // F16C through cpuid: clang before 18 rejects __builtin_cpu_supports("f16c").
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && [] {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
  }();
  if (!avx2) return viterbi_step_scalar;
  switch (k) {
    case 1: return viterbi_step_avx2<1>;
    case 2: return viterbi_step_avx2<2>;
    case 3: return viterbi_step_avx2<3>;
    default: return viterbi_step_avx2<4>;
  }
#endif
}

// Viterbi over one block with reusable buffers.
class Viterbi {
 public:
  explicit Viterbi(const TrellisCode& code, int max_steps)
      : code_(code), step_(choose_step(code.k)), m_(code.overlaps), m_next_(code.overlaps),
        back_(size_t(max_steps) * code.overlaps) {}

  // The least-cost state path over x[0..n) (weights w): starting after a state whose low
  // bits are `start` (any when < 0) and ending in a state whose low bits are `end` (the
  // best when < 0). Writes the n states.
  void run(const float* x, const float* w, int n, int64_t start, int64_t end, uint32_t* states) {
    std::fill(m_.begin(), m_.end(), start < 0 ? 0.0f : kUnreachable);
    if (start >= 0) m_[size_t(start)] = 0.0f;
    for (int t = 0; t < n; ++t) {
      step_(code_, m_.data(), m_next_.data(), &back_[size_t(t) * code_.overlaps], x[t], w[t]);
      m_.swap(m_next_);
    }
    uint32_t u = end >= 0 ? uint32_t(end) : uint32_t(std::min_element(m_.begin(), m_.end()) - m_.begin());
    for (int t = n - 1; t >= 0; --t) {
      states[t] = u + uint32_t(back_[size_t(t) * code_.overlaps + u]) * code_.overlaps;
      u = states[t] >> code_.k;
    }
  }

 private:
  const TrellisCode& code_;
  StepFn step_;
  std::vector<float> m_, m_next_;
  std::vector<uint8_t> back_;
};

// ---- block encoding ----------------------------------------------------------------------

// Error of reconstructing x by the states' codebook values (weights w).
double path_error(const TrellisCode& code, const float* x, const float* w, const uint32_t* states, int n) {
  double e = 0;
  for (int t = 0; t < n; ++t) {
    const double d = double(x[t]) - code.value[states[t]];
    e += double(w[t]) * d * d;
  }
  return e;
}

// Tiny blocks (n*k < L bits): every bit string.
void encode_exhaustive(const TrellisCode& code, const float* x, const float* w, int n, uint32_t* symbols) {
  std::vector<uint32_t> trial(static_cast<size_t>(n), 0), states(static_cast<size_t>(n));
  double best = std::numeric_limits<double>::infinity();
  for (uint64_t bits = 0; bits < (uint64_t(1) << (n * code.k)); ++bits) {
    for (int t = 0; t < n; ++t) trial[size_t(t)] = uint32_t(bits >> (t * code.k)) & (code.branches - 1);
    code.states_of(trial.data(), n, states.data());
    const double e = path_error(code, x, w, states.data(), n);
    if (e < best) best = e, std::copy(trial.begin(), trial.end(), symbols);
  }
}

// Tail-biting Viterbi (see the file comment). x, w: the block's scaled weights.
void encode_block(const TrellisCode& code, Viterbi& viterbi, const float* x, const float* w, int n, uint32_t* symbols) {
  if (n * code.k < code.L) return encode_exhaustive(code, x, w, n, symbols);
  // Pass 1 over the wrap-around: the last `half` weights, then the first `half`.
  const int half = std::min(n, 6 * ((code.L + code.k - 1) / code.k));
  std::vector<float> wx(size_t(2 * half)), ww(size_t(2 * half));
  std::vector<uint32_t> states(size_t(std::max(n, 2 * half)));
  for (int i = 0; i < half; ++i) {
    wx[size_t(i)] = x[n - half + i], ww[size_t(i)] = w[n - half + i];
    wx[size_t(half + i)] = x[i], ww[size_t(half + i)] = w[i];
  }
  viterbi.run(wx.data(), ww.data(), 2 * half, -1, -1, states.data());
  const uint32_t overlap = states[size_t(half - 1)] & (code.overlaps - 1);  // the state of the block's last weight
  // Pass 2: the block, starting after and ending in that overlap.
  viterbi.run(x, w, n, overlap, overlap, states.data());
  for (int t = 0; t < n; ++t) symbols[t] = states[size_t(t)] & (code.branches - 1);
}

struct TcqParams {
  int k = 2, L = kDefaultL;
  Grouping grouping{Grouping::Row, 0};
};

// The scale the Viterbi search runs at, as a ratio to the group's RMS (the codebook has
// unit variance). Measured best on N(0, 1) rows at L = 12 and 16; a second Viterbi pass at
// the refitted scale gains under 0.01 dB from these starting points.
double initial_scale_ratio(int k) {
  static constexpr double kRatio[] = {0.0, 0.87, 1.0, 1.05, 1.1};
  return kRatio[k];
}

class TcqFormat : public RowFormat {
 public:
  explicit TcqFormat(TcqParams p) : p_(p), code_(p.L, p.k) {}

  std::string spec() const override {
    std::string s = fmt::format("tcq:b{}", p_.k);
    if (p_.L != kDefaultL) s += fmt::format(":l{}", p_.L);
    if (p_.grouping.kind != Grouping::Row) s += fmt::format(":{}", p_.grouping.spec());
    return s;
  }

  std::string describe() const override {
    return fmt::format("QTIP bitshift trellis, {} bits/weight, {}-bit state ({} states), tail-biting blocks of {}, "
                       "Gaussian codebook, fp16 scale per {}",
                       p_.k, p_.L, code_.states, kBlock,
                       p_.grouping.kind == Grouping::Row ? "row" : fmt::format("{} inputs", p_.grouping.size));
  }

  uint64_t storage_bits(int64_t rows, int64_t cols) const override {
    return uint64_t(p_.grouping.count(rows, cols)) * 16 + uint64_t(rows) * uint64_t(cols) * uint64_t(p_.k);
  }

  Packed quantize(const float* w, int64_t rows, int64_t cols, const float* imp) const override {
    const int64_t groups_per_row = p_.grouping.count(1, cols);
    std::vector<float> scales(size_t(rows * groups_per_row));
    std::vector<uint32_t> symbols(size_t(rows * cols));
    global_pool().parallel_for(rows, [&](int64_t r0, int64_t r1) {
      Viterbi viterbi(code_, kBlock);
      for (int64_t r = r0; r < r1; ++r)
        encode_row(viterbi, w + r * cols, imp, cols, &scales[size_t(r * groups_per_row)], &symbols[size_t(r * cols)]);
    });
    BitWriter bw;
    for (float s : scales) bw.put_f16(s);
    for (uint32_t b : symbols) bw.put(b, p_.k);
    return finish_packed(bw, rows, cols, storage_bits(rows, cols));
  }

  // Every scale comes first, then the symbols; trellis blocks never cross rows.
  void decode_rows(const PackedBits& b, int64_t r0, int64_t nr, float* out) const override {
    const int64_t cols = b.cols, groups_per_row = p_.grouping.count(1, cols);
    const uint64_t symbols_at = uint64_t(p_.grouping.count(b.rows, cols)) * 16;
    std::vector<float> scales(static_cast<size_t>(groups_per_row)), values(static_cast<size_t>(cols));
    std::vector<uint32_t> symbols(static_cast<size_t>(cols));
    for (int64_t r = 0; r < nr; ++r) {
      BitReader br = row_reader(b, 0, uint64_t(groups_per_row) * 16, r0 + r);
      for (auto& s : scales) s = br.get_f16();
      br = row_reader(b, symbols_at, uint64_t(cols) * uint64_t(p_.k), r0 + r);
      for (auto& sym : symbols) sym = uint32_t(br.get(p_.k));
      reconstruct_row(symbols.data(), cols, values.data());
      for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = scales[size_t(c / group_cols(cols))] * values[size_t(c)];
    }
  }

  std::vector<SymbolStream> symbols(const Packed& pk) const override {
    std::vector<float> scales;
    SymbolStream s{"bits", code_.branches, {}};
    unpack(pk, scales, s.symbols);
    return {s};
  }

 private:
  int64_t group_cols(int64_t cols) const { return p_.grouping.kind == Grouping::Row ? cols : p_.grouping.size; }

  // Balanced trellis blocks of a row: block b covers [b*cols/nb, (b+1)*cols/nb).
  template <typename Fn>
  static void for_each_block(int64_t cols, Fn&& fn) {
    const int64_t nb = (cols + kBlock - 1) / kBlock;
    for (int64_t b = 0; b < nb; ++b) fn(b * cols / nb, (b + 1) * cols / nb);
  }

  // The unit-scale reconstruction of a row from its symbols.
  void reconstruct_row(const uint32_t* symbols, int64_t cols, float* values) const {
    std::vector<uint32_t> states(kBlock);
    for_each_block(cols, [&](int64_t c0, int64_t c1) {
      code_.states_of(symbols + c0, int(c1 - c0), states.data());
      for (int64_t c = c0; c < c1; ++c) values[c] = code_.value[states[size_t(c - c0)]];
    });
  }

  // Viterbi over the row's blocks at the given group scales.
  void trellis_row(Viterbi& viterbi, const float* row, const float* imp, int64_t cols, const float* scales,
                   uint32_t* symbols) const {
    std::vector<float> x(kBlock), w(kBlock);
    for_each_block(cols, [&](int64_t c0, int64_t c1) {
      // Scaled targets; the weight of a step is imp * scale^2 (the error in weight units),
      // normalised to at most 1 so that costs stay in float range.
      float wmax = 0;
      for (int64_t c = c0; c < c1; ++c) {
        const float s = scales[c / group_cols(cols)];
        const size_t i = size_t(c - c0);
        x[i] = s > 0 ? std::clamp(row[c] / s, -1e4f, 1e4f) : 0.0f;
        w[i] = s > 0 ? (imp ? imp[c] : 1.0f) * s * s : 0.0f;
        if (!(w[i] < std::numeric_limits<float>::infinity())) w[i] = std::numeric_limits<float>::max();
        wmax = std::max(wmax, w[i]);
      }
      for (int64_t i = 0; i < c1 - c0; ++i) w[size_t(i)] = wmax > 0 ? w[size_t(i)] / wmax : 1.0f;
      encode_block(code_, viterbi, x.data(), w.data(), int(c1 - c0), symbols + c0);
    });
  }

  // Scales from the RMS, Viterbi at those scales, then the least-squares refit of each
  // group's scale on the chosen path.
  void encode_row(Viterbi& viterbi, const float* row, const float* imp, int64_t cols, float* scales,
                  uint32_t* symbols) const {
    const int64_t gc = group_cols(cols), ngroups = (cols + gc - 1) / gc;
    for (int64_t g = 0; g < ngroups; ++g) {
      double sw = 0, swx = 0;
      for (int64_t c = g * gc; c < std::min(cols, (g + 1) * gc); ++c) {
        const double wi = imp ? imp[c] : 1.0;
        sw += wi, swx += wi * double(row[c]) * row[c];
      }
      scales[g] = lattice::round_scale_f16(sw > 0 ? std::sqrt(swx / sw) * initial_scale_ratio(p_.k) : 0.0);
    }
    trellis_row(viterbi, row, imp, cols, scales, symbols);
    std::vector<float> values(static_cast<size_t>(cols)), wg;
    reconstruct_row(symbols, cols, values.data());
    for (int64_t g = 0; g < ngroups; ++g) {
      const int64_t c0 = g * gc, n = std::min(cols, c0 + gc) - c0;
      wg.assign(size_t(n), 1.0f);
      if (imp) std::copy(imp + c0, imp + c0 + n, wg.begin());
      const float refit = lattice::round_scale_f16(lattice::least_squares_gain(row + c0, &values[size_t(c0)], wg.data(), n));
      if (refit > 0) scales[g] = refit;
    }
  }

  void unpack(const Packed& pk, std::vector<float>& scales, std::vector<uint32_t>& symbols) const {
    if (pk.bits != storage_bits(pk.rows, pk.cols))
      fail("packed {} holds {} bits, expected {}", spec(), pk.bits, storage_bits(pk.rows, pk.cols));
    BitReader br(pk);
    scales.resize(size_t(p_.grouping.count(pk.rows, pk.cols)));
    for (auto& s : scales) s = br.get_f16();
    symbols.resize(size_t(pk.rows * pk.cols));
    for (auto& b : symbols) b = uint32_t(br.get(p_.k));
  }

  TcqParams p_;
  TrellisCode code_;
};

std::unique_ptr<Format> parse_tcq(const std::vector<std::string>& tokens) {
  if (tokens[0] != "tcq") return nullptr;
  SpecTokens t(tokens);
  TcqParams p;
  const auto bits = t.take_int("b");
  if (!bits) throw Error("the bits per weight b<k> are required");
  if (*bits < 1 || *bits > 4) throw Error(fmt::format("bits per weight {} out of range [1, 4]", *bits));
  p.k = int(*bits);
  if (auto L = t.take_int("l")) p.L = int(std::min<int64_t>(*L, 99));
  const int min_L = std::max(2 * p.k, p.k + 3);
  if (p.L < min_L || p.L > 16) throw Error(fmt::format("state bits l{} out of range [{}, 16]", p.L, min_L));
  p.grouping = Grouping::parse(t, {Grouping::Row, 0});
  if (p.grouping.kind == Grouping::Tensor) throw Error("the scale is per row or per group, not per tensor");
  t.finish();
  return std::make_unique<TcqFormat>(p);
}

Registrar reg{FormatFamily{
    "tcq",
    "tcq:b<k>[:l<L>][:row|:g<G>] (k = 1..4 bits per weight, L = max(2k, k+3)..16 state bits (default 16), "
    "fp16 scale per row (default) or per G inputs)",
    "trellis-coded quantization (QTIP bitshift trellis, Viterbi, tail-biting, computed Gaussian codebook)",
    {"tcq:b2", "tcq:b3", "tcq:b4", "tcq:b2:l12", "tcq:b2:g128"},
    parse_tcq}};

}  // namespace

namespace lattice {

std::vector<float> trellis_codebook(int L) { return GaussianCodebook::of(L).value; }

}  // namespace lattice
}  // namespace quantkit::formats
