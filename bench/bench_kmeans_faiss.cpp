// k-means training: quantkit's engine (formats/kmeans.h) against FAISS's faiss::Clustering
// on the same N(0,1) data, same k, same number of Lloyd iterations, 1 and 2 threads.
//
// Reported per run: training time and the final MSE per coordinate, both codebooks scored
// by the same exact nearest-codeword pass over all points. After the runs a table prints
// the ratios quantkit/FAISS (time < 1: quantkit faster; MSE < 1: quantkit more accurate).
//
// FAISS is a benchmark-only dependency (Debian: libfaiss-dev). bench/faiss.cmake links it
// and defines QK_HAVE_FAISS; without it this bench times quantkit alone.
//
//   OMP_WAIT_POLICY=passive ./build/bench/bench_kmeans_faiss [--benchmark_filter=...]
//
// OMP_WAIT_POLICY=passive is FAISS's fair setting here: its OpenMP threads otherwise spin
// while OpenBLAS's pthreads run the GEMM on the same two cores, and FAISS at 2 threads
// becomes several times slower than at 1. (libgomp reads it before main: set it outside.)
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "formats/kmeans.h"
#include "quantkit/thread_pool.h"

#if defined(QK_HAVE_FAISS)
#include <cblas.h>
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <omp.h>
#endif

namespace {

using namespace quantkit;
using namespace quantkit::formats;

constexpr int kIterations = 20;

const std::vector<float>& data(int64_t n, int64_t d) {
  static std::map<std::pair<int64_t, int64_t>, std::vector<float>> cache;
  auto& v = cache[{n, d}];
  if (v.empty()) {
    std::mt19937_64 rng(1234);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    v.resize(size_t(n * d));
    for (auto& x : v) x = nd(rng);
  }
  return v;
}

// MSE per coordinate of the best encoding of every point with `codebook`.
double mse(const std::vector<float>& x, int64_t n, int64_t d, const float* codebook, int64_t k) {
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::vector<float> dist(static_cast<size_t>(n));
  nearest_codewords(PointSet::unweighted(x.data(), n, d), codebook, k, idx.data(), dist.data());
  double s = 0;
  for (float v : dist) s += v;
  return s / double(n * d);
}

struct Measurement {
  double seconds = 0, mse = 0;
};
// Best (minimum) time and the MSE of each run, keyed by "<engine>/n/d/k/threads".
std::map<std::string, Measurement> g_results;

std::string key(const std::string& engine, const benchmark::State& st) {
  return engine + "/" + std::to_string(st.range(0)) + "/" + std::to_string(st.range(1)) + "/" +
         std::to_string(st.range(2)) + "/" + std::to_string(st.range(3));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void record(benchmark::State& st, const std::string& engine, double seconds, double mse_value) {
  auto& m = g_results[key(engine, st)];
  if (m.seconds == 0 || seconds < m.seconds) m.seconds = seconds;
  m.mse = mse_value;
  st.counters["mse"] = mse_value;
  st.counters["sqnr_db"] = -10.0 * std::log10(mse_value);
}

// args: n, d, k, threads
void run_quantkit(benchmark::State& st, KMeansInit init, const char* engine) {
  const int64_t n = st.range(0), d = st.range(1), k = st.range(2);
  set_num_threads(int(st.range(3)));
  const auto& x = data(n, d);
  KMeansOptions o;
  o.k = k;
  o.iterations = kIterations;
  o.init = init;
  for (auto _ : st) {
    const auto t0 = std::chrono::steady_clock::now();
    KMeansResult r = kmeans(PointSet::unweighted(x.data(), n, d), o);
    const double t = seconds_since(t0);
    st.SetIterationTime(t);  // manual time: the scoring below is not counted
    record(st, engine, t, mse(x, n, d, r.centroids.data(), k));
  }
}

void BM_QuantkitKMeansPlusPlus(benchmark::State& st) { run_quantkit(st, KMeansInit::PlusPlus, "quantkit++"); }
void BM_QuantkitKMeansRandomInit(benchmark::State& st) { run_quantkit(st, KMeansInit::Random, "quantkit-random"); }

#if defined(QK_HAVE_FAISS)
// FAISS with its defaults except: every point trains (no 256-per-centroid subsample, as
// quantkit uses them all) and the same iteration count. Its GEMM runs on OpenBLAS threads
// and its argmin on OpenMP threads; both get the thread count.
void BM_FaissClustering(benchmark::State& st) {
  const int64_t n = st.range(0), d = st.range(1), k = st.range(2);
  const int threads = int(st.range(3));
  set_num_threads(threads);  // also OpenBLAS
  omp_set_num_threads(threads);
  const auto& x = data(n, d);
  for (auto _ : st) {
    faiss::ClusteringParameters cp;
    cp.niter = kIterations;
    cp.seed = 1234;
    cp.max_points_per_centroid = int(n);
    faiss::Clustering clustering(int(d), int(k), cp);
    faiss::IndexFlatL2 index(d);
    const auto t0 = std::chrono::steady_clock::now();
    clustering.train(n, x.data(), index);
    const double t = seconds_since(t0);
    st.SetIterationTime(t);
    record(st, "faiss", t, mse(x, n, d, clustering.centroids.data(), k));
  }
}
#endif

void configs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "d", "k", "threads"});
  for (int threads : {1, 2}) {
    b->Args({1 << 16, 8, 256, threads});
    b->Args({1 << 18, 8, 256, threads});
    b->Args({1 << 18, 4, 256, threads});
  }
  b->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(2);
}

BENCHMARK(BM_QuantkitKMeansPlusPlus)->Apply(configs);
BENCHMARK(BM_QuantkitKMeansRandomInit)->Apply(configs);
#if defined(QK_HAVE_FAISS)
BENCHMARK(BM_FaissClustering)->Apply(configs);
#endif

void print_ratios() {
#if defined(QK_HAVE_FAISS)
  std::printf("\nquantkit / FAISS (%d Lloyd iterations, best of runs; time < 1 and mse <= 1 favour quantkit)\n",
              kIterations);
  std::printf("%-22s %-16s %10s %10s %10s %10s\n", "n/d/k/threads", "quantkit init", "time", "mse", "qk s", "faiss s");
  for (const auto& [k, faiss] : g_results) {
    if (k.rfind("faiss/", 0) != 0) continue;
    const std::string config = k.substr(6);
    for (const auto& [engine, init] : {std::pair{"quantkit++", "k-means++"}, std::pair{"quantkit-random", "random"}}) {
      auto it = g_results.find(std::string(engine) + "/" + config);
      if (it == g_results.end()) continue;
      std::printf("%-22s %-16s %10.3f %10.4f %10.3f %10.3f\n", config.c_str(), init,
                  it->second.seconds / faiss.seconds, it->second.mse / faiss.mse, it->second.seconds, faiss.seconds);
    }
  }
  if (!std::getenv("OMP_WAIT_POLICY"))
    std::printf("(OMP_WAIT_POLICY unset: FAISS's OpenMP threads spin against OpenBLAS's; see the header)\n");
#else
  std::printf("\nFAISS not linked (include bench/faiss.cmake with libfaiss-dev installed): no ratios.\n");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_ratios();
  return 0;
}
