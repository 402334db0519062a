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

.PHONY: demo test lint bench paper-table venv mxnet-venv browser clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all,ray,dev]"
	touch $@

# insightface 2.1 in a venv of its own, for the test that checks how it reads our exported ONNX files (its
# opencv-python requirement is met by the headless build: --no-deps, then what it imports).
INSIGHTFACE_VENV ?= .venv-insightface
$(INSIGHTFACE_VENV)/.installed:
	test -x $(INSIGHTFACE_VENV)/bin/python || $(PYTHON) -m venv $(INSIGHTFACE_VENV)
	$(INSIGHTFACE_VENV)/bin/pip install -q --no-deps "insightface==2.1"
	$(INSIGHTFACE_VENV)/bin/pip install -q numpy onnx onnxruntime opencv-python-headless scikit-image tqdm requests
	touch $@

mxnet-venv: $(MXNET_VENV)/.installed

$(MXNET_VENV)/.installed:
	test -x $(MXNET_VENV)/bin/python || $(PYTHON) -m venv $(MXNET_VENV)
	$(MXNET_VENV)/bin/python -m pip install -q "mxnet==1.9.1" "numpy<1.24"
	touch $@

demo: venv
	$(PY) -m arcface demo

# The browser test drives Debian's Chromium through its ChromeDriver (no browser download). Installed with apt where
# this user may (root, or sudo without a password); elsewhere the browser tests skip, and fail under CI=true.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium chromium-driver; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
	  sudo -n apt-get update -q && sudo -n apt-get install -y -q chromium chromium-driver; \
	else echo "make browser: Chromium is not installed and apt needs root: the browser tests will skip (fail under CI=true)"; fi

test: venv mxnet-venv $(INSIGHTFACE_VENV)/.installed browser
	$(PY) -m ruff check src tests bench tools
	$(PY) -m pytest -q

lint: venv
	$(PY) -m ruff check src tests bench tools

# Every script in bench/ at its suite size, then the summary table in docs/benchmarks.md.
bench: venv
	$(PY) bench/_suite.py --readme docs/benchmarks.md

# The ArcFace paper's loss comparison on LFW (about an hour on a small machine; cached in .cache/arcface/loss_table;
# add ARGS=--fresh to start from nothing). A research driver in tools/, not part of the package.
paper-table: venv
	$(PY) -m tools.loss_table --jobs 2 --readme docs/benchmarks.md $(ARGS)

clean:
	rm -rf $(VENV) $(MXNET_VENV) $(INSIGHTFACE_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
