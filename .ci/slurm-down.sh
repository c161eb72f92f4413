#!/usr/bin/env bash
# Stop the one-node SLURM cluster that .ci/slurm-up.sh started: cancel its jobs, then stop
# slurmd, slurmctld and munged by the pids slurm-up.sh recorded in $MEZO_SLURM_DIR/started
# (never by name: a munged or slurmd this script did not start is left alone).
#
#   .ci/slurm-down.sh          safe to run when nothing is up (exits 0)
#
# Environment: MEZO_SLURM_DIR (default /tmp/slurm), as for slurm-up.sh.
set -uo pipefail

DIR=${MEZO_SLURM_DIR:-/tmp/slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

if [[ ! -s $DIR/started ]]; then
    echo "slurm-down.sh: nothing recorded in $DIR/started; nothing to stop"
    exit 0
fi
# Jobs first, while slurmctld can still deliver the cancel (their processes are not children
# of slurmd with proctrack/linuxproc, so stopping the daemons alone would orphan them).
if [[ -f $CONF ]]; then
    timeout 10 scancel --user="$(id -un)" 2>/dev/null
    for _ in $(seq 40); do
        [[ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ]] && break
        sleep 0.25
    done
fi
# A zombie (killed, never reaped by its parent) counts as gone: kill -0 alone succeeds on it.
running() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; }
# Reverse start order: slurmd, slurmctld, munged.
tac "$DIR/started" | while read -r name pid; do
    if running "$pid"; then
        kill -TERM "$pid"
        for _ in $(seq 50); do running "$pid" || break; sleep 0.1; done
        if running "$pid"; then
            echo "slurm-down.sh: $name (pid $pid) ignored SIGTERM for 5 s; sending SIGKILL"
            kill -KILL "$pid"
        fi
        echo "stopped $name (pid $pid)"
    fi
done
rm -f "$DIR/started"
if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$CONF" ]]; then
    rm -f /etc/slurm/slurm.conf
fi
echo "slurm down"
