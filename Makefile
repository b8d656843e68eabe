# Thin wrapper over CMake. `make demo` and `make test` do all set-up on a fresh Debian machine.
BUILD ?= build
JOBS ?= $(shell nproc)
SHARED ?= ../shared
QK = $(BUILD)/quantkit
MODEL = $(SHARED)/models/aidreams260K.bin
TOK = $(SHARED)/models/aidreams-tok512.bin

.PHONY: deps build test demo bench peer clean

deps:
	@scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j$(JOBS)

# The llama.cpp peer (prebuilt libllama from npm) for the cross-check tests.
peer: deps
	@scripts/fetch-peer.sh

test: peer build
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

demo: build
	@scripts/demo.sh $(QK) $(SHARED)

bench: build
	@for b in $(BUILD)/bench/bench_*; do [ -x "$$b" ] && "$$b"; done; true

clean:
	rm -rf $(BUILD)
