"""The cluster side: who this process is and how it reaches the others.

rank_context: the only reader of RANK / LOCAL_RANK / WORLD_SIZE / SLURM_* (torchrun, srun, single process);
distributed: process groups, ports agreed with retry, LOCAL_RANK -> device, scalar collectives, teardown.
May import: config, errors. Never runners, training or anything above.
"""
