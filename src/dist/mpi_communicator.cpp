// MPI_COMM_WORLD behind quantkit's Communicator (builds with QUANTKIT_MPI only). Messages
// are cut into pieces of at most 256 MiB (MPI counts are int). Errors keep MPI's default
// handler (MPI_ERRORS_ARE_FATAL): a failed transfer or a dead peer ends the whole job.
#include "dist/mpi_communicator.h"

#ifdef QUANTKIT_MPI
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace quantkit {
namespace {

constexpr size_t kPieceBytes = size_t(1) << 28;

void add_exact(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint8_t*>(in);
  auto* b = static_cast<uint8_t*>(inout);
  for (int i = 0; i < *len; ++i) {  // memcpy: MPI buffers need not be 16-byte aligned
    ExactSum x, y;
    std::memcpy(&x, a + 16 * size_t(i), 16);
    std::memcpy(&y, b + 16 * size_t(i), 16);
    y += x;
    std::memcpy(b + 16 * size_t(i), &y, 16);
  }
}

// Calls fn(offset, count) over [0, n) in pieces of at most `piece` elements.
template <typename Fn>
void in_pieces(size_t n, size_t piece, Fn fn) {
  for (size_t off = 0; off < n; off += piece) fn(off, int(std::min(piece, n - off)));
}

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);  // only the main thread talks
      owns_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
    MPI_Comm_size(local, &local_size_);
    MPI_Comm_free(&local);
    MPI_Type_contiguous(16, MPI_BYTE, &exact_type_);
    MPI_Type_commit(&exact_type_);
    MPI_Op_create(&add_exact, 1, &exact_add_);
  }
  ~MpiCommunicator() override {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (finalised) return;
    MPI_Op_free(&exact_add_);
    MPI_Type_free(&exact_type_);
    if (owns_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_size() const override { return local_size_; }

  void allreduce_sum(double* data, size_t n) override {
    std::vector<double> all;
    in_pieces(n, kPieceBytes / 8 / size_t(size_), [&](size_t off, int count) {
      if (rank_ == 0) all.resize(size_t(count) * size_t(size_));
      MPI_Gather(data + off, count, MPI_DOUBLE, all.data(), count, MPI_DOUBLE, 0, MPI_COMM_WORLD);
      if (rank_ == 0)
        for (int i = 0; i < count; ++i) {
          double s = all[size_t(i)];
          for (int r = 1; r < size_; ++r) s += all[size_t(r) * size_t(count) + size_t(i)];
          data[off + size_t(i)] = s;
        }
      MPI_Bcast(data + off, count, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    });
  }

  void reduce_sum(ExactSum* data, size_t n, int root) override {
    in_pieces(n, kPieceBytes / 16, [&](size_t off, int count) {
      if (rank_ == root)
        MPI_Reduce(MPI_IN_PLACE, data + off, count, exact_type_, exact_add_, root, MPI_COMM_WORLD);
      else
        MPI_Reduce(data + off, nullptr, count, exact_type_, exact_add_, root, MPI_COMM_WORLD);
    });
  }

  void broadcast(std::vector<uint8_t>& bytes, int root) override {
    uint64_t n = bytes.size();
    MPI_Bcast(&n, 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
    bytes.resize(size_t(n));
    in_pieces(size_t(n), kPieceBytes,
              [&](size_t off, int count) { MPI_Bcast(bytes.data() + off, count, MPI_BYTE, root, MPI_COMM_WORLD); });
  }

  std::vector<std::vector<uint8_t>> gather(const std::vector<uint8_t>& bytes, int root) override {
    uint64_t n = bytes.size();
    std::vector<uint64_t> sizes(static_cast<size_t>(size_));
    MPI_Gather(&n, 1, MPI_UINT64_T, sizes.data(), 1, MPI_UINT64_T, root, MPI_COMM_WORLD);
    if (rank_ != root) {
      in_pieces(size_t(n), kPieceBytes, [&](size_t off, int count) {
        MPI_Send(bytes.data() + off, count, MPI_BYTE, root, kTag, MPI_COMM_WORLD);
      });
      return {};
    }
    std::vector<std::vector<uint8_t>> out(static_cast<size_t>(size_));
    for (int r = 0; r < size_; ++r) {
      if (r == root) {
        out[size_t(r)] = bytes;
        continue;
      }
      out[size_t(r)].resize(size_t(sizes[size_t(r)]));
      in_pieces(out[size_t(r)].size(), kPieceBytes, [&](size_t off, int count) {
        MPI_Recv(out[size_t(r)].data() + off, count, MPI_BYTE, r, kTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      });
    }
    return out;
  }

  void barrier() override { MPI_Barrier(MPI_COMM_WORLD); }

  [[noreturn]] void abort(const std::string& message, int code) override {
    std::fflush(stdout);
    std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  static constexpr int kTag = 7;
  int rank_ = 0, size_ = 1, local_size_ = 1;
  bool owns_ = false;
  MPI_Datatype exact_type_;
  MPI_Op exact_add_;
};

}  // namespace

bool mpi_built() { return true; }
std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace quantkit

#else  // !QUANTKIT_MPI

namespace quantkit {

bool mpi_built() { return false; }
std::unique_ptr<Communicator> make_mpi_communicator() {
  fail("this quantkit was built without MPI (configure with -DQUANTKIT_MPI=ON)");
}

}  // namespace quantkit

#endif
