"""z from Philox, keyed by (step seed, parameter name, element index): shared by the CPU and Triton sweeps.

types: ParamSegment, SweepPlan, keys; philox_torch: Philox and the z transforms in torch ops (the reference);
native: the same Philox compiled from philox.c at first use. May import nothing of the package but itself.
"""
