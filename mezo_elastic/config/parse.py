"""Reading the config tree from a file and `--section.key=value` flags, and the help text made from it.

Sources, later wins: dataclass defaults (config/schema.py) < the built-in model's preset (BUILTIN_PRESET, only
when model.path is empty) < `--config FILE.toml|.yaml` < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from mezo_elastic.config.schema import BUILTIN_PRESET, SECTIONS, Config, task_defaults
from mezo_elastic.errors import ConfigError


def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


class _Flag(str):
    """A value typed on the command line (not read from a file): named `--key=value` in messages, and
    one string for a list key may carry escapes (--generate.stop='\\n' is a newline)."""


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.?)", re.S)


def _unescape(key: str, text: str) -> str:
    """Backslash escapes of one string typed on the command line: \\n \\t \\r \\\\ \\" \\' \\uXXXX."""
    def one(m: re.Match) -> str:
        code = m.group(1)
        if code.startswith("u") and len(code) == 5:
            return chr(int(code[1:], 16))
        if code in _ESCAPES:
            return _ESCAPES[code]
        raise ConfigError(f"--{key}={text!r}: unknown escape {m.group(0)!r}; use \\n \\t \\r \\\\ \\\" "
                          f"\\uXXXX, or a JSON list such as --{key}='[\"\\n\"]'")

    return _ESCAPE.sub(one, text)


def _named(key: str, raw: Any, source: str) -> str:
    """How a message names a value: `--key='v'` for a flag, `key='v' (in FILE)` for a file's value."""
    return f"--{key}={raw!r}" if isinstance(raw, _Flag) or not source else f"{key}={raw!r} (in {source})"


def _coerce(key: str, raw: Any, typ: Any, source: str = "") -> Any:
    """Turn a CLI string (or a file's value) into the field's type; a bad value names the key and where it
    came from (a flag, or the config file `source`)."""
    typ = value_type(typ)
    if typing.get_origin(typ) is Literal:
        allowed = typing.get_args(typ)
        if "on" in allowed and str(raw).lower() in ("true", "false", "1", "0", "yes", "no"):
            raw = "on" if str(raw).lower() in ("true", "1", "yes") else "off"  # on/off switches take booleans
        if raw not in allowed:
            raise ConfigError(f"{_named(key, raw, source)} is not allowed; choose one of {list(allowed)}")
        return str(raw)
    try:
        if typ is bool:
            return _bool(key, raw, source)
        if typ is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            return str(raw)
        if typ is list:
            if isinstance(raw, str):  # a CLI value: a JSON list, or one string (escapes read for a flag)
                raw = json.loads(raw) if raw.lstrip().startswith("[") else [
                    _unescape(key, raw) if isinstance(raw, _Flag) else str(raw)]
            if not isinstance(raw, list):
                raise ValueError
            return list(raw)
    except ConfigError:  # already names the value (a ValueError too: not caught below)
        raise
    except (TypeError, ValueError):  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"{_named(key, raw, source)} is not a valid {typ.__name__}") from None
    raise ConfigError(f"--{key}: unsupported field type {typ}")


def with_builtin_preset(values: dict[str, Any]) -> dict[str, Any]:
    """`values` over BUILTIN_PRESET when they leave model.path empty (the built-in model), else as given."""
    model = values.get("model")
    if isinstance(model, dict) and model.get("path"):
        return values
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for section, preset in BUILTIN_PRESET.items():
        if isinstance(merged.setdefault(section, {}), dict):
            merged[section] = {**preset, **merged[section]}
    return merged


def _bool(key: str, raw: Any, source: str) -> bool:
    if isinstance(raw, bool):
        return raw
    s = str(raw).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{_named(key, raw, source)} is not a valid bool; use true or false (also 1/0, yes/no, on/off)")


