// Codebook formats (vq, rvq) at a real size, 4096 x 4096: the layer (PackedLinear's
// "vq-lut" path: tables up to kLutMaxTokens tokens, row tiles beyond) against the two ways the same codes can be multiplied
// without tables, measured in the same run:
//  - whole matrix: Format::dequantize of the packed matrix, then our FP32 GEMM (what every
//    codebook layer did per call before the tables);
//  - row tiles: 8 rows decoded from the codes into a per-thread buffer, dotted with every
//    token (the path of codebooks too large for a cached table).
// Generation is one token (tg), prompt processing 256 (pp). The codebooks are trained with
// 2 Lloyd iterations (":i2"): speed does not depend on their quality.
#include <algorithm>
#include <cstdio>
#include <vector>

#include "bench_util.h"
#include "kernels/gemm.h"
#include "kernels/lut_vq.h"
#include "quantkit/format.h"
#include "quantkit/linear.h"
#include "quantkit/thread_pool.h"

using namespace quantkit;

namespace {

using qk_bench::gaussian;
using qk_bench::median_time;
using qk_bench::now;

void row_tiles(const kernels::CodebookMatrix& m, const float* x, int64_t n, float* y) {
  constexpr int64_t kTile = 8;
  const int64_t rows = m.rows(), cols = m.cols();
  global_pool().parallel_for((rows + kTile - 1) / kTile, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<float> w;
    w.resize(size_t(kTile * cols));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * kTile, nr = std::min(kTile, rows - r0);
      m.decode_rows(r0, nr, w.data());
      kernels::tile_dot(w.data(), nr, cols, x, n, cols, cols, y + r0, rows);
    }
  });
}

void bench_spec(const std::string& spec, int64_t rows, int64_t cols) {
  const auto f = make_format(spec);
  const std::vector<float> w = gaussian(size_t(rows * cols), 1, 0.02f);
  const double tq = now();
  const Packed pk = f->quantize(w.data(), rows, cols, nullptr);
  std::printf("%s %lldx%lld: %.3f bits/weight, quantized in %.1f s\n", spec.c_str(), (long long)rows,
              (long long)cols, pk.bits_per_weight(), now() - tq);
  TensorView v{"w", DType::QK, {rows, cols}, pk.bytes.data(), pk.bytes.size()};
  v.format = spec;
  v.stored_cols = cols;
  const PackedLinear lin(v);
  const auto cm = kernels::CodebookMatrix::from_packed(*f, pk, cols);
  std::printf("  path %s, table %.0f KiB per token, layer holds %.2f MiB (packed %.2f MiB)\n", lin.path(),
              double(cm->table_bytes()) / 1024, double(lin.weight_bytes()) / (1 << 20),
              double(pk.bytes.size()) / (1 << 20));
  std::vector<float> deq(size_t(rows * cols));
  for (const int64_t n : {int64_t(1), int64_t(256)}) {
    const std::vector<float> x = gaussian(size_t(n * cols), 2, 1.0f);
    std::vector<float> y(size_t(n * rows));
    const int reps_fast = n == 1 ? 50 : 5;
    const double t_lut = median_time(reps_fast, [&] { lin.forward(x.data(), n, y.data()); });
    const double t_tiles = median_time(reps_fast, [&] { row_tiles(*cm, x.data(), n, y.data()); });
    const double t_whole = median_time(3, [&] {
      f->dequantize(pk, deq.data());
      kernels::matmul_nt(x.data(), n, deq.data(), rows, cols, y.data());
    });
    std::printf("  %s n=%-3lld  layer (%s) %8.3f ms   row tiles %8.3f ms   whole matrix %8.3f ms   "
                "whole/layer %6.1fx   tiles/layer %5.2fx\n",
                n == 1 ? "tg" : "pp", (long long)n, n <= kernels::kLutMaxTokens ? "tables" : "row tiles", t_lut * 1e3, t_tiles * 1e3, t_whole * 1e3, t_whole / t_lut,
                t_tiles / t_lut);
  }
}

}  // namespace

int main(int argc, char** argv) {
  set_num_threads(0);
  std::printf("threads %d\n", num_threads());
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  for (const std::string spec : {"vq:d8:k256:i2", "rvq:d8:2x256:i2", "vq:d4:k256:i2"}) bench_spec(spec, n, n);
  return 0;
}
