#!/usr/bin/env bash
# The main job on the default model: inspect, generate, evaluate aidreams260K.
set -euo pipefail
QK=${1:-build/quantkit}
SHARED=${2:-../shared}
MODEL=$SHARED/models/aidreams260K.bin
TOK=$SHARED/models/aidreams-tok512.bin
TEXT=$SHARED/data/aidreams-eval.txt
if [ ! -f "$MODEL" ]; then
  echo "demo: $MODEL not found. Put the shared data folder beside this checkout (../shared/models/aidreams260K.bin," >&2
  echo "      ../shared/models/aidreams-tok512.bin, ../shared/data/aidreams-eval.txt) or run: make demo SHARED=/path/to/shared" >&2
  exit 1
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
step() { printf '\n== %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }
step "inspect" "$QK" inspect "$MODEL" --tokenizer "$TOK"
step "generate (greedy)" "$QK" generate --model "$MODEL" --tokenizer "$TOK" --prompt "" -n 60 --temp 0
step "generate (sampled)" "$QK" generate --model "$MODEL" --tokenizer "$TOK" --prompt "The neural network" -n 40 --temp 0.8 --top-p 0.9 --seed 7
step "eval: perplexity, both conventions" "$QK" eval --model "$MODEL" --tokenizer "$TOK" --text "$TEXT" --doc-separator '<|endoftext|>' --ctx 128
step "convert to GGUF (F16)" "$QK" convert "$MODEL" "$OUT/aidreams-f16.gguf" --tokenizer "$TOK" --type f16
step "eval the F16 GGUF against the FP32 original (KL divergence)" "$QK" eval --model "$OUT/aidreams-f16.gguf" --ref "$MODEL" --ref-tokenizer "$TOK" --text "$TEXT" --doc-separator '<|endoftext|>' --ctx 128
