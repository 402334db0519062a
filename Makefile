# The two quick-start commands: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This workplace keeps a CPU build of torch 2.13.0 on disk; elsewhere any torch>=2.3 works:
#   make test TORCH='torch>=2.3'
TORCH ?= torch==2.13.0
# The MXNet oracle for the insightface importer's tests lives in a venv of its own: MXNet 1.9 needs
# NumPy < 1.24, which the project venv does not have (and `arcface convert mxnet` must not need mxnet).
MXNET_VENV ?= .venv-mxnet

.PHONY: demo test lint bench paper-table venv mxnet-venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $@

mxnet-venv: $(MXNET_VENV)/.installed

$(MXNET_VENV)/.installed:
	test -x $(MXNET_VENV)/bin/python || $(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python -m pip install -q "mxnet==1.9.1" "numpy<1.24"
	touch $@

demo: venv
	$(PY) -m arcface demo

test: venv mxnet-venv
	$(PY) -m ruff check src tests bench
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check src tests bench

# Every script in bench/ at its suite size (under 20 minutes on 2 cores), then the README's summary table.
bench: venv
	$(PY) bench/_suite.py --readme README.md

# The ArcFace paper's loss comparison on LFW (about an hour on 2 cores; cached in .cache/arcface/loss_table;
# add ARGS=--fresh to start from nothing).
paper-table: venv
	$(PY) -m arcface experiment loss-table --jobs 2 --readme README.md $(ARGS)

clean:
	rm -rf $(VENV) $(MXNET_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
