# viops: `make demo` and `make test` set themselves up on first use (a .venv with pinned dependencies).
# The interpreter the venv is built from (Python 3.11). The operating system's own build comes first where it can
# make a venv: Debian's and Ubuntu's /usr/bin/python3.11 is compiled with profile-guided and link-time optimisation
# and runs this project ~10% faster than a default pyenv or source build (docs/benchmarks.md, "The test suite").
# Then python3.11 and python3 from PATH. `make setup PYTHON=...` picks another.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(or $(shell for p in /usr/bin/python3.11 python3.11; do \
	"$$p" -c 'import ensurepip, venv' >/dev/null 2>&1 && { command -v "$$p"; break; }; done),python3)
endif
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.viops-installed
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Most tests wait on servers and child processes as much as they compute, so a 2-core
# machine runs three at once; each test module stays on one worker (its module fixtures start once), and the long
# modules start first (tests/conftest.py, LONG_MODULES).
TEST_WORKERS ?= 3

.PHONY: venv-unusable setup test demo demo-cluster bench bench-gpu bench-out-of-core clean stack-up stack-down

setup: $(STAMP)

# A venv whose interpreter no longer runs Python 3.11 (the Python it was made from was removed, moved or upgraded) is
# made again from scratch: its stamp alone would otherwise keep it, and every target would fail inside it.
VENV_RUNS := $(shell $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null && echo yes)
ifneq ($(VENV_RUNS),yes)
$(STAMP): venv-unusable
endif

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "viops needs Python 3.11, found " + sys.version.split()[0]'
	@$(if $(VENV_RUNS),true,! [ -e $(VENV) ] \
		|| { echo "$(VENV) does not run Python 3.11 any more: making it again"; rm -rf $(VENV); })
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m viops.demo --out demo_out

# The distributed profile (configs/profiles/distributed): MLflow on PostgreSQL, Airflow with Celery workers,
# Pushgateway, Prometheus, Alertmanager and the alert receiver as separate processes; logs in .stack/logs.
stack-up: $(STAMP)
	$(VENV)/bin/viops stack up

stack-down: $(STAMP)
	$(VENV)/bin/viops stack down

# make demo's story through that stack (real scheduler, Celery workers, Prometheus alerts); needs PostgreSQL and
# Redis on 127.0.0.1 and the Debian packages prometheus, prometheus-alertmanager, prometheus-pushgateway.
demo-cluster: $(STAMP)
	$(PY) -m viops.demo.cluster --out demo_cluster_out

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/bench_blr_training.py
	$(PY) benchmarks/step_costs.py

# BNN and VAE training on CUDA and on the CPU against minimal loops on each; the CPU alone where there is no GPU.
bench-gpu: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/bench_gpu.py

# Peak RSS and throughput of `viops train` on 100k, 1M and 10M Parquet rows, streamed and in memory (GNU time).
bench-out-of-core: $(STAMP)
	$(PY) benchmarks/bench_out_of_core.py

clean:
	rm -rf demo_out demo_cluster_out .pytest_cache mlflow.db .stack
