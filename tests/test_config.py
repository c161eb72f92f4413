import pytest

from mezo_elastic.config import Config, iter_fields, parse_args
from mezo_elastic.config.schema import MezoConfig
from mezo_elastic.errors import ConfigError

REQUIRED = ["seed", "train.steps", "train.batch_size", "train.output_dir", "model.backend", "model.path",
            "data.path", "mezo.lr", "mezo.eps", "mezo.mode", "checkpoint.every"]


def test_required_keys_exist_and_help_lists_them(capsys):
    keys = {k for k, *_ in iter_fields()}
    assert set(REQUIRED) <= keys
    with pytest.raises(SystemExit) as e:
        parse_args(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for k in REQUIRED:
        assert f"--{k}=" in out


def test_overrides_and_types():
    cfg = parse_args(["--seed=3", "--train.steps", "7", "--mezo.lr=1e-4", "--mezo.mode=multi_seed",
                      "--train.progress=false", "--model.backend=hf"])
    assert (cfg.seed, cfg.train.steps, cfg.mezo.lr, cfg.mezo.mode, cfg.train.progress) == (3, 7, 1e-4, "multi_seed", False)


def test_config_files_toml_and_yaml_then_flags_win(tmp_path):
    t = tmp_path / "c.toml"
    t.write_text('seed = 5\n[mezo]\nlr = 0.01\n[train]\nsteps = 9\n')
    y = tmp_path / "c.yaml"
    y.write_text("seed: 6\nmezo:\n  eps: 0.01\n")
    assert parse_args(["--config", str(t), "--train.steps=11"]).train.steps == 11
    assert parse_args(["--config", str(t)]).mezo.lr == 0.01
    assert parse_args(["--config", str(y)]).mezo.eps == 0.01


@pytest.mark.parametrize("argv, words", [
    (["--mezo.mode=sgd"], ["mezo.mode", "'sgd'", "dp", "multi_seed"]),
    (["--model.backend=vllm"], ["model.backend", "hf", "sglang"]),
    (["--train.steps=abc"], ["train.steps", "'abc'", "int"]),
    (["--train.batch_size=0"], ["train.batch_size", "> 0"]),
    (["--mezo.eps=-1"], ["mezo.eps"]),
    (["--train.nope=1"], ["train.nope"]),
    (["--model.tp_size=2"], ["model.tp_size", "sglang"]),
    (["--model.trainable=("], ["model.trainable"]),
    (["positional"], ["positional"]),
    (["--train.early_stop_evals=-1"], ["train.early_stop_evals", ">= 0"]),
    (["--train.early_stop_evals=3", "--train.eval_every=0"], ["train.early_stop_evals=3", "train.eval_every"]),
])
def test_bad_values_name_the_field_and_the_allowed(argv, words):
    with pytest.raises(ConfigError) as e:
        parse_args(argv)
    for w in words:
        assert w in str(e.value)


def test_every_field_has_help_and_defaults_validate():
    for key, _typ, _default, hlp in iter_fields():
        assert hlp and len(hlp) > 10, key
    Config()


def test_every_float_must_be_finite_from_flags_and_files(tmp_path):
    import pytest

    from mezo_elastic.config import parse_args
    from mezo_elastic.errors import ConfigError

    for flag in ("--mezo.lr=nan", "--mezo.eps=inf", "--dist.timeout_s=inf", "--train.stop_grace_s=nan"):
        with pytest.raises(ConfigError, match="must be a finite number"):
            parse_args([flag])
    f = tmp_path / "c.toml"
    f.write_text("[mezo]\nlr = nan\n")
    with pytest.raises(ConfigError, match="mezo.lr=nan"):
        parse_args(["--config", str(f)])


def test_lr_default_is_safe_on_a_user_model_and_the_builtin_keeps_its_own(tmp_path):
    """mezo.lr: 1e-6 for any model.path (a pretrained model; 1e-3 wrecks one, issue 24), the built-in
    model's 1e-3 when model.path is empty (BUILTIN_PRESET); a file or flag wins over either."""
    from mezo_elastic.config.schema import BUILTIN_PRESET

    assert Config().mezo.lr == 1e-6 and BUILTIN_PRESET["mezo"] == {"lr": 1e-3}
    assert parse_args([]).mezo.lr == 1e-3
    assert parse_args(["--model.path=/models/smol.gguf"]).mezo.lr == 1e-6
    assert parse_args(["--mezo.lr=2e-5"]).mezo.lr == 2e-5
    assert parse_args(["--model.path=/m", "--mezo.eps=1e-2"]).mezo.lr == 1e-6
    t = tmp_path / "c.toml"
    t.write_text('[model]\npath = "/models/smol"\n')
    assert parse_args(["--config", str(t)]).mezo.lr == 1e-6
    t.write_text('[mezo]\neps = 0.01\n')  # the built-in model with a file of its own: the preset still fills lr
    assert (parse_args(["--config", str(t)]).mezo.lr, parse_args(["--config", str(t)]).mezo.eps) == (1e-3, 0.01)


def test_an_unset_lr_follows_the_estimators_rule_and_a_given_one_wins():
    """docs/estimators.md#the-learning-rate: MeZO's 1e-6 (gv half), the scale-free steps their paper's lr at their
    population scaled by sqrt(N / N_paper), zo_muon the authors'; the built-in model keeps its preset's 1e-3."""
    user = ["--model.path=/models/smol.gguf", "--mezo.mode=dp"]
    cases = {("spsa", 1, "none"): 1e-6, ("gv", 2, "none"): 5e-7, ("zo_muon", 1, "none"): 1e-2,
             ("fzoo", 8, "none"): 1e-5, ("fzoo", 2, "none"): 1e-5 / 2, ("es", 30, "zscore"): 5e-4,
             ("es", 2, "centered_rank"): 5e-4 * (2 / 30) ** 0.5, ("spsa", 15, "zscore"): 5e-4}
    for (est, k, shaping), lr in cases.items():
        flags = [*user, f"--mezo.estimator={est}", f"--mezo.perturbations={k}", f"--mezo.reward_shaping={shaping}"]
        assert parse_args(flags).mezo.lr == pytest.approx(lr, rel=1e-12), (est, k, shaping)
        assert parse_args([*flags, "--mezo.lr=3e-4"]).mezo.lr == 3e-4
        assert parse_args(flags[1:]).mezo.lr == 1e-3  # the built-in model: its preset, whatever the estimator
    # a shaped spsa run of the old per-eps rule (only resumed, never new) keeps the default it was made with
    old_rule = MezoConfig(perturbations=2, reward_shaping="zscore", shaped_update="per_eps")
    assert old_rule.lr == 1e-6
    assert MezoConfig(estimator="fzoo", perturbations=8).lr == 1e-5  # the Python API resolves it too
