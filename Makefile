# `make run` / `make test` create .venv on first use (and again when the dependencies change).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test clean gpu-wheels gpu-check docs docs-serve

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,docs]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m gan_dist.train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The manual: docs/configuration.md regenerated from the schema, then the site built strictly
# into site/ (a broken link or anchor fails); docs-serve rebuilds on every edit.
docs: $(STAMP)
	$(BIN)/python -m gan_dist.tools.config_doc
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The GPU check (tests/gpu_check.py; docs/development.md, "The GPU check"). Here, once: `make gpu-wheels`, the
# packages the GPU image lacks (the versions this venv runs, for its Python 3.12) into the ignored
# .whl/. On a lent GPU, one device call: `make gpu-check` with carry [".whl"]: gan_dist against the
# image's own torch (--no-deps), everything inside `timeout 300`. `make gpu-check DRY=1`: the same
# script on this CPU, the CUDA steps reported as skipped (the suite runs it: tests/test_gpu_check.py).
GPU_PYTHON ?= python3
gpu-wheels: $(STAMP)
	rm -rf .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(BIN)/python -m pip freeze | grep -iE '^(kornia|kornia[-_]rs|submitit)==')

ifeq ($(DRY),1)
gpu-check: $(STAMP)
	$(BIN)/python tests/gpu_check.py --dry-run --budget 60
else
gpu-check:
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
	$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-build-isolation -e . \
	  || echo "gpu-check: no editable install (the image's setuptools); gan_dist from the checkout"
	PYTHONPATH=/tmp/site:$(CURDIR) timeout 300 $(GPU_PYTHON) tests/gpu_check.py
endif

clean:
	rm -rf $(VENV) *.egg-info
