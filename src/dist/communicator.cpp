// The single-process communicator, the helpers built on any communicator, and the memory
// figures the scale-out job reports (quantkit/distributed.h).
#include <sys/resource.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "dist/mpi_communicator.h"
#include "quantkit/distributed.h"

namespace quantkit {
namespace {

class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_size() const override { return 1; }
  void allreduce_sum(double*, size_t) override {}
  void reduce_sum(ExactSum*, size_t, int) override {}
  void broadcast(std::vector<uint8_t>&, int) override {}
  std::vector<std::vector<uint8_t>> gather(const std::vector<uint8_t>& bytes, int) override { return {bytes}; }
  void barrier() override {}
  [[noreturn]] void abort(const std::string& message, int code) override {
    std::fprintf(stderr, "%s\n", message.c_str());
    std::exit(code);
  }
};

// Processes a launcher started for this job (0: not started by one).
int launched_ranks() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* v = std::getenv(var)) return std::atoi(v);
  return 0;
}

}  // namespace

std::vector<std::vector<uint8_t>> all_gather(Communicator& comm, const std::vector<uint8_t>& bytes) {
  std::vector<std::vector<uint8_t>> parts = comm.gather(bytes, 0);
  if (comm.size() == 1) return parts;
  // One broadcast of the concatenation, prefixed by the part sizes.
  std::vector<uint8_t> packed;
  if (comm.root()) {
    for (const auto& p : parts) {
      const uint64_t n = p.size();
      packed.insert(packed.end(), reinterpret_cast<const uint8_t*>(&n), reinterpret_cast<const uint8_t*>(&n) + 8);
    }
    for (const auto& p : parts) packed.insert(packed.end(), p.begin(), p.end());
  }
  comm.broadcast(packed, 0);
  parts.assign(size_t(comm.size()), {});
  size_t at = 8 * size_t(comm.size());
  for (int r = 0; r < comm.size(); ++r) {
    uint64_t n = 0;
    std::memcpy(&n, &packed[8 * size_t(r)], 8);
    parts[size_t(r)].assign(packed.begin() + int64_t(at), packed.begin() + int64_t(at + n));
    at += n;
  }
  return parts;
}

std::vector<uint64_t> gather_u64(Communicator& comm, uint64_t value) {
  std::vector<uint8_t> mine(8);
  std::memcpy(mine.data(), &value, 8);
  std::vector<uint64_t> out;
  for (const auto& p : comm.gather(mine, 0)) {
    uint64_t v = 0;
    std::memcpy(&v, p.data(), 8);
    out.push_back(v);
  }
  return out;
}

std::unique_ptr<Communicator> local_communicator() { return std::make_unique<LocalCommunicator>(); }

std::unique_ptr<Communicator> world_communicator() {
  const int launched = launched_ranks();
  if (launched > 0 && mpi_built()) return make_mpi_communicator();
  if (launched > 1)
    fail("started by mpirun as one of {} processes, but this quantkit was built without MPI "
         "(configure with -DQUANTKIT_MPI=ON and libopenmpi-dev installed)",
         launched);
  return local_communicator();
}

int run_job(Communicator& comm, const std::function<int()>& job) {
  if (comm.size() == 1) return job();
  try {
    return job();
  } catch (const CollectiveError&) {
    if (comm.root()) throw;
    return 1;
  } catch (const std::exception& e) {
    comm.abort(fmt::format("quantkit: rank {} of {}: {}", comm.rank(), comm.size(), e.what()), 1);
  }
  return 1;  // not reached: abort ends the process
}

uint64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

uint64_t parse_memory_limit(const std::string& text, int local_ranks) {
  if (text == "auto") {
    const uint64_t avail = available_memory_bytes();
    if (!avail) fail("--max-memory auto: cannot read MemAvailable from /proc/meminfo; give a size (e.g. 16G)");
    return avail / uint64_t(std::max(1, local_ranks));
  }
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string suffix = text.substr(used);
  for (char& c : suffix) c = char(std::toupper(static_cast<unsigned char>(c)));
  if (suffix.ends_with("IB")) suffix.resize(suffix.size() - 2);
  else if (suffix.size() > 1 && suffix.ends_with("B")) suffix.pop_back();
  static const std::string kUnits = "KMGT";
  double scale = 1;
  if (suffix.size() == 1 && kUnits.find(suffix[0]) != std::string::npos)
    scale = double(uint64_t(1) << (10 * (kUnits.find(suffix[0]) + 1)));
  else if (!suffix.empty() && suffix != "B")
    used = 0;
  if (used == 0 || !(v > 0) || v * scale > 1.8e19)
    fail("--max-memory '{}': expected 'auto' or a positive size such as 512M, 16G or 1073741824", text);
  return uint64_t(v * scale);
}

uint64_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return uint64_t(ru.ru_maxrss) * 1024;
}

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

std::string format_bytes(uint64_t bytes) {
  const double b = double(bytes);
  if (b >= 1024.0 * 1024 * 1024) return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
  if (b >= 1024.0 * 1024) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  if (b >= 1024.0) return fmt::format("{:.1f} KiB", b / 1024.0);
  return fmt::format("{} B", bytes);
}

}  // namespace quantkit
