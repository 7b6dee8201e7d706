#!/usr/bin/env bash
# `make image`: the worker image localhost/sandbox-runner/worker:latest, built rootless as $SRUNNER_USER (the
# user that runs it) from the Containerfile, on a Debian base made here by debootstrap since nothing can be
# pulled. The package goes in as wheels built on the host (build/wheels): the build itself needs no network,
# which rootless podman here does not have (slirp4netns fails). Skipped when nothing it is made from changed.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
take_lock image
T0="$(now)"

# --- the Debian base ---------------------------------------------------------------------------------------------
ROOTFS="$BUILD/debootstrap/bookworm"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if srunner_podman image exists "$BASE_IMAGE"; then
    say "image $BASE_IMAGE: present"
else
    if [[ ! -f $ROOTFS/.sandbox-runner-complete ]]; then
        say "debootstrap: bookworm minbase + python3 into $ROOTFS (downloads from $MIRROR)"
        t0="$(now)"
        rm -rf "$ROOTFS"  # a half-finished debootstrap cannot be resumed
        install -d -m 755 "$BUILD" "$BUILD/debootstrap"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$ROOTFS" "$MIRROR" >"$BUILD/debootstrap/debootstrap.log" 2>&1 \
            || { tail -n 20 "$BUILD/debootstrap/debootstrap.log" >&2; die "debootstrap failed (full log: $BUILD/debootstrap/debootstrap.log)"; }
        # Package caches only make the image bigger.
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
        touch "$ROOTFS/.sandbox-runner-complete"
        info "debootstrap done in $(elapsed "$t0")"
    fi
    say "image $BASE_IMAGE: importing"
    t0="$(now)"
    # Root reads the tree and streams it; device nodes and the marker stay out (rootless podman cannot mknod;
    # podman provides /dev at run time anyway).
    tar -C "$ROOTFS" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        --exclude=./.sandbox-runner-complete -cf - . \
        | srunner_podman import -q --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null \
        || die "podman import of $BASE_IMAGE failed"
    info "imported in $(elapsed "$t0")"
fi

# --- what the worker image is made from --------------------------------------------------------------------------
base_id="$(srunner_podman image inspect --format '{{.Id}}' "$BASE_IMAGE")"
inputs="$(
    cd "$REPO"
    {
        echo "base $base_id"
        find -L sandbox_runner -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
        sha256sum pyproject.toml Containerfile .containerignore
        [[ ! -f README.md ]] || sha256sum README.md
    } | sha256sum | cut -d' ' -f1
)"
LABEL=org.sandbox-runner.inputs
if srunner_podman image exists "$WORKER_IMAGE" \
    && [[ $(srunner_podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$WORKER_IMAGE") == "$inputs" ]]; then
    say "image $WORKER_IMAGE: up to date (${inputs:0:12})"
    exit 0
fi

# --- wheels ------------------------------------------------------------------------------------------------------
say "wheels: building sandbox-runner and its dependencies into build/wheels"
t0="$(now)"
# Built from a fresh copy of the sources: setuptools' build/lib in the repo would carry deleted modules along.
src="$BUILD/wheel-src"
rm -rf "$src" "$BUILD/wheels"
install -d -m 755 "$src" "$BUILD/wheels"
# policies/ too: sandbox_runner/policies is a symlink to it, and the wheel ships what it points at
cp -a "$REPO/pyproject.toml" "$REPO/sandbox_runner" "$REPO/policies" "$src/"
[[ ! -f $REPO/README.md ]] || cp -a "$REPO/README.md" "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
install -d -m 755 "$BUILD/logs"
log="$BUILD/logs/pip-wheel.log"
"$VENV/bin/python" -m pip wheel --wheel-dir "$BUILD/wheels" "$src" >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "pip wheel failed (full log: $log)"; }
rm -rf "$src"
chmod -R a+rX "$BUILD/wheels"
info "$(find "$BUILD/wheels" -name '*.whl' | wc -l) wheels in $(elapsed "$t0")"

# --- the worker image ----------------------------------------------------------------------------------------------
say "image $WORKER_IMAGE: building"
t0="$(now)"
old_id="$(srunner_podman image inspect --format '{{.Id}}' "$WORKER_IMAGE" 2>/dev/null || true)"
log="$BUILD/logs/podman-build.log"
# --layers=false: a build only happens when its inputs changed, and then the wheels layer changes anyway, so
# per-instruction cache images would only cost commits and storage.
srunner_podman build --layers=false --network=none --pull=never \
    --build-arg BASE="$BASE_IMAGE" --label "$LABEL=$inputs" \
    -t "$WORKER_IMAGE" -f "$REPO/Containerfile" "$REPO" >"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; die "podman build of $WORKER_IMAGE failed (full log: $log)"; }
# The previous build, now untagged, would pile up in the user's storage; remove that one image only.
if [[ -n $old_id && $old_id != "$(srunner_podman image inspect --format '{{.Id}}' "$WORKER_IMAGE")" ]]; then
    srunner_podman rmi "$old_id" >/dev/null 2>&1 || true
fi
info "built in $(elapsed "$t0")"
say "make image done in $(elapsed "$T0")"
