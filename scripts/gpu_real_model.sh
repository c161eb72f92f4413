#!/usr/bin/env bash
# The real pretrained model on one GPU (issue 24): SmolLM2-135M-Instruct from its GGUF file.
#
#   MEZO_REAL_GGUF=/tmp/m/model.gguf scripts/gpu_real_model.sh              # all stages: convert tests step cls reward
#   MEZO_REAL_GGUF=/tmp/m/model.gguf scripts/gpu_real_model.sh tests        # the GPU tests only
#
# Stages:
#   convert  GGUF -> HF directory (runners/gguf.py, cached by sha256), timed
#   tests    tests/gpu/test_real_model_gpu.py: loss parity hf vs sglang, greedy generation vs an unpadded fp32
#            referee (hf, sglang, hf vs sglang), the built-in default training on sglang
#   cls      classification learning (bench/real_tasks.py's cls task): sglang at the default lr and at CLS_LR,
#            hf at CLS_LR; first/final eval accuracy and steps/s
#   step     bench/bench_small_step.py on the real model: steps/s of ours (sglang, hf; scoring graphs on, off)
#            beside the reference MeZO loop, and GPU busy during our step ($OUT/small_step_<task>.json)
#   tta      bench/time_to_accuracy.py on the real model with $TTA_ARGS (e.g. "--tasks cls --methods reference
#            --seeds 0"), OUT kept in /tmp/tta (or $TTA_OUT) between calls on one warm machine, then the report;
#            everything comes back as one file, $OUT/tta.tgz (<basename of TTA_OUT>.tgz; a call returns at most 8 files)
#   reward   reward learning (its reward task, exact_match, greedy): sglang, shaping none / zscore / centered_rank,
#            K = 1 and 4; hf, none, K = 1; first/final eval reward and steps/s
# Summaries: $OUT/real_model.jsonl (a line a run) and the table printed at the end. Wheels and environment as
# scripts/gpu_suite.sh (PYTHONPATH=/tmp/site, MEZO_GPU_COMPAT=1 on that machine only).
set -uo pipefail
OUT=${OUT:-/tmp/mezo_gpu_out}
mkdir -p "$OUT"
stages=${*:-convert tests step cls reward}
export PYTHONPATH=/tmp/site:$PWD MEZO_GPU_COMPAT=1 PYTHONUNBUFFERED=1
export TVM_FFI_CACHE_DIR=${TVM_FFI_CACHE_DIR:-/tmp/tvm-ffi-cache}
: "${MEZO_REAL_GGUF:?set MEZO_REAL_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf (shared/tools/real-model-parts)}"
export MEZO_REAL_GGUF
CLS_STEPS=${CLS_STEPS:-800} CLS_LR=${CLS_LR:-1e-5} HF_CLS_STEPS=${HF_CLS_STEPS:-300}
REWARD_STEPS=${REWARD_STEPS:-200} REWARD_LR=${REWARD_LR:-1e-5}
# Shaped updates: the ES rule (g = (f+ - f-) / 2, lr = ES's alpha; Qiu et al. use 5e-4) where this tree has it,
# else the per-eps rule (g = (f+ - f-) / (2 eps)), where the same step needs lr = eps * alpha = 5e-7.
if python3 -c "import dataclasses, sys; from mezo_elastic.config import MezoConfig; \
sys.exit(0 if 'shaped_update' in {f.name for f in dataclasses.fields(MezoConfig)} else 1)" 2>/dev/null; then
  SHAPED_LR=${SHAPED_LR:-5e-4}
else
  SHAPED_LR=${SHAPED_LR:-5e-7}
