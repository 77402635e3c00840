# detr-ft: `make demo` and `make test` each set up .venv themselves on a fresh machine.
#
# Torch: where no NVIDIA GPU is present, the CPU build is installed first
# (TORCH_SPEC, optionally from TORCH_INDEX, e.g. the PyTorch CPU wheel index);
# a torch that is already importable in the venv is kept (a CUDA user keeps theirs).
PYTHON       ?= python3
VENV         ?= .venv
TORCH_SPEC   ?= torch==2.13.0
TORCH_INDEX  ?=
# The transformers releases CI tests: the main suite on TF_MAIN, the
# version-sensitive tests (model building, loss oracle, export) again on TF_COMPAT.
TF_MAIN      ?= 5.18.0
TF_COMPAT    ?= 4.57.6
PYTEST_ARGS  ?=

PIP_INDEX_FLAG = $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: demo test test-main test-compat install clean

define make_venv
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	@if ! $(1)/bin/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then \
	    $(1)/bin/python -m pip install -q torch; \
	  else \
	    $(1)/bin/python -m pip install -q "$(TORCH_SPEC)" $(PIP_INDEX_FLAG); \
	  fi; \
	fi
	$(1)/bin/python -m pip install -q -e ".[dev]" "transformers==$(2)"
endef

$(VENV)/.installed: pyproject.toml Makefile
	$(call make_venv,$(VENV),$(TF_MAIN))
	@touch $@

.venv-tf-compat/.installed: pyproject.toml Makefile
	$(call make_venv,.venv-tf-compat,$(TF_COMPAT))
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/detr-ft demo

test: test-main test-compat

test-main: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# Internals that moved between transformers 4.x and 5.x, tested on both.
test-compat: .venv-tf-compat/.installed
	.venv-tf-compat/bin/python -m pytest -q -m compat $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-tf-compat runs .pytest_cache