def _apply(values: dict[str, dict[str, Any] | Any], source: str = "") -> Config:
    """Build a Config from {section: {key: value}} plus top-level keys, checking every name.

    The built-in model's preset fills what they leave unset when model.path is empty; a data.task fills
    in the data keys it implies (schema.task_defaults) that were not given."""
    values = with_builtin_preset(values)
    top: dict[str, Any] = {}
    for name, val in values.items():
        if name in SECTIONS:
            cls = _field_type(Config, name)
            known = {f.name for f in dataclasses.fields(cls)}
            if not isinstance(val, dict):
                raise ConfigError(f"[{name}] must be a table of keys, got {val!r}")
            for k in val:
                if k not in known:
                    raise ConfigError(f"unknown key {name}.{k}; known keys of [{name}]: {sorted(known)}")
            if name == "data" and isinstance(val.get("task"), str):
                val = {**task_defaults(val["task"]), **val}
            top[name] = cls(**{k: _coerce(f"{name}.{k}", v, _field_type(cls, k), source) for k, v in val.items()})
        elif name == "seed":
            top[name] = _coerce("seed", val, int, source)
        else:
            raise ConfigError(f"unknown config key {name!r}; known: seed and sections {list(SECTIONS)}")
    return Config(**top)


def load_file(path: str) -> dict[str, Any]:
    """Read a TOML or YAML config file into nested dicts."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config={path!r}: no such file")
    text = p.read_text()
    if p.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config={path}: invalid TOML: {e}") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"--config={path}: invalid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--config={path}: the top level must be a mapping")
        return data
    raise ConfigError(f"--config={path!r}: unknown suffix {p.suffix!r}; use .toml, .yaml or .yml")


def iter_fields() -> typing.Iterator[tuple[str, Any, Any, str]]:
    """Yield (dotted key, type, default, help) for every config field, in tree order."""
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            cls = _field_type(Config, f.name)
            inst = cls()
            for sf in dataclasses.fields(cls):
                yield f"{f.name}.{sf.name}", _field_type(cls, sf.name), getattr(inst, sf.name), sf.metadata["help"]
        else:
            yield f.name, _field_type(Config, f.name), f.default, f.metadata["help"]


def value_type(typ: Any) -> Any:
    """The type a value is given as: X for `X | None` (None = left out, resolved by the section, e.g. mezo.lr)."""
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        return next(t for t in typing.get_args(typ) if t is not type(None))
    return typ


def _type_name(typ: Any) -> str:
    typ = value_type(typ)
    if typing.get_origin(typ) is Literal:
        return "|".join(str(a) for a in typing.get_args(typ))
    return getattr(typ, "__name__", str(typ))


def help_text(prog: str) -> str:
    """The --help text: usage plus every key with its type, default and help."""
    lines = [
        f"usage: {prog} [--config FILE.toml|.yaml] [--section.key=value ...]",
        "",
        "Every key below can be set in the config file ([section] key = value) or as --section.key=value.",
        "",
    ]
    for key, typ, default, hlp in iter_fields():
        lines.append(f"  --{key}={default!r}  ({_type_name(typ)})")
        lines.append(f"      {hlp}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None, prog: str = "python -m mezo_elastic.train") -> Config:
    """Parse `[--config FILE] [--section.key=value ...]` into a validated Config.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, or a value outside what is allowed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(prog))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(prog=prog, add_help=False)
    parser.add_argument("--config", default="")
    known, rest = parser.parse_known_args(argv)
    values: dict[str, Any] = load_file(known.config) if known.config else {}
    i = 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --section.key=value (see --help)")
        key, sep, val = arg[2:].partition("=")
        if not sep:  # also accept `--key value`
            if i + 1 >= len(rest):
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
            i += 1
            val = rest[i]
        section, dot, name = key.partition(".")
        if dot:
            values.setdefault(section, {})
            if not isinstance(values[section], dict):
                raise ConfigError(f"--{key}: {section!r} is not a section")
            values[section][name] = _Flag(val)
        else:
            values[key] = _Flag(val)
        i += 1
    return _apply(values, known.config)


def from_dict(values: dict[str, Any]) -> Config:
    """Build a Config from nested dicts (e.g. a checkpoint's saved config)."""
    return _apply(values, "a saved config")
