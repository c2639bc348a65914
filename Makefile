# Entry points for people and CI. Each bootstraps what it needs (local_test/bootstrap.sh).
#   make demo   train on local_test/test_dir, serve, predict payload.csv, stop (image or native)
#   make test   the test suite (container tests run when a Docker engine is reachable);
#               COVERAGE=1 (CI) measures kmeans/ in it and in every process it starts, and
#               prints the report (pyproject.toml's [tool.coverage.*]; data in .coverage)
#   make lint   ruff, shellcheck, hadolint
#   make bench        ours against the baselines (~30 min on 2 cores): bench/RESULTS.md
#   make bench-quick  the same code paths, small and short (~3 min): bench/work/RESULTS-quick.md
#   make reliability  fuzzing, faults, a 5-minute soak, worker options (~25 min): reliability/REPORT.md
.PHONY: demo test lint bench bench-quick reliability

SHELL_SCRIPTS := $(wildcard *.sh local_test/*.sh .ci/*.sh) .ci/run kmeans/entrypoint

demo:
	local_test/demo.sh

test:
	local_test/bootstrap.sh
ifeq ($(COVERAGE),1)
	rm -f .coverage .coverage.*
	status=0; .venv/bin/python -m coverage run -m pytest $(PYTEST_ARGS) || status=$$?; \
	{ .venv/bin/python -m coverage combine -q && .venv/bin/python -m coverage report; } \
	    || { [ $$status -ne 0 ] || status=1; }; \
	exit $$status
else
	.venv/bin/python -m pytest $(PYTEST_ARGS)
endif

lint:
	local_test/bootstrap.sh venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/shellcheck $(SHELL_SCRIPTS)
	.venv/bin/hadolint Dockerfile

bench:
	local_test/bootstrap.sh venv nginx wrk
	.venv/bin/python bench/run.py

bench-quick:
	local_test/bootstrap.sh venv nginx wrk
	.venv/bin/python bench/run.py --quick

reliability:
	local_test/bootstrap.sh venv nginx wrk
	.venv/bin/python reliability/run.py
