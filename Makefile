# initscope developer tasks. `make help` lists them.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch is installed first, pinned, so that pip takes the local CPU wheel instead of
# resolving an unpinned torch to a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

define KERNEL_CHECK
import glob, os, shutil, sys
from initscope.stats import native
built = glob.glob("initscope/stats/_kernel*.so")
fresh = built and os.path.getmtime(built[0]) >= os.path.getmtime("initscope/stats/kernel.c")
if shutil.which("cc") and not (fresh and native.loaded_library() is not None):
    sys.exit(f"make: the C kernel did not build from kernel.c though a compiler is here "
             f"({native.describe()}); see pip's output: pip install -v --no-build-isolation -e .")
endef
export KERNEL_CHECK

.PHONY: help install run test test-fast lint bench bench-identify docs docs-site clean

help:  ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# setup.py builds the C kernel (initscope/stats/kernel.c) into the source tree: a changed kernel
# is rebuilt by the next target that needs the install.
$(STAMP): pyproject.toml setup.py initscope/stats/kernel.c
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# byte-compiled as a wheel install is, also where PYTHONDONTWRITEBYTECODE is set: else
	# every command compiles initscope's source first (0.3-0.4 s)
	$(PY) -m compileall -q initscope
	# The kernel is an optional extension: pip goes on without it when it does not compile.
	# Where a C compiler is, that is a bug to see now, not a slower torch path found later.
	$(PY) -c "$$KERNEL_CHECK"
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
