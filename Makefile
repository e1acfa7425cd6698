# One target per stage. Every stage target takes CONFIG=<file.yaml|toml> and ARGS="<more flags>",
# e.g.  make match CONFIG=runs/my.yaml ARGS="--set match.casefold=true"
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CURATE := $(VENV)/bin/curate
CONFIG ?=
ARGS ?=
RUN ?= runs/demo
DEMO_ROWS ?= 200000
DEMO_METHOD ?= rake
STAGE_ARGS = $(if $(CONFIG),--config $(CONFIG)) $(ARGS)
export PYSPARK_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP := 127.0.0.1

.PHONY: install demo test lint format metadata demo-pool match count balance select bench-match clean-demo

# The virtual environment is (re)built when missing or when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@command -v java >/dev/null || { echo "Java is required by Spark: sudo apt-get install -y openjdk-17-jre-headless"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The whole pipeline on the built-in demo pool, on an in-process local[*] Spark session.
demo: install
	$(CURATE) demo-pool --output $(RUN)/pool --rows $(DEMO_ROWS) $(ARGS)
	$(CURATE) match --input $(RUN)/pool --output $(RUN)/matched
	$(CURATE) count --input $(RUN)/matched --output $(RUN)/counts --margin source
	$(CURATE) balance --input $(RUN)/matched --counts $(RUN)/counts --output $(RUN)/balance --method $(DEMO_METHOD) --target-fraction 0.3
	$(CURATE) select --input $(RUN)/matched --weights $(RUN)/balance --output $(RUN)/selected --seed 0
	@echo "demo run written to $(RUN)/"

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check curation jobs tests bench
	$(VENV)/bin/ruff format --check curation jobs tests bench

format: install
	$(VENV)/bin/ruff format curation jobs tests bench
	$(VENV)/bin/ruff check --fix curation jobs tests bench

# Rebuilds the shipped default list byte for byte (git diff --exit-code metadata/ checks it).
metadata: install
	@test -f /usr/share/wordnet/data.noun || { echo "WordNet is missing: sudo apt-get install -y wordnet-base"; exit 1; }
	$(CURATE) metadata --wordnet /usr/share/wordnet --output metadata/default.json --force --master 'local[1]'

demo-pool: install
	$(CURATE) demo-pool $(STAGE_ARGS)

match: install
	$(CURATE) match $(STAGE_ARGS)

count: install
	$(CURATE) count $(STAGE_ARGS)

balance: install
	$(CURATE) balance $(STAGE_ARGS)

select: install
	$(CURATE) select $(STAGE_ARGS)

bench-match: install
	$(PY) bench/bench_match.py $(ARGS)

clean-demo:
	rm -rf $(RUN)
