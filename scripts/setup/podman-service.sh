#!/usr/bin/env bash
# $SRUNNER_USER's rootless Podman API service (what podman-py talks to), started only when its socket is silent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

SOCK="$(podman_sock)"
PIDFILE="$(runtime_dir)/podman/service.pid"
LOG="$(runtime_dir)/podman/service.log"

if sock_answers "$SOCK"; then
    say "podman API: answering on $SOCK"
    exit 0
fi

# A service we started earlier that is alive but silent is stuck (or still starting): give it a moment, then
# stop that one process by its recorded pid.
if [[ -f $PIDFILE ]]; then
    pid="$(cat "$PIDFILE")"
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'system service' ; then
        deadline=$((SECONDS + 5))
        while ((SECONDS < deadline)); do
            sock_answers "$SOCK" && { say "podman API: answering on $SOCK"; exit 0; }
            sleep 0.25
        done
        info "podman service pid $pid is not answering; stopping it"
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true  # a stopped process would keep the TERM pending
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
fi
rm -f "$SOCK"

say "podman API: starting rootless service for $SRUNNER_USER"
t0="$(now)"
install -o "$SRUNNER_USER" -m 644 /dev/null "$LOG"
# setsid -f puts runuser and the service in a session of their own, so the service outlives make and is not hit by
# signals sent to make's process group; nohup and the redirections keep it off the terminal and make's pipes.
(cd / && setsid -f runuser -u "$SRUNNER_USER" -- env -i HOME="$(srunner_home)" USER="$SRUNNER_USER" \
    LOGNAME="$SRUNNER_USER" PATH="$SAFE_PATH" LANG=C.UTF-8 XDG_RUNTIME_DIR="$(runtime_dir)" \
    nohup podman --runtime runc system service --time=0 "unix://$SOCK" </dev/null >>"$LOG" 2>&1 9>&-)
for _ in $(seq 120); do
    sock_answers "$SOCK" && break
    sleep 0.25
done
sock_answers "$SOCK" || { tail -n 20 "$LOG" >&2; die "podman API service did not answer on $SOCK within 30s (log: $LOG)"; }
# Record the service's pid so a later run can stop exactly that process if it ever hangs.
svc="$(pgrep -u "$SRUNNER_USER" -nf "system service --time=0 unix://$SOCK" || true)"
echo "$svc" >"$PIDFILE"
info "answering after $(elapsed "$t0"), pid $svc, log $LOG"
