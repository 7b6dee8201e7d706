#!/usr/bin/env bash
# `make setup`: everything a fresh Debian 12 machine needs to run, test and demo the worker. Idempotent; a warm
# run only checks. Each step is its own script here and can be run alone.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
take_lock setup

T0="$(now)"
for step in packages user venv access services podman-service test-images slurm; do
    "$SETUP_DIR/$step.sh" || die "setup step '$step' failed (run scripts/setup/$step.sh alone to retry it)"
done
say "setup complete in $(elapsed "$T0"): user $SRUNNER_USER, socket $(podman_sock), venv $VENV"
