# fmct: the two commands a newcomer runs on a fresh machine are `make reproduce` and `make test`.
# Everything they need is installed here (Python 3.11 + pip are the only prerequisites).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
KERNEL := fmct
PROFILE ?= demo
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup test reproduce bench browser clean-runs help

help:
	@echo "make reproduce   set up, then run every notebook on the synthetic cohort (profile $(PROFILE)); figures -> figures/"
	@echo "make test        set up, then run the test suite (unit, integration, every notebook on the toy profile)"
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
	@start=$$(date +%s); n=$(words $(NOTEBOOKS)); i=0; for nb in $(NOTEBOOKS); do \
	  i=$$((i + 1)); name=$$(basename $$nb); t0=$$(date +%s); \
	  echo "== [$$i/$$n] $$name (profile $(PROFILE)), $$(( (t0 - start) / 60 )) min so far"; \
	  $(VENV)/bin/papermill --kernel $(KERNEL) $$nb runs/notebooks/$$name -p profile $(PROFILE) || exit 1; \
	  echo "== [$$i/$$n] $$name done in $$(( $$(date +%s) - t0 )) s; its conclusion:"; \
	  $(PY) tools/conclusion.py runs/notebooks/$$name; \
	done; echo "all $$n notebooks done in $$(( ($$(date +%s) - start) / 60 )) min"
	@echo "figures written to figures/"

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs cache
