#!/usr/bin/env bash
# The main job on the default model: inspect, generate, evaluate aidreams260K, then
# quantize it with GPTQ (q4_0 GGUF for llama.cpp, 2-bit E8 lattice) and compare.
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
CALIB=$SHARED/data/aidreams-calib.txt
QUANT=(--model "$MODEL" --tokenizer "$TOK" --method gptq --calib "$CALIB" --doc-separator '<|endoftext|>' --eval "$TEXT")
# Each quantize run prints its per-tensor table; the summary below is read from their
# last lines.
quantize() { step "$1" "$QK" quantize "${QUANT[@]}" --format "$2" -o "$3" | tee "$OUT/$2.log"; }
quantize "quantize with GPTQ to q4_0 (a GGUF llama.cpp runs), evaluated against FP32" q4_0 "$OUT/aidreams-q4_0.gguf"
quantize "quantize with GPTQ to 2 bits (E8 lattice vectors, quantkit GGUF)" e8:b2 "$OUT/aidreams-e8b2.gguf"
FP_PPL=$("$QK" eval --model "$MODEL" --tokenizer "$TOK" --text "$TEXT" --doc-separator '<|endoftext|>' --ctx 128 |
  sed -n 's/^PPL llama.cpp *\([0-9.]*\).*/\1/p')
printf '\n== summary (perplexity on %s, llama.cpp convention, ctx 128)\n' "$TEXT"
printf '%-8s %9s %12s %10s %12s\n' model size_MB bits/weight PPL KL_vs_FP32
printf '%-8s %9.3f %12.3f %10.4f %12s\n' fp32 "$(stat -c %s "$MODEL" | awk '{print $1/1e6}')" 32 "$FP_PPL" 0
for spec in q4_0 e8:b2; do
  L=$OUT/$spec.log
  printf '%-8s %9s %12s %10s %12s\n' "$spec" "$(sed -n 's/^size .* -> \([0-9.]*\) MB.*/\1/p' "$L")" \
    "$(sed -n 's/.*, \([0-9.]*\) bits\/weight overall.*/\1/p' "$L")" "$(sed -n 's/^eval .*: PPL \([0-9.]*\).*/\1/p' "$L")" \
    "$(sed -n 's/.*KL mean \([0-9.]*\).*/\1/p' "$L")"
done
