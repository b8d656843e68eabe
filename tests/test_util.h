// Helpers shared by tests: paths of the real data in ../shared, temp dirs, running the CLI.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace qk_test {

inline std::string shared(const std::string& rel) { return std::string(QK_SHARED_DIR) + "/" + rel; }
inline std::string model_path() { return shared("models/aidreams260K.bin"); }
inline std::string tokenizer_path() { return shared("models/aidreams-tok512.bin"); }

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A fresh empty folder under the test temp dir, private to this process (ctest runs
// tests in parallel processes).
inline std::string temp_dir(const std::string& name) {
  auto p = std::filesystem::path(testing::TempDir()) / ("qk_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

struct RunResult {
  int exit_code;
  std::string out, err;
};

// Runs the quantkit CLI with `args` (a shell-quoted string), capturing stdout and stderr.
inline RunResult run_cli(const std::string& args) {
  static int counter = 0;
  static const std::string dir = temp_dir("cli");
  const std::string base = dir + "/" + std::to_string(counter++);
  const std::string cmd = std::string(QK_CLI) + " " + args + " >" + base + ".out 2>" + base + ".err";
  int status = std::system(cmd.c_str());
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {code, read_file(base + ".out"), read_file(base + ".err")};
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace qk_test
