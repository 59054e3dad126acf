# Two commands on a fresh machine: `make conformance` (the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# A local CPU build; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: conformance test install

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The conformance suite on the embedded default profile, as users run it on their runners.
conformance: $(VENV)/.installed
	$(PY) -m pytest --pyargs titan_conformance -n 2 --tc-suite tiny-cpu -p no:cacheprovider

test: $(VENV)/.installed
	$(PY) -m pytest tests -n 2 -q
