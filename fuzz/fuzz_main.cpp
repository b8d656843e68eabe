// One libFuzzer target: compiled once per harness of targets.h with QK_FUZZ_TARGET set to
// its name (fuzz/CMakeLists.txt).
#include "targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qk_fuzz::QK_FUZZ_TARGET(data, size);
  return 0;
}
