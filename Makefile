# fmct: the two commands a newcomer runs on a fresh machine are `make reproduce` and `make test`.
# Everything they need is installed here (Python 3.11 + pip are the only prerequisites).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
KERNEL := fmct
PROFILE ?= demo
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: setup test reproduce pretrain bench browser clean-runs help

help:
	@echo "make reproduce   set up, then run every notebook on the synthetic cohort (profile $(PROFILE)); figures -> figures/ (demo)"
	@echo "make test        set up, then run the test suite (unit, integration, every notebook on the toy profile)"
	@echo "make pretrain    pretrain and release every encoder the notebooks start from (encoders/, MODEL_CARD.md; hours on 2 cores, resumes)"
	@echo "make bench       run the benchmarks under bench/"

setup: $(VENV)/.installed

# torch. A torch already in the venv is kept, whatever its build (a GPU user installs a CUDA build first:
# docs/guide.md#installing); make never replaces or upgrades it. Into a venv without torch, make installs
# constraints.txt's version from TORCH_INDEX, pytorch.org's CPU wheels (a plain `pip install torch` on Linux
# gets the CUDA build, several GB). TORCH_INDEX= (empty) takes it from your pip configuration instead.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION := $(PY) -c "import importlib.metadata as m; print(m.version('torch'))"

# The venv is brought up to date when the dependencies change.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(TORCH_VERSION) >/dev/null 2>&1 || $(PIP) install --quiet --no-deps -c constraints.txt \
	  $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	echo "torch==$$($(TORCH_VERSION))" > $(VENV)/torch-kept.txt
	$(PIP) install --quiet -c $(VENV)/torch-kept.txt -e '.[all]'
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

# Two worker processes of one thread each (pytest-xdist; CI has two cores): 1.5x faster than one process of
# two threads, whose imports, kernels and Python run on one core. A file runs whole on one worker, in order.
TEST_WORKERS ?= 2
test: setup browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The committed gallery, figures/, is the synthetic cohort at the demo profile: make reproduce writes it there
# (unless FMCT_FIGURES says otherwise). Another profile writes where every other run does: <runs root>/figures/.
GALLERY := $(if $(filter demo,$(PROFILE)),FMCT_FIGURES=$${FMCT_FIGURES:-$(CURDIR)/figures})

# Each notebook's progress bars (text; the kernel's stderr) are shown as it runs and kept in its saved copy.
reproduce: setup
	@mkdir -p runs/notebooks
	@start=$$(date +%s); n=$(words $(NOTEBOOKS)); i=0; for nb in $(NOTEBOOKS); do \
	  i=$$((i + 1)); name=$$(basename $$nb); t0=$$(date +%s); \
	  echo "== [$$i/$$n] $$name (profile $(PROFILE)), $$(( (t0 - start) / 60 )) min so far"; \
	  $(GALLERY) $(if $(PRETRAIN),FMCT_PRETRAIN=1) $(VENV)/bin/papermill --kernel $(KERNEL) --no-progress-bar --stderr-file - \
	    $$nb runs/notebooks/$$name -p profile $(PROFILE) || exit 1; \
	  echo "== [$$i/$$n] $$name done in $$(( $$(date +%s) - t0 )) s; its conclusion:"; \
	  $(PY) tools/conclusion.py runs/notebooks/$$name; \
	done; echo "all $$n notebooks done in $$(( ($$(date +%s) - start) / 60 )) min"
	@echo "figures written to $$($(GALLERY) $(PY) -c 'from fmct_lib.paths import figures_root; print(figures_root())')"

# The released encoders (encoders/): DINO, MAE and VICReg at the fractions of Fig. 4, with their logs, sha256
# and MODEL_CARD.md. `make reproduce` starts from them; `make reproduce PRETRAIN=1` pretrains afresh instead.
# Another profile's releases go to runs/encoders (encoders/ holds the demo's, with its model card).
pretrain: setup
	$(GALLERY) $(if $(filter demo,$(PROFILE)),,FMCT_ENCODERS=$${FMCT_ENCODERS:-$(CURDIR)/runs/encoders}) \
	  $(PY) tools/release_encoders.py --profile $(PROFILE)

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs cache
