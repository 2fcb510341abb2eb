# rome_nb: the two commands of the README's quick start, and the pieces they are made of.
#   make demo   set up (a virtual environment in .venv) and run the main job on the toy world
#   make test   set up with the dev tools and run every check that CI (.ci/run) runs
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch first, on its own: `pip install torch==2.13.0` takes a local CPU build on the project's machines.
# Elsewhere pick your build, e.g. make demo TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: demo test install install-dev check-sync nbtest pytest docs-check slow clean-venv export clean-nbs
.DEFAULT_GOAL := demo

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is installed only when the environment has none, so a CUDA build a user put there is kept
$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH)
	touch $@

$(VENV)/.installed: setup.py settings.ini $(VENV)/.torch
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: setup.py settings.ini $(VENV)/.installed
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/rome_nb_demo

# notebooks clean and library in sync, checked on a copy so the working tree is never touched
check-sync: $(VENV)/.installed-dev
	PATH=$(abspath $(VENV))/bin:$$PATH .ci/check_sync

# two notebooks at a time, one thread each: small models gain nothing from more threads, and two torch
# processes with two threads each on two cores slow each other down many times over
nbtest: $(VENV)/.installed-dev
	cd nbs && OMP_NUM_THREADS=1 ../$(VENV)/bin/nbdev_test --path . --n_workers 2 --timing

# two pytest workers (pytest-xdist), one thread each, each test file kept on one worker (its fixtures built once)
pytest: $(VENV)/.installed-dev
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n 2 --dist loadfile tests

# the docs site (tools/docs_check.py): every page built as far as it can be without Quarto, opened in headless
# Chromium and failed on what a reader would see broken. Playwright (PyPI) and Debian's chromium (apt-get, only as
# root) are installed when missing; the widget manager comes from the npm registry once, then from a cache
# (~/.cache/rome_nb). Without a browser, or offline, it prints one SKIP line and passes.
docs-check: $(VENV)/.installed-dev
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q "playwright>=1.45,<2" \
	  || echo "docs-check: could not install playwright"
	@command -v chromium >/dev/null || command -v google-chrome >/dev/null || [ "$$(id -u)" != 0 ] \
	  || ! command -v apt-get >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq chromium >/dev/null 2>&1; } || echo "docs-check: could not install chromium"
	OMP_NUM_THREADS=1 $(PY) tools/docs_check.py

# pytest last: its summary closes the output
test: check-sync nbtest docs-check pytest

# the long checks: slow notebook cells and slow tests
slow: $(VENV)/.installed-dev
	cd nbs && OMP_NUM_THREADS=1 ../$(VENV)/bin/nbdev_test --path . --n_workers 2 --flags slow --timing
	RUN_SLOW=1 OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -n 2 --dist loadfile tests

# for developers: regenerate the library and clean the notebooks (run before every commit)
export: $(VENV)/.installed-dev
	$(VENV)/bin/nbdev_export && $(VENV)/bin/nbdev_clean

clean-venv:
	rm -rf $(VENV)
