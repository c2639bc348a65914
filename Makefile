# Entry points for people and CI. Each bootstraps what it needs (local_test/bootstrap.sh).
#   make demo   train on local_test/test_dir, serve, predict payload.csv, stop (image or native)
#   make test   the test suite (container tests run when a Docker engine is reachable)
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
	.venv/bin/python -m pytest $(PYTEST_ARGS)

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