fi
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/real_model.log"; }
[ -d /tmp/site/sglang ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site ${WHEELS:-.gpu/whl}/*.whl 2>&1 | tail -3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/real_model_card.txt"
date -u +%Y-%m-%d >> "$OUT/real_model_card.txt"

run() {  # run NAME ARGS...: one training run on GPU 0; its summary line goes to real_model.jsonl
  local name=$1; shift
  local dir=/tmp/mezo_real/$name
  rm -rf "$dir"
  local t0; t0=$(date +%s.%N)
  python3 -m mezo_elastic.train --model.path="$MEZO_REAL_GGUF" --model.dtype=bfloat16 --data.verbatim=true \
    --train.output_dir="$dir" --train.progress=false --checkpoint.every=0 --train.save_final=false \
    --data.eval_examples=400 "$@" > "$OUT/real_$name.log" 2>&1 || { log "$name FAILED"; tail -5 "$OUT/real_$name.log"; rc=1; return; }
  python3 - "$dir" "$name" "$t0" "$*" <<'PY' | tee -a "$OUT/real_model.jsonl"
import json, sys, time
d, name, t0, args = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
lines = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
s = lines[-1]
train = [l for l in lines if l["type"] == "train"]
key = "accuracy" if "first_eval_accuracy" in s else "reward"
# steps/s of the step loop alone: the median rate between consecutive train lines (an eval between two
# lines makes that one interval slow, not the median)
rates = sorted((b["step"] - a["step"]) / (b["time"] - a["time"]) for a, b in zip(train, train[1:]) if b["time"] > a["time"])
steps_s = rates[len(rates) // 2] if rates else None
print(json.dumps({"run": name, "args": args, f"first_eval_{key}": s.get(f"first_eval_{key}"),
                  f"final_eval_{key}": s.get(f"final_eval_{key}"), "steps": s["steps"], "steps_per_s": steps_s,
                  "wall_s": round(time.time() - t0, 1)}))
PY
}

rc=0
for s in $stages; do
  case $s in
    convert)
      log "GGUF -> HF directory"
      python3 -c "import time, os; from pathlib import Path; from mezo_elastic.runners import gguf; t = time.time(); \
d, sha = gguf.hf_dir_for(Path(os.environ['MEZO_REAL_GGUF'])); print(d, sha[:12], f'{time.time() - t:.1f} s')" \
        2>&1 | grep -v Converting | tee -a "$OUT/real_model.log" ;;
    tests)
      log "GPU tests on the real model"
      python3 -m pytest tests/gpu/test_real_model_gpu.py -m gpu -q -s -rA -p no:cacheprovider 2>&1 | \
        tee "$OUT/real_model_tests.log" | grep -E "agree|NLL|hf vs sglang|built-in|passed|failed|error|PASSED|FAILED|ERROR" | tail -30
      [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1 ;;
    step)
      log "step: ours (sglang, hf; graphs on/off) vs the reference, GPU busy"
      for task in ${STEP_TASKS:-cls reward}; do
        python3 bench/bench_small_step.py --model "$MEZO_REAL_GGUF" --out /tmp/mezo_step --task "$task" \
          --steps "${STEP_STEPS:-300}" > "$OUT/small_step_$task.log" 2>&1 || { log "step $task FAILED"; rc=1; }
        grep -A12 "^NVIDIA\|^| method" "$OUT/small_step_$task.log" | tail -12
      done
      cp /tmp/mezo_step/small_step_*.json /tmp/mezo_step/profile_*.txt "$OUT/" 2>/dev/null ;;
    tta)
      log "time to accuracy: ${TTA_ARGS:-}"
      T=${TTA_OUT:-/tmp/tta}  # another OUT (e.g. /tmp/tta-long) for runs that must not mix with the verdict's
      python3 bench/time_to_accuracy.py --model "$MEZO_REAL_GGUF" --out $T ${TTA_ARGS:-} \
        > "$OUT/tta_$(date +%H%M%S).log" 2>&1 || { log "tta FAILED"; rc=1; }
      python3 bench/time_to_accuracy.py --model "$MEZO_REAL_GGUF" --out $T --report-only 2>&1 | tail -12
      tar czf "$OUT/$(basename $T).tgz" -C $T --exclude=work --exclude=hf-model . ;;
    cls|reward)
      [ -f "$OUT/tasks/cls_train.jsonl" ] || python3 bench/real_tasks.py --out "$OUT/tasks" || { log "bench/real_tasks.py missing"; rc=1; continue; }
      T=$OUT/tasks
      if [ "$s" = cls ]; then
        log "classification: sglang (default lr, lr $CLS_LR), hf (lr $CLS_LR)"
        C=(--data.objective=classification --data.path="$T/cls_train.jsonl" --data.eval_path="$T/cls_eval.jsonl"
           --train.batch_size=16 --train.eval_every=200)
        run cls_sglang_default "${C[@]}" --model.backend=sglang --train.steps="$CLS_STEPS"
        run cls_sglang_lr "${C[@]}" --model.backend=sglang --train.steps="$CLS_STEPS" --mezo.lr="$CLS_LR"
        run cls_hf_lr "${C[@]}" --model.backend=hf --train.steps="$HF_CLS_STEPS" --mezo.lr="$CLS_LR"
      else
        log "reward: sglang x shaping none/zscore/centered_rank x K=1,4; hf none K=1 (lr none $REWARD_LR, shaped $SHAPED_LR)"
        R=(--data.objective=reward --data.reward=exact_match --data.path="$T/reward_train.jsonl"
           --data.eval_path="$T/reward_eval.jsonl" --generate.max_new_tokens=6 --train.batch_size=16
           --train.eval_every=100 --data.micro_batch=64)
        for k in 1 4; do
          run reward_sglang_none_k$k "${R[@]}" --model.backend=sglang --train.steps="$REWARD_STEPS" \
            --mezo.perturbations=$k --mezo.lr="$REWARD_LR"
          for sh in zscore centered_rank; do
            run reward_sglang_${sh}_k$k "${R[@]}" --model.backend=sglang --train.steps="$REWARD_STEPS" \
              --mezo.perturbations=$k --mezo.reward_shaping=$sh --mezo.lr="$SHAPED_LR"
          done
        done
        run reward_hf_none_k1 "${R[@]}" --model.backend=hf --train.steps=$((REWARD_STEPS / 2)) --mezo.lr="$REWARD_LR"
      fi ;;
    *) echo "unknown stage $s (convert tests step tta cls reward)"; exit 2 ;;
  esac
done
[ -f "$OUT/real_model.jsonl" ] && python3 - "$OUT/real_model.jsonl" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    k = "accuracy" if "first_eval_accuracy" in r else "reward"
    f = lambda v: "-" if v is None else f"{v:.3f}"
    print(f"{r['run']:28s} eval {k} {f(r[f'first_eval_{k}'])} -> {f(r[f'final_eval_{k}'])}  "
          f"{r['steps']} steps  {f(r['steps_per_s'])} steps/s  wall {r['wall_s']} s")
PY
log "done rc=$rc"
exit $rc
