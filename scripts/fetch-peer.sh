#!/usr/bin/env bash
# Fetches the llama.cpp peer used by the cross-check tests into .peer/ (not committed):
#   .peer/lib       prebuilt libllama/libggml from @node-llama-cpp/linux-x64@3.21.1
#   .peer/include   llama.h + ggml headers from the source bundle in node-llama-cpp@3.21.1
#   .peer/llama.cpp the source tree (cloned from the bundle; built only by `make bench-peer`)
# Never fails the build: without npm access the tests that need the peer skip with a message.
set -uo pipefail
cd "$(dirname "$0")/.."
PEER=.peer
VERSION=3.21.1
[ -f "$PEER/ok" ] && exit 0
mkdir -p "$PEER/dl"
if ! command -v npm >/dev/null; then echo "fetch-peer: npm missing, llama.cpp cross-checks will skip" >&2; exit 0; fi
( cd "$PEER/dl" && npm pack --silent "node-llama-cpp@$VERSION" "@node-llama-cpp/linux-x64@$VERSION" >/dev/null 2>&1 ) || {
  echo "fetch-peer: npm registry unreachable, llama.cpp cross-checks will skip" >&2; exit 0; }
mkdir -p "$PEER/x" "$PEER/lib" "$PEER/include"
tar xzf "$PEER/dl/node-llama-cpp-$VERSION.tgz" -C "$PEER/x" package/llama/gitRelease.bundle
mkdir -p "$PEER/x/bin" && tar xzf "$PEER/dl/node-llama-cpp-linux-x64-$VERSION.tgz" -C "$PEER/x/bin"
cp -a "$PEER/x/bin/package/bins/linux-x64/"*.so "$PEER/lib/"
( cd "$PEER/lib" && for f in libllama.v*.so libggml.v*.so; do ln -sf "$f" "$(echo "$f" | sed 's/\.v[0-9.]*\.so$/.so/')"; done )
rm -rf "$PEER/llama.cpp" && git clone -q "$PEER/x/package/llama/gitRelease.bundle" "$PEER/llama.cpp" 2>/dev/null
cp "$PEER/llama.cpp/include/llama.h" "$PEER/llama.cpp/ggml/include/"*.h "$PEER/include/"
rm -rf "$PEER/x" "$PEER/dl"
touch "$PEER/ok"
