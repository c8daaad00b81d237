# edgeseq: everything is installed with pip into .venv; torch first, pinned.
PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
DEMO_CKPT := demo/date-t5
DEMO_OUT  := build/demo-xnnpack

.PHONY: install demo test test-deps clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,onnx,litert]'
	touch $@

demo: install
	rm -rf $(DEMO_OUT)
	$(VENV)/bin/edgeseq inspect $(DEMO_CKPT)
	$(VENV)/bin/edgeseq export $(DEMO_CKPT) -t executorch-xnnpack -r fp32 -o $(DEMO_OUT)
	$(VENV)/bin/edgeseq verify $(DEMO_OUT)
	$(VENV)/bin/edgeseq run $(DEMO_OUT) "the 3rd of March, 2021"
	$(VENV)/bin/edgeseq probe $(DEMO_OUT) --runs 10 --json > build/demo-probe.json
	$(VENV)/bin/edgeseq report build/demo-probe.json -o build/demo-report.md

test: install test-deps
	$(VPY) -m pytest -q

# The ssh probe tests start a real OpenSSH server on loopback (Debian's openssh-server).
test-deps:
	@test -x /usr/sbin/sshd || command -v sshd >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q openssh-server >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q openssh-server >/dev/null; }; \
	  else echo "note: sshd not installed (apt-get install openssh-server); the ssh probe tests will fail"; fi; }

clean:
	rm -rf build
