# The two set-up commands of the README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Dev and CI pin the CPU wheel that lies on this machine's disk, so pip never pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo demo-core test lint browser bench bench-quick bench-fsg bench-service bench-gpu gpu-check bench-dispatchers clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,export]" "$(TORCH)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/service_demo.py

demo-core: $(STAMP)
	$(BIN)/fsg train examples/digits_fsg.json --out runs/digits_fsg
	$(BIN)/fsg summary runs/digits_fsg/model.packed.safetensors

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# The dashboard's browser tests (tests/service/web) drive Debian's chromium through Playwright; nothing is
# downloaded at test time. CI runs this as root on a fresh machine; elsewhere the tests skip with the reason.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q --no-install-recommends chromium; \
	else echo "note: $(CHROMIUM) is missing (apt-get install chromium); the browser tests will be skipped"; fi

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.estimators --json bench/results/estimators.json

bench-quick: $(STAMP)
	$(BIN)/python -m bench.estimators --quick

bench-service: $(STAMP)
	$(BIN)/python -m bench.service --json bench/results/service.json

bench-gpu: $(STAMP)
	$(BIN)/python -m bench.gpu --json bench/results/gpu.json

# What FSG costs next to STE on this machine's CPUs (mean and median step, memory; the issue's goals).
bench-fsg: $(STAMP)
	$(BIN)/python -m bench.fsg_cost --json bench/results/fsg_cost.json

# On a GPU machine, under 8 minutes on one GPU: the CUDA tests (Triton kernel, FSG training, NCCL), then
# bench.gpu (slow-net kernels vs the PyTorch path, mamba_ssm when installed, an NCCL all-reduce, and
# training steps of STE and FSG). Uses .venv when there is one, else the machine's python3 (a GPU image
# with its own CUDA torch and Triton; fsg_core also needs pydantic, safetensors, scikit-learn, tqdm, rich).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	$(GPU_PYTHON) -c "import torch; assert torch.cuda.is_available(), 'gpu-check needs a CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name())"
	$(GPU_PYTHON) -m pytest -q -p no:cacheprovider -m cuda tests/fsg_core/test_cuda.py
	$(GPU_PYTHON) -m bench.gpu --quick --only fsg,fsg_paper,fsg_torch,fsg_every4,metaquant --json bench/results/gpu.json

bench-dispatchers: $(STAMP)
	$(BIN)/python -m bench.dispatchers --json bench/results/dispatchers.json

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
