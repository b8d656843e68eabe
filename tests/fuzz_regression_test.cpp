// Replays the inputs the fuzzers found (tests/data/fuzz-regressions/<target>/*, see
// docs/security.md) through the same harnesses (fuzz/targets.h): each must now end in a
// clean one-line quantkit::Error or load, never a crash or a sanitizer report.
#include <gtest/gtest.h>

#include <filesystem>

#include "../fuzz/targets.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

const fs::path kDir = fs::path(QK_TESTDATA_DIR) / "fuzz-regressions";

void replay(const std::string& target, const std::string& bytes, const std::string& what) {
  SCOPED_TRACE(target + ": " + what);
  try {
    qk_fuzz::targets().at(target)(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  } catch (const std::exception& e) {
    ADD_FAILURE() << target << " " << what << ": " << e.what();
  }
}

}  // namespace

TEST(FuzzRegressions, EveryFolderNamesATarget) {
  for (const auto& d : fs::directory_iterator(kDir))
    if (d.is_directory()) EXPECT_TRUE(qk_fuzz::targets().count(d.path().filename().string())) << d.path();
}

TEST(FuzzRegressions, Replay) {
  int replayed = 0;
  for (const auto& [target, run] : qk_fuzz::targets()) {
    const fs::path dir = kDir / target;
    if (!fs::is_directory(dir)) continue;
    for (const auto& f : fs::directory_iterator(dir)) {
      replay(target, qk_test::read_file(f.path().string()), f.path().filename().string());
      ++replayed;
    }
  }
  RecordProperty("replayed", replayed);
}

// Degenerate inputs every harness must take: empty, one byte, a run of 0xff.
TEST(FuzzRegressions, DegenerateInputs) {
  for (const auto& [target, run] : qk_fuzz::targets())
    for (const std::string& bytes : {std::string(), std::string(1, '\0'), std::string(64, '\xff')})
      replay(target, bytes, std::to_string(bytes.size()) + " bytes");
}
