// Shared by the libFuzzer targets: inputs become files in a private scratch folder, and
// the properties every parser must keep on any input.
//
// A parser may only answer hostile input with a quantkit::Error whose message is one line
// and names the file; any other exception, a sanitizer report, a crash, a hang or an
// allocation past the fuzzer's limits is a bug.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "quantkit/error.h"

namespace qk_fuzz {

// A finding: thrown (not aborted) so the regression test reports it as a failure; in a
// fuzz target it escapes LLVMFuzzerTestOneInput and ends the run as a crash.
struct Finding : std::logic_error {
  using std::logic_error::logic_error;
};
[[noreturn]] inline void finding(const std::string& what) { throw Finding(what); }

// A folder private to this process (under /dev/shm when it exists: no disk traffic),
// removed at exit. The name is never destroyed: the exit handler may run after static
// destructors.
inline const std::string& scratch_dir() {
  static const std::string* dir = [] {
    const std::filesystem::path base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    const auto p = base / ("qk_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(p);
    auto* name = new std::string(p.string());
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch_dir(), ec);
    });
    return name;
  }();
  return *dir;
}

inline std::string scratch(const std::string& name) { return scratch_dir() + "/" + name; }

inline void write_file(const std::string& path, const void* data, size_t size) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(static_cast<const char*>(data), std::streamsize(size));
  if (!f) {
    std::fprintf(stderr, "fuzz harness: cannot write %s\n", path.c_str());
    std::exit(3);
  }
}

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A finding when an error message breaks the one-line rule or does not name `must_name`
// (empty: no file involved).
inline void check_message(const quantkit::Error& e, std::string_view must_name) {
  const std::string_view msg = e.what();
  if (msg.find('\n') != std::string_view::npos || msg.find('\r') != std::string_view::npos)
    finding("error message spans several lines: " + std::string(msg));
  if (!must_name.empty() && msg.find(must_name) == std::string_view::npos)
    finding("error message does not name '" + std::string(must_name) + "': " + std::string(msg));
}

// Runs f; a quantkit::Error is the expected answer to bad input (checked by check_message),
// anything else propagates and ends the run as a finding.
template <class F>
void expect_clean(std::string_view must_name, F&& f) {
  try {
    f();
  } catch (const quantkit::Error& e) {
    check_message(e, must_name);
  }
}

}  // namespace qk_fuzz
