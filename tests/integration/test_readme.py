"""README.md as a user follows it: its Python API example runs as written (the tiny model, offline),
its "your data" recipe turns a Stata file into rows that prepare keeps, and every `socrates-ray`
command it shows names a real command and real config keys."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from socrates_ray.cli import build_parser, main
from socrates_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.ray


def section(title: str) -> str:
    """The text of README's `## title` section."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def shell_commands(language: str = "bash") -> list[list[str]]:
    """Every `socrates-ray ...` / `python -m socrates_ray ...` command in README's shell blocks, as argv."""
    commands = []
    for block in code_blocks(README, language):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            for prefix in ("socrates-ray ", "python -m socrates_ray "):
                if prefix in line:
                    commands.append(shlex.split(line[line.index(prefix) + len(prefix):]))
    return commands


def test_every_readme_command_is_a_real_command_with_real_keys():
    commands = shell_commands()
    assert len(commands) >= 10
    parser = build_parser()
    for argv in commands:
        if "--help" in argv:
            with pytest.raises(SystemExit) as exit_:
                parser.parse_args(argv)
            assert exit_.value.code == 0
            continue
        args, extra = parser.parse_known_args(argv)
        overrides = [*args.overrides, *extra]
        if args.command == "config":
            overrides = overrides[1:]
        config = ROOT / args.config if args.config else None
        load_config(config, overrides)  # raises on an unknown key or a bad value


def test_readme_your_data_recipe_gives_rows_prepare_keeps(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    n = 120
    pd.DataFrame({"arm": rng.integers(1, 3, n), "age": rng.integers(18, 90, n),
                  "party_id": rng.choice(["Strong Democrat", "Strong Republican", "Independent"], n),
                  "support": rng.integers(1, 8, n)}).to_stata("study.dta", write_index=False)
    recipe = next(b for b in code_blocks(section("Your data"), "python") if "read_stata" in b)
    exec(compile(recipe, "README.md (your data)", "exec"), {})
    prepare = next(c for c in shell_commands() if c[0] == "prepare")
    argv = [a if a != "configs/demo.yaml" else str(ROOT / a) for a in prepare]
    assert main(argv) == 0
    summary = __import__("json").loads(Path("runs/mine/prepared/summary.json").read_text())
    assert summary["rows_in"] == n and summary["rows_kept"] == n
    kept = pq.read_table(next(Path("runs/mine/prepared/unseen_conditions").glob("*/*.parquet")))
    assert "- Party Id:" in kept["prompt"][0].as_py() and "- Age:" in kept["prompt"][0].as_py()


def test_readme_python_api_example_runs_as_written(tmp_path):
    """The README's notebook example, verbatim, in a fresh process: trains, evaluates, predicts, plots."""
    example = code_blocks(section("Python API"), "python")[0]
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    script = example + "\nprint('ROWS', len(table), 'MEANS', list(table['mean'].round(3)))\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert re.search(r"W finetuned 0\.\d+ uniform 0\.\d+", done.stdout), done.stdout[-2000:]
    assert "ROWS 2" in done.stdout
    assert (tmp_path / "runs/notebook/eval/metrics.json").is_file()
    assert (tmp_path / "runs/notebook/carbon_tax.png").stat().st_size > 10_000
