#!/usr/bin/env bash
# .venv in the repo, from Debian's /usr/bin/python3, with the package installed editable plus its test extra.
# Reinstalls only when pyproject.toml (or the interpreter) changed since the last successful install.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -x $SYSTEM_PYTHON ]] || die "$SYSTEM_PYTHON is missing (apt-get install python3 python3-venv)"
STAMP="$VENV/.sandbox-runner-stamp"

# The worker runs as $SRUNNER_USER, who cannot write __pycache__ into this root-owned checkout (and root's
# environment sets PYTHONDONTWRITEBYTECODE): without compiled files every job would recompile the package.
compile_package() {
    "$VENV/bin/python" -m compileall -q "$REPO/sandbox_runner" >/dev/null || die "compileall failed"
    chmod -R a+rX "$REPO/sandbox_runner"
}
# "compat" editable mode: a plain .pth path entry instead of setuptools' import-hook finder, which costs every
# job ~17 ms of interpreter start-up (measured by benchmarks/job_overhead.py).
EDITABLE_MODE=compat
want="$(cat "$REPO/pyproject.toml" <("$SYSTEM_PYTHON" -VV) <(echo "$EDITABLE_MODE") | sha256sum | cut -d' ' -f1)"

# A venv made from another interpreter (say root's pyenv python) is unusable by other users: rebuild it.
if [[ -e $VENV ]] && ! grep -qx "home = $(dirname "$SYSTEM_PYTHON")" "$VENV/pyvenv.cfg" 2>/dev/null; then
    say "venv: $VENV was not made from $SYSTEM_PYTHON; recreating"
    rm -rf "$VENV"
fi

if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $VENV/bin/python ]] \
    && "$VENV/bin/python" -c 'import sandbox_runner' 2>/dev/null; then
    compile_package
    say "venv: up to date ($VENV)"
    exit 0
fi

t0="$(now)"
if [[ ! -x $VENV/bin/python ]]; then
    say "venv: creating $VENV from $SYSTEM_PYTHON"
    "$SYSTEM_PYTHON" -m venv "$VENV" || die "python3 -m venv failed (is python3-venv installed?)"
fi
say "venv: pip install -e '.[test]'"
rm -f "$STAMP"
# pip and the build backend are chatty (the machine's pip.conf, setuptools deprecations): keep that in a log
# and show it only when the install fails.
LOG="$VENV/pip-install.log"
if ! (cd "$REPO" && "$VENV/bin/python" -m pip install --upgrade pip \
    && "$VENV/bin/python" -m pip install --config-settings editable_mode="$EDITABLE_MODE" -e '.[test]') \
    >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    die "pip install -e '.[test]' into $VENV failed (full log: $LOG)"
fi
# Whatever umask pip ran under, the user that runs jobs must be able to read and run everything here.
chmod -R a+rX "$VENV"
compile_package
echo "$want" >"$STAMP"
info "done in $(elapsed "$t0")"
