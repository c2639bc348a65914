# Entry points for people and CI. Each bootstraps what it needs (local_test/bootstrap.sh).
#   make demo   train on local_test/test_dir, serve, predict payload.csv, stop (image or native)
#   make test   the test suite (container tests run when a Docker engine is reachable)
#   make lint   ruff, shellcheck, hadolint
.PHONY: demo test lint

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
