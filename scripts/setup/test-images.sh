#!/usr/bin/env bash
# localhost/sandbox-runner/busybox:latest in $SRUNNER_USER's rootless storage, and a saved copy of it at
# build/images/busybox.tar for the image-load tests (docker-archive; the REST API's images.load takes it).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

if srunner_podman image exists "$BUSYBOX_IMAGE"; then
    say "image $BUSYBOX_IMAGE: present"
else
    say "image $BUSYBOX_IMAGE: building"
    t0="$(now)"
    [[ -x /bin/busybox ]] || die "/bin/busybox is missing (apt-get install busybox-static)"
    # ldd succeeds only on dynamic executables; FROM scratch has no libc, so it must be the static build.
    if ldd /bin/busybox >/dev/null 2>&1; then die "/bin/busybox is not static (apt-get install busybox-static)"; fi
    ctx="$BUILD/busybox-context"
    rm -rf "$ctx"
    install -d -m 755 "$BUILD" "$ctx"
    install -m 755 /bin/busybox "$ctx/busybox"
    install -m 644 "$SETUP_DIR/busybox.Containerfile" "$ctx/Containerfile"
    srunner_podman build -q --network=none --pull=never -t "$BUSYBOX_IMAGE" "$ctx" >/dev/null \
        || die "podman build of $BUSYBOX_IMAGE failed"
    rm -rf "$ctx"
    info "built in $(elapsed "$t0")"
fi

# The tarball is re-saved whenever the image behind the tag changed, recorded by image id next to it.
id="$(srunner_podman image inspect --format '{{.Id}}' "$BUSYBOX_IMAGE")"
if [[ -s $BUSYBOX_TAR && $(cat "$BUSYBOX_TAR.id" 2>/dev/null) == "$id" ]]; then
    say "tarball $BUSYBOX_TAR: up to date"
else
    say "tarball $BUSYBOX_TAR: saving"
    install -d -m 755 "$BUILD" "$BUILD/images"
    # Saved to stdout so root writes the file: build/ stays root's, the file is made readable by everyone.
    srunner_podman save --format docker-archive "$BUSYBOX_IMAGE" >"$BUSYBOX_TAR.tmp" \
        || die "podman save $BUSYBOX_IMAGE failed"
    chmod 644 "$BUSYBOX_TAR.tmp"
    mv -f "$BUSYBOX_TAR.tmp" "$BUSYBOX_TAR"
    echo "$id" >"$BUSYBOX_TAR.id"
    chmod 644 "$BUSYBOX_TAR.id"
fi
