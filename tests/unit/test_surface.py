"""What a new user meets first: the entry points, the Python API, errors for wrong paths before
anything heavy starts, plots that leave a notebook's backend alone, and docs that every reference
in code, configs and printed output can reach."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import socrates_ray
from socrates_ray.config import ConfigError, load_config
from socrates_ray.infer import load_engine, EngineSpec
from socrates_ray.infer.engine import ScoreError
from socrates_ray.infer.table import persona_grid, predict_table
from socrates_ray.preflight import check_inputs, model_problem

ROOT = Path(__file__).resolve().parents[2]
STIMULUS = ("Lawmakers are debating a national carbon tax. How much do you support or oppose this proposal? "
            "Only return an integer from 1 to 5, where 1 means Strongly oppose and 5 means Strongly support, nothing else.")


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_python_m_socrates_ray_is_the_cli():
    done = subprocess.run([sys.executable, "-m", "socrates_ray", "train", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "usage: socrates-ray train" in done.stdout and "train.zero_stage" in done.stdout
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", socrates_ray.__version__)


def test_import_is_light_and_the_api_loads_on_first_use():
    done = run_python("import sys, socrates_ray as sr; heavy = [m for m in ('ray', 'torch', 'transformers') if m in sys.modules]; "
                      "print(heavy); print(sr.EvaluationResult.__name__); "
                      # after the stages' subpackages are imported, every public name is still the function
                      "print(all(callable(getattr(sr, n)) for n in sr.__all__ if n not in ('__version__',)))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "EvaluationResult", "True"]
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        socrates_ray.trian  # noqa: B018


@pytest.mark.parametrize("command, overrides, message", [
    ("prepare", ["data.raw=/nonexistent/raw"], r"data\.raw: /nonexistent/raw does not exist"),
    ("evaluate", ["data.prepared=/nonexistent/prepared"], r"data\.prepared: /nonexistent/prepared is not a complete prepared folder"),
    ("train", ["data.prepared=/nonexistent/prepared"], r"data\.prepared: .* is not a complete prepared folder"),
])
def test_wrong_paths_fail_before_ray_or_torch_load(command, overrides, message):
    """The error comes from the CLI's check, before the stages (Ray, torch) are even imported."""
    code = ("import sys; from socrates_ray.cli import main; rc = main(sys.argv[1:]); "
            "print('RC', rc, [m for m in ('ray', 'torch') if m in sys.modules])")
    done = run_python(code, command, "--config", "configs/demo.yaml", *overrides)
    assert "RC 2 []" in done.stdout, done.stdout + done.stderr
    assert re.search(message, done.stderr), done.stderr


def test_model_and_adapter_paths_are_checked_with_the_fix(train_prepared, tmp_path):
    assert model_problem("tiny", str(tmp_path / "to-build")) is None  # a tiny model is built there
    assert "does not exist" in model_problem("pretrained", "/nonexistent/model")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in model_problem("pretrained", str(tmp_path / "empty"))
    assert model_problem("pretrained", "Qwen/Qwen2.5-0.5B-Instruct") is None  # a hub id, where a network exists
    cfg = load_config("configs/demo.yaml", [f"data.prepared={train_prepared}", "train.setting=unseen_studies",
                                            "evaluate.settings=[unseen_studies]", "model.source=pretrained",
                                            "model.path=/nonexistent/model"])
    with pytest.raises(ConfigError, match=r"model\.path: /nonexistent/model does not exist"):
        check_inputs("evaluate", cfg)
    good_model = cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": "tiny", "path": str(tmp_path / "m")})})
    bad_adapter = good_model.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"adapter_path": str(tmp_path)})})
    with pytest.raises(ConfigError, match=r"evaluate\.adapter_path: .* has no adapter_config\.json"):
        check_inputs("evaluate", bad_adapter)
    check_inputs("evaluate", good_model)  # prepared splits, a buildable model: nothing to say


