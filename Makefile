# Two commands set everything up, idempotently, in a local virtual environment:
#   make test   - install (first time) and run lint + the test suite
#   make demo   - install (first time) and run the main job on generated data
# VENV may point elsewhere (CI keeps one cached outside the clone).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: 2.13.0 is the release this project is tested with (a CPU
# build is served locally on our machines); any torch in the declared range works.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
WHEELS ?= $(HOME)/.cache/sparse-lrp/wheels

.PHONY: test demo bench lint format scatter setup clean

setup: $(STAMP)
	@# A venv reused across clones (CI caches one) must point at this checkout.
	@$(BIN)/python -c "import os, sparse_lrp; assert os.path.samefile(os.path.dirname(sparse_lrp.__file__), 'sparse_lrp')" 2>/dev/null \
	  || $(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,demo,plot]"
	rm -f $(VENV)/.installed-*
	touch $@

# torch_scatter has no wheels on PyPI: build one once per torch version, cache it, reuse it.
scatter: setup
	@$(BIN)/python -c "import torch_scatter" 2>/dev/null && echo "torch_scatter already installed" || { \
	  tag=$$($(BIN)/python -c "import sys, torch; print(f'torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}')"); \
	  dir="$(WHEELS)/$$tag"; mkdir -p "$$dir"; \
	  ls "$$dir"/torch_scatter-*.whl >/dev/null 2>&1 || \
	    MAX_JOBS=$$(nproc) $(BIN)/python -m pip wheel -q --no-build-isolation --no-deps "torch-scatter>=2.1" -w "$$dir"; \
	  $(BIN)/python -m pip install -q --no-deps "$$dir"/torch_scatter-*.whl; }

lint: setup
	$(BIN)/ruff check sparse_lrp tests benchmarks examples
	$(BIN)/ruff format --check sparse_lrp tests benchmarks examples

format: setup
	$(BIN)/ruff format sparse_lrp tests benchmarks examples
	$(BIN)/ruff check --fix sparse_lrp tests benchmarks examples

test: lint
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/sparse-lrp demo

bench: setup
	$(BIN)/python -m pip install -q "tqdm>=4.60" "captum>=0.7" "matplotlib>=3.7" click Pillow
	$(BIN)/python -m pip install -q --no-deps "zennit>=0.5"
	$(BIN)/sparse-lrp bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
