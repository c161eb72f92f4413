#!/usr/bin/env bash
# Start a real one-node SLURM cluster (munge + slurmctld + slurmd) on this machine, for the
# `pytest -m slurm` tests and for trying the launch/slurm/ scripts by hand.
#
#   .ci/slurm-up.sh            install if missing, configure, start, wait for the node to be idle
#   .ci/slurm-up.sh --status   exit 0 if the cluster is up and the node idle, 1 otherwise
#   .ci/slurm-down.sh          stop what this script started (by pid, never by name)
#
# Idempotent: if the cluster is already up it only prints the SLURM_CONF line and exits 0.
# Needs root (apt-get, munged as user munge, slurmd). Debian's packages: SLURM 22.05.
#
# Environment:
#   MEZO_SLURM_DIR   state, spool, logs, pid files, slurm.conf   (default /tmp/slurm)
#   MEZO_SLURM_CPUS  CPUs the node advertises                    (default `nproc`)
#   MEZO_SLURM_WAIT  seconds to wait for the node to be idle     (default 30)
#   MEZO_SLURM_PORT  slurmctld's port; slurmd takes the next one  (default 6817)
#
# Clients find the config through SLURM_CONF=$MEZO_SLURM_DIR/slurm.conf (printed on the last
# line, for `eval`); where /etc/slurm/slurm.conf does not exist a symlink to it is made too,
# so a plain `sbatch` in any shell works. slurm-down.sh removes that symlink again.
#
# The partition allows --oversubscribe (OverSubscribe=YES): a job that asks for it may share
# the node's CPUs with another such job. The concurrency tests use it to run two 2-task jobs
# at the same time on a 2-CPU machine; jobs that do not ask get whole CPUs as usual.
set -euo pipefail

DIR=${MEZO_SLURM_DIR:-/tmp/slurm}
CPUS=${MEZO_SLURM_CPUS:-$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)}
WAIT=${MEZO_SLURM_WAIT:-30}
PORT=${MEZO_SLURM_PORT:-6817}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

# A killed daemon whose parent never reaps it (PID 1 of some containers) stays a zombie, and kill -0
# succeeds on a zombie: look at its state too.
running() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; }
alive() { [[ -s $1 ]] && running "$(cat "$1")"; }
node_state() { timeout 10 sinfo -h -N -o %T 2>/dev/null | head -n1; }
# Up: both daemons run and the node answers in a state that takes or runs jobs. Jobs of other tests come
# and go meanwhile, so `completing` (a job's end), `planned` (backfill holds the node for a queued job)
# and a flag suffix (`allocated+`, `mixed-`) count as up; a trailing `*` (not responding), down, drain
# and fail do not. CI once failed on the old strict idle|mixed|allocated check with a bare "slurm not up"
# (no word of what it saw; a node busy with the other worker's jobs or a slow sinfo are the likely causes):
# the state seen is now printed.
STATE=""
is_up() {
    STATE="daemons not running"
    alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" || return 1
    local _
    for _ in 1 2 3; do  # an empty answer is sinfo's 10 s timeout on a busy machine: ask again
        STATE=$(node_state)
        [[ -n $STATE ]] && break
    done
    [[ -n $STATE ]] || { STATE="sinfo did not answer"; return 1; }
    [[ $STATE != *'*' ]] || return 1
    case ${STATE%%[+~#!%\$@^-]*} in
        idle | mixed | allocated | completing | planned) return 0 ;;
        *) return 1 ;;
    esac
}

if [[ ${1:-} == --status ]]; then
    if [[ -f $CONF ]] && is_up; then echo "slurm up: node $HOST $STATE"; exit 0; fi
    [[ -f $CONF ]] || STATE="no $CONF"
    echo "slurm not up ($STATE)"; exit 1
fi
if [[ $(id -u) != 0 ]]; then
    echo "slurm-up.sh: must run as root (installs packages, starts munged and slurmd)" >&2
    exit 2
fi
if [[ -f $CONF ]] && is_up; then
    echo "slurm already up: node $HOST $STATE"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi

install_packages() {
    local missing=()
    for bin in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch /usr/sbin/munged; do
        [[ -x $bin ]] || missing+=("$bin")
    done
    [[ ${#missing[@]} == 0 ]] && return 0
    echo "installing SLURM and munge (missing: ${missing[*]})"
    apt-get update -qq
    # policy-rc.d denies starting the services at install time: harmless, this script starts them.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >"$DIR/log/apt.log" 2>&1 \
        || { tail -n 20 "$DIR/log/apt.log" >&2; echo "slurm-up.sh: apt-get install failed" >&2; exit 1; }
}

write_conf() {
    cat >"$CONF" <<EOF
# written by mezo_elastic .ci/slurm-up.sh: a one-node test cluster, no cgroups, no accounting
ClusterName=ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MailProg=/bin/true
# sbatch --wait polls: a short MinJobAge reports a finished job in ~2 s; below ~4 s the record
# can vanish before sbatch looks and sbatch then exits 0, hiding a failure.
MinJobAge=5
# A requeued job may start again only after the credential lifetime (default 120 s, slurm.conf(5)
# AuthInfo cred_expire), and nothing looks at it again before the next scheduling pass: short
# values keep the preemption test short (a real cluster keeps its defaults).
AuthInfo=cred_expire=5
SchedulerParameters=bf_interval=1,sched_interval=2
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

start_munge() {
    if alive /run/munge/munged.pid; then return 0; fi
    install -d -o munge -g munge -m 0755 /run/munge   # systemd would make it
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- /usr/sbin/mungekey --verbose
    runuser -u munge -- /usr/sbin/munged
    echo "munged $(cat /run/munge/munged.pid)" >>"$DIR/started"
}

start_daemon() {  # name [flags]; the daemon forks, writes its pid file, and we record that pid
    local name=$1; shift
    if alive "$DIR/$name.pid"; then return 0; fi
    "/usr/sbin/$name" -f "$CONF" "$@"
    for _ in $(seq 50); do alive "$DIR/$name.pid" && break; sleep 0.1; done
    alive "$DIR/$name.pid" || { tail -n 20 "$DIR/log/$name.log" >&2; echo "slurm-up.sh: $name did not start" >&2; exit 1; }
    echo "$name $(cat "$DIR/$name.pid")" >>"$DIR/started"
}

mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
install_packages
write_conf
if [[ ! -e /etc/slurm/slurm.conf ]]; then
    mkdir -p /etc/slurm && ln -s "$CONF" /etc/slurm/slurm.conf
fi
start_munge
# A test cluster starts empty. Without -c slurmctld recovers the jobs in its state directory: where
# an earlier run's daemons vanished mid-job (the machine stopped or copied, /tmp kept), the job comes
# back as running, nothing is left to report its end, and the node stays 'allocated' for good.
# slurmd's spool may likewise hold a dead run's job files.
if ! alive "$DIR/slurmctld.pid"; then rm -rf "${DIR:?}/spool/"*; fi
start_daemon slurmctld -c
start_daemon slurmd

# `idle*` (with a star) means "not responding": wait for exactly idle.
deadline=$((SECONDS + WAIT))
until [[ "$(node_state)" == idle ]]; do
    if ((SECONDS >= deadline)); then
        echo "slurm-up.sh: node $HOST not idle after ${WAIT}s (state: '$(node_state)')" >&2
        tail -n 5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
        exit 1
    fi
    sleep 0.5
done
echo "slurm up: node $HOST idle, $CPUS CPUs, logs in $DIR/log"
echo "export SLURM_CONF=$CONF"
