// Rotated formats (rht:<inner>) at real sizes: the layer (PackedLinear's "rotated" path,
// y = R^T Q' (C x) through the inner format's own kernel) against, in the same run:
//  - inner only: the inner format's layer on the same codes, without the two transforms
//    (the floor: what the rotation costs on top);
//  - whole matrix: Format::dequantize of the packed matrix, then our FP32 GEMM (what rht
//    layers did per call before the rotated path).
// Generation is one token (tg), prompt processing 256 (pp).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels/gemm.h"
#include "quantkit/format.h"
#include "quantkit/linear.h"
#include "quantkit/thread_pool.h"

using namespace quantkit;
using qk_bench::gaussian;
using qk_bench::median_time;
using qk_bench::now;

namespace {

PackedLinear layer_of(const std::string& spec, const Packed& p) {
  TensorView v{"w", DType::QK, {p.rows, p.cols}, p.bytes.data(), p.bytes.size()};
  v.format = spec, v.stored_cols = p.cols;
  return PackedLinear(v);
}

void bench_spec(const std::string& spec, int64_t rows, int64_t cols) {
  const auto f = make_format(spec);
  const std::vector<float> w = gaussian(size_t(rows * cols), 1, 0.02f);
  const double tq = now();
  const Packed pk = f->quantize(w.data(), rows, cols, nullptr);
  const auto rotated = f->rotated(pk);
  std::printf("%s %lldx%lld: %.3f bits/weight, quantized in %.1f s\n", spec.c_str(), (long long)rows,
              (long long)cols, pk.bits_per_weight(), now() - tq);
  const PackedLinear lin = layer_of(spec, pk);
  const PackedLinear inner = layer_of(rotated->inner->spec(), rotated->inner_packed);
  std::printf("  path %s, layer holds %.2f MiB (packed %.2f MiB)\n", lin.path(), double(lin.weight_bytes()) / (1 << 20),
              double(pk.bytes.size()) / (1 << 20));
  std::vector<float> deq(size_t(rows * cols));
  for (const int64_t n : {int64_t(1), int64_t(256)}) {
    const std::vector<float> x = gaussian(size_t(n * cols), 2, 1.0f);
    std::vector<float> y(size_t(n * rows));
    const int reps = n == 1 ? 50 : 5;
    const double t_layer = median_time(reps, [&] { lin.forward(x.data(), n, y.data()); });
    const double t_inner = median_time(reps, [&] { inner.forward(x.data(), n, y.data()); });
    const double t_whole = median_time(3, [&] {
      f->dequantize(pk, deq.data());
      kernels::matmul_nt(x.data(), n, deq.data(), rows, cols, y.data());
    });
    std::printf("  %s n=%-3lld  layer %8.3f ms   inner only %8.3f ms   whole matrix %8.3f ms   "
                "whole/layer %6.1fx   layer/inner %5.2fx\n",
                n == 1 ? "tg" : "pp", (long long)n, t_layer * 1e3, t_inner * 1e3, t_whole * 1e3, t_whole / t_layer,
                t_layer / t_inner);
  }
}

}  // namespace

int main(int argc, char** argv) {
  set_num_threads(0);
  std::printf("threads %d\n", num_threads());
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  for (const std::string spec : {"rht:int4:g128", "rht:q4_0", "rht:nf4:g64", "rht:e8:b2"}) bench_spec(spec, n, n);
  bench_spec("rht:int4:g128", 5632, 2048);  // a ~1B Llama's up projection: two Hadamard blocks per output
  return 0;
}
