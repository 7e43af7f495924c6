# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment on first use.  The CPU build of torch
# is installed first so pip never pulls the multi-GB CUDA build; GPU users
# install their CUDA torch into the venv first and run `make TORCH_SPEC= demo`.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
# Two stamps: the runtime install (what `make demo` needs) and the testing
# extra on top of it (what `make test` needs), so a demo never pulls pytest,
# a Qt binding, scikit-learn or dask.
STAMP       := $(VENV)/.napari-gmmseg-runtime
TEST_STAMP  := $(VENV)/.napari-gmmseg-testing
XVFB        := $(shell command -v xvfb-run 2>/dev/null)

.PHONY: demo test lint bench screenshot napari sysdeps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[testing]"
	touch $@

## Segment and evaluate the bundled sample cases with every method; writes ./results
demo: $(STAMP)
	$(BIN)/napari-gmmseg demo --out results

## Run the whole test suite headless (GUI tests in a real viewer under Xvfb)
test: $(TEST_STAMP) sysdeps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python -m pytest

## Open napari with the plugin
napari: $(TEST_STAMP)
	$(BIN)/napari -w napari-gmmseg

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine.py

screenshot: $(TEST_STAMP) sysdeps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python scripts/screenshot.py docs/screenshot.png

## Debian packages napari needs for a virtual display with OpenGL (root only)
sysdeps:
ifeq ($(XVFB),)
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1 \
	  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	  libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 libxcb-xfixes0 libglib2.0-0 >/dev/null
endif

clean:
	rm -rf $(VENV) build dist results .pytest_cache
