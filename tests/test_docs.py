"""docs/configuration.md is generated from config.py; this fails (with the command to run) when it is stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import REPO, env


def docs_gen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mezo_elastic.config.docs", *args], env=env(), cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_configuration_md_is_current():
    r = docs_gen("--check")
    assert r.returncode == 0, f"\n{r.stderr}\nRun `python -m mezo_elastic.config.docs` and commit docs/configuration.md."


def test_configuration_md_lists_every_field_with_its_default():
    from mezo_elastic.config import iter_fields
    from mezo_elastic.config.docs import toml_value

    text = (REPO / "docs" / "configuration.md").read_text()
    for key, _typ, default, hlp in iter_fields():
        assert f"| `--{key}` |" in text and f"`{toml_value(default)}`" in text and hlp.split("|")[0] in text


def test_check_reports_stale_file_and_regenerate_command(tmp_path: Path):
    out = tmp_path / "configuration.md"
    assert docs_gen("--out", str(out)).returncode == 0
    assert docs_gen("--check", "--out", str(out)).returncode == 0
    out.write_text(out.read_text().replace("`--mezo.lr`", "`--mezo.learning_rate`"))
    r = docs_gen("--check", "--out", str(out))
    assert r.returncode == 1
    assert "is stale" in r.stderr and f"python -m mezo_elastic.config.docs --out {out}" in r.stderr
    out.unlink()
    r = docs_gen("--check", "--out", str(out))
    assert r.returncode == 1 and "is missing" in r.stderr


def test_generated_toml_block_loads_back_as_the_defaults(tmp_path: Path):
    # The "every default as a config file" block must be a valid config file, equal to the defaults.
    from mezo_elastic.config import Config, parse_args

    text = (REPO / "docs" / "configuration.md").read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg_file = tmp_path / "defaults.toml"
    cfg_file.write_text(block)
    assert parse_args(["--config", str(cfg_file)]) == Config()
