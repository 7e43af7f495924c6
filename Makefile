# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment on first use.  The CPU build of torch
# is installed first so pip never pulls the multi-GB CUDA build; GPU users
# install their CUDA torch into the venv first and run `make TORCH_SPEC= demo`.
# napari is not a runtime dependency: `make napari` adds the `napari` extra and a
# Qt binding (QT_SPEC; `make QT_SPEC= napari` to keep the one you have).

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
QT_SPEC     ?= PyQt6>=6.5
BIN         := $(VENV)/bin
# Three stamps: the runtime install (what `make demo` needs), the napari extra
# on top of it (`make napari`) and the testing extra (`make test`, napari
# included), so a demo never pulls napari, Qt, pytest, scikit-learn or dask.
STAMP       := $(VENV)/.napari-gmmseg-runtime
NAPARI_STAMP := $(VENV)/.napari-gmmseg-napari
TEST_STAMP  := $(VENV)/.napari-gmmseg-testing
XVFB        := $(shell command -v xvfb-run 2>/dev/null)

.PHONY: demo test lint bench screenshot napari sysdeps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(NAPARI_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[all]" $(if $(QT_SPEC),"$(QT_SPEC)")
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

## Open napari with the plugin (installs the `all` extra: napari, SimpleITK, numba; and a Qt binding)
napari: $(NAPARI_STAMP)
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
