#!/usr/bin/env bash
# Train on several nodes with torchrun's c10d rendezvous. Run the same command on every node.
#
#   launch/torchrun_multi_node.sh --rdzv-endpoint=HOST:PORT --rdzv-id=ID --nnodes=N \
#       [--nproc-per-node=N] [--max-restarts=N] [TRAIN ARGS...]
#
# (`--opt value` works as well as `--opt=value` for these options.)
#
# runs, on each node:
#
#   python -m torch.distributed.run --nnodes=N --nproc-per-node=P --max-restarts=R \
#       --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT --rdzv-id=ID \
#       -m mezo_elastic.train --model.device=DEVICE [--dist.backend=B] [--train.output_dir=D] \
#       [--config=F] $TRAIN_ARGS TRAIN ARGS...
#
# HOST is a name or address of one of the nodes that every node can reach; that node hosts the
# rendezvous store on PORT (pick a port nobody else uses there; torchrun's default 29400 is the one
# everybody collides on). ID must be the same on all nodes and new for every job: a leftover agent
# with the same ID and endpoint would join your job. NNODES may be a range MIN:MAX (elastic):
# training starts with MIN nodes and admits late ones at the next restart. Every node must see the
# same OUTPUT_DIR (a shared filesystem): rank 0 writes it, every rank reads it on resume.
#
# Settings: the command-line options above, or these environment variables (options win):
#   RDZV_ENDPOINT   HOST:PORT of the rendezvous store                        (required)
#   RDZV_ID         job id shared by all nodes                               (required)
#   NNODES          N or MIN:MAX                                             (required)
#   NPROC_PER_NODE  workers per node (default: the visible GPUs; 1 without GPUs)
#   MAX_RESTARTS    restarts of all workers after a failure or a membership change (default 3);
#                   a restart resumes from output_dir, so it costs at most one step of work
#   DEVICE          cuda | cpu | auto (default auto)
#   DIST_BACKEND    nccl | gloo | auto -> --dist.backend (default: not passed; the package's auto)
#   OUTPUT_DIR      -> --train.output_dir (shared by all nodes)
#   CONFIG          -> --config
#   TRAIN_ARGS      extra training arguments, split on spaces
#   PYTHON          the interpreter that has torch and mezo_elastic (default python3)
#
# Signals: SIGTERM, SIGINT, SIGHUP and SIGUSR1 reach torchrun as SIGTERM; torchrun stops its
# workers with SIGTERM, they finish the current step, make the step log durable and exit; the
# script exits 128+signal. Stop all nodes the same way; starting them again resumes exactly.
#
# Exit codes: torchrun's; 128+N after signal N; 2 for bad settings (checked before anything runs).
set -euo pipefail
me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 2; }

PYTHON=${PYTHON:-python3}
MAX_RESTARTS=${MAX_RESTARTS:-3}
DEVICE=${DEVICE:-auto}
args=()
while (($#)); do  # the script's own options, as --opt=value or --opt value; the rest goes to training
    case $1 in
        --rdzv-endpoint=*|--rdzv_endpoint=*) RDZV_ENDPOINT=${1#*=} ;;
        --rdzv-id=*|--rdzv_id=*) RDZV_ID=${1#*=} ;;
        --nnodes=*) NNODES=${1#*=} ;;
        --nproc-per-node=*|--nproc_per_node=*) NPROC_PER_NODE=${1#*=} ;;
        --max-restarts=*|--max_restarts=*) MAX_RESTARTS=${1#*=} ;;
        --rdzv-endpoint|--rdzv_endpoint|--rdzv-id|--rdzv_id|--nnodes|--nproc-per-node|--nproc_per_node|--max-restarts|--max_restarts)
            (($# >= 2)) || die "$1 needs a value"
            set -- "$1=$2" "${@:3}"; continue ;;
        *) args+=("$1") ;;
    esac
    shift
done

visible_gpus() {  # CUDA_VISIBLE_DEVICES wins over what the driver lists
    if [[ -n ${CUDA_VISIBLE_DEVICES+x} ]]; then
        local ids=${CUDA_VISIBLE_DEVICES//[^,0-9A-Za-z-]/}
        [[ -z $ids || $ids == -1 ]] && { echo 0; return; }
        awk -F, '{print NF}' <<<"$ids"
    elif command -v nvidia-smi >/dev/null; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true
    else
        echo 0
    fi
}
is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

[[ -n ${RDZV_ENDPOINT:-} ]] || die "no rendezvous endpoint: pass --rdzv-endpoint=HOST:PORT or set RDZV_ENDPOINT (a node every node can reach, a port free there)"
[[ $RDZV_ENDPOINT =~ ^[^:]+:([0-9]+)$ ]] || die "RDZV_ENDPOINT=$RDZV_ENDPOINT is not HOST:PORT"
port=${BASH_REMATCH[1]}
((port > 0 && port < 65536)) || die "RDZV_ENDPOINT=$RDZV_ENDPOINT: port $port is outside 1..65535"
[[ -n ${RDZV_ID:-} ]] || die "no rendezvous id: pass --rdzv-id=ID or set RDZV_ID (the same on every node, new for every job)"
[[ -n ${NNODES:-} ]] || die "no node count: pass --nnodes=N (or MIN:MAX) or set NNODES"
[[ $NNODES =~ ^([1-9][0-9]*)(:([1-9][0-9]*))?$ ]] || die "NNODES=$NNODES is not N or MIN:MAX"
if [[ -n ${BASH_REMATCH[3]} ]] && ((BASH_REMATCH[1] > BASH_REMATCH[3])); then
    die "NNODES=$NNODES: MIN is larger than MAX"
fi

gpus=$(visible_gpus)
case $DEVICE in
    auto) if ((gpus > 0)); then DEVICE=cuda; else DEVICE=cpu; fi ;;
    cuda) ((gpus > 0)) || die "DEVICE=cuda but no GPU is visible on $(hostname -s) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); use DEVICE=cpu" ;;
    cpu) ;;
    *) die "DEVICE=$DEVICE is not one of cuda, cpu, auto" ;;
