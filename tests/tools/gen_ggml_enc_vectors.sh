#!/usr/bin/env bash
# Regenerates tests/data/ggml_enc/*.bin: test inputs and llama.cpp's quantization of them
# (with and without an importance matrix), against which tests/formats_ggml_test.cpp
# measures quantkit's encoders. Needs the llama.cpp peer in .peer/ (scripts/fetch-peer.sh).
# The output is deterministic; rerun it only when the inputs change, and commit the result.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEER="$ROOT/.peer"
[ -f "$PEER/lib/libggml-base.so" ] || { echo "gen_ggml_enc_vectors: $PEER missing, run scripts/fetch-peer.sh" >&2; exit 1; }
BIN="$(mktemp -d)"
trap 'rm -rf "$BIN"' EXIT
${CC:-gcc} -std=c11 -O1 -Wall -Wextra -o "$BIN/gen_ggml_enc_vectors" "$ROOT/tests/tools/gen_ggml_enc_vectors.c" \
  -I"$PEER/include" -L"$PEER/lib" -lggml-base -lm -Wl,-rpath,"$PEER/lib"
mkdir -p "$ROOT/tests/data/ggml_enc"
"$BIN/gen_ggml_enc_vectors" "$ROOT/tests/data/ggml_enc"
