"""A pilot study's answers as a prepared folder that training reads: one study, every pilot
participant in the train split of `unseen_participants` (a pilot is that setting for a new study:
some of its people known, the rest to come).

Two ways in:
- `prepare_pilot_raw`: the researcher's Parquet (SocSci210's raw schema, a file or a folder of
  them), validated row by row as prepare validates (bad rows are quarantined and counted, never
  dropped silently); it must hold exactly one study;
- `write_pilot_rows`: rows already prepared (the replay of held-out studies as pilots).

A pilot is too small to hold people out for an eval loss, so its val split is its train split: the
eval loss the run logs measures fit to the pilot, not generalisation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.data.prepare import prepare_file
from socrates_ray.data.prepared import PREPARED_SUMMARY
from socrates_ray.data.raw_source import PrepareError, open_source, scan_keys
from socrates_ray.data.splits import PARTICIPANTS

PILOT_SETTING = PARTICIPANTS


class PilotError(PrepareError):
    """Pilot data that cannot make a pilot adapter: not one study, or no usable row."""


@dataclass(frozen=True)
class PilotData:
    """A pilot as prepared: where its folder is and what it holds."""

    prepared: str
    study_id: str
    participants: int
    rows: int
    cells: int
    quarantined: int = 0
    reasons: dict[str, int] | None = None


class _AllTrain:
    """prepare_file's split assignment for a pilot: every row trains."""

    def known_study(self, study_id: str) -> bool:
        return True

    def split_of(self, setting: str, *key: Any) -> str:
        return "train"


def _finish(out: Path, study_id: str, table: pa.Table, extra: dict[str, Any]) -> PilotData:
    """Copy train to val (the eval loss split), write summary.json last; the folder's PilotData."""
    train = out / PILOT_SETTING / "train"
    val = out / PILOT_SETTING / "val"
    shutil.rmtree(val, ignore_errors=True)
    shutil.copytree(train, val)
    people = len(set(table["participant"].to_pylist()))
    cells = len(set(zip(table["condition_num"].to_pylist(), table["task_num"].to_pylist())))
    summary = {"settings": {PILOT_SETTING: {"train": table.num_rows, "val": table.num_rows, "eval": 0}},
               "pilot": {"study_id": study_id, "participants": people, "rows": table.num_rows, "cells": cells, **extra}}
    (out / PREPARED_SUMMARY).write_text(json.dumps(summary, indent=1))
    return PilotData(str(out), study_id, people, table.num_rows, cells, extra.get("quarantined", 0), extra.get("reasons"))


def write_pilot_rows(rows: pa.Table, out: str | Path) -> PilotData:
    """A pilot folder from prepared rows of one study (replacing what `out` held)."""
    out = Path(out)
    studies = set(rows["study_id"].to_pylist())
    if len(studies) != 1:
        raise PilotError(f"a pilot is one study's answers; these rows hold {len(studies)} studies ({', '.join(sorted(studies)[:5])})")
    shutil.rmtree(out, ignore_errors=True)
    (out / PILOT_SETTING / "train").mkdir(parents=True)
    pq.write_table(rows, out / PILOT_SETTING / "train" / "part-00000.parquet")
    return _finish(out, studies.pop(), rows, {})


def prepare_pilot_raw(raw: str, out: str | Path, refusal_codes: frozenset[int], rows_per_shard: int = 200_000) -> PilotData:
    """Validate a researcher's pilot Parquet (raw schema) into a pilot folder at `out`."""
    out = Path(out)
    try:
        fs, _, files = open_source(raw)
    except PrepareError as exc:
        raise PilotError(str(exc).replace("data.raw: ", "--data: ", 1)) from None
    studies, duplicates = scan_keys(fs, files)
    if len(studies) != 1:
        found = ", ".join(sorted(studies)[:5]) + (" ..." if len(studies) > 5 else "")
        raise PilotError(f"--data {raw}: expected the answers of one study (one study_id); received "
                         f"{len(studies)} ({found or 'no row with a study_id, participant, condition and task'}). "
                         "Give one study's pilot per call; a folder of several studies' answers is what prepare takes")
    study_id = next(iter(studies))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    reasons: dict[str, int] = {}
    kept = 0
    for i, path in enumerate(files):
        stats = prepare_file(i, path, fs, duplicates.get(i, set()), _AllTrain(), [PILOT_SETTING], str(out), refusal_codes,  # type: ignore[arg-type]
                             rows_per_shard, False)
        kept += stats.rows_kept
        for reason, n in stats.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + n
    quarantined = sum(reasons.values())
    if kept == 0:
        raise PilotError(f"--data {raw}: none of its {quarantined} rows is usable ({_reasons(reasons)}); the rows are in "
                         f"{out / 'quarantine'} with the reason for each")
    for split in ("val", "eval"):
        shutil.rmtree(out / PILOT_SETTING / split, ignore_errors=True)
    table = pq.read_table(out / PILOT_SETTING / "train")
    return _finish(out, study_id, table, {"quarantined": quarantined, "reasons": reasons})


def _reasons(reasons: dict[str, int]) -> str:
    return ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1])) or "none"


def pilot_rows(prepared: str) -> pa.Table:
    """Every row of a pilot folder."""
    return pq.read_table(Path(prepared) / PILOT_SETTING / "train")
