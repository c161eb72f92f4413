"""The zeroth-order optimizer and its perturbation machinery.

optimizer.py: MeZO's step (seeds, projected gradient, update, lr schedule, master weights);
perturb.py: the in-place sweep dispatch; cpu_sweep.py / triton_sweep.py: the fused sweeps on CPU and CUDA;
zgen/: z from Philox (types, torch reference, compiled C); shaping.py: population reward shaping;
estimators.py: which points a step scores and its g; lowrank.py: ZO-Muon's subspace optimizer;
factory.py: the optimizer of a run's estimator.
May import: config, errors. Never runners, data or training.
"""
