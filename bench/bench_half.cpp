// 16-bit float weights (F16, BF16) at a real size: the layer (PackedLinear on the 16-bit
// bytes: FMAs on weights widened in registers, or BF16 products on AMX tiles where the CPU
// has them) against, in the same run, the
// FP32 layer (DenseLinear: the weights widened once to an FP32 copy at load, twice the
// bytes, multiplied by our FP32 GEMM) that F16/BF16 models used before.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench_util.h"
#include "quantkit/fp16.h"
#include "quantkit/linear.h"
#include "quantkit/thread_pool.h"

using namespace quantkit;
using qk_bench::gaussian;
using qk_bench::median_time;

namespace {

void bench_shape(int64_t rows, int64_t cols) {
  const std::vector<float> w = gaussian(size_t(rows * cols), 1, 0.02f);
  std::vector<uint16_t> f16(w.size()), bf16(w.size());
  for (size_t i = 0; i < w.size(); ++i) f16[i] = f32_to_f16(w[i]), bf16[i] = f32_to_bf16(w[i]);
  const auto view = [&](DType t, const std::vector<uint16_t>& b) {
    return TensorView{"w", t, {rows, cols}, b.data(), b.size() * 2};
  };
  const auto dense = make_linear(TensorView{"w", DType::F32, {rows, cols}, w.data(), w.size() * 4});
  const PackedLinear lf16(view(DType::F16, f16)), lbf16(view(DType::BF16, bf16));
  std::printf("%lldx%lld: paths %s / %s (bf16 widened when int8 activations are off)\n", (long long)rows,
              (long long)cols, lf16.path(), lbf16.path());
  for (const int64_t n : {1, 16, 64, 256}) {
    const std::vector<float> x = gaussian(size_t(n * cols), 2, 1.0f);
    std::vector<float> y(size_t(n * rows));
    const int reps = n == 1 ? 30 : n <= 64 ? 10 : 5;
    const double t32 = median_time(reps, [&] { dense->forward(x.data(), n, y.data()); });
    const double t16 = median_time(reps, [&] { lf16.forward(x.data(), n, y.data()); });
    const double tbp = median_time(reps, [&] { lbf16.forward(x.data(), n, y.data()); });
    set_int8_activations(false);
    const double tbw = median_time(reps, [&] { lbf16.forward(x.data(), n, y.data()); });
    set_int8_activations(true);
    const double gflop = 2.0 * double(rows * cols) * double(n) * 1e-9;
    std::printf("  n=%-3lld fp32 %8.3f ms   f16 %8.3f ms (%.2fx)   bf16 products %8.3f ms (%.2fx, %.0f GFLOP/s)   "
                "bf16 widened %8.3f ms (%.2fx)\n",
                (long long)n, t32 * 1e3, t16 * 1e3, t32 / t16, tbp * 1e3, t32 / tbp, gflop / tbp, tbw * 1e3, t32 / tbw);
  }
}

}  // namespace

int main(int argc, char** argv) {
  set_num_threads(0);
  std::printf("threads %d\n", num_threads());
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 4096;
  bench_shape(n, n);
  bench_shape(5632, 2048);
  return 0;
}
