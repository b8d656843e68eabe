// Scale-out over processes: a thin communicator that the quantize job talks through. One
// implementation is always there (one process); the MPI one (Open MPI, MPI_COMM_WORLD) only
// in builds configured with -DQUANTKIT_MPI=ON, used when the binary is started by mpirun.
//
// Every collective a job uses is deterministic: sums of doubles are added in rank order,
// Hessians travel as 128-bit fixed-point integers (exact, so any reduction tree gives the
// same bits), byte buffers are concatenated in rank order. See docs/distributed.md.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "quantkit/error.h"

namespace quantkit {

// A 128-bit two's-complement integer; sums wrap, so they are exact and associative.
using ExactSum = unsigned __int128;

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Processes of this job on this machine (they share its memory and cores).
  virtual int local_size() const = 0;
  bool root() const { return rank() == 0; }

  // data[i] = sum over ranks of data[i], on every rank, added in rank order
  // ((r0 + r1) + r2 ...), so the bits do not depend on the transport's reduction tree.
  virtual void allreduce_sum(double* data, size_t n) = 0;
  // Exact element-wise sum into `root` (the other ranks' buffers are left unspecified).
  virtual void reduce_sum(ExactSum* data, size_t n, int root) = 0;
  // bytes of `root` copied to every rank (resized as needed).
  virtual void broadcast(std::vector<uint8_t>& bytes, int root) = 0;
  // Every rank's buffer, in rank order, at `root` (an empty list elsewhere).
  virtual std::vector<std::vector<uint8_t>> gather(const std::vector<uint8_t>& bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every process of the job with `code` after printing `message` on stderr.
  [[noreturn]] virtual void abort(const std::string& message, int code) = 0;
};

// Every rank's buffer, in rank order, on every rank.
std::vector<std::vector<uint8_t>> all_gather(Communicator& comm, const std::vector<uint8_t>& bytes);
// One number per rank, in rank order, at rank 0.
std::vector<uint64_t> gather_u64(Communicator& comm, uint64_t value);

// This process alone.
std::unique_ptr<Communicator> local_communicator();
// MPI_COMM_WORLD when started by mpirun (Open MPI or a PMI launcher) in an MPI build, else
// this process alone. Throws Error when started by mpirun with several processes in a build
// without MPI (they would each run the whole job).
std::unique_ptr<Communicator> world_communicator();
bool mpi_built();

// An error every rank raises at the same point of the job from the same data (e.g. the
// --max-memory refusal): reported once, by rank 0, and every rank exits cleanly.
class CollectiveError : public Error {
 public:
  using Error::Error;
};

// Runs job on this rank. Alone: exactly job(). In a job of several ranks, a CollectiveError
// is rethrown by rank 0 only (the others return 1); any other error ends the whole job
// (Communicator::abort) with its message, so no rank waits forever for a failed partner.
int run_job(Communicator& comm, const std::function<int()>& job);

// "auto" (MemAvailable of /proc/meminfo divided among this machine's ranks), or bytes with
// an optional K/M/G/T suffix (powers of 1024; a trailing "B"/"iB" is accepted).
uint64_t parse_memory_limit(const std::string& text, int local_ranks);
uint64_t available_memory_bytes();  // MemAvailable; 0 when unknown
uint64_t peak_rss_bytes();          // getrusage ru_maxrss of this process
double cpu_seconds();               // user + system time of this process so far
std::string format_bytes(uint64_t bytes);  // "123.4 MiB"

}  // namespace quantkit
