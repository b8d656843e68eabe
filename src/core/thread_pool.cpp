#include "quantkit/thread_pool.h"

#include <cblas.h>

#include <chrono>
#include <exception>
#include <memory>

namespace quantkit {

ThreadPool::ThreadPool(int n_threads)
    : n_threads_(n_threads < 1 ? 1 : n_threads),
      spin_(unsigned(n_threads_) <= std::thread::hardware_concurrency() ? 200 : 0),
      errors_(size_t(n_threads_)) {
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  start_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

// Set while a thread runs a chunk: a parallel_for issued from inside one (a kernel called
// by code that is itself split across the pool) runs inline instead of deadlocking.
static thread_local bool t_in_chunk = false;

static void run_chunk(const std::function<void(int64_t, int64_t)>& fn, int64_t n, int id, int parts) {
  int64_t begin = n * id / parts, end = n * (id + 1) / parts;
  if (begin >= end) return;
  t_in_chunk = true;
  try {
    fn(begin, end);
  } catch (...) {
    t_in_chunk = false;
    throw;
  }
  t_in_chunk = false;
}

static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Polls `ready` for up to `limit`; true once it holds. 200 us bridges the serial work
// between a token's parallel_fors and lets an idle pool soon sleep. The yields hand the
// core to a thread that has work when cores are shared (other processes, or more
// threads than cores, where the pool does not spin at all).
template <class Ready>
static bool spin_until(Ready ready, std::chrono::microseconds limit) {
  if (limit.count() == 0) return ready();
  const auto t0 = std::chrono::steady_clock::now();
  for (unsigned i = 1;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if (i % 128 == 0) {
      if (std::chrono::steady_clock::now() - t0 > limit) return false;
      std::this_thread::yield();
    }
  }
}

void ThreadPool::worker(int id) {
  uint64_t seen = 0;
  const auto started = [&] { return stop_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen; };
  for (;;) {
    if (!spin_until(started, spin_)) {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, started);
    }
    if (stop_.load()) return;
    // job_ / job_n_ were written before the generation was published (release).
    seen = generation_.load(std::memory_order_acquire);
    try {
      run_chunk(*job_, job_n_, id, n_threads_);
    } catch (...) {
      errors_[size_t(id)] = std::current_exception();  // published by the pending_ release below
    }
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);  // the caller checks pending_ under it before sleeping
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n_threads_ == 1 || n <= 1 || t_in_chunk) {
    if (n > 0) fn(0, n);
    return;
  }
  job_ = &fn;
  job_n_ = n;
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);  // a worker checks the generation under it before sleeping
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_cv_.notify_all();
  try {
    run_chunk(fn, n, 0, n_threads_);
  } catch (...) {
    errors_[0] = std::current_exception();  // the workers still use fn: wait for them first
  }
  const auto done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done, spin_)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, done);
  }
  for (std::exception_ptr& e : errors_)
    if (e) {
      const std::exception_ptr first = e;
      for (std::exception_ptr& other : errors_) other = nullptr;
      std::rethrow_exception(first);
    }
}

namespace {
int g_threads = 0;
std::unique_ptr<ThreadPool> g_pool;
}  // namespace

void set_num_threads(int n) {
  if (n <= 0) n = int(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  if (n == g_threads && g_pool) return;
  g_threads = n;
  g_pool = std::make_unique<ThreadPool>(n);
  // OpenBLAS always runs on the calling thread: callers split products into blocks that do
  // not depend on n (kernels::for_fixed_blocks). Its own split does, and its edge tiles
  // round differently from its full ones, so its results would change with --threads.
  openblas_set_num_threads(1);
}

int num_threads() {
  if (!g_pool) set_num_threads(0);
  return g_threads;
}

ThreadPool& global_pool() {
  if (!g_pool) set_num_threads(0);
  return *g_pool;
}

}  // namespace quantkit
