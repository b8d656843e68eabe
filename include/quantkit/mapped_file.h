// Read-only memory mapping of a whole file: model files are never copied into RAM,
// tensors are views into the mapping.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace quantkit {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws Error naming the file
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
// rename. A failure leaves any existing `path` untouched: a thrown error removes the
// temporary (destructor), and so does SIGINT, SIGTERM or SIGHUP (a signal handler,
// installed with the first AtomicFile where the signal's action is the default, unlinks
// every live temporary and re-raises the signal).
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();  // removes the temporary if commit() was not called
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write_zeros(size_t n);
  uint64_t offset() const { return offset_; }
  void commit();  // fsync + rename

 private:
  std::string path_, tmp_path_;
  int fd_ = -1;
  int slot_ = -1;  // entry in the signal handler's table of live temporaries
  uint64_t offset_ = 0;
  bool committed_ = false;
};

// Temporaries of AtomicFiles alive now (not yet committed or destroyed), for tests.
int live_temp_files();

}  // namespace quantkit
