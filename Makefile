# edgeseq: everything is installed with pip into .venv; torch first, pinned.
PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
DEMO_CKPT := demo/date-t5
DEMO_OUT  := build/demo-xnnpack

.PHONY: install demo test clean

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
	$(VENV)/bin/edgeseq probe $(DEMO_OUT) --runs 5

test: install
	$(VPY) -m pytest -q

clean:
	rm -rf build
