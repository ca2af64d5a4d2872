"""`socrates-ray prepare`: raw SocSci210 shards -> validated, split, prompt-ready Parquet.

Two passes, so memory stays bounded at SocSci210 scale:
1. keys (data.raw_source.scan_keys): read only the id columns of every shard to find duplicate
   (study_id, sample_id) keys and each study's conditions/tasks, which the splits need;
2. rows: one Ray task per input shard validates each row, parses its answer scale, and streams
   kept rows into <prepared>/<setting>/<train|eval>/ and bad rows, with their reason and the raw
   row as JSON, into <prepared>/quarantine/.
The driver merges per-shard counts, checks rows_in == rows_kept + rows_quarantined, writes the
split manifests and summary.json, and prints the summary.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.config import Config, dump_config
from socrates_ray.data.progress import Progress
from socrates_ray.data.prompts import build_prompt, parse_answer_scale
from socrates_ray.data.raw_source import PrepareError, open_parquet, open_source, read_metadata, scan_keys  # noqa: F401 (PrepareError: prepare's error)
from socrates_ray.data.schema import DEMOGRAPHIC_TYPE, REASONS, check_demographic, validate_row
from socrates_ray.data.splits import SETTING_FILES, SPLITS, Splits, build_splits

SUMMARY_FILE = "summary.json"
EMPTY_SPLIT = {
    "train": "nothing to train on under this setting",
    "val": "training's eval loss, keep_by and the fitted temperature would read the test split",
    "eval": "nothing to evaluate under this setting",
}

PREPARED_SCHEMA = pa.schema(
    [
        pa.field("study_id", pa.string()),
        pa.field("sample_id", pa.int64()),
        pa.field("participant", pa.int64()),
        pa.field("condition_num", pa.int64()),
        pa.field("task_num", pa.int64()),
        pa.field("demographic", DEMOGRAPHIC_TYPE),
        pa.field("stimuli", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("response", pa.int64()),
        pa.field("answer", pa.string()),  # the training target text
        pa.field("scale_kind", pa.string()),  # bounded | open | unknown
        pa.field("scale_low", pa.int64()),
        pa.field("scale_high", pa.int64()),
        pa.field("prompt_matches_builder", pa.bool_()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string()),
        pa.field("row_index", pa.int64()),
        pa.field("study_id", pa.string()),
        pa.field("sample_id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("row_json", pa.string()),
    ]
)


@dataclass
class FileStats:
    """What one shard's task reports back to the driver."""

    rows_in: int = 0
    rows_kept: int = 0
    reasons: Counter = field(default_factory=Counter)
    split_rows: Counter = field(default_factory=Counter)  # "setting/split" -> rows
    # (study, condition, task) -> Counter of (kind, low, high) over its kept rows
    cells: dict[tuple[str, int, int], Counter] = field(default_factory=dict)
    split_cells: dict[str, set] = field(default_factory=dict)  # "setting/split" -> cells
    prompt_matches: int = 0


# ---------------------------------------------------------------------------------------------
# Pass 2: rows (one call per input shard; runs as a Ray task)
# ---------------------------------------------------------------------------------------------


class _Sink:
    """Streams tables into numbered Parquet parts of at most rows_per_shard rows."""

    def __init__(self, folder: Path, stem: str, schema: pa.Schema, rows_per_shard: int) -> None:
        self.folder, self.stem, self.schema, self.limit = folder, stem, schema, rows_per_shard
        self.writer: pq.ParquetWriter | None = None
        self.part, self.rows_in_part = 0, 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        while rows:
            if self.writer is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                path = self.folder / f"{self.stem}-{self.part:03d}.parquet"
                self.writer = pq.ParquetWriter(path, self.schema)
            room = self.limit - self.rows_in_part
            chunk, rows = rows[:room], rows[room:]
            self.writer.write_table(pa.Table.from_pylist(chunk, schema=self.schema))
            self.rows_in_part += len(chunk)
            if self.rows_in_part >= self.limit:
                self.close()
                self.part += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.rows_in_part = None, 0


