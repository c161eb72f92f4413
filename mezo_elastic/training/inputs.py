"""What a run reads before its first step: the model and data paths (the built-in ones staged, see
staging.py) and the tokenised train / eval / dev examples, every check done before anything is written
in train.output_dir."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from mezo_elastic.config import Config
from mezo_elastic.data.jsonl import (
    Example,
    load_tokenizer,
    read_jsonl,
    tokenize,
    unknown_token_fraction,
)
from mezo_elastic.errors import ConfigError, RewardError
from mezo_elastic.runners import gguf
from mezo_elastic.training import data_record
from mezo_elastic.training.staging import BuiltinStage

log = logging.getLogger(__name__)
# config.json keys that hold a model's number of positions, by model family
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass
class RunData:
    train: list[Example]
    eval: list[Example]
    model_path: str  # absolute, where the run's runner loads it from (OUTPUT_DIR/builtin/... once committed)
    dev: list[Example] = field(default_factory=list)  # data.task: MeZO's held-out dev set (data.eval_dev)
    gguf: dict | None = None  # model.path named a GGUF file: {"path", "sha256"} (run.json records it)
    files: dict | None = None  # rank 0: {role: {"path", "sha256"}} of the data files (data_record.py)


@dataclass
class _Reading:
    """What read_split needs besides the path: the run's tokenizer, reward and length limit."""

    cfg: Config
    tok: object
    stage: BuiltinStage
    reward: object = None  # objective reward: the loaded data.reward
    positions: int | None = None  # the model's number of positions (config.json), when it says
    cut: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (rows cut, rows) past positions


def load_inputs(cfg: Config, is_main: bool) -> tuple[object, RunData, BuiltinStage]:
    """(tokenizer, RunData, stage): every split this run trains and evaluates on, read, checked and
    tokenised. The built-in model/task are made in a staging folder (commit the stage once the output
    directory is taken); on an error the stage is dropped and nothing was written.

    Raises:
        MezoError: a bad row (file:line), a reward that rejects a row, unknown LoRA targets, ...
    """
    stage = BuiltinStage(cfg.train.output_dir)
    try:
        gguf_info = None
        if cfg.model.path:  # a GGUF model.path loads from the HF directory converted from it (cached)
            model_now, gguf_info = gguf.resolve(cfg.model.path)
            model_final = model_now
        else:
            model_now, model_final = stage.model()
        train_path, eval_path = _data_paths(cfg, stage)
        if cfg.peft.method == "lora":
            check_lora_targets(cfg, model_now, model_final)
        check_trainable(cfg, model_now, model_final)
        reading = _Reading(cfg, load_tokenizer(model_now, cfg.model.trust_remote_code), stage,
                           positions=model_positions(model_now))
        if cfg.data.objective == "reward":
            from mezo_elastic.objectives.rewards import load_reward

            reading.reward = load_reward(cfg.data.reward)
        data = _load_splits(reading, train_path, eval_path, str(Path(model_final).resolve()))
        data.gguf = gguf_info
        if is_main:  # one reading of the data files, by the rank that records and compares them
            data.files = data_record.describe({"train": (train_path, stage.shown(train_path)),
                                               "eval": (eval_path, stage.shown(eval_path) if eval_path else "")})
            _warn_cut_rows(reading, model_final)
            _warn_unknown_tokens(cfg, data, reading.tok, stage.shown(train_path), model_final)
    except BaseException:
        stage.discard()
        raise
    return reading.tok, data, stage


def _data_paths(cfg: Config, stage: BuiltinStage) -> tuple[str, str]:
    """(train path, eval path) to read now; the built-in task's are staged when not made yet."""
    if cfg.data.path:
        if cfg.data.task and not cfg.data.eval_path:  # a DatasetDict directory holds the validation split too
            from mezo_elastic.data.tasks.loading import is_dataset_dict

            return cfg.data.path, cfg.data.path if is_dataset_dict(cfg.data.path) else ""
        return cfg.data.path, cfg.data.eval_path
    train, evalp = stage.task(cfg.data.objective)
    return train, cfg.data.eval_path or evalp


def _load_splits(r: _Reading, train_path: str, eval_path: str, model_path: str) -> RunData:
    cfg = r.cfg
    train = read_split(r, train_path)
    evals = read_split(r, eval_path, "eval") if eval_path else []  # data.task: data.num_eval, not cut
    data = RunData(train, evals if cfg.data.task else evals[: cfg.data.eval_examples], model_path)
    if cfg.data.task and cfg.data.eval_dev and evals:
        data.dev = read_split(r, train_path, "dev")
    return data


