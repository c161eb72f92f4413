"""The SGLang backend (GPU): SGLang's in-process ModelRunner as a ForwardRunner.

runner.py: SGLangRunner; engine.py: the version-pinned Engine over SGLang's internals (the only file that
names them); dist.py: SGLang's parallel groups inside our process group; layout.py: TP shards as z segments;
memory.py: the memory pre-check; lora.py: SGLang's LoRA pool; checks.py: pre-GPU config checks.
Imported lazily by runners.make_runner only: the core never imports sglang.
"""
