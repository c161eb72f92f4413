#!/usr/bin/env bash
# Train on one node with torchrun, on a rendezvous port of its own.
#
#   launch/torchrun_single_node.sh [--nproc-per-node=N] [--max-restarts=N] [TRAIN ARGS...]
#
# (`--opt value` works as well as `--opt=value` for these two options.)
#
# runs, from the directory you call it in:
#
#   python -m torch.distributed.run --nnodes=1 --nproc-per-node=N --max-restarts=R \
#       --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:PORT --rdzv-id=ID \
#       -m mezo_elastic.train --model.device=DEVICE [--dist.backend=B] [--train.output_dir=D] \
#       [--config=F] $TRAIN_ARGS TRAIN ARGS...
#
# PORT is a free port the kernel hands out when the script starts, not torchrun's default 29400:
# two launches on one machine at the same time do not collide. Training arguments given later
# win (TRAIN ARGS over $TRAIN_ARGS over the flags this script adds).
#
# Environment (all optional):
#   NPROC_PER_NODE  worker processes (default: the visible GPUs; 1 on a machine without GPUs)
#   DEVICE          cuda | cpu | auto (default auto: cuda when a GPU is visible)
#   DIST_BACKEND    nccl | gloo | auto -> --dist.backend (default: not passed; the package's auto)
#   OUTPUT_DIR      -> --train.output_dir; a second launch with the same directory resumes
#   CONFIG          -> --config (a .toml or .yaml file)
#   TRAIN_ARGS      extra training arguments, split on spaces, e.g. "--train.steps=100 --seed=3"
#   MAX_RESTARTS    torchrun --max-restarts: restarts of all workers after a failure (default 0)
#   RDZV_PORT       use this port instead of a free one
#   PYTHON          the interpreter that has torch and mezo_elastic (default python3)
#
# Signals: SIGTERM, SIGINT, SIGHUP and SIGUSR1 reach torchrun as SIGTERM (torchrun forwards it to
# the workers, which finish the current step, make the step log durable and exit); the script
# then exits 128+signal. Running it again with the same OUTPUT_DIR resumes exactly.
#
# Exit codes: torchrun's; 128+N after signal N; 2 for bad settings (checked before anything runs).
set -euo pipefail
me=${0##*/}
die() { echo "$me: error: $*" >&2; exit 2; }

PYTHON=${PYTHON:-python3}
MAX_RESTARTS=${MAX_RESTARTS:-0}
DEVICE=${DEVICE:-auto}
args=()
while (($#)); do  # the script's own options, as --opt=value or --opt value; the rest goes to training
    case $1 in
        --nproc-per-node=*|--nproc_per_node=*) NPROC_PER_NODE=${1#*=} ;;
        --max-restarts=*|--max_restarts=*) MAX_RESTARTS=${1#*=} ;;
        --nproc-per-node|--nproc_per_node|--max-restarts|--max_restarts)
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

gpus=$(visible_gpus)
case $DEVICE in
    auto) if ((gpus > 0)); then DEVICE=cuda; else DEVICE=cpu; fi ;;
    cuda) ((gpus > 0)) || die "DEVICE=cuda but no GPU is visible (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); use DEVICE=cpu" ;;
    cpu) ;;
    *) die "DEVICE=$DEVICE is not one of cuda, cpu, auto" ;;
esac
if [[ $DEVICE == cuda ]]; then default_nproc=$gpus; else default_nproc=1; fi
NPROC_PER_NODE=${NPROC_PER_NODE:-$default_nproc}
is_count "$NPROC_PER_NODE" || die "NPROC_PER_NODE=$NPROC_PER_NODE is not a positive integer"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "MAX_RESTARTS=$MAX_RESTARTS is not a non-negative integer"
if [[ $DEVICE == cuda ]] && ((NPROC_PER_NODE > gpus)); then
    die "NPROC_PER_NODE=$NPROC_PER_NODE but only $gpus GPU(s) are visible; use NPROC_PER_NODE<=$gpus (one process per GPU)"
fi
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc alone obeys OMP_NUM_THREADS
if [[ $DEVICE == cpu ]] && ((NPROC_PER_NODE > cpus)); then
    die "NPROC_PER_NODE=$NPROC_PER_NODE but this machine has $cpus CPU(s) for DEVICE=cpu; use NPROC_PER_NODE<=$cpus"
fi
case ${DIST_BACKEND:-} in ""|auto|nccl|gloo) ;; *) die "DIST_BACKEND=$DIST_BACKEND is not one of nccl, gloo, auto" ;; esac
[[ -z ${CONFIG:-} || -f $CONFIG ]] || die "CONFIG=$CONFIG: no such file"

if [[ -n ${RDZV_PORT:-} ]]; then
    if ! [[ $RDZV_PORT =~ ^[0-9]+$ ]] || ((RDZV_PORT < 1 || RDZV_PORT > 65535)); then die "RDZV_PORT=$RDZV_PORT is not a port"; fi
    port=$RDZV_PORT
else
    # Bind port 0 and let go: the kernel does not hand the same port out again at once, so two
    # launches started together get different ports (torchrun's 29400 would collide).
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
        || die "PYTHON=$PYTHON cannot run; set PYTHON to the interpreter that has torch and mezo_elastic"
fi

train=(--model.device="$DEVICE")
[[ -n ${DIST_BACKEND:-} ]] && train+=(--dist.backend="$DIST_BACKEND")
[[ -n ${OUTPUT_DIR:-} ]] && train+=(--train.output_dir="$OUTPUT_DIR")
[[ -n ${CONFIG:-} ]] && train+=(--config="$CONFIG")
read -r -a extra <<<"${TRAIN_ARGS:-}"
train+=("${extra[@]}" "${args[@]}")

cmd=("$PYTHON" -m torch.distributed.run --nnodes=1 --nproc-per-node="$NPROC_PER_NODE"
     --max-restarts="$MAX_RESTARTS" --rdzv-backend=c10d --rdzv-endpoint="127.0.0.1:$port"
     --rdzv-id="single-$$-$port" -m mezo_elastic.train "${train[@]}")
echo "$me: $NPROC_PER_NODE process(es) on $DEVICE, rendezvous 127.0.0.1:$port" >&2
echo "$me: ${cmd[*]}" >&2

# torchrun runs in the background so that this shell can pass signals on (bash runs a trap only
# between commands; a foreground child would delay it until torchrun had already exited).
got=0
# shellcheck disable=SC2317  # called by the traps
forward() { got=$1; kill -TERM "$child" 2>/dev/null || true; }
trap 'forward 15' TERM; trap 'forward 2' INT; trap 'forward 1' HUP; trap 'forward 10' USR1
"${cmd[@]}" &
child=$!
while kill -0 "$child" 2>/dev/null; do wait "$child" || true; done
rc=0; wait "$child" || rc=$?
if ((got)); then
    echo "$me: stopped by signal $got (torchrun exit $rc); run again with the same OUTPUT_DIR to resume" >&2
    exit $((128 + got))
fi
exit "$rc"