def prepare_file(
    file_index: int,
    path: str,
    fs: fsspec.AbstractFileSystem,
    duplicate_rows: set[int],
    splits: Splits,
    settings: list[str],
    out_root: str,
    refusal_codes: frozenset[int],
    rows_per_shard: int,
    check_studies: bool,
) -> FileStats:
    """Validate one shard and write its kept rows per setting/split and its quarantined rows."""
    stats = FileStats()
    out = Path(out_root)
    stem = f"part-{file_index:05d}"
    sinks = {
        f"{s}/{split}": _Sink(out / s / split, stem, PREPARED_SCHEMA, rows_per_shard)
        for s in settings
        for split in SPLITS
    }
    quarantine = _Sink(out / "quarantine", stem, QUARANTINE_SCHEMA, rows_per_shard)
    pf = open_parquet(fs, path)
    has_prompt = "prompt" in pf.schema_arrow.names
    row_index = 0
    for batch in pf.iter_batches(batch_size=8192):
        kept: dict[str, list[dict[str, Any]]] = {k: [] for k in sinks}
        bad: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            stats.rows_in += 1
            stimuli = row.get("stimuli")
            if not has_prompt and isinstance(stimuli, str):
                # Build the prompt the dataset lacks; with an unusable demographic, leave the bare
                # stimulus so validation names the demographic, not the prompt, as the reason.
                _, demo = check_demographic(row.get("demographic"))
                row["prompt"] = build_prompt(demo, stimuli) if demo is not None else stimuli
            scale = parse_answer_scale(stimuli) if isinstance(stimuli, str) and stimuli.strip() else None
            reason, clean = validate_row(row, scale, refusal_codes)
            if reason is None and row_index in duplicate_rows:
                reason = "duplicate_key"
            if reason is None and check_studies and not splits.known_study(clean.study_id):  # type: ignore[union-attr]
                reason = "unknown_study"
            if reason is not None:
                stats.reasons[reason] += 1
                bad.append(
                    {
                        "source_file": path,
                        "row_index": row_index,
                        "study_id": None if row.get("study_id") is None else str(row["study_id"]),
                        "sample_id": None if row.get("sample_id") is None else str(row["sample_id"]),
                        "reason": reason,
                        "row_json": json.dumps(row, default=str),
                    }
                )
                row_index += 1
                continue
            assert clean is not None and scale is not None
            stats.rows_kept += 1
            matches = build_prompt(clean.demographic, clean.stimuli) == clean.prompt
            stats.prompt_matches += matches
            cell = (clean.study_id, clean.condition_num, clean.task_num)
            stats.cells.setdefault(cell, Counter())[(scale.kind, scale.low, scale.high)] += 1
            record = {
                "study_id": clean.study_id,
                "sample_id": clean.sample_id,
                "participant": clean.participant,
                "condition_num": clean.condition_num,
                "task_num": clean.task_num,
                "demographic": clean.demographic,
                "stimuli": clean.stimuli,
                "prompt": clean.prompt,
                "response": clean.response,
                "answer": str(clean.response),
                "scale_kind": scale.kind,
                "scale_low": scale.low,
                "scale_high": scale.high,
                "prompt_matches_builder": matches,
            }
            for setting in settings:
                split = splits.split_of(setting, clean.study_id, clean.sample_id, clean.condition_num, clean.task_num)
                key = f"{setting}/{split}"
                kept[key].append(record)
                stats.split_rows[key] += 1
                stats.split_cells.setdefault(key, set()).add(cell)
            row_index += 1
        for key, rows in kept.items():
            sinks[key].write(rows)
        quarantine.write(bad)
    for sink in [*sinks.values(), quarantine]:
        sink.close()
    return stats


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _merge(all_stats: list[FileStats]) -> FileStats:
    total = FileStats()
    for s in all_stats:
        total.rows_in += s.rows_in
        total.rows_kept += s.rows_kept
        total.reasons.update(s.reasons)
        total.split_rows.update(s.split_rows)
        total.prompt_matches += s.prompt_matches
        for cell, kinds in s.cells.items():
            total.cells.setdefault(cell, Counter()).update(kinds)
        for key, cells in s.split_cells.items():
            total.split_cells.setdefault(key, set()).update(cells)
    return total


