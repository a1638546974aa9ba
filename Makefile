# initscope developer tasks. `make help` lists them.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch is installed first, pinned, so that pip takes the local CPU wheel instead of
# resolving an unpinned torch to a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: help install run test test-fast lint bench bench-identify docs docs-site clean

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# setup.py builds the C kernel (initscope/stats/kernel.c) into the source tree: a changed kernel
# is rebuilt by the next target that needs the install.
$(STAMP): pyproject.toml setup.py initscope/stats/kernel.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install initscope with its dev tools

run: $(STAMP)  ## report the bundled example UNet
	$(VENV)/bin/initscope report initscope.examples:UNet

test: $(STAMP)  ## run the whole test suite (what CI runs)
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## the quick loop: every test but those that start processes (marked slow)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff + mypy
	$(VENV)/bin/ruff check initscope tests benchmarks
	$(VENV)/bin/ruff format --check initscope tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)  ## run the speed benchmark (not a timed test)
	$(PY) benchmarks/bench_report.py
	$(PY) benchmarks/bench_html.py

bench-identify: $(STAMP)  ## measure identification accuracy on a labelled corpus
	$(PY) benchmarks/bench_identify.py

docs: $(STAMP)  ## regenerate docs/report.png (the example UNet's HTML report, in Chromium)
	$(PY) docs/make_screenshot.py

docs-site: $(STAMP)  ## build the documentation site (docs/, mkdocs) into site/
	$(PY) -m pip install -q --disable-pip-version-check "mkdocs>=1.5"
	$(VENV)/bin/mkdocs build --strict

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build site *.egg-info
	rm -f initscope/stats/_kernel*.so