def test_plots_leave_the_process_backend_alone(tmp_path):
    code = ("import matplotlib; matplotlib.use('pdf'); import pandas as pd; import socrates_ray as sr; "
            "t = pd.DataFrame({'party_id': ['Strong Democrat', 'Strong Republican'], 'stimulus': ['q', 'q'], "
            "'options': [[1, 2, 3], [1, 2, 3]], 'probabilities': [[0.2, 0.3, 0.5], [0.5, 0.3, 0.2]], 'mean': [2.3, 1.7]}); "
            "fig = sr.plot_distributions(t, sys.argv[1]); print(type(fig).__name__, matplotlib.get_backend())")
    done = run_python("import sys; " + code, str(tmp_path / "d.png"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Figure", "pdf"]
    assert (tmp_path / "d.png").stat().st_size > 10_000


def test_persona_grid_crosses_and_refuses_misspelled_fields():
    personas = pd.DataFrame({"age": [30, 70], "party_id": ["Strong Democrat", "Strong Republican"]})
    grid = persona_grid(personas, {"support": STIMULUS, "again": STIMULUS})
    assert len(grid) == 4 and list(grid["stimulus_name"]) == ["support", "support", "again", "again"]
    with pytest.raises(ScoreError, match=r"'Party' \(did you mean 'party_id'\?\)"):
        persona_grid(pd.DataFrame({"Party": ["x"]}), [STIMULUS])


def test_predict_table_scores_every_option_and_moves_with_the_persona(tiny_model):
    engine = load_engine(EngineSpec(), str(tiny_model), "You answer surveys.", precision="fp32")
    personas = pd.DataFrame({"age": [25, 80], "party_id": ["Strong Democrat", None], "gender": ["Female", "Male"]})
    table = predict_table(engine, persona_grid(personas, [STIMULUS]))
    assert list(table["options"].iloc[0]) == [1, 2, 3, 4, 5]
    for probs, mean in zip(table["probabilities"], table["mean"]):
        assert abs(sum(probs) - 1) < 1e-6 and 1 <= mean <= 5
    # a random tiny model still reads its prompt: two personas give two distributions
    assert not np.allclose(table["probabilities"].iloc[0], table["probabilities"].iloc[1])
    with pytest.raises(ScoreError, match="no bounded answer scale"):
        predict_table(engine, persona_grid(personas, ["How many dollars would you give? Only return an integer representing dollars."]))


def _md_references(text: str) -> set[str]:
    """Markdown files a text names: FILE.md at the top, docs/page.md, and relative links ](x.md)."""
    refs = set(re.findall(r"\b[A-Z][A-Z_]+\.md\b", text))
    refs |= set(re.findall(r"\bdocs/[a-z0-9_-]+\.md\b", text))
    return refs


def test_every_markdown_reference_resolves():
    """Every *.md named in code, configs, scripts, tests' printed expectations, README and docs/ exists."""
    sources = [*ROOT.joinpath("socrates_ray").rglob("*.py"), *ROOT.joinpath("configs").rglob("*.yaml"),
               *ROOT.joinpath("scripts").glob("*"), *ROOT.joinpath("bench").glob("*.py"), *ROOT.glob("*.md"),
               *ROOT.joinpath("docs").glob("*.md"), ROOT / "Makefile", ROOT / "cluster.yaml", ROOT / "pyproject.toml"]
    missing = {}
    for path in sources:
        if not path.is_file():
            continue
        for ref in _md_references(path.read_text(errors="replace")):
            target = ROOT / ref if "/" in ref or (ROOT / ref).exists() else ROOT / "docs" / ref
            if not target.exists():
                missing.setdefault(ref, []).append(str(path.relative_to(ROOT)))
        if path.suffix == ".md":  # relative links inside the docs
            for link in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", path.read_text()):
                if not (path.parent / link).exists():
                    missing.setdefault(link, []).append(str(path.relative_to(ROOT)))
    assert not missing, missing
    assert {"README.md", "BENCHMARKS.md", "CHANGELOG.md"} <= {p.name for p in ROOT.glob("*.md")}
    assert len(list(ROOT.joinpath("docs").glob("*.md"))) >= 8


def test_metrics_json_keys_are_plain_names():
    from socrates_ray.eval import results

    names = json.dumps([f.name for cls in vars(results).values() if isinstance(cls, type) and hasattr(cls, "__dataclass_fields__")
                        for f in cls.__dataclass_fields__.values()])
    assert not re.search(r"[ ()/]", "".join(json.loads(names)))
