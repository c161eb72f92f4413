#!/usr/bin/env bash
# dp=2 (tp=1) and tp=2 (dp=1) under torchrun vs one GPU, same global batches and seeds; then
# throughput with the batch per GPU held (weak scaling). Called by scripts/gpu_suite.sh multi.
set -uo pipefail
OUT=${1:-/tmp/mezo_gpu_out}
M=/tmp/mezo_bench/1b
python3 - <<'EOF'
import sys; sys.path[:0] = ["tests/gpu"]
from pathlib import Path
from sglang_models import LLAMA_1B, save_random_model
if not (Path("/tmp/mezo_bench/1b") / "model.safetensors").exists():
    save_random_model(LLAMA_1B, Path("/tmp/mezo_bench/1b"), seed=0)
EOF
run() { echo "== $*"; "$@" 2>&1 | grep -v "Ignore import error" | tail -4; }
RUNS=${RUNS:-one dp2 tp2 dp2_weak}  # a subset re-runs only those (one is the reference)
for r in $RUNS; do
  case $r in
    one) run python3 bench/dp_tp_check.py --model $M --tp 1 --out "$OUT/one.json" ;;
    dp2) run torchrun --standalone --nproc_per_node=2 bench/dp_tp_check.py --model $M --tp 1 --out "$OUT/dp2.json" ;;
    tp2) run torchrun --standalone --nproc_per_node=2 bench/dp_tp_check.py --model $M --tp 2 --out "$OUT/tp2.json" ;;
    dp2_weak) run torchrun --standalone --nproc_per_node=2 bench/dp_tp_check.py --model $M --tp 1 --batch 32 \
                --out "$OUT/dp2_weak.json" ;;
  esac
done
python3 - "$OUT" $RUNS <<'EOF'
import json, sys
out, runs = sys.argv[1], sys.argv[2:]
r = {k: json.load(open(f"{out}/{k}.json")) for k in runs}
res = {}
for k in [k for k in ("dp2", "tp2") if k in r]:
    dl = max(abs(a - b) for x, y in zip(r["one"]["losses"], r[k]["losses"]) for a, b in zip(x, y))
    dg = max(abs(a - b) for a, b in zip(r["one"]["grads"], r[k]["grads"]))
    res[k] = {"max_dloss": dl, "max_dgrad": dg, "median_step_ms": r[k]["median_step_ms"]}
res["one_median_step_ms"] = r["one"]["median_step_ms"]
if "dp2_weak" in r:
    res["weak_scaling_throughput_ratio"] = r["dp2_weak"]["examples_per_s"] / r["one"]["examples_per_s"]
print(json.dumps(res, indent=1))
json.dump(res, open(f"{out}/multi_summary.json", "w"), indent=1)
EOF
