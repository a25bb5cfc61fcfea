#!/usr/bin/env bash
# Stop the one-node Slurm cluster started by local_cluster_up.sh. Exits 0 even if it is not running.
set -euo pipefail

# alive NAME PIDFILE: the pid file names a live process called NAME (guards against pid reuse).
alive() { local p; p=$(cat "$2" 2>/dev/null) && [[ $(cat "/proc/$p/comm" 2>/dev/null) == "$1" ]]; }

# Cancel jobs first and wait for them to end: stopping slurmd does not kill running job steps
# (their slurmstepd processes would linger). Bounded by KillWait (30 s) plus slack.
if alive slurmctld /run/slurm/slurmctld.pid && command -v squeue >/dev/null; then
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs || true
        for _ in $(seq 80); do
            [[ -z $(timeout 5 squeue -h -o %A 2>/dev/null || true) ]] && break
            sleep 0.5
        done
    fi
fi

# stop NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL.
stop() {
    local name=$1 pidfile=$2 pid
    if alive "$name" "$pidfile"; then
        pid=$(cat "$pidfile")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 75); do [[ -d /proc/$pid ]] || break; sleep 0.2; done
        if [[ -d /proc/$pid ]]; then
            echo "local_cluster_down: $name ($pid) ignored SIGTERM, killing" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$pidfile"
}

stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
stop munged /run/munge/munged.pid
echo "slurm cluster down"
