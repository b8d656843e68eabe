// Packed-weight matmul kernels at real sizes. Generation reads every weight once per token,
// so a matrix-vector product is bounded by memory bandwidth: the baseline measured in the
// same run is a multithreaded read of an equally large buffer (the most a kernel can
// stream). Prompt processing (256 tokens) is compute-bound: its baseline is our FP32
// GEMM (kernels/gemm) on the dequantized matrix.
//
// The weight set is larger than the last-level cache (codes and scales are random: speed
// does not depend on the values), and the kernels cycle through it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/block_q.h"
#include "kernels/gemm.h"
#include "quantkit/fp16.h"
#include "quantkit/thread_pool.h"

using namespace quantkit;
using namespace quantkit::kernels;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

BlockQMatrix random_matrix(CodeKind kind, int64_t rows, int64_t cols, int64_t blocks_per_scale, bool has_min,
                           uint64_t seed) {
  std::mt19937_64 rng(seed);
  BlockQMatrix w;
  w.kind = kind;
  w.rows = rows;
  w.cols = cols;
  w.blocks_per_row = cols / kQBlock;
  w.blocks_per_scale = blocks_per_scale;
  w.scales_per_row = w.blocks_per_row / blocks_per_scale;
  w.has_min = has_min;
  w.offset = kind == CodeKind::U4 && !has_min ? 8.0f : 0.0f;
  w.q.resize(size_t(rows * w.blocks_per_row * w.code_bytes()));
  for (auto& b : w.q) b = uint8_t(rng());
  w.d.assign(size_t(rows * w.scales_per_row), f32_to_f16(0.01f));
  if (has_min) w.m.assign(w.d.size(), f32_to_f16(-0.05f));
  return w;
}

// Multithreaded streaming read of `bytes` (a sum, so it cannot be optimised away): GB/s.
double read_bandwidth(size_t bytes, int reps) {
  std::vector<uint64_t> buf(bytes / 8, 1);
  std::vector<uint64_t> sums(64, 0);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now();
    global_pool().parallel_for(int64_t(buf.size()), [&](int64_t i0, int64_t i1) {
      uint64_t s = 0;
      for (int64_t i = i0; i < i1; ++i) s += buf[size_t(i)];
      sums[size_t(i0 * 8 / int64_t(buf.size()))] += s;
    });
    best = std::min(best, now() - t0);
  }
  return double(bytes) / best / 1e9;
}

struct Layout {
  const char* name;
  CodeKind kind;
  int64_t blocks_per_scale;
  bool has_min;
};

}  // namespace

int main() {
  set_num_threads(0);
  const int64_t rows = 4096, cols = 4096;
  const Layout formats[] = {{"q4_0", CodeKind::S4, 1, false},
                            {"q8_0", CodeKind::S8, 1, false},
                            {"int4:g128", CodeKind::U4, 4, false},
                            {"q4_k (as 32-blocks)", CodeKind::U4, 1, true}};
  std::printf("packed matmul kernels (%s), %lld x %lld, %d threads\n", blockq_isa(), (long long)rows,
              (long long)cols, num_threads());
  const double read_gbs = read_bandwidth(size_t(1) << 30, 5);
  std::printf("baseline: streaming read of 1 GiB: %.1f GB/s\n\n", read_gbs);

  // FP32 GEMM baseline for 256 tokens.
  const int64_t n_pp = 256;
  std::vector<float> x(size_t(n_pp * cols));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  double gemm_s;
  {
    std::vector<float> wf(size_t(rows * cols), 0.01f), y(size_t(n_pp * rows), 0.0f);
    Buffer packed;
    // y (n x rows) += x (n x cols) * w^T (cols x rows)
    const double t0 = now();
    gemm_acc(n_pp, rows, cols, View{x.data(), cols, 1}, View{wf.data(), 1, cols}, y.data(), rows, packed);
    gemm_s = now() - t0;
  }
  std::printf("baseline: FP32 GEMM 256 tokens: %.3f s (%.1f GFLOP/s)\n\n", gemm_s,
              2.0 * double(n_pp * rows * cols) / gemm_s / 1e9);
  std::printf("%-20s %-16s %9s %10s %9s %12s %12s\n", "format", "kernel", "MB/matrix", "tg GB/s", "% of read",
              "pp tok/s", "pp vs FP32");
  std::vector<BlockQKernel> kernels = blockq_kernels();
  kernels.pop_back();  // the scalar reference: minutes at this size
  // The 16-row kernel runs on its own (interleaved) copy of the matrices.
  if (blockq_i16_supported()) kernels.insert(kernels.begin(), BlockQKernel{"avx512-vnni-i16", blockq_matmul_i16});

  for (const Layout& f : formats) {
    const size_t one = random_matrix(f.kind, 8, cols, f.blocks_per_scale, f.has_min, 1).bytes() * (rows / 8);
    const int count = int(std::max<size_t>(2, (size_t(1200) << 20) / one));  // > LLC
    std::vector<BlockQMatrix> ws;
    for (int i = 0; i < count; ++i) ws.push_back(random_matrix(f.kind, rows, cols, f.blocks_per_scale, f.has_min, i));
    std::vector<float> y(size_t(n_pp * rows));
    Q8Activations a1, app;
    quantize_activations(x.data(), 1, cols, cols / kQBlock, a1);
    quantize_activations(x.data(), n_pp, cols, cols / kQBlock, app);
    std::vector<BlockQMatrix> ws16;
    if (blockq_i16_supported())
      for (const auto& w : ws) blockq_interleave16(ws16.emplace_back(w));
    for (const BlockQKernel& k : kernels) {
      const bool i16 = k.fn == blockq_matmul_i16;
      const int64_t group = i16 ? 16 : 1;
      auto run = [&](const BlockQMatrix& w, const Q8Activations& a) {
        global_pool().parallel_for(rows / group, [&](int64_t g0, int64_t g1) {
          k.fn(w, a, y.data(), rows, g0 * group, g1 * group);
        });
      };
      const std::vector<BlockQMatrix>& mats = i16 ? ws16 : ws;
      double best_tg = 1e30, best_pp = 1e30;
      for (int rep = 0; rep < 3; ++rep) {
        const double t0 = now();
        for (const auto& w : mats) run(w, a1);
        best_tg = std::min(best_tg, (now() - t0) / count);
      }
      for (int rep = 0; rep < 2; ++rep) {
        const double t0 = now();
        run(mats[size_t(rep)], app);
        best_pp = std::min(best_pp, now() - t0);
      }
      const double gbs = double(one) / best_tg / 1e9;
      std::printf("%-20s %-16s %9.2f %10.1f %8.0f%% %12.1f %11.2fx\n", f.name, k.isa, double(one) / 1e6, gbs,
                  100.0 * gbs / read_gbs, double(n_pp) / best_pp, gemm_s / best_pp);
    }
  }
  return 0;
}
