"""The SGLang backend (GPU): SGLang's in-process ModelRunner as a ForwardRunner.

runner.py: SGLangRunner; engine.py: the version-pinned Engine over SGLang's internals, and generate.py:
Engine.generate's prefill + decode loop, moved out of engine.py for size (the only files that name the
forward path's internals; a new sglang release is adapted in these two); weights.py: HF-named export and
import of the weights; dist.py: SGLang's parallel groups inside our process group; layout.py: TP shards
as z segments; memory.py: the memory pre-check; teardown.py: a closed engine's memory given back and
recorded; lora.py: SGLang's LoRA pool; checks.py: pre-GPU config
checks. Imported lazily by runners.make_runner only: the core never imports sglang.
"""
