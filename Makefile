# sandbox_runner: machine set-up, lint, tests, demo, worker image. Run as root on Debian 12.
# The work is in scripts/setup/*.sh; every target is idempotent and quick when there is nothing to do.

SHELL := /bin/bash
.DEFAULT_GOAL := help
# Steps share one machine (apt, the srunner user, podman storage): never run them side by side.
.NOTPARALLEL:

VENV := .venv
PYTHON := $(VENV)/bin/python
PYTEST_ARGS ?=
# Paths that may not exist yet in a fresh clone (git keeps no empty folders); ruff errors on missing paths.
LINT_PATHS := $(wildcard sandbox_runner tests scripts benchmarks)

.PHONY: help setup venv lint test demo image clean

help:
	@echo "make setup   packages, user srunner, .venv, Redis/RabbitMQ, rootless podman API service, test images"
	@echo "make lint    ruff check + mypy (.venv)"
	@echo "make test    setup + image, then lint and pytest (PYTEST_ARGS='...' passes extra args)"
	@echo "make demo    setup, then scripts/demo.sh"
	@echo "make image   worker image localhost/sandbox-runner/worker:latest (rootless, as srunner)"
	@echo "make clean   remove build/ (wheels, debootstrap tree, image tarball); images and .venv stay"

setup:
	@scripts/setup/setup.sh

# Only the virtualenv: enough for lint, without touching services.
venv:
	@scripts/setup/venv.sh

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(PYTHON) scripts/import_cycles.py

test: setup image
	@$(MAKE) --no-print-directory lint
	CI=$${CI:-} $(PYTHON) -m pytest -q $(PYTEST_ARGS)

demo: setup
	@test -f scripts/demo.sh || { echo "scripts/demo.sh does not exist" >&2; exit 1; }
	bash scripts/demo.sh

image: setup
	@scripts/setup/image.sh

clean:
	rm -rf build
