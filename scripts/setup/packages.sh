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
export DEBIAN_FRONTEND=noninteractive
# One unreachable extra source makes update fail while the Debian mirror itself is fine: warn, and let the
# install decide.
apt-get update -qq || info "warning: apt-get update reported errors; trying the install anyway"
apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed (is deb.debian.org reachable?)"
info "installed ${#missing[@]} package(s)"
