import sys, torch
sys.path.insert(0, "/work/main/bench")
import g_noise as G
a = G.parse(["--model", ".gpu/model/SmolLM2-135M-Instruct.Q4_1.gguf", "--out", "/tmp/gn-real3", "--seeds", "6", "--eps", "1e-3", "--forwards", "hf:float32"])
from pathlib import Path
model, train, verb = G.task_files(a, Path("/tmp/gn-real3"))
# clean weights rounded to bf16, perturbations shown exactly (fp32): the clean rounding's share alone
orig = G.sweep
def patched_grads():
    import mezo_elastic.runners.hf.runner as R
    init = R.HFRunner.__init__
    def init2(self, *x, **k):
        init(self, *x, **k)
        for p in self.model.parameters(): p.data.copy_(p.data.to(torch.bfloat16).float())
    R.HFRunner.__init__ = init2
    return G.grads(a, "hf", "float32", model, train, verb)
g = patched_grads()
print([round(x, 2) for x in g[1e-3]])
