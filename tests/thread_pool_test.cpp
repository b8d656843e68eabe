// The persistent pool: every index runs exactly once, a job issued after the workers went
// to sleep still runs (the spin-then-sleep hand-off), and an error in a chunk reaches the
// caller only after every worker has finished with the job.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "quantkit/thread_pool.h"

using namespace quantkit;

namespace {

// Runs `jobs` parallel_fors over n indices, sleeping `pause` between them; every index of
// every job must be visited exactly once.
void expect_every_index_once(ThreadPool& pool, int jobs, int64_t n, std::chrono::microseconds pause) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  for (int j = 0; j < jobs; ++j) {
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
    });
    if (pause.count() > 0) std::this_thread::sleep_for(pause);
  }
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), jobs) << "index " << i;
}

}  // namespace

TEST(ThreadPool, BackToBackJobsVisitEveryIndexOnce) {
  for (int threads : {2, 4, 8}) {  // spinning (threads <= cores) and sleeping hand-offs
    ThreadPool pool(threads);
    expect_every_index_once(pool, 3000, 37, std::chrono::microseconds(0));
  }
}

TEST(ThreadPool, JobsAfterTheWorkersSleptStillRun) {
  // Pauses well past the spin window: each job must wake the sleeping workers.
  ThreadPool pool(3);
  expect_every_index_once(pool, 20, 11, std::chrono::microseconds(2000));
}

TEST(ThreadPool, ChunksMatchTheThreadCountNotTheTiming) {
  ThreadPool pool(4);
  std::vector<int64_t> end_of(11, -1);  // chunk end by chunk begin
  std::atomic<int> seen{0};
  pool.parallel_for(10, [&](int64_t b, int64_t e) {
    end_of[size_t(b)] = e;
    seen.fetch_add(1);
  });
  EXPECT_EQ(seen.load(), 4);
  const std::vector<int64_t> want = {2, -1, 5, -1, -1, 7, -1, 10, -1, -1, -1};
  EXPECT_EQ(end_of, want);
}

TEST(ThreadPool, AnErrorReachesTheCallerAfterTheWorkersFinished) {
  ThreadPool pool(2);
  std::atomic<int> finished{0};
  EXPECT_THROW(pool.parallel_for(2,
                                 [&](int64_t b, int64_t) {
                                   if (b == 0) throw std::runtime_error("chunk 0 failed");
                                   std::this_thread::sleep_for(std::chrono::milliseconds(20));
                                   finished.fetch_add(1);
                                 }),
               std::runtime_error);
  EXPECT_EQ(finished.load(), 1);  // the worker's chunk completed before the throw left parallel_for
  expect_every_index_once(pool, 10, 5, std::chrono::microseconds(0));  // and the pool still works
}

TEST(ThreadPool, NestedCallsRunInline) {
  ThreadPool pool(2);
  std::atomic<int64_t> sum{0};
  pool.parallel_for(4, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      pool.parallel_for(3, [&](int64_t b2, int64_t e2) { sum.fetch_add((e2 - b2) * (i + 1)); });
  });
  EXPECT_EQ(sum.load(), 3 * (1 + 2 + 3 + 4));
}

TEST(ThreadPool, AWorkersErrorReachesTheCaller) {
  ThreadPool pool(3);
  try {
    pool.parallel_for(3, [&](int64_t b, int64_t) {
      if (b >= 1) throw std::runtime_error("chunk " + std::to_string(b));
    });
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "chunk 1");  // the lowest failing chunk, as a serial loop would meet it
  }
  expect_every_index_once(pool, 10, 7, std::chrono::microseconds(0));  // errors do not stick
}