def summarize(total: FileStats, splits: Splits, settings: list[str], files: int, seconds: float) -> dict[str, Any]:
    """The prepare summary: counts, reasons, scale-parse coverage, per-setting split sizes."""
    n_cells = len(total.cells)
    consistent = {c: k for c, k in total.cells.items() if len(k) == 1}
    kinds = Counter(next(iter(k))[0] for k in consistent.values())
    bounded_rows = sum(n for k in total.cells.values() for (kind, _, _), n in k.items() if kind == "bounded")
    open_rows = sum(n for k in total.cells.values() for (kind, _, _), n in k.items() if kind == "open")
    return {
        "rows_in": total.rows_in,
        "rows_kept": total.rows_kept,
        "rows_quarantined": sum(total.reasons.values()),
        "quarantine_reasons": dict(sorted(total.reasons.items(), key=lambda kv: -kv[1])),
        "studies": len({c[0] for c in total.cells}),
        "cells": n_cells,
        "scale_coverage": {
            "cells_bounded": kinds["bounded"],
            "cells_open": kinds["open"],
            "cells_unknown": kinds["unknown"],
            "cells_mixed_scales": n_cells - len(consistent),
            "share_cells_parsed": round((kinds["bounded"] + kinds["open"]) / n_cells, 4) if n_cells else 0.0,
            "share_rows_bounded": round(bounded_rows / total.rows_kept, 4) if total.rows_kept else 0.0,
            "share_rows_open": round(open_rows / total.rows_kept, 4) if total.rows_kept else 0.0,
        },
        "prompt_builder_match": round(total.prompt_matches / total.rows_kept, 4) if total.rows_kept else 0.0,
        "settings": {
            s: {
                split: {
                    "rows": total.split_rows.get(f"{s}/{split}", 0),
                    "cells": len(total.split_cells.get(f"{s}/{split}", ())),
                    "studies": len({c[0] for c in total.split_cells.get(f"{s}/{split}", ())}),
                }
                for split in SPLITS
            }
            | {"source": splits.sources.get(s, "rows every other setting trains on (train) / holds out (eval)")}
            for s in settings
        },
        "split_files_name_absent_studies": splits.missing_studies,
        "warnings": [
            f"{s}/{split} has no rows: {EMPTY_SPLIT[split]}"
            for s in settings for split in SPLITS
            if not total.split_rows.get(f"{s}/{split}", 0) and (split != "val" or splits.validation_fraction > 0)
        ],
        "input_files": files,
        "seconds": round(seconds, 2),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the lines prepare prints."""
    cov = summary["scale_coverage"]
    lines = [
        f"rows in {summary['rows_in']:,} = kept {summary['rows_kept']:,} + quarantined {summary['rows_quarantined']:,}"
        f"   ({summary['studies']} studies, {summary['cells']} cells, {summary['seconds']}s)",
        f"answer scales: {cov['share_cells_parsed']:.1%} of cells parsed "
        f"({cov['cells_bounded']} bounded, {cov['cells_open']} open-ended, {cov['cells_unknown']} unknown, "
        f"{cov['cells_mixed_scales']} mixed)",
        f"prompts the persona builder reproduces byte for byte: {summary['prompt_builder_match']:.1%}",
    ]
    for reason, n in summary["quarantine_reasons"].items():
        lines.append(f"  quarantined {n:>8,}  {reason}: {REASONS[reason]}")
    for setting, parts in summary["settings"].items():
        lines.append(
            f"{setting:<18} train {parts['train']['rows']:>9,} rows / {parts['train']['studies']:>3} studies   "
            f"val {parts['val']['rows']:>7,} rows / {parts['val']['cells']:>4} cells   "
            f"eval {parts['eval']['rows']:>9,} rows / {parts['eval']['studies']:>3} studies / {parts['eval']['cells']:>5} cells"
            f"   [{parts['source']}]"
        )
    for setting, absent in summary["split_files_name_absent_studies"].items():
        if absent:
            lines.append(f"warning: {SETTING_FILES[setting]} names {len(absent)} studies not in the data, e.g. {absent[:3]}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def split_problem(prepared: str | Path, setting: str, split: str) -> str | None:
    """Why <prepared>/<setting>/<split> cannot be read, as a message that says what to do; None when
    it holds rows of a complete prepared folder. Every stage that reads a split asks this first.

    summary.json is prepare's completion marker (written last, after every split): a folder without
    it (a copy cut short, or written by hand) is refused even where Parquet files are present."""
    summary = Path(prepared) / SUMMARY_FILE
    if not summary.is_file():
        return (f"data.prepared: {prepared} is not a complete prepared folder (no {SUMMARY_FILE}, which prepare "
                f"writes last); run `socrates-ray prepare --config ...` with '{setting}' in data.settings")
    if any((Path(prepared) / setting / split).glob("*.parquet")):
        return None
    prepared_settings = json.loads(summary.read_text()).get("settings", {})
    if setting not in prepared_settings:
        return (f"data.prepared: {prepared} was prepared without {setting} (it has {sorted(prepared_settings)}); "
                f"add it to data.settings and re-run `socrates-ray prepare`")
    return (f"data.prepared: {setting}/{split} is empty: prepare placed none of the kept rows there ({EMPTY_SPLIT[split]}; "
            f"prepare's summary warned). Check the split files under data.raw's metadata/ or the data.*_fraction settings, "
            f"or use another setting")


def run_prepare(cfg: Config, log: Any = print) -> dict[str, Any]:
    """Prepare `cfg.data.raw` into `cfg.data.prepared`; returns the summary.

    All or nothing: everything is written into a hidden staging folder beside the target, which
    replaces the target only once complete (summary.json written last). A failed run leaves the
    previous prepared folder as it was and no partial splits a later stage could read."""
    start = time.perf_counter()
    fs, root, files = open_source(cfg.data.raw)
    target = Path(cfg.data.prepared)
    out = target.with_name(f".{target.name}.partial")
    _remove_tree(out)  # a crashed run's leftovers
    out.mkdir(parents=True)
    try:
        summary = _prepare_into(cfg, fs, root, files, out, start, log)
    except BaseException:
        _remove_tree(out)
        raise
    _replace_folder(out, target)
    log(format_summary(summary))
    return summary


def _prepare_into(cfg: Config, fs: Any, root: str, files: list[str], out: Path, start: float, log: Any) -> dict[str, Any]:
    log(f"prepare: {len(files)} shard(s) under {cfg.data.raw} -> {cfg.data.prepared}")
    if "prompt" not in open_parquet(fs, files[0]).schema_arrow.names:
        log("prepare: no `prompt` column; building prompts from demographic + stimuli in SocSci210's format")
    studies, duplicates = scan_keys(fs, files)
    metadata = read_metadata(fs, root)
    splits = build_splits(metadata, studies, cfg.data.unseen_study_fraction, cfg.data.eval_fraction, cfg.data.split_seed,
                          cfg.data.validation_fraction)
    check_studies = metadata[SETTING_FILES["unseen_studies"]] is not None
    args = (splits, list(cfg.data.settings), str(out), frozenset(cfg.data.refusal_codes), cfg.data.rows_per_shard, check_studies)
    if cfg.data.parallelism == 1 or len(files) == 1:
        all_stats = []
        progress = Progress(log, len(files))
        for i, path in enumerate(files):
            all_stats.append(prepare_file(i, path, fs, duplicates.get(i, set()), *args))
            progress.done(i + 1, f"prepare: shard {i + 1}/{len(files)} done")
    else:
        all_stats = _prepare_with_ray(files, fs, duplicates, args, cfg.data.parallelism, log)
    total = _merge(all_stats)
    quarantined = sum(total.reasons.values())
    if total.rows_in != total.rows_kept + quarantined:
        raise RuntimeError(f"prepare lost rows: in {total.rows_in} != kept {total.rows_kept} + quarantined {quarantined}")
    summary = summarize(total, splits, list(cfg.data.settings), len(files), time.perf_counter() - start)
    (out / "splits").mkdir(exist_ok=True)
    for setting, content in splits.manifest().items():
        (out / "splits" / f"{setting}.json").write_text(json.dumps(content, indent=1))
    dump_config(cfg, out)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    return summary


def _replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder `new` where `target` is: the old one (every setting of it) goes."""
    old = target.with_name(f".{target.name}.old")
    _remove_tree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    _remove_tree(old)


def _prepare_with_ray(files: list[str], fs: fsspec.AbstractFileSystem, duplicates: dict[int, set[int]], args: tuple, parallelism: int, log: Any) -> list[FileStats]:
    """One Ray task per shard, at most `parallelism` at a time (0 = as many as Ray can run)."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    task = ray.remote(num_cpus=1)(prepare_file)
    # The splits can be large (sample-id mappings): store them once; Ray resolves the ref per task.
    args = (ray.put(args[0]), *args[1:])
    pending, results = [], {}
    progress = Progress(log, len(files))
    limit = parallelism or len(files)
    next_file = 0
    while next_file < len(files) or pending:
        while next_file < len(files) and len(pending) < limit:
            pending.append((next_file, task.remote(next_file, files[next_file], fs, duplicates.get(next_file, set()), *args)))
            next_file += 1
        ready, _ = ray.wait([ref for _, ref in pending], num_returns=1)
        for index, ref in list(pending):
            if ref in ready:
                results[index] = ray.get(ref)
                pending.remove((index, ref))
                progress.done(len(results), f"prepare: shard {len(results)}/{len(files)} done")
    return [results[i] for i in range(len(files))]


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        path.rmdir()
