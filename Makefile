# fmct: the two commands a newcomer runs on a fresh machine are `make reproduce` and `make test`.
# Everything they need is installed here (Python 3.11 + pip are the only prerequisites).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
KERNEL := fmct
PROFILE ?= demo
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup test reproduce longer-finetuning bench browser clean-runs help

help:
	@echo "make reproduce   set up, then run every notebook on the synthetic cohort (profile $(PROFILE)); figures -> figures/"
	@echo "make test        set up, then run the test suite (unit, integration, every notebook on the toy profile)"
	@echo "make longer-finetuning  Fig. 1e and Fig. 2 (K=32, 128) with 5x the fine-tuning steps (2,000): ~55 min, N_SEEDS=3 ~80 min"
	@echo "make bench       run the benchmarks under bench/"

setup: $(VENV)/.installed

# The venv is rebuilt when the dependencies change. torch is pinned by constraints.txt to the CPU build.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[all]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (fmct)"
	touch $@

# Headless Chromium for the one real-browser test (Debian's package; never `playwright install`).
# Best effort: where apt is unavailable the browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed; the browser test will be skipped"; \
	  else echo "no root/apt: the browser test will be skipped"; fi; }

test: setup browser
	$(PY) -m pytest -q

reproduce: setup
	@mkdir -p runs/notebooks figures
	@start=$$(date +%s); for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb); echo "== $$name (profile $(PROFILE))"; t0=$$(date +%s); \
	  $(VENV)/bin/papermill --kernel $(KERNEL) $$nb runs/notebooks/$$name -p profile $(PROFILE) || exit 1; \
	  echo "== $$name done in $$(( $$(date +%s) - t0 )) s"; \
	done; echo "all notebooks done in $$(( ($$(date +%s) - start) / 60 )) min"
	@echo "figures written to figures/"

# 02 and 04 (K = 32, 128) at 2,000 fine-tuning steps into figures/*_40ep.*; why and timings: docs/experiments.md
N_SEEDS ?= 1
longer-finetuning: setup
	@mkdir -p runs/notebooks figures
	$(VENV)/bin/papermill --kernel $(KERNEL) notebooks/02_finetune.ipynb runs/notebooks/02_finetune_40ep.ipynb \
	  -p profile $(PROFILE) -p finetune_epochs 40 -p n_seeds $(N_SEEDS) -y "protocols: [scratch, finetune]"
	$(VENV)/bin/papermill --kernel $(KERNEL) notebooks/04_fewshot.ipynb runs/notebooks/04_fewshot_40ep.ipynb \
	  -p profile $(PROFILE) -p finetune_epochs 40 -p n_seeds $(N_SEEDS) -y "shots: [32, 128]"

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs cache
