# Two entry points (see README "Quick start"):
#   make demo   set up .venv and run the offline demo study
#   make test   set up .venv and run the whole test suite (what CI runs)
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
CORES   ?= 2

.PHONY: demo test lint dryrun-study clean-results

$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/local --cores $(CORES)
	@echo "demo done: the answer is in results/report/summary.md (figures in results/report/figures/)"

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# snakemake --lint last: it exits 1 on its three kinds of deliberate note (README "Lint")
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint

dryrun-study: $(STAMP)
	$(VENV)/bin/snakemake -n --profile profiles/local --configfile config/study.yaml

clean-results:
	rm -rf results logs benchmarks