def read_split(r: _Reading, path: str, split: str = "train") -> list[Example]:
    """A split's examples, tokenised: with data.task MeZO's rows of its `split` (train or eval) of the
    file, else the JSONL file's. objective reward: prompts leave room for generate.max_new_tokens, and
    data.reward must accept every row (it is called on each with an empty completion, before training)."""
    cfg, where = r.cfg, []
    d = cfg.data
    if d.task:
        from mezo_elastic.data.tasks.protocol import Protocol, render_rows

        rows = render_rows(d.task, path, split, Protocol.of(d), where)
    else:
        rows = read_jsonl(path, d.objective, where)
    where = [r.stage.shown(w) for w in where]
    max_len, limit = d.max_length, f"data.max_length={d.max_length}"
    if r.positions is not None and r.positions < max_len:
        max_len, limit = r.positions, f"the model's {r.positions} positions (data.max_length={d.max_length})"
    if d.objective == "reward":
        _check_reward_rows(r.reward, rows, where)
        max_len -= cfg.generate.max_new_tokens
        if max_len < 1:
            raise ConfigError(f"{limit} leaves no room for a prompt beside generate.max_new_tokens="
                              f"{cfg.generate.max_new_tokens}; lower generate.max_new_tokens")
    cut: list[int] = []
    out = tokenize(rows, r.tok, d.objective, max_len, where, d.verbatim or bool(d.task), limit, cut)
    if cut and r.positions is not None and r.positions < d.max_length and split != "dev":
        r.cut[r.stage.shown(path)] = (len(cut), len(rows))
    return out


def _check_reward_rows(reward, rows: list[dict], where: list[str]) -> None:
    """Every row must be one data.reward can score: call it on each with an empty completion (a
    completion the policy can write), so a bad row fails now, naming its line, not at some step."""
    from mezo_elastic.objectives.rewards import compute_rewards

    try:
        compute_rewards(reward, [""] * len(rows), rows, where)
    except RewardError as e:
        raise RewardError(f"{e} (every row is checked before training: data.reward is called on it with an "
                          f"empty completion)") from None


def model_positions(model_path: str) -> int | None:
    """The model's number of positions from its config.json (None when it does not say)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in POSITION_KEYS:
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lora_targets(cfg: Config, model_path: str, shown: str = "") -> None:
    """peft.targets must name modules of the model (checked on an empty meta-device copy, no weights read);
    `shown` is the model's path in the message (the built-in model's once committed).

    Raises:
        ConfigError: a target matches nothing; the message lists the model's module names.
    """
    from mezo_elastic.runners.lora import adapter_shapes, target_candidates

    try:
        adapter_shapes(model_path, cfg.peft, cfg.model.trust_remote_code)
    except ValueError:
        names = target_candidates(model_path, cfg.model.trust_remote_code)
        raise ConfigError(f"peft.targets={cfg.peft.targets!r}: not all of {cfg.peft.target_list()} are modules of "
                          f"{shown or model_path}; its linear modules: {','.join(names)}") from None


def check_trainable(cfg: Config, model_path: str, shown: str = "") -> None:
    """model.trainable must match a tensor the run would train: a parameter of the model, or with LoRA a
    tensor of the adapter (both named on an empty meta-device copy, no weights read). Checked here, before
    the output directory is touched; the runner would refuse it only after the built-in model was copied in.

    Raises:
        ConfigError: the regex matches no name (the same words as the runner's refusal).
    """
    if not cfg.model.trainable:
        return
    import re

    if cfg.peft.method == "lora":
        from mezo_elastic.runners.lora import adapter_shapes

        names, what = list(adapter_shapes(model_path, cfg.peft, cfg.model.trust_remote_code)), "adapter tensor"
    else:
        names, what = meta_parameter_names(model_path, cfg.model.trust_remote_code), "parameter"
    pattern = re.compile(cfg.model.trainable)
    if not any(pattern.search(n) for n in names):
        raise ConfigError(f"model.trainable={cfg.model.trainable!r} matches no {what} of {shown or model_path}")


def meta_parameter_names(model_path: str, trust_remote_code: bool = False) -> list[str]:
    """The parameter names of the model at `model_path` as the hf runner sees them (tied weights once),
    from a meta-device copy: no weights read, no memory."""
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code, local_files_only=True)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return [n for n, _ in model.named_parameters()]


def _warn_cut_rows(r: _Reading, model: str) -> None:
    """Rows longer than the model's positions are cut to them: say so once per file (rank 0)."""
    for path, (n_cut, n) in r.cut.items():
        log.warning("%d of the %d rows of %s are longer than the %d positions of %s (max_position_embeddings): "
                    "they are cut from the left to %d tokens; data.max_length=%d is above the model's limit",
                    n_cut, n, path, r.positions, model, r.positions, r.cfg.data.max_length)


def _warn_unknown_tokens(cfg: Config, data: RunData, tok, train_path: str, model: str) -> None:
    """Text the tokenizer does not know trains on <unk> (e.g. own data on the built-in model)."""
    frac = unknown_token_fraction(data.train, tok.unk_token_id)
    if frac > cfg.data.unk_warn_fraction:
        log.warning("%.0f%% of the tokens of %s are the unknown token %r for the tokenizer of %s: that text "
                    "trains on %r, not on its words. Give a model that knows them: --model.path=/path/to/hf-model"
                    "%s", 100 * frac, train_path, tok.unk_token, model,
                    tok.unk_token, " (the built-in model knows 31 words only)" if not cfg.model.path else "")


def stored_model_path(model_path: str, out: Path) -> str:
    """The model path as run.json keeps it: relative to the output directory when inside it (so a
    copied run directory still finds its built-in model), else absolute (any launch directory)."""
    model = Path(model_path).resolve()
    try:
        return str(model.relative_to(Path(out).resolve()))
    except ValueError:
        return str(model)
