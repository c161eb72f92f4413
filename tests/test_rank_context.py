import pytest

from mezo_elastic.cluster.rank_context import (
    detect,
    expand_nodelist,
    slurm_port_from_job,
)
from mezo_elastic.errors import LaunchEnvError

TORCHRUN = {"TORCHELASTIC_RUN_ID": "abc", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
            "GROUP_RANK": "0", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "TORCHELASTIC_RESTART_COUNT": "2"}
SLURM = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_NODEID": "1",
         "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "4242", "SLURM_TASKS_PER_NODE": "2(x2)"}


def test_single_process():
    ctx = detect({})
    assert (ctx.launcher, ctx.rank, ctx.world_size, ctx.master_port) == ("single", 0, 1, None)


def test_torchrun():
    ctx = detect(TORCHRUN)
    assert (ctx.launcher, ctx.rank, ctx.local_rank, ctx.world_size, ctx.local_world_size) == ("torchrun", 1, 1, 4, 2)
    assert (ctx.master_addr, ctx.master_port, ctx.restart_count, ctx.run_id) == ("10.0.0.1", 29500, 2, "abc")
    assert not ctx.port_chosen_by_package


def test_slurm_without_torchrun():
    ctx = detect(SLURM)
    assert (ctx.launcher, ctx.rank, ctx.local_rank, ctx.world_size, ctx.local_world_size, ctx.node_rank) == \
        ("slurm", 3, 1, 4, 2, 1)
    assert ctx.master_addr == "gpu07" and ctx.master_port == slurm_port_from_job("4242") == 24242
    assert ctx.port_chosen_by_package


def test_torchrun_wins_inside_slurm():
    ctx = detect({**SLURM, **TORCHRUN})
    assert ctx.launcher == "torchrun" and ctx.rank == 1 and ctx.job_id == "4242"


def test_nodelist():
    assert expand_nodelist("gpu[01-03,7],login1") == ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]
    assert expand_nodelist("n1") == ["n1"]


@pytest.mark.parametrize("env, words", [
    ({**TORCHRUN, "RANK": "x"}, ["RANK='x'", "not an integer"]),
    ({**TORCHRUN, "RANK": "4"}, ["RANK=4", "[0, 4)"]),
    ({**TORCHRUN, "RANK": "-1"}, ["RANK=-1"]),
    ({**TORCHRUN, "LOCAL_RANK": "2"}, ["local rank 2", "[0, 2)"]),
    ({**TORCHRUN, "WORLD_SIZE": "0", "RANK": "0"}, ["WORLD_SIZE=0 is not allowed", ">= 1"]),
    ({"WORLD_SIZE": "-1", "RANK": "0"}, ["WORLD_SIZE=-1 is not allowed"]),  # before 'LOCAL_RANK is not set'
    ({**SLURM, "SLURM_NTASKS": "0"}, ["SLURM_NTASKS=0 is not allowed"]),
    ({"LOCAL_RANK": "5"}, ["LOCAL_RANK=5 is set but RANK and WORLD_SIZE are not"]),  # not a silent rank 0 of 1
    ({**SLURM, "SLURM_PROCID": "9"}, ["SLURM_PROCID=9"]),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, ["MASTER_ADDR"]),
])
def test_bad_env_one_clear_error(env, words):
    with pytest.raises(LaunchEnvError) as e:
        detect(env)
    for w in words:
        assert w in str(e.value)


def test_half_set_rank_or_world_size_names_the_missing_variable():
    import pytest

    from mezo_elastic.cluster.rank_context import detect
    from mezo_elastic.errors import LaunchEnvError

    with pytest.raises(LaunchEnvError, match="RANK=1 is set but WORLD_SIZE is not"):
        detect({"RANK": "1"})
    with pytest.raises(LaunchEnvError, match="WORLD_SIZE=2 is set but RANK is not"):
        detect({"WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
