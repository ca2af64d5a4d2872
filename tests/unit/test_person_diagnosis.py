"""bench/person_diagnosis.py refuses predictions of another world instead of diagnosing them against
the wrong truth (two synth worlds share study ids and sample ids)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def diagnosis(monkeypatch):
    spec = importlib.util.spec_from_file_location("person_diagnosis", ROOT / "bench" / "person_diagnosis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prepared = pa.table({"study_id": ["s1", "s1", "s2"], "sample_id": [0, 1, 0], "participant": [3, 4, 3],
                         "condition_num": [0, 1, 0], "task_num": [0, 0, 1], "response": [2, 5, 1]})
    monkeypatch.setattr(module, "read_split", lambda prepared_dir, setting, split, columns: prepared.select(columns))
    return module, prepared.to_pylist()


def test_rows_of_the_same_world_pass(diagnosis):
    module, rows = diagnosis
    module.check_world("runs/r/eval-all", "unseen_studies", [dict(r, probs=[0.5, 0.5]) for r in rows], "p", "unseen_studies", "eval")


def test_rows_of_another_world_are_refused_with_the_fix(diagnosis):
    module, rows = diagnosis
    other = [dict(rows[0]), dict(rows[1], response=1), dict(rows[2], participant=9)]
    with pytest.raises(SystemExit, match=r"2 of 3 rows of runs/r/eval-all/unseen_studies .* data\.raw=<its synth folder>"):
        module.check_world("runs/r/eval-all", "unseen_studies", other, "p", "unseen_studies", "eval")
    with pytest.raises(SystemExit, match="1 of 1 rows"):  # a row the prepared split does not hold at all
        module.check_world("runs/r/eval-all", "unseen_studies", [dict(rows[0], sample_id=7)], "p", "unseen_studies", "eval")
