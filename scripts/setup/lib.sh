# shellcheck shell=bash
# Shared helpers for scripts/setup/*.sh. Sourced, never run.
# Every step is idempotent: it checks the state it wants first and only acts when that state is missing.

set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
SETUP_DIR="$REPO/scripts/setup"
SRUNNER_USER="${SRUNNER_USER:-srunner}"
# Debian's interpreter on purpose: root's default python3 may live under /root (mode 700, pyenv) where an
# unprivileged user cannot run it, and the venv must be usable by $SRUNNER_USER.
SYSTEM_PYTHON=/usr/bin/python3
VENV="$REPO/.venv"
BUILD="$REPO/build"
BUSYBOX_IMAGE=localhost/sandbox-runner/busybox:latest
BUSYBOX_TAR="$BUILD/images/busybox.tar"
BASE_IMAGE=localhost/sandbox-runner/debian-base:bookworm
WORKER_IMAGE=localhost/sandbox-runner/worker:latest
SAFE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say()  { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf '\nERROR: %s\n' "$*" >&2; exit 1; }
# A failing command under set -e would otherwise exit silently from inside make; name the script and line.
trap 'rc=$?; printf "\nERROR: %s failed at line %s (exit %s): %s\n" "$(basename "$0")" "$LINENO" "$rc" "$BASH_COMMAND" >&2' ERR

need_root() { [[ $(id -u) -eq 0 ]] || die "$(basename "$0") must run as root (it installs packages and manages the $SRUNNER_USER user)"; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

srunner_uid() { id -u "$SRUNNER_USER" 2>/dev/null || die "user $SRUNNER_USER does not exist (run: make setup)"; }
srunner_home() { getent passwd "$SRUNNER_USER" | cut -d: -f6; }
runtime_dir() { echo "/run/user/$(srunner_uid)"; }
podman_sock() { echo "$(runtime_dir)/podman/podman.sock"; }

# Run a command as $SRUNNER_USER with a clean, predictable environment (root's PATH may point into /root) and
# from / (root's cwd may be unreadable for that user).
as_srunner() {
    local home
    home="$(srunner_home)"
    (cd / && runuser -u "$SRUNNER_USER" -- env -i \
        HOME="$home" USER="$SRUNNER_USER" LOGNAME="$SRUNNER_USER" PATH="$SAFE_PATH" LANG=C.UTF-8 \
        XDG_RUNTIME_DIR="$(runtime_dir)" "$@" 9>&-)
}

# Rootless podman as $SRUNNER_USER, local (not through the API service); runc as PODMAN-HERE.md requires.
srunner_podman() { as_srunner podman --runtime runc "$@"; }

sock_answers() {
    local sock="$1"
    [[ -S $sock ]] && curl -fsS --max-time 2 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1
}

# Serialise runs of the same script: several people and test runs share this checkout and the srunner user.
# The lock is fd 9; anything that may outlive the script (podman's pause process, the API service, Redis,
# RabbitMQ) is started with 9>&- so it never holds the lock.
take_lock() {  # NAME
    install -d -m 755 "$BUILD"
    exec 9>"$BUILD/.$1.lock"
    flock -n 9 || { info "waiting for another $1 run to finish"; flock 9; }
}
