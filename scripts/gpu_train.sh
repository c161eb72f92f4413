#!/usr/bin/env bash
# End-to-end training on GPUs through the real entry point (`-m mezo_elastic.train`), sglang and hf.
#
#   scripts/gpu_train.sh one     # 1 GPU: sglang vs hf, same weights/seeds/batches, 30 steps each
#   scripts/gpu_train.sh two     # 2 GPUs: tp=2 stopped at step 10 and resumed = uninterrupted (fp32 master)
#   scripts/gpu_train.sh kill    # NGPU (2) GPUs: a SIGKILLed worker under --max-restarts=1 ends = undisturbed
#   scripts/gpu_train.sh four    # 4 GPUs: dp=4, dp=2 x tp=2, a SIGKILLed worker, throughput 4 vs 1
#
# Logs and JSON summaries under $OUT. Wheels as in scripts/gpu_suite.sh (PYTHONPATH=/tmp/site,
# MEZO_GPU_COMPAT=1 for that machine only).
set -uo pipefail
OUT=${OUT:-/tmp/mezo_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD MEZO_GPU_COMPAT=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TVM_FFI_CACHE_DIR=${TVM_FFI_CACHE_DIR:-/tmp/tvm-ffi-cache}
if [ ! -d /tmp/site/sglang ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    ${WHEELS:-.gpu/whl}/*.whl 2>&1 | tail -3
fi
M=/tmp/mezo_e2e/model
python3 - <<'PY'
# A small Llama with the built-in task's tokenizer (random bf16 weights, fixed seed).
from pathlib import Path
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM
from mezo_elastic import builtin
out = Path("/tmp/mezo_e2e/model")
if not (out / "model.safetensors").exists():
    builtin._save_tokenizer(out)
    cfg = LlamaConfig(vocab_size=len(builtin.VOCAB), hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=3, torch_dtype="bfloat16",
                      architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    cfg.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
PY
COMMON=(--model.path=$M --model.dtype=bfloat16 --train.batch_size=32 --train.eval_every=0 --checkpoint.every=10
        --train.progress=false --mezo.lr=1e-4 --mezo.eps=1e-3 --data.max_length=32)
summ() { python3 - "$@" <<'PY'
import json, sys
from mezo_elastic.state.checkpoint import StepLog
out = {}
for d in sys.argv[1:]:
    recs = StepLog(f"{d}/steps.jsonl").read()
    m = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    tr = [x for x in m if x["type"] == "train"]
    out[d] = {"steps": len(recs), "loss": [r.loss for r in recs], "g": [r.grads[0] for r in recs],
              "steps_per_s": tr[-1]["steps_per_s"] if tr else None}
    print(d, "steps", len(recs), "loss0", round(recs[0].loss, 5), "lossN", round(recs[-1].loss, 5),
          "steps/s", round(out[d]["steps_per_s"] or 0, 2))
names = list(out)
for b in names[1:]:
    a = names[0]
    dl = max(abs(x - y) for x, y in zip(out[a]["loss"], out[b]["loss"]))
    dg = max(abs(x - y) for x, y in zip(out[a]["g"], out[b]["g"]))
    print(f"{a} vs {b}: max |dloss| {dl:.3g}  max |dg| {dg:.3g}")

PY
}
run() { echo "== $*" | tee -a "$OUT/train.log"; "$@" >> "$OUT/train.log" 2>&1; rc=$?; echo "rc=$rc"; return $rc; }
for stage in ${*:-one}; do
  case $stage in
    one)
      run python3 -m mezo_elastic.train --model.backend=sglang --train.steps=30 --train.output_dir=/tmp/e2e/sg1 "${COMMON[@]}"
      run python3 -m mezo_elastic.train --model.backend=hf --model.device=cuda --train.steps=30 --train.output_dir=/tmp/e2e/hf1 "${COMMON[@]}"
      summ /tmp/e2e/sg1 /tmp/e2e/hf1 | tee "$OUT/one.txt" ;;
    two)
      T2="torchrun --standalone --nproc_per_node=2 -m mezo_elastic.train --model.backend=sglang --model.tp_size=2"
      run $T2 --train.steps=20 --train.output_dir=/tmp/e2e/tp2ref "${COMMON[@]}"
      run $T2 --train.steps=10 --train.output_dir=/tmp/e2e/tp2res "${COMMON[@]}"
      run $T2 --train.steps=20 --train.output_dir=/tmp/e2e/tp2res "${COMMON[@]}"
      python3 - <<'PY' | tee "$OUT/two.txt"
# bf16 weights with the fp32 master (auto): the step-20 checkpoints must hold every TP rank's exact theta
from mezo_elastic.state.checkpoint import newest_valid_checkpoint
(sa, a), (sb, b) = newest_valid_checkpoint("/tmp/e2e/tp2ref"), newest_valid_checkpoint("/tmp/e2e/tp2res")
print("steps", sa, sb, "fp32 tensors", sum(t.dtype.is_floating_point and t.element_size() == 4 for t in a.values()), "of", len(a))
print("tp=2 resumed vs uninterrupted: max abs diff", max((a[k].double() - b[k].double()).abs().max().item() for k in a))
PY
      ;;
    kill)  # N=${NGPU:-2} GPUs: a worker SIGKILLed after step 15 under --max-restarts=1 vs undisturbed
      N=${NGPU:-2}
      TR="torchrun --standalone --nproc_per_node=$N"
      run $TR -m mezo_elastic.train --model.backend=sglang --train.steps=30 --train.output_dir=/tmp/e2e/undisturbed$N "${COMMON[@]}"
      ( $TR --max-restarts=1 -m mezo_elastic.train --model.backend=sglang --train.steps=30 \
          --train.output_dir=/tmp/e2e/kill$N "${COMMON[@]}" > "$OUT/kill$N.log" 2>&1; echo "kill-run rc=$?" ) &
      bg=$!
      for _ in $(seq 600); do  # until 15 steps are logged, while the job lives
        kill -0 $bg 2>/dev/null || break
        n=$(cat /tmp/e2e/kill$N/steps.jsonl 2>/dev/null | wc -l); [ "$n" -ge 15 ] && break; sleep 0.5; done
      pkill -9 -f "train.output_dir=/tmp/e2e/kill$N" -n; wait $bg
      echo "resumed lines: $(grep -c 'resumed at step' "$OUT/kill$N.log")"
      N=$N python3 - <<'PY' | tee "$OUT/kill$N.txt"
import os
from safetensors.torch import load_file
n = os.environ["N"]
a = load_file(f"/tmp/e2e/kill{n}/final/model.safetensors"); b = load_file(f"/tmp/e2e/undisturbed{n}/final/model.safetensors")
print(f"{n} GPUs, SIGKILLed worker + restart vs undisturbed: max abs diff",
      max((a[k].float() - b[k].float()).abs().max().item() for k in a))
PY
      ;;
    four)
      TR="torchrun --standalone --nproc_per_node=4"
      T="$TR -m mezo_elastic.train"
      run python3 -m mezo_elastic.train --model.backend=sglang --train.steps=30 --train.output_dir=/tmp/e2e/g1 "${COMMON[@]}"
      run $T --model.backend=sglang --train.steps=30 --train.output_dir=/tmp/e2e/dp4 "${COMMON[@]}"
      run $T --model.backend=sglang --model.tp_size=2 --train.steps=30 --train.output_dir=/tmp/e2e/dp2tp2 "${COMMON[@]}"
      # a worker SIGKILLed after step 15 under --max-restarts=1
      ( $TR --max-restarts=1 -m mezo_elastic.train --model.backend=sglang --train.steps=30 --train.output_dir=/tmp/e2e/kill "${COMMON[@]}" \
          > "$OUT/kill.log" 2>&1; echo "kill-run rc=$?" ) &
      bg=$!
      for _ in $(seq 600); do  # until 15 steps are logged, while the job lives
        kill -0 $bg 2>/dev/null || break
        n=$(cat /tmp/e2e/kill/steps.jsonl 2>/dev/null | wc -l); [ "$n" -ge 15 ] && break; sleep 0.5; done
      pkill -9 -f "train.output_dir=/tmp/e2e/kill" -n; wait $bg
      grep -c "resumed at step" "$OUT/kill.log"
      python3 - <<'PY'
from safetensors.torch import load_file
a = load_file("/tmp/e2e/kill/final/model.safetensors"); b = load_file("/tmp/e2e/dp4/final/model.safetensors")
print("kill vs undisturbed dp4: max abs diff", max((a[k].float() - b[k].float()).abs().max().item() for k in a))
PY
      # throughput: the same per-GPU batch (32) on 1 and on 4 GPUs
      run python3 -m mezo_elastic.train --model.backend=sglang --train.steps=40 --train.output_dir=/tmp/e2e/t1 "${COMMON[@]}"
      run $T --model.backend=sglang --train.steps=40 --train.output_dir=/tmp/e2e/t4 "${COMMON[@]}" --train.batch_size=128
      summ /tmp/e2e/g1 /tmp/e2e/dp4 /tmp/e2e/dp2tp2 | tee "$OUT/four.txt"
      summ /tmp/e2e/t1 /tmp/e2e/t4 | tee -a "$OUT/four.txt" ;;
  esac
done
