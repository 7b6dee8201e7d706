#!/usr/bin/env bash
# Debian packages the worker, its tests and image builds need. apt-get is skipped entirely when all are present.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

PACKAGES=(
    podman runc uidmap slirp4netns fuse-overlayfs catatonit  # rootless podman (runc: crun fails here)
    bubblewrap                                               # the container-less sandbox backend
    busybox-static                                           # the static busybox in the test image
    debootstrap                                              # the Debian base for `make image`
    python3 python3-venv                                     # /usr/bin/python3 for .venv
    curl ca-certificates                                     # pinging the podman API socket
    tar gzip make git
)
# Redis and RabbitMQ are only installed when absent: the project machines already have them (maybe not from
# Debian's packages), and what matters is a server answering on loopback.
command -v redis-server >/dev/null || PACKAGES+=(redis-server)
command -v rabbitmq-server >/dev/null || PACKAGES+=(rabbitmq-server)

missing=()
for p in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
    say "apt packages: all ${#PACKAGES[@]} present"
    exit 0
fi

say "apt packages: installing ${missing[*]}"
t0="$(now)"
export DEBIAN_FRONTEND=noninteractive
install -d -m 755 "$BUILD" "$BUILD/logs"
log="$BUILD/logs/apt.log"
# One unreachable extra source makes update fail while the Debian mirror itself is fine: warn, and let the
# install decide.
apt-get update >"$log" 2>&1 || info "warning: apt-get update reported errors (see $log); trying the install anyway"
# Maintainer scripts are chatty (systemd symlinks, invoke-rc.d): keep it in the log, show it on failure.
apt-get install -y -o Dpkg::Use-Pty=0 "${missing[@]}" >>"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "apt-get install ${missing[*]} failed (is deb.debian.org reachable? full log: $log)"; }
info "installed ${#missing[@]} package(s) in $(elapsed "$t0")"
