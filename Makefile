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
DEMO_IMAGE_PORT ?= 18765
STAGE_ARGS = $(if $(CONFIG),--config $(CONFIG)) $(ARGS)
export PYSPARK_PYTHON := $(abspath $(PY))
export SPARK_LOCAL_IP := 127.0.0.1

.PHONY: install lock test-latest demo run test test-cluster lint format metadata demo-pool match count balance select download reshard report bench-match bench-scale bench-balance bench-shards clean-demo

# The lock: every package pinned, for the supported Python (3.11). `make install`, `make test`
# and CI install exactly these versions; pyproject.toml keeps ranges for people who install the
# package into their own environment. `make lock` re-resolves it (then run `make test`, commit both).
LOCK := requirements/lock-py311.txt
UV_VERSION := 0.13.9

# The virtual environment is (re)built when missing or when pyproject.toml or the lock changes.
$(VENV)/.installed: pyproject.toml $(LOCK)
	@command -v java >/dev/null || { echo "Java is required by Spark: sudo apt-get install -y openjdk-17-jre-headless"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --extra download --python-version 3.11 \
	  --override requirements/overrides.txt --upgrade -o $(LOCK)

# Drift check for maintainers: the newest versions pyproject.toml allows, no lock, in a venv of its
# own; run by hand before `make lock` to see what a user installing today would get.
LATEST_VENV ?= .venv-latest
test-latest:
	rm -rf $(LATEST_VENV) && $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade -e '.[test,download]'
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/freeze.txt
	diff <(grep -E '^[A-Za-z0-9]' $(LOCK) | sed 's/ .*//' | tr A-Z_ a-z- | sort) \
	  <(tr A-Z_ a-z- < $(LATEST_VENV)/freeze.txt | sort) | grep '^[<>]' || echo "no drift from the lock"
	PYSPARK_PYTHON=$(abspath $(LATEST_VENV))/bin/python $(LATEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# The whole pipeline on the built-in demo pool (configs/demo.yaml), after starting a loopback image
# server that stands in for the web (the demo pool's URLs point at it).
demo: install
	@mkdir -p $(RUN)
	$(PY) -m curation.shards.demo_server --port $(DEMO_IMAGE_PORT) --port-file $(RUN)/image-server.port --max-seconds 3600 & echo $$! > $(RUN)/image-server.pid
	@for i in $$(seq 50); do test -s $(RUN)/image-server.port && break; sleep 0.2; done
	@set -e; trap 'kill $$(cat $(RUN)/image-server.pid) 2>/dev/null || true' EXIT; \
	$(CURATE) run --config configs/demo.yaml --set run.dir=$(RUN) \
	  --set demo.url_prefix=http://127.0.0.1:$(DEMO_IMAGE_PORT)/images/ $(ARGS); \
	$(PY) -m curation.shards.verify $(RUN)/shards
	@echo "demo run written to $(RUN)/ (report: $(RUN)/report/index.html)"

# Every stage of CONFIG in order, skipping those that are up to date.
run: install
	@test -n "$(CONFIG)" || { echo "usage: make run CONFIG=run.yaml [ARGS='--set balance.cap=20000']"; exit 2; }
	$(CURATE) run --config $(CONFIG) $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-cluster: install
	$(PY) -m pytest -q -m cluster $(PYTEST_ARGS)

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

download: install
	$(CURATE) download $(STAGE_ARGS)

reshard: install
	$(CURATE) reshard $(STAGE_ARGS)

report: install
	$(CURATE) report $(STAGE_ARGS)

bench-shards: install
	$(PY) bench/bench_shards.py $(ARGS)

bench-balance: install
	$(PY) bench/bench_balance.py $(ARGS)

bench-match: install
	$(PY) bench/bench_match.py $(ARGS)

# match -> count -> balance (rake, 30 % of matched) -> select on 1M, 2M and 4M captions (~1 h on 2
# cores); ARGS="--sizes 0.25M,0.5M,1M" for a smaller run.
bench-scale: install
	$(PY) bench/bench_scale.py $(ARGS)

clean-demo:
	rm -rf $(RUN)

# The stage targets' help comes from the stage registry (curation/pipeline.py), which needs only
# the standard library: it works before `make install`.
.PHONY: help
help:
	@PYTHONPATH=. $(PYTHON) -m curation.pipeline
