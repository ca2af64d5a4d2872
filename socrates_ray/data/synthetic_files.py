"""A synthetic dataset on disk, in SocSci210's layout: data/train-*-of-*.parquet shards, metadata/*_mapping.json
split files, and the true distributions (ground_truth.parquet per cell, ground_truth_rows.parquet per
participant) that the evaluation compares models with. The world itself (studies, people, answers) is
data/synthetic.py's.

synth_summary.json marks a folder as synth's: written first ({"complete": false}) and last, so synth
never overwrites a dataset it did not write (foreign_parquet).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.data.progress import Progress
from socrates_ray.data.synthetic import Study, design_studies, generate_study, hash_id
from socrates_ray.errors import SocratesError

SYNTH_SUMMARY = "synth_summary.json"  # written first ({"complete": false}) and last: the folder is synth's
ROW_TRUTH_FILE = "ground_truth_rows.parquet"
ROW_TRUTH_SCHEMA = pa.schema([("study_id", pa.string()), ("sample_id", pa.int64()), ("probs", pa.list_(pa.float64()))])


class SynthError(SocratesError, ValueError):
    """synth was pointed at a folder that holds data it did not write."""


def split_metadata(studies: list[Study], rng: np.random.Generator, unseen_fraction: float = 0.19, eval_fraction: float = 0.25) -> dict[str, Any]:
    """The three split files in SocSci210's shapes (lists hold condition / task numbers)."""
    ids = [s.study_id for s in studies]
    order = rng.permutation(len(ids))
    n_unseen = max(1, int(round(unseen_fraction * len(ids))))
    unseen = sorted(ids[i] for i in order[:n_unseen])
    condition_mapping, task_mapping = {}, {}
    for s in studies:
        if len(s.frames) >= 2:
            conds = rng.permutation(len(s.frames)).tolist()
            k = max(1, int(round(eval_fraction * len(conds))))
            condition_mapping[s.study_id] = {"train": sorted(conds[k:]), "eval": sorted(conds[:k])}
        if len(s.tasks) >= 2:
            tasks = rng.permutation(len(s.tasks)).tolist()
            k = max(1, int(round(eval_fraction * len(tasks))))
            task_mapping[s.study_id] = {"train": sorted(tasks[k:]), "eval": sorted(tasks[:k])}
    return {
        "participant_mapping.json": {"seen": sorted(set(ids) - set(unseen)), "unseen": unseen},
        "condition_mapping.json": condition_mapping,
        "task_mapping.json": task_mapping,
    }


def iter_shards(tables: Iterator[pa.Table], rows_per_shard: int) -> Iterator[pa.Table]:
    """Regroup a stream of tables into shards of rows_per_shard rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= rows_per_shard:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, rows_per_shard)
            rest = merged.slice(rows_per_shard)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(pending)


def write_synthetic(
    out: str | Path,
    studies: int,
    rows: int,
    rows_per_shard: int,
    seed: int,
    refusal_rate: float,
    within_subject_share: float,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write a synthetic SocSci210 dataset to `out`; returns a summary (also written as JSON).

    A re-run replaces synth's own earlier output (stale shards included); a folder that holds Parquet
    files synth did not write (a user's dataset) is refused, never overwritten."""
    if "://" in str(out):
        raise SynthError(f"synth: writes to a local folder; got {out}. Use a local --out / data.raw for synthetic data")
    if found := foreign_parquet(out):
        raise SynthError(
            f"synth: {out} holds {len(found)} Parquet file(s) synth did not write (e.g. {found[0]}; no {SYNTH_SUMMARY}). "
            "Writing synthetic data there would delete them. Point --out / data.raw at a new folder for synthetic "
            "data; to run the demo on that dataset as it is, keep data.raw and run `socrates-ray demo` (it skips synth)"
        )
    root = Path(out)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / SYNTH_SUMMARY).write_text(json.dumps({"complete": False, "seed": seed}))
    (root / "metadata").mkdir(exist_ok=True)
    for old in (root / "data").glob("*.parquet"):
        old.unlink()  # a re-run with fewer shards must not leave stale ones behind
    rng = np.random.default_rng(seed)
    designs = design_studies(studies, rows, within_subject_share, rng)
    total = sum(s.rows for s in designs)
    n_shards = max(1, math.ceil(total / rows_per_shard))
    all_cells: list[dict[str, Any]] = []
    row_truth: dict[str, list[Any]] = {"study_id": [], "sample_id": [], "probs": []}

    def tables() -> Iterator[pa.Table]:
        for study in designs:
            table, cells, probs = generate_study(study, np.random.default_rng([seed, hash_id(study.study_id)]), refusal_rate)
            all_cells.extend(cells)
            row_truth["study_id"].extend(table["study_id"].to_pylist())
            row_truth["sample_id"].extend(table["sample_id"].to_pylist())
            row_truth["probs"].extend(probs)
            yield table

    written = 0
    progress = Progress(log, n_shards)
    for i, shard in enumerate(iter_shards(tables(), rows_per_shard)):
        pq.write_table(shard, root / "data" / f"train-{i:05d}-of-{n_shards:05d}.parquet")
        written += shard.num_rows
        progress.done(i + 1, f"synth: shard {i + 1}/{n_shards} written ({written:,}/{total:,} rows)")
    for name, content in split_metadata(designs, rng).items():
        (root / "metadata" / name).write_text(json.dumps(content, indent=1))
    pq.write_table(pa.Table.from_pylist(all_cells), root / "ground_truth.parquet")
    # Each participant's own true distribution: a cell's truth over exactly the participants a model
    # scored, so a distance to it has no persona-sampling term (evaluate's per-person truth figures).
    pq.write_table(pa.table(row_truth, schema=ROW_TRUTH_SCHEMA), root / ROW_TRUTH_FILE)
    design = [
        {
            "study_id": s.study_id,
            "topic": s.topic,
            "frames": [f[0] for f in s.frames],
            "tasks": [{"question": t.question, "scale": t.scale.name} for t in s.tasks],
            "within_subject": s.within_subject,
            "participants": s.participants,
            "rows": s.rows,
        }
        for s in designs
    ]
    (root / "studies.json").write_text(json.dumps(design, indent=1))
    summary = {"rows": written, "studies": len(designs), "shards": n_shards, "cells": len(all_cells), "seed": seed}
    (root / SYNTH_SUMMARY).write_text(json.dumps({**summary, "complete": True}, indent=1))
    return summary


def foreign_parquet(out: str | Path) -> list[str]:
    """Parquet files under the local folder `out` that synth did not write (none if it holds SYNTH_SUMMARY)."""
    root = Path(out)
    if not root.is_dir() or (root / SYNTH_SUMMARY).is_file():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))
