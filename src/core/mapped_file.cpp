#include "quantkit/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>
#include <vector>

#include "quantkit/error.h"

namespace quantkit {

// ---- live temporary files, removed on SIGINT / SIGTERM / SIGHUP --------------------------
//
// A fixed table of path buffers, each guarded by a lock-free atomic state, so the signal
// handler touches only static memory, atomics and unlink() (all async-signal-safe).
namespace {

constexpr int kTempSlots = 64;
constexpr size_t kTempPathMax = 4096;
enum SlotState : int { kFree = 0, kFilling = 1, kLive = 2 };

struct TempSlot {
  std::atomic<int> state{kFree};
  char path[kTempPathMax];
};
TempSlot g_temp_slots[kTempSlots];
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs lock-free atomics");

constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP};

// A signal that arrived while another thread was between mkstemp and registration (its
// mask blocks the signal, but a process-directed signal goes to any thread that does not):
// that thread raises it again once the file is registered.
std::atomic<int> g_deferred_signal{0};

void install_handler(int sig);

void remove_temps_and_reraise(int sig) {
  for (const TempSlot& s : g_temp_slots)
    if (s.state.load() == kFilling) {
      g_deferred_signal.store(sig);
      install_handler(sig);  // SA_RESETHAND removed it: the re-raised signal must find it
      return;
    }
  for (TempSlot& s : g_temp_slots)
    if (s.state.load() == kLive) ::unlink(s.path);
  // SA_RESETHAND restored the default action; the re-raised signal is delivered when the
  // handler returns, so the exit status still says which signal ended the process.
  ::raise(sig);
}

// Installs the handler for signals whose action is still the default (a host program that
// handles or ignores them keeps its choice).
void install_cleanup_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : kCleanupSignals) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO)) continue;
      install_handler(sig);
    }
  });
}

void install_handler(int sig) {
  struct sigaction sa {};
  sa.sa_handler = remove_temps_and_reraise;
  sigemptyset(&sa.sa_mask);
  for (int other : kCleanupSignals) sigaddset(&sa.sa_mask, other);
  sa.sa_flags = SA_RESETHAND;
  ::sigaction(sig, &sa, nullptr);
}

// Called by the creating thread, signals still blocked, once its slot is live (or free
// again): a deferred signal is raised now and delivered when the mask is restored.
void raise_deferred_signal() {
  if (const int sig = g_deferred_signal.exchange(0)) ::raise(sig);
}

// Creates a unique file from `tmpl` (ending in XXXXXX) inside a slot; returns its fd and
// slot (-1 when every slot is taken or the path is too long: the file is then only
// removed by the destructor, not on a signal).
// The cleanup signals are blocked while a file is created and registered: one arriving
// between mkstemp and kLive would otherwise leave the new file behind (it is delivered, and
// the file removed, when the mask is restored). Other threads do not block them: a signal
// they take in that window is deferred to this thread (remove_temps_and_reraise).
class CleanupSignalsBlocked {
 public:
  CleanupSignalsBlocked() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : kCleanupSignals) sigaddset(&set, sig);
    ::pthread_sigmask(SIG_BLOCK, &set, &old_);
  }
  ~CleanupSignalsBlocked() { ::pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  CleanupSignalsBlocked(const CleanupSignalsBlocked&) = delete;
  CleanupSignalsBlocked& operator=(const CleanupSignalsBlocked&) = delete;

 private:
  sigset_t old_;
};

int create_registered_temp(std::string& tmpl, int* slot_out) {
  install_cleanup_handlers();
  const CleanupSignalsBlocked blocked;
  *slot_out = -1;
  if (tmpl.size() < kTempPathMax)
    for (int i = 0; i < kTempSlots; ++i) {
      int expected = kFree;
      if (!g_temp_slots[i].state.compare_exchange_strong(expected, kFilling)) continue;
      char* buf = g_temp_slots[i].path;
      std::memcpy(buf, tmpl.c_str(), tmpl.size() + 1);
      const int fd = ::mkstemp(buf);
      if (fd < 0) {
        g_temp_slots[i].state.store(kFree);
        raise_deferred_signal();
        return -1;
      }
      tmpl = buf;
      g_temp_slots[i].state.store(kLive);
      raise_deferred_signal();
      *slot_out = i;
      return fd;
    }
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const int fd = ::mkstemp(buf.data());
  if (fd >= 0) tmpl = buf.data();
  return fd;
}

void release_temp_slot(int slot) {
  if (slot >= 0) g_temp_slots[slot].state.store(kFree);
}

}  // namespace

int live_temp_files() {
  int n = 0;
  for (const TempSlot& s : g_temp_slots) n += s.state.load() == kLive;
  return n;
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    fail("{}: cannot stat: {}", path, std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    fail("{}: is a directory, expected a file", path);
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      fail("{}: cannot mmap: {}", path, std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  tmp_path_ = path + ".tmp.XXXXXX";
  fd_ = create_registered_temp(tmp_path_, &slot_);
  if (fd_ < 0) fail("{}: cannot create temporary output: {}", path, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
  release_temp_slot(slot_);
}

void AtomicFile::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", path_, std::strerror(errno));
    }
    p += w;
    n -= size_t(w);
    offset_ += uint64_t(w);
  }
}

void AtomicFile::write_zeros(size_t n) {
  static const char zeros[4096] = {};
  while (n > 0) {
    size_t k = n < sizeof(zeros) ? n : sizeof(zeros);
    write(zeros, k);
    n -= k;
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) fail("{}: fsync failed: {}", path_, std::strerror(errno));
  ::fchmod(fd_, 0644);
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0)
    fail("{}: cannot rename temporary output: {}", path_, std::strerror(errno));
  committed_ = true;
  release_temp_slot(slot_);  // the name is the real output now: a signal must not remove it
  slot_ = -1;
}

}  // namespace quantkit
