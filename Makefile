# The README's two commands:  make reproduce  |  make test
#
# Both create .venv if needed and install the package into it once (a stamp file remembers).
# torch: on a machine without an NVIDIA driver we install the CPU wheel torch==2.13.0 (an unpinned
# torch would pull a multi-GB CUDA build); with a driver, plain torch. A torch already present in the
# venv is never replaced, so a GPU user who installed their own CUDA build keeps it.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
CPU_TORCH   ?= torch==2.13.0
TORCH_SPEC  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch>=2.4,$(CPU_TORCH))
PARAMS      ?= params/embedded.yaml
STAMP       := $(VENV)/.sftnb-installed

.PHONY: install reproduce reproduce-paper-range test test-fast notebooks clean-runs

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	@touch $(STAMP)

install: $(STAMP)

# The main job: SmolLM2-135M + built-in facts, notebooks 01-06, every table and figure (figures/embedded/).
reproduce: install
	$(PY) -m sftnb run $(PARAMS)

# Issue 22: the testbed at the paper's scales (60 / 240 / 960 samples, figures/testbed-paper-range/), at most 2 h on
# a 2-core CPU from an empty store. Wall time and peak memory (/usr/bin/time -v) and the store's per-unit log go to
# benchmarks/results/<machine>-<date>-paper-range/, committed with the figures.
PAPER_RANGE ?= params/testbed-paper-range.yaml
MACHINE     ?= $(if $(shell command -v nvidia-smi 2>/dev/null),gpu,cpu)-$(shell grep -m1 -o -i -E 'xeon|epyc|ryzen|core' /proc/cpuinfo 2>/dev/null | tr A-Z a-z)
RESULTS     ?= benchmarks/results/$(MACHINE)-$(shell date -u +%Y-%m-%d)-paper-range
reproduce-paper-range: install
	mkdir -p $(RESULTS)
	bash -o pipefail -c '{ date -u; /usr/bin/time -v $(PY) -m sftnb run $(PAPER_RANGE); status=$$?; date -u; \
	  exit $$status; } 2>&1 | tee $(RESULTS)/make_reproduce_paper_range.log'
	cp runs/testbed-paper-range/units.log.jsonl $(RESULTS)/ 2>/dev/null || true

# The whole suite: unit tests (slow ones included), then the committed notebooks under nbval on their default
# parameters (params/ci.yaml): the cells marked NBVAL_CHECK_OUTPUT must print what the committed outputs show.
NBVAL := --nbval-lax --nbval-sanitize-with notebooks/nbval_sanitize.cfg
test: install
	$(PY) -m pytest tests notebooks $(NBVAL) -p no:cacheprovider

# Under a minute: no model is trained, no notebook executed.
test-fast: install
	$(PY) -m pytest tests -m "not slow" -p no:cacheprovider -q

# Re-execute the committed notebooks in place on their default (ci) parameters: the outputs nbval compares.
# Run it after changing a notebook or what it prints, and commit the result.
# From an empty ci store, as CI executes them: a cell that reuses a unit prints less than one that computes it.
notebooks: install
	rm -rf runs/ci
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace notebooks/0[1-9]_*.ipynb

clean-runs:
	rm -rf runs/
