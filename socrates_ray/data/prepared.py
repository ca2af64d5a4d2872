"""A prepared folder as the later stages read it: which splits hold rows, and their rows.

`socrates-ray prepare` writes <prepared>/<setting>/<train|val|eval>/*.parquet and, last of all,
summary.json (its completion marker). Every stage that reads a split asks `split_problem` first
and gets a message that says what to do; `load_split_rows` reads one split (optionally a seeded
subsample of each cell) with the columns simulation needs.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.errors import SocratesError

PREPARED_SUMMARY = "summary.json"  # written last by prepare: a folder without it is not complete
EMPTY_SPLIT = {
    "train": "nothing to train on under this setting",
    "val": "training's eval loss, keep_by and the fitted temperature would read the test split",
    "eval": "nothing to evaluate under this setting",
}
# What simulation reads of a prepared row (the rest, e.g. the training target text, stays on disk).
INPUT_COLUMNS = [
    "study_id", "sample_id", "participant", "condition_num", "task_num", "demographic",
    "stimuli", "prompt", "response", "scale_low", "scale_high",
]


class PreparedSplitError(SocratesError, ValueError):
    """A prepared split that is missing or empty where a stage needs its rows."""


def has_rows(prepared: str | Path, setting: str, split: str) -> bool:
    """Whether <prepared>/<setting>/<split> holds any Parquet file."""
    return bool(glob.glob(os.path.join(str(prepared), setting, split, "*.parquet")))


def training_eval_part(prepared: str | Path, setting: str) -> str:
    """The split training's eval loss (and keep_by) reads: "val" when prepare made one, else "eval"."""
    return "val" if has_rows(prepared, setting, "val") else "eval"


def split_problem(prepared: str | Path, setting: str, split: str) -> str | None:
    """Why <prepared>/<setting>/<split> cannot be read, as a message that says what to do; None when
    it holds rows of a complete prepared folder.

    summary.json is prepare's completion marker (written last, after every split): a folder without
    it (a copy cut short, or written by hand) is refused even where Parquet files are present."""
    summary = Path(prepared) / PREPARED_SUMMARY
    if not summary.is_file():
        return (f"data.prepared: {prepared} is not a complete prepared folder (no {PREPARED_SUMMARY}, which prepare "
                f"writes last); run `socrates-ray prepare --config ...` with '{setting}' in data.settings")
    if has_rows(prepared, setting, split):
        return None
    prepared_settings = json.loads(summary.read_text()).get("settings", {})
    if setting not in prepared_settings:
        return (f"data.prepared: {prepared} was prepared without {setting} (it has {sorted(prepared_settings)}); "
                f"add it to data.settings and re-run `socrates-ray prepare`")
    return (f"data.prepared: {setting}/{split} is empty: prepare placed none of the kept rows there ({EMPTY_SPLIT[split]}; "
            f"prepare's summary warned). Check the split files under data.raw's metadata/ or the data.*_fraction settings, "
            f"or use another setting")


def read_split(prepared: str, setting: str, split: str, columns: list[str]) -> pa.Table:
    """Some columns of one split (train / val / eval) of one setting, after split_problem's check."""
    if (problem := split_problem(prepared, setting, split)) is not None:
        raise PreparedSplitError(problem)
    return pq.read_table(sorted(glob.glob(os.path.join(prepared, setting, split, "*.parquet"))), columns=columns)


def subsample_cells(table: pa.Table, max_per_cell: int | None, seed: int) -> pa.Table:
    """At most max_per_cell rows of each (study, condition, task) cell, drawn by seed, in table order."""
    if max_per_cell is None:
        return table
    rng = np.random.default_rng(seed)
    keys = list(zip(table["study_id"].to_pylist(), table["condition_num"].to_pylist(), table["task_num"].to_pylist()))
    by_cell: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        by_cell.setdefault(k, []).append(i)
    keep = []
    for rows in by_cell.values():
        keep.extend(rows if len(rows) <= max_per_cell else sorted(rng.choice(rows, max_per_cell, replace=False).tolist()))
    return table.take(pa.array(sorted(keep)))


def load_split_rows(prepared: str, setting: str, split: str, max_per_cell: int | None = None, seed: int = 0) -> pa.Table:
    """One split (train / val / eval) of one setting; with max_per_cell, a seeded subsample of each cell."""
    return subsample_cells(read_split(prepared, setting, split, INPUT_COLUMNS), max_per_cell, seed)


def ranges_of(table: pa.Table) -> dict[tuple[str, int, int], tuple[float, float]]:
    """Each (study_id, condition_num, task_num) cell's lowest and highest `response` in `table`."""
    keys = ["study_id", "condition_num", "task_num"]
    t = table.select([*keys, "response"]).group_by(keys).aggregate([("response", "min"), ("response", "max")])
    return {(s, int(c), int(k)): (float(lo), float(hi)) for s, c, k, lo, hi in zip(
        *(t[k].to_pylist() for k in keys), t["response_min"].to_pylist(), t["response_max"].to_pylist())}


def cell_ranges(prepared: str, setting: str, split: str) -> dict[tuple[str, int, int], tuple[float, float]]:
    """Each cell's lowest and highest human answer over the whole split: the range the paper rescales
    a cell by, whatever subset of it is scored."""
    return ranges_of(read_split(prepared, setting, split, ["study_id", "condition_num", "task_num", "response"]))


def val_or_train(prepared: str, setting: str) -> pa.Table:
    """The validation split (held-out units of train) where prepare made one, else train itself."""
    return load_split_rows(prepared, setting, "val" if has_rows(prepared, setting, "val") else "train")