esac
if [[ $DEVICE == cuda ]]; then default_nproc=$gpus; else default_nproc=1; fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$default_nproc}
is_count "$NPROC_PER_NODE" || die "NPROC_PER_NODE=$NPROC_PER_NODE is not a positive integer"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "MAX_RESTARTS=$MAX_RESTARTS is not a non-negative integer"
if [[ $DEVICE == cuda ]] && ((NPROC_PER_NODE > gpus)); then
    die "NPROC_PER_NODE=$NPROC_PER_NODE but only $gpus GPU(s) are visible on $(hostname -s); use NPROC_PER_NODE<=$gpus (one process per GPU)"
fi
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc alone obeys OMP_NUM_THREADS
if [[ $DEVICE == cpu ]] && ((NPROC_PER_NODE > cpus)); then
    die "NPROC_PER_NODE=$NPROC_PER_NODE but $(hostname -s) has $cpus CPU(s) for DEVICE=cpu; use NPROC_PER_NODE<=$cpus"
fi
case ${DIST_BACKEND:-} in ""|auto|nccl|gloo) ;; *) die "DIST_BACKEND=$DIST_BACKEND is not one of nccl, gloo, auto" ;; esac
[[ -z ${CONFIG:-} || -f $CONFIG ]] || die "CONFIG=$CONFIG: no such file"

train=(--model.device="$DEVICE")
[[ -n ${DIST_BACKEND:-} ]] && train+=(--dist.backend="$DIST_BACKEND")
[[ -n ${OUTPUT_DIR:-} ]] && train+=(--train.output_dir="$OUTPUT_DIR")
[[ -n ${CONFIG:-} ]] && train+=(--config="$CONFIG")
read -r -a extra <<<"${TRAIN_ARGS:-}"
train+=("${extra[@]}" "${args[@]}")

cmd=("$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE"
     --max-restarts="$MAX_RESTARTS" --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT"
     --rdzv-id="$RDZV_ID" -m mezo_elastic.train "${train[@]}")
echo "$me: $(hostname -s): $NPROC_PER_NODE process(es) on $DEVICE, $NNODES node(s), rendezvous $RDZV_ENDPOINT id $RDZV_ID" >&2
echo "$me: ${cmd[*]}" >&2

# torchrun runs in the background so that this shell can pass signals on (bash runs a trap only
# between commands). SIGUSR1 becomes SIGTERM: torchrun does not forward SIGUSR1 on every version.
got=0
# shellcheck disable=SC2317  # called by the traps
forward() { got=$1; kill -TERM "$child" 2>/dev/null || true; }
trap 'forward 15' TERM; trap 'forward 2' INT; trap 'forward 1' HUP; trap 'forward 10' USR1
"${cmd[@]}" &
child=$!
while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
rc=0; wait "$child" || rc=$?
if ((got)); then
    echo "$me: stopped by signal $got (torchrun exit $rc); start all nodes again with the same OUTPUT_DIR to resume" >&2
    exit $((128 + got))
fi
exit "$rc"
