"""What a run reads before its first step: the model and data paths (the built-in ones made on first use)
and the tokenised train / eval / dev examples."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mezo_elastic.config import Config
from mezo_elastic.data import builtin
from mezo_elastic.data.jsonl import (
    Example,
    load_tokenizer,
    read_jsonl,
    tokenize,
    unknown_token_fraction,
)
from mezo_elastic.errors import ConfigError
from mezo_elastic.runners import gguf

log = logging.getLogger(__name__)


@dataclass
class RunData:
    train: list[Example]
    eval: list[Example]
    model_path: str
    dev: list[Example] = field(default_factory=list)  # data.task: MeZO's held-out dev set (data.eval_dev)
    gguf: dict | None = None  # model.path named a GGUF file: {"path", "sha256"} (run.json records it)


def resolve_inputs(cfg: Config) -> tuple[str, str, str]:
    """(model path, train path, eval path); the built-in model/task are made on first use, a GGUF
    model.path is the HF directory converted from it (runners/gguf.py)."""
    root = Path(cfg.train.output_dir) / "builtin"
    model_path = gguf.resolve(cfg.model.path)[0] if cfg.model.path else str(builtin.ensure_tiny_model(root))
    if cfg.data.path:
        if cfg.data.task and not cfg.data.eval_path:  # a DatasetDict directory holds the validation split too
            from mezo_elastic.data.tasks.loading import is_dataset_dict

            return model_path, cfg.data.path, cfg.data.path if is_dataset_dict(cfg.data.path) else ""
        return model_path, cfg.data.path, cfg.data.eval_path
    train, evalp = builtin.ensure_task(root, cfg.data.objective)
    return model_path, str(train), cfg.data.eval_path or str(evalp)


def read_split(path: str, tok, cfg: Config, split: str = "train") -> list[Example]:
    """A split's examples, tokenised: with data.task MeZO's rows of its `split` (train or eval) of the
    file, else the JSONL file's (reward: prompts leave room for generate.max_new_tokens)."""
    d, where = cfg.data, []
    if d.task:
        from mezo_elastic.data.tasks.protocol import Protocol, render_rows

        rows = render_rows(d.task, path, split, Protocol.of(d), where)
    else:
        rows = read_jsonl(path, d.objective, where)
    max_len = d.max_length
    if d.objective == "reward":
        max_len -= cfg.generate.max_new_tokens
        if max_len < 1:
            raise ConfigError(f"data.max_length={d.max_length} leaves no room for a prompt beside "
                              f"generate.max_new_tokens={cfg.generate.max_new_tokens}; raise data.max_length")
    return tokenize(rows, tok, d.objective, max_len, where, d.verbatim or bool(d.task))


def load_run_data(cfg: Config, model_path: str, train_path: str, eval_path: str, is_main: bool):
    """(tokenizer, RunData): every split this run trains and evaluates on, tokenised."""
    tok = load_tokenizer(model_path, cfg.model.trust_remote_code)
    train = read_split(train_path, tok, cfg)
    evals = read_split(eval_path, tok, cfg, "eval") if eval_path else []  # data.task: data.num_eval, not cut
    data = RunData(train, evals if cfg.data.task else evals[: cfg.data.eval_examples], model_path)
    data.gguf = gguf.resolve(cfg.model.path)[1] if cfg.model.path else None  # cached by then: a hash, no conversion
    if cfg.data.task and cfg.data.eval_dev and evals:
        data.dev = read_split(train_path, tok, cfg, "dev")
    if is_main:
        _warn_unknown_tokens(cfg, data, tok, train_path)
    return tok, data


def _warn_unknown_tokens(cfg: Config, data: RunData, tok, train_path: str) -> None:
    """Text the tokenizer does not know trains on <unk> (e.g. own data on the built-in model)."""
    frac = unknown_token_fraction(data.train, tok.unk_token_id)
    if frac > cfg.data.unk_warn_fraction:
        log.warning("%.0f%% of the tokens of %s are the unknown token %r for the tokenizer of %s: that text "
                    "trains on %r, not on its words. Give a model that knows them: --model.path=/path/to/hf-model"
                    "%s", 100 * frac, train_path, tok.unk_token, data.model_path, tok.unk_token,
                    " (the built-in model knows 31 words only)" if not cfg.model.path else "")


def stored_model_path(model_path: str, out: Path) -> str:
    """The model path as run.json keeps it: relative to the output directory when inside it (so a
    copied run directory still finds its built-in model), else absolute (any launch directory)."""
    model = Path(model_path).resolve()
    try:
        return str(model.relative_to(Path(out).resolve()))
    except ValueError:
        return str(model)
