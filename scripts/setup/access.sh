#!/usr/bin/env bash
# The worker runs as $SRUNNER_USER and imports the package from this checkout through .venv: make sure it can.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

# Every folder above the repo must be enterable by others; changing those is not ours to do, so say so.
d="$REPO"
while [[ $d != / ]]; do
    d="$(dirname "$d")"
    perm="$(stat -c '%A' "$d")"
    [[ ${perm:9:1} == [xt] ]] || die "$SRUNNER_USER cannot reach $REPO: $d is $perm. Clone somewhere like /tmp or /srv, or chmod o+x $d"
done

# Only files and folders that lack the bits are touched, so a warm run is a quick scan. build/ is left alone: its
# debootstrap tree has modes that must stay as they are (etc/shadow, root/), and what srunner needs in there
# (images/, wheels/) is made readable where it is written. .venv is opened up by venv.sh.
fixed="$(find "$REPO" \( -path "$REPO/.git" -o -path "$REPO/build" -o -path "$REPO/.venv" \) -prune -o \
    \( \( -type d ! -perm -o=rx \) -o \( -type f ! -perm -o=r \) \) -print -exec chmod a+rX {} + | wc -l)"
((fixed == 0)) || say "repo: made $fixed path(s) readable by others"

as_srunner test -r "$REPO/pyproject.toml" || die "$SRUNNER_USER cannot read $REPO/pyproject.toml"
as_srunner "$VENV/bin/python" -c 'import sandbox_runner' \
    || die "$SRUNNER_USER cannot import sandbox_runner with $VENV/bin/python"
say "repo and venv: readable by $SRUNNER_USER"
