#!/usr/bin/env bash
# `make bench-peer`: quantkit against llama.cpp's llama-bench on the same synthetic ~1B Llama
# in Q4_0, Q8_0 and Q4_K (and quantkit alone in int4:g128), same threads, one table
# (bench/bench_peer.py does the runs).
#
#   scripts/bench-peer.sh [bench_peer.py options, e.g. --formats q4_0 --threads 2 --reps 3]
#
# llama-bench is built once from the llama.cpp source that scripts/fetch-peer.sh clones from
# node-llama-cpp's bundle (.peer/llama.cpp) into .peer/build-bench (native CPU flags, no
# network code); the synthetic models are cached in $BUILD/bench-models.
# Environment: BUILD (quantkit build dir, default build), JOBS (build jobs, default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
SRC=.peer/llama.cpp
OUT=.peer/build-bench

[ -x "$BUILD/quantkit" ] || { echo "bench-peer: $BUILD/quantkit missing: run 'make build' first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench-peer: python3 missing (apt-get install python3)" >&2; exit 1; }
scripts/fetch-peer.sh
[ -f "$SRC/CMakeLists.txt" ] || {
  echo "bench-peer: no llama.cpp source in $SRC (scripts/fetch-peer.sh needs npm access)" >&2; exit 1; }

# -march=native turns AMX on where the CPU has it, and ggml's AMX kernels then run, but GCC
# 12's _tile_loadconfig tells the optimiser it reads only 8 bytes of the tile config, so the
# stores filling a config on the stack (ggml's pattern) are dropped and the first tile load
# dies with SIGILL. The probe uses the same pattern: AMX stays on only where it works.
mkdir -p "$OUT"
cat >"$OUT/amx_probe.c" <<'PROBE'
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */)) return 1;
  unsigned char cfg[64];
  static char buf[1024];
  memset(cfg, 0, sizeof cfg);
  cfg[0] = 1, cfg[16] = 64, cfg[48] = 16;  /* palette 1; tile 0: 16 rows of 64 bytes */
  _tile_loadconfig(cfg);
  _tile_loadd(0, buf, 64);
  _tile_release();
  return 0;
}
PROBE
NO_AMX=""
if grep -q amx_tile /proc/cpuinfo && ! { cc -O -mamx-tile "$OUT/amx_probe.c" -o "$OUT/amx_probe" 2>/dev/null &&
                                          ( "$OUT/amx_probe"; exit $? ) 2>/dev/null; }; then
  NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
# Runs a build step quietly; its log is shown when it fails.
quiet() {
  "$@" >"$OUT/step.log" 2>&1 || { tail -30 "$OUT/step.log" >&2; echo "bench-peer: failed: $*" >&2; exit 1; }
}
AMX_NOTE=${NO_AMX:+", AMX off: ggml AMX kernels crash when built by this compiler"}
echo "bench-peer: llama-bench in $OUT (native CPU flags$AMX_NOTE)" >&2
# Configuring again is cheap; the build is a no-op once done (unless the flags changed).
quiet cmake -S "$SRC" -B "$OUT" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX"
quiet cmake --build "$OUT" -j"$JOBS" --target llama-bench
LLAMA_BENCH="$OUT/bin/llama-bench"
[ -x "$LLAMA_BENCH" ] || { echo "bench-peer: $LLAMA_BENCH was not built" >&2; exit 1; }

exec python3 bench/bench_peer.py --quantkit "$BUILD/quantkit" --llama-bench "$LLAMA_BENCH" \
  --models "$BUILD/bench-models" "$@"
