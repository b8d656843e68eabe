# Thin wrapper over CMake. `make demo` and `make test` do all set-up on a fresh Debian machine.
BUILD ?= build
JOBS ?= $(shell nproc)
SHARED ?= ../shared
QK = $(BUILD)/quantkit
MODEL = $(SHARED)/models/aidreams260K.bin
TOK = $(SHARED)/models/aidreams-tok512.bin

.PHONY: deps build test demo bench bench-peer peer clean asan-build test-asan test-asan-fast fuzz

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

# quantkit vs llama.cpp's llama-bench on a synthetic ~1B Llama in q4_0, q8_0, q4_k (builds
# llama-bench once into .peer/build-bench; models cached in $(BUILD)/bench-models).
# Options: make bench-peer BENCH_PEER_ARGS='--formats q4_0 --reps 5'
bench-peer: build peer
	@BUILD=$(BUILD) JOBS=$(JOBS) scripts/bench-peer.sh $(BENCH_PEER_ARGS)

# Sanitizers (docs/security.md): AddressSanitizer + UBSan at -O1 in $(ASAN_BUILD).
# test-asan runs the whole suite; test-asan-fast (run by .ci/run) the parser subset: every
# hostile-file test, the fuzz regressions, spec parsing, the entropy coder, numerical
# hazards and interrupted outputs.
ASAN_BUILD ?= build-asan
ASAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ASAN_FAST = MalformedFiles.*:FuzzRegressions.*:Gguf*:Safetensors*:Llama2c.*:Tokenizer.*:Entropy*:Formats*Spec.*:NumericalHazards.*:NonFinite.*:AtomicOutput.*
asan-build: deps
	@cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
	  -DQUANTKIT_SANITIZE=ON -DQUANTKIT_BENCH=OFF -DQUANTKIT_PYTHON=OFF >/dev/null
	@cmake --build $(ASAN_BUILD) -j$(JOBS) --target quantkit quantkit_tests

test-asan: peer asan-build
	@cd $(ASAN_BUILD) && $(ASAN_ENV) ctest --output-on-failure -j$(JOBS)

test-asan-fast: asan-build
	@$(ASAN_ENV) $(ASAN_BUILD)/tests/quantkit_tests --gtest_filter='$(ASAN_FAST)' --gtest_brief=1

# libFuzzer (clang + libclang-rt-dev): builds build-fuzz, writes the seed corpus with quantkit's
# own writers, runs each target FUZZ_SECONDS (one after the other), prints executions and
# crashes. One target: make fuzz FUZZ_TARGETS=gguf. A fixed count: FUZZ_RUNS=10000000. Findings: build-fuzz/fuzz-crashes/.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
FUZZ_RUNS ?=
FUZZ_SANITIZERS ?= address,undefined
fuzz:
	@scripts/install-deps.sh fuzz
	@CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUANTKIT_FUZZ=ON -DQUANTKIT_FUZZ_SANITIZERS=$(FUZZ_SANITIZERS) \
	  -DQUANTKIT_BENCH=OFF -DQUANTKIT_PYTHON=OFF >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS) --target fuzz_all
	@FUZZ_RUNS=$(FUZZ_RUNS) fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf $(BUILD)
