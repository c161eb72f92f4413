#!/usr/bin/env bash
# Issue 28's GPU sequence on the real model (SmolLM2-135M at /tmp/m/model.gguf, moved as
# shared/notes/gpu-real-model.md says), in the order that gives a first reading soonest: the classification
# task's reference and ours (spsa) on seed 0, two reward-task probes of ours (does the task learn, at which
# eps), MeZO-GV on seed 0 (2 x the reference's lr, as its README against MeZO's), then the other seeds and
# FZOO (its paper's lr 1e-5 and 1e-3). Longer than one device call, so it runs
# detached and each piece leaves its results as it ends:
#   scripts/gpu_detached.sh start 'bash scripts/gpu_tta_pieces.sh'   then   scripts/gpu_detached.sh wait 540
# bench/time_to_accuracy.py's OUT is /tmp/tta (resumable: finished runs are skipped); $OUT/tta.tgz after each
# piece, $OUT/probe/*.jsonl the probes' metrics. Wheels installed in /tmp/site first (scripts/gpu_suite.sh).
# A dry run of the plumbing on a CPU: TTA_EXTRA=--smoke PROBE_STEPS=2 PROBE_EVAL=8 PROBE_BACKEND=hf
# MEZO_REAL_GGUF=<the .gguf> (and WHEELS=/nonexistent, so that gpu_real_model.sh installs nothing).
export MEZO_REAL_GGUF=${MEZO_REAL_GGUF:-/tmp/m/model.gguf} PYTHONPATH=/tmp/site:$PWD MEZO_GPU_COMPAT=1 PYTHONUNBUFFERED=1
export TVM_FFI_CACHE_DIR=/tmp/tvm
R="--tasks cls --ref-lrs 3e-5"; O="--methods ours --no-stop-at-target"
tta() { TTA_ARGS="$* ${TTA_EXTRA:-}" bash scripts/gpu_real_model.sh tta; }
probe() {  # probe NAME ARGS: a reward-task run of ours (sglang), metrics kept
  python3 -m mezo_elastic.train --model.path=$MEZO_REAL_GGUF --model.backend=${PROBE_BACKEND:-sglang} \
    --model.dtype=bfloat16 --data.verbatim=true \
    --data.objective=reward --data.reward=exact_match --data.path=$OUT/tasks/reward_train.jsonl \
    --data.eval_path=$OUT/tasks/reward_eval.jsonl --generate.max_new_tokens=6 --train.batch_size=16 \
    --train.eval_every=100 --data.eval_examples=${PROBE_EVAL:-400} --train.steps=${PROBE_STEPS:-400} --train.output_dir=/tmp/probe/$1 \
    --train.progress=false --checkpoint.every=0 --train.save_final=false "${@:2}" > $OUT/probe_$1.log 2>&1
  mkdir -p $OUT/probe && cp /tmp/probe/$1/metrics.jsonl $OUT/probe/$1.jsonl
  grep '"summary"' /tmp/probe/$1/metrics.jsonl | cut -c1-400
}
tta $R --methods reference --seeds 0
tta $R $O --estimators spsa --seeds 0
python3 bench/real_tasks.py --out $OUT/tasks > /dev/null
probe lr1e-5_eps1e-3 --mezo.lr=1e-5 --mezo.eps=1e-3
probe lr1e-5_eps1e-2 --mezo.lr=1e-5 --mezo.eps=1e-2
tta $R $O --estimators gv --gv-lr-scales 2 --seeds 0
tta $R --methods reference --seeds 1,2
tta $R $O --estimators spsa --seeds 1,2
tta $R $O --estimators fzoo --seeds 0
tta $R $O --estimators fzoo --lr-fzoo 1e-3 --seeds 0
echo plan done
