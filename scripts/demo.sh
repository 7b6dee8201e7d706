#!/usr/bin/env bash
# `make demo`: one real HySDS-style job end to end, as the unprivileged user, in rootless Podman.
# The job localizes a granule, runs a busybox "PGE" that writes a dataset, and the dataset is published to a
# file:// location by datasets.json. Status documents go to the local Redis (list "logstash").
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USER_NAME="${SRUNNER_USER:-srunner}"
USER_UID="$(id -u "$USER_NAME")"
DEMO="${DEMO_ROOT:-/var/tmp/sandbox-runner-demo}"
REDIS_URL="${SANDBOX_RUNNER_REDIS_URL:-redis://127.0.0.1:6379/0}"

install -d -o "$USER_NAME" -g "$USER_NAME" -m 755 "$DEMO"
job_id="hello_dataset-$(date -u +%Y%m%dT%H%M%S).$(date -u +%6N)Z"
task_id="$(cat /proc/sys/kernel/random/uuid)"
now="$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)"
sed -e "s|@JOB_ID@|$job_id|g" -e "s|@TASK_ID@|$task_id|g" -e "s|@REPO@|$REPO|g" -e "s|@NOW@|$now|g" \
    "$REPO/examples/demo/job.json.in" > "$DEMO/job.json"
sed -e "s|@DEMO@|$DEMO|g" "$REPO/examples/demo/datasets.json.in" > "$DEMO/datasets.json"
chmod 644 "$DEMO/job.json" "$DEMO/datasets.json"

as_worker() {
    runuser -u "$USER_NAME" -- env -i HOME="$(getent passwd "$USER_NAME" | cut -d: -f6)" LANG=C.UTF-8 \
        PATH="$REPO/.venv/bin:/usr/bin:/bin" XDG_RUNTIME_DIR="/run/user/$USER_UID" \
        SANDBOX_RUNNER_WORK_ROOT="$DEMO/work" SANDBOX_RUNNER_REDIS_URL="$REDIS_URL" \
        SANDBOX_RUNNER_LOG_FORMAT=console HYSDS_DATASETS_CFG="$DEMO/datasets.json" "$@"
}

echo "== running job $job_id as $USER_NAME (uid $USER_UID), rootless podman"
set +e
as_worker sandbox-runner run-job "$DEMO/job.json"
rc=$?
set -e
job_dir="$(find "$DEMO/work/jobs" -maxdepth 6 -type d -name "$job_id" | head -n 1)"
echo
echo "== work dir: $job_dir"
ls -la "$job_dir"
echo
echo "== _stdout.txt"
cat "$job_dir/_stdout.txt"
echo
echo "== output: published datasets under $DEMO/published"
find "$DEMO/published" -type f 2>/dev/null | sort | tail -n 20 || true
echo
echo "== events: Redis $REDIS_URL, list 'logstash', key hysds-job-status-$task_id = $(redis-cli -u "$REDIS_URL" get "hysds-job-status-$task_id" 2>/dev/null)"
as_worker sandbox-runner events show --job-id "$job_id"
exit "$rc"
