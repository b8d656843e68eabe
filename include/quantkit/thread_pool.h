// A persistent pool of worker threads. parallel_for splits [0, n) into contiguous
// chunks, one per thread, so the work a given index does never depends on how many
// threads run (results are identical for any thread count).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace quantkit {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // Calls fn(begin, end) on disjoint chunks covering [0, n); returns when all are done.
  // An exception from a chunk is rethrown here once every chunk has finished (the lowest
  // chunk's, when several throw: the error a serial loop would have met first).
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker(int id);

  int n_threads_;
  std::chrono::microseconds spin_;  // 0 with more threads than cores
  std::vector<std::thread> threads_;
  // Workers and the caller spin briefly on the atomics before sleeping on the condition
  // variables: generation issues ~150 short parallel_fors per token, and a futex wake-up
  // per call costs tens of microseconds. The mutex orders the sleepers against the wakers.
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_n_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::exception_ptr> errors_;  // per thread id, for the current job
};

// The process-wide pool and thread count (`--threads`). OpenBLAS is held at one thread:
// callers split its products into blocks that do not depend on the count (determinism).
ThreadPool& global_pool();
void set_num_threads(int n);  // n <= 0: hardware concurrency
int num_threads();

}  // namespace quantkit
