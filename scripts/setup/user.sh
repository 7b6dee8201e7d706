#!/usr/bin/env bash
# The unprivileged user that runs jobs: account, subordinate id ranges, runtime dir, podman configuration.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

# --- account -------------------------------------------------------------------------------------------------
if id "$SRUNNER_USER" >/dev/null 2>&1; then
    say "user $SRUNNER_USER: exists (uid $(srunner_uid))"
else
    say "user $SRUNNER_USER: creating"
    useradd -m -s /bin/bash "$SRUNNER_USER" || die "useradd $SRUNNER_USER failed"
    info "uid $(srunner_uid), home $(srunner_home)"
fi
UID_="$(srunner_uid)"

# --- /etc/subuid and /etc/subgid --------------------------------------------------------------------------------
# useradd adds ranges when the files exist, but not on every system; rootless podman cannot start without them.
migrate=0
for kind in uid gid; do
    file="/etc/sub$kind"
    if grep -qE "^($SRUNNER_USER|$UID_):[0-9]+:[0-9]+$" "$file" 2>/dev/null; then
        continue
    fi
    # First free 65536-wide block at or above 100000, after every range already handed out.
    start="$(awk -F: 'BEGIN { m = 100000 } NF == 3 { e = $2 + $3; if (e > m) m = e } END { print m }' "$file" 2>/dev/null || echo 100000)"
    end=$((start + 65535))
    say "sub${kind} range for $SRUNNER_USER: adding $start-$end"
    usermod "--add-sub${kind}s" "$start-$end" "$SRUNNER_USER" || die "usermod --add-sub${kind}s failed"
    migrate=1
done

# --- runtime dir (no systemd/logind here to make it) -------------------------------------------------------------
RUNDIR="$(runtime_dir)"
if [[ $(stat -c '%U %a' "$RUNDIR" 2>/dev/null) != "$SRUNNER_USER 700" ]]; then
    say "runtime dir: creating $RUNDIR"
    install -d -m 755 /run/user
    install -d -o "$SRUNNER_USER" -g "$(id -gn "$SRUNNER_USER")" -m 700 "$RUNDIR"
fi
install -d -o "$SRUNNER_USER" -g "$(id -gn "$SRUNNER_USER")" -m 700 "$RUNDIR/podman"

# --- containers.conf, system-wide and for the user --------------------------------------------------------------
install_conf() {  # SOURCE DEST OWNER
    local src="$SETUP_DIR/$1" dest="$2" owner="$3"
    if cmp -s "$src" "$dest"; then
        return 0
    fi
    if [[ -e $dest ]] && ! grep -q '^# Managed by sandbox_runner' "$dest"; then
        local backup
        backup="$dest.bak-$(date +%Y%m%d%H%M%S)"
        cp -p "$dest" "$backup"
        info "kept the previous $dest as $backup"
    fi
    install -D -m 644 -o "$owner" -g "$(id -gn "$owner")" "$src" "$dest"
    say "$1: installed $dest"
}
install_conf containers.conf /etc/containers/containers.conf root
HOME_="$(srunner_home)"
# useradd -m makes the home; the .config tree must belong to the user or podman cannot write next to it.
for d in "$HOME_/.config" "$HOME_/.config/containers"; do
    install -d -o "$SRUNNER_USER" -g "$(id -gn "$SRUNNER_USER")" -m 755 "$d"
done
install_conf containers.conf "$HOME_/.config/containers/containers.conf" "$SRUNNER_USER"
install_conf storage.conf "$HOME_/.config/containers/storage.conf" "$SRUNNER_USER"

# Storage made earlier with another driver (vfs, the default without storage.conf) cannot be opened as overlay:
# podman refuses the mismatch. Stop the API service we started (by its recorded pid) and reset that storage;
# the later steps rebuild the images and restart the service.
STORE="$HOME_/.local/share/containers/storage"
for old_driver in vfs; do
    [[ -d $STORE/$old_driver-layers ]] || continue
    say "podman: $SRUNNER_USER's storage uses $old_driver; resetting it for overlay (images are rebuilt)"
    pidfile="$RUNDIR/podman/service.pid"
    if [[ -f $pidfile ]] && pid="$(cat "$pidfile")" && [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        rm -f "$pidfile"
    fi
    as_srunner podman --storage-driver "$old_driver" system reset -f >/dev/null \
        || die "podman system reset of $SRUNNER_USER's $old_driver storage failed"
    rm -rf "${STORE:?}/$old_driver" "$STORE/$old_driver-layers" "$STORE/$old_driver-images" "$STORE/$old_driver-containers"
done

# Rootless storage made before the id ranges existed keeps the old single-id mapping until migrated.
if ((migrate)) && [[ -d $HOME_/.local/share/containers/storage ]]; then
    say "podman: migrating $SRUNNER_USER's storage to the new id ranges"
    as_srunner podman system migrate
fi
