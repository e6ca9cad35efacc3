#!/usr/bin/env bash
# A one-node SLURM cluster on this (Debian) machine, to try mnist-lit's cluster path locally and for CI:
#
#   sudo bash scripts/slurm_local.sh start    # install slurm-wlm + munge if absent, configure, start (~10 s)
#   bash scripts/slurm_local.sh status        # sinfo + squeue
#   sudo bash scripts/slurm_local.sh stop     # stop slurmd, slurmctld and munged
#
# The node is this machine (its hostname, CPU count and memory), in one partition `local`; no accounting
# database (submitit then prints "Bypassing sacct error" warnings: harmless). Runs as root: the daemons and
# the jobs run as the user who submits them. `start` is idempotent: a running cluster is left as it is.
# A requeued job waits out SLURM's fixed 120 s hold before it may start again; see `release` below.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
MARK="# written by mnist-lit scripts/slurm_local.sh"

need_root() {
    if [ "$(id -u)" != 0 ]; then echo "slurm_local.sh $1: run as root (sudo)" >&2; exit 1; fi
}

running() { pgrep -x "$1" >/dev/null; }

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    echo "installing slurm-wlm and munge (apt-get)..."
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "slurm_local.sh: $CONF exists and was not written by this script; leaving it as it is" >&2
        return
    fi
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc --all)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)  # MB, some left for the system
    mkdir -p /etc/slurm "$STATE" "$SPOOL" "$LOGS"
    cat >"$CONF" <<EOF
$MARK
ClusterName=mnistlit
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# no cgroups: plain process tracking works in containers and VMs alike
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
# several jobs share the node, one per requested core
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
# a job may be requeued (scontrol requeue, preemption, submitit's timeout handling)
JobRequeue=1
# SIGTERM, then SIGKILL this many seconds later: time to save a checkpoint
KillWait=30
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    need_root start
    install
    write_conf
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    # --force: a munged killed earlier may have left its socket and lock behind
    running munged || runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 40); do
        munge -n </dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.25
    done
    running slurmctld || slurmctld
    running slurmd || slurmd
    # the node answers within a few seconds (a state ending in * is not answering yet); a node left DOWN
    # by an earlier stop is brought back
    for _ in $(seq 60); do
        state=$(timeout 5 sinfo -h -N -o %t 2>/dev/null | head -1 || true)
        case "$state" in
            idle | mix | alloc) echo "SLURM is up: $(sinfo -h -o '%P %D node(s) %c CPUs %t')"; return ;;
            down* | drain* | drng*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    echo "slurm_local.sh: SLURM did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
    exit 1
}

stop() {
    need_root stop
    for daemon in slurmd slurmctld munged; do
        running "$daemon" || continue
        pkill -x "$daemon"
        for _ in $(seq 40); do
            running "$daemon" || break
            sleep 0.25
        done
        if running "$daemon"; then pkill -KILL -x "$daemon"; fi  # hung (e.g. on a dead munged)
    done
    echo "SLURM stopped"
}

status() {
    if ! running slurmctld; then echo "SLURM is not running"; exit 3; fi
    sinfo
    squeue
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
