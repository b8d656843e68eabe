#include "quantkit/thread_pool.h"

#include <cblas.h>

#include <memory>

namespace quantkit {

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
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

void ThreadPool::worker(int id) {
  uint64_t seen = 0;
  for (;;) {
    const std::function<void(int64_t, int64_t)>* job;
    int64_t n;
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
      n = job_n_;
    }
    run_chunk(*job, n, id, n_threads_);
    std::lock_guard<std::mutex> lock(mu_);
    if (--pending_ == 0) done_cv_.notify_one();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n_threads_ == 1 || n <= 1 || t_in_chunk) {
    if (n > 0) fn(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    job_n_ = n;
    pending_ = n_threads_ - 1;
    ++generation_;
  }
  start_cv_.notify_all();
  run_chunk(fn, n, 0, n_threads_);
  std::unique_lock<std::mutex> lock(mu_);
  done_cv_.wait(lock, [&] { return pending_ == 0; });
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
