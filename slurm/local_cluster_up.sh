#!/usr/bin/env bash
# Start a real one-node Slurm cluster on this machine (Debian, root, no systemd) for CI tests.
# Idempotent: if it is already up, it says so and exits 0. Stop it with local_cluster_down.sh.
# Partitions: debug (default, PriorityTier=1) and urgent (PriorityTier=10); a job submitted to
# urgent preempts (requeues) debug jobs. Their --signal (e.g. B:USR2@60) is sent at preemption, but
# only milliseconds before SIGTERM (no GraceTime); SIGKILL follows KillWait (default 30 s) later.
# A requeued job starts again ~5-7 s after preemption (cred_expire=5, a 1 s scheduling loop) or ~1 s
# after the slot frees.
set -euo pipefail

die() { echo "local_cluster_up: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"

CONF=/etc/slurm/slurm.conf                       # where Debian's slurm packages read it
NODE=$(hostname -s)
CTLD_PID=/run/slurm/slurmctld.pid
SLURMD_PID=/run/slurm/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

# alive NAME PIDFILE: the pid file names a live process called NAME (guards against pid reuse).
alive() { local p; p=$(cat "$2" 2>/dev/null) && [[ $(cat "/proc/$p/comm" 2>/dev/null) == "$1" ]]; }

summary() {
    echo "slurm cluster up: node $NODE, partitions $(sinfo -h -o %P | paste -sd, -)," \
         "CPUs $(sinfo -h -o %C | awk -F/ '{print $4}'), state $(sinfo -h -o %T | sort -u | paste -sd, -)"
}

if alive munged "$MUNGE_PID" && alive slurmctld "$CTLD_PID" && alive slurmd "$SLURMD_PID" \
   && timeout 10 sinfo -h >/dev/null 2>&1; then
    echo "local_cluster_up: already running"; summary; exit 0
fi

# --- packages: apt-get update only when something is missing (~7 s on a warm mirror) ---
if ! command -v munged >/dev/null || ! command -v slurmctld >/dev/null \
   || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null; then
    echo "local_cluster_up: installing munge + slurm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends munge slurm-client slurmctld slurmd >/dev/null \
        || die "apt-get install munge slurm-client slurmctld slurmd failed"
fi

# --- slurm.conf ---
CPUS=$(nproc)
MEM_MB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))  # a bit below the real total
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat >"$CONF" <<EOF
# Written by slurm/local_cluster_up.sh: one-node CI cluster.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# Default is 120 s, and a requeued job may not start again before its credential expires (10 s
# gave 15-20 s from the signal to the resumed job's first line, 5 s gives ~11 s).
AuthInfo=cred_expire=5
MpiDefault=none
# Silences "error: Configured MailProg is invalid" (no mail(1) installed).
MailProg=/bin/true
# No cgroups needed (containers/gVisor often lack them).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Trust the node line below rather than what slurmd detects (containers misreport).
SlurmdParameters=config_overrides
ReturnToService=2
# Schedule quickly so tests do not wait for the default 30 s / 60 s cycles (1 s: a requeued job
# starts as soon as its credential expires).
SchedulerParameters=bf_interval=1,sched_interval=1
# Preemption: urgent (tier 10) requeues debug (tier 1) jobs; their --signal is sent at preemption.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=10
EOF

# --- munged: must run as the munge user with a key only munge can read ---
if ! alive munged "$MUNGE_PID"; then
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/log/munge; chmod 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then         # the munge package usually creates one
        dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged || die "munged failed to start (see /var/log/munge/munged.log)"
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge/munged.log)"

# --- slurmctld, slurmd: each forks into the background once ready ---
# -c: start from a clean state (no jobs or DOWN/DRAIN node states left over from an earlier run;
# job ids still continue from the last run).
if ! alive slurmctld "$CTLD_PID"; then
    slurmctld -c -i || die "slurmctld failed: $(tail -n 5 /var/log/slurm/slurmctld.log 2>/dev/null)"
fi
if ! alive slurmd "$SLURMD_PID"; then
    slurmd -N "$NODE" || die "slurmd failed: $(tail -n 5 /var/log/slurm/slurmd.log 2>/dev/null)"
fi

# --- wait (bounded by the clock, not an iteration count: sinfo itself can block) ---
logs() { echo "--- slurmctld.log ---"; tail -n 8 /var/log/slurm/slurmctld.log 2>/dev/null
         echo "--- slurmd.log ---"; tail -n 8 /var/log/slurm/slurmd.log 2>/dev/null; }
deadline=$((SECONDS + 30))
while (( SECONDS < deadline )); do
    # A daemon can fork, write its pid file and only then die (e.g. port 6817 in use).
    for d in slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
        alive "${d%%:*}" "${d#*:}" || { sleep 1; alive "${d%%:*}" "${d#*:}"; } \
            || die "${d%%:*} is not running (clean up with local_cluster_down.sh)"$'\n'"$(logs)"
    done
    [[ $(timeout 3 sinfo -h -o %T 2>/dev/null | sort -u) == idle ]] && { summary; exit 0; }
    sleep 0.5
done
die "node not idle after 30 s: $(timeout 3 sinfo -h -N -o '%N %T %E' 2>&1 | head -n 3)"$'\n'"$(logs)"
