"""z generation and the CPU sweep, split so perturb (dispatch) and kernels (Triton) share types.

types: ParamSegment, SweepPlan, keys; philox_torch: Philox and the z transforms in torch ops;
native: the same Philox compiled from philox.c at first use; cpu_sweep: the batched, fused sweep.
"""
