#!/usr/bin/env bash
# A single-node Slurm (Debian's slurm-wlm 22.05 and munge) for the HPC pilot tests: munged, slurmctld and slurmd
# started directly (no systemd on these machines), one partition `debug` with this machine's CPUs and memory.
# Idempotent: a warm run checks that the node answers and is idle; idle cost is three sleeping daemons.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root

CONF=/etc/slurm/slurm.conf

install_packages() {
    if dpkg -s slurm-wlm munge >/dev/null 2>&1; then
        return 0
    fi
    say "slurm: installing slurm-wlm and munge"
    # Debian's maintainer scripts try to start the daemons through invoke-rc.d; we start them ourselves, with
    # our configuration, so keep the packages from starting them half-configured.
    local rcd=/usr/sbin/policy-rc.d added=0
    if [[ ! -e $rcd ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$rcd" && chmod 755 "$rcd" && added=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null \
        || { ((added)) && rm -f "$rcd"; die "apt-get install slurm-wlm munge failed"; }
    ((added)) && rm -f "$rcd"
    return 0
}

# The configuration this node needs, from what the machine has: the node line must not claim more CPUs or
# memory than slurmd finds, or the node goes to state INVAL.
render_conf() {
    local host cpus mem
    host="$(hostname -s)"
    cpus="$(nproc --all)"
    mem="$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)"
    cat <<EOF
# Written by sandbox_runner's scripts/setup/slurm.sh: a single-node Slurm for the HPC pilot tests.
ClusterName=sandbox
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmUser=root
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
# Seconds between the TERM and the KILL when a job ends: the pilot's workers hand their jobs back in that time.
KillWait=30
MinJobAge=300
InactiveLimit=0
DefMemPerCPU=1024
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "slurm: creating the munge key"
        install -d -o munge -g munge -m 700 /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    say "slurm: starting munged"
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged 9>&- || die "munged failed to start (see /var/log/munge/munged.log)"
    local i
    for ((i = 0; i < 40; i++)); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "munged did not answer within 10s (see /var/log/munge/munged.log)"
}

daemon_running() { pgrep -x "$1" >/dev/null; }

stop_daemon() {  # NAME
    daemon_running "$1" || return 0
    pkill -x "$1" || true
    local i
    for ((i = 0; i < 80; i++)); do
        daemon_running "$1" || return 0
        sleep 0.25
    done
    die "$1 did not stop within 20s"
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -1; }

install_packages
install -d -m 755 /etc/slurm /var/spool/slurmd /var/log/slurm
install -d -m 700 /var/spool/slurmctld
want="$(render_conf)"
changed=0
if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$want" ]]; then
    printf '%s\n' "$want" >"$CONF"
    chmod 644 "$CONF"
    changed=1
fi
start_munge
if ((changed)); then
    # A daemon started with an older configuration keeps it: restart both so the node line takes effect.
    stop_daemon slurmd
    stop_daemon slurmctld
fi
daemon_running slurmctld || { say "slurm: starting slurmctld"; /usr/sbin/slurmctld 9>&- || die "slurmctld failed (see /var/log/slurm/slurmctld.log)"; }
daemon_running slurmd || { say "slurm: starting slurmd"; /usr/sbin/slurmd 9>&- || die "slurmd failed (see /var/log/slurm/slurmd.log)"; }

state=""
for ((i = 0; i < 120; i++)); do
    state="$(node_state)"
    case $state in
        idle | mixed | allocated) break ;;
        down* | drain* | inval*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
case $state in
    idle | mixed | allocated) say "slurm: node $(hostname -s) is $state (partition debug)" ;;
    *) die "the Slurm node did not become idle (state '${state:-none}'; see /var/log/slurm/slurmd.log and slurmctld.log)" ;;
esac
