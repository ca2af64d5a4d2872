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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.config import CONFIG_FILE, Config, config_yaml
from socrates_ray.data.prepare_summary import FileStats, format_summary, merge_stats, summarize
from socrates_ray.data.prepared import PREPARED_SUMMARY
from socrates_ray.data.progress import Progress
from socrates_ray.data.prompts import build_prompt, parse_answer_scale
from socrates_ray.data.raw_source import PrepareError, open_parquet, open_source, read_metadata, scan_keys
from socrates_ray.data.schema import DEMOGRAPHIC_TYPE, check_demographic, validate_row
from socrates_ray.data.splits import SETTING_FILES, SPLITS, Splits, build_splits
from socrates_ray.locks import folder_lock
from socrates_ray.ray_window import in_window


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
                split = splits.split_of(setting, clean.study_id, clean.sample_id, clean.condition_num, clean.task_num,
                                        clean.participant)
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


@dataclass(frozen=True)
class PrepareOptions:
    """What prepare reads, as plain values (prepare_options builds them from the data section)."""

    raw: str
    prepared: str
    settings: tuple[str, ...]
    unseen_study_fraction: float
    eval_fraction: float
    split_seed: int
    validation_fraction: float
    participant_fraction: float
    rows_per_shard: int
    parallelism: int
    refusal_codes: frozenset[int]
    config_record: str = ""  # the resolved config as YAML, kept as config.yaml in the prepared folder


def prepare_options(cfg: Config) -> PrepareOptions:
    """The builder: cfg.data -> PrepareOptions (and the config record)."""
    d = cfg.data
    return PrepareOptions(
        raw=str(d.raw), prepared=str(d.prepared), settings=tuple(d.settings), unseen_study_fraction=d.unseen_study_fraction,
        eval_fraction=d.eval_fraction, split_seed=d.split_seed, validation_fraction=d.validation_fraction,
        participant_fraction=d.participant_fraction, rows_per_shard=d.rows_per_shard, parallelism=d.parallelism, refusal_codes=frozenset(d.refusal_codes),
        config_record=config_yaml(cfg),
    )


def run_prepare(o: PrepareOptions, log: Any = print) -> dict[str, Any]:
    """Prepare `o.raw` into `o.prepared`; returns the summary.

    All or nothing: everything is written into a hidden staging folder beside the target, which
    replaces the target only once complete (summary.json written last). A failed run leaves the
    previous prepared folder as it was and no partial splits a later stage could read."""
    start = time.perf_counter()
    fs, root, files = open_source(o.raw)
    target = Path(o.prepared)
    out = target.with_name(f".{target.name}.partial")
    with folder_lock(target, "prepare", log):  # one writer: a second prepare into this folder is refused
        _remove_tree(out)  # a crashed run's leftovers
        out.mkdir(parents=True)
        try:
            summary = _prepare_into(o, fs, root, files, out, start, log)
        except BaseException:
            _remove_tree(out)
            raise
        _replace_folder(out, target)
    log(format_summary(summary))
    return summary


def _prepare_into(o: PrepareOptions, fs: Any, root: str, files: list[str], out: Path, start: float, log: Any) -> dict[str, Any]:
    log(f"prepare: {len(files)} shard(s) under {o.raw} -> {o.prepared}")
    if "prompt" not in open_parquet(fs, files[0]).schema_arrow.names:
        log("prepare: no `prompt` column; building prompts from demographic + stimuli in SocSci210's format")
    studies, duplicates = scan_keys(fs, files)
    metadata = read_metadata(fs, root)
    splits = build_splits(metadata, studies, o.unseen_study_fraction, o.eval_fraction, o.split_seed, o.validation_fraction,
                          o.participant_fraction)
    check_studies = metadata[SETTING_FILES["unseen_studies"]] is not None
    args = (splits, list(o.settings), str(out), o.refusal_codes, o.rows_per_shard, check_studies)
    progress = Progress(log, len(files))
    if o.parallelism == 1 or len(files) == 1:
        all_stats = []
        for i, path in enumerate(files):
            all_stats.append(prepare_file(i, path, fs, duplicates.get(i, set()), *args))
            progress.done(i + 1, f"prepare: shard {i + 1}/{len(files)} done")
    else:
        all_stats = _prepare_with_ray(files, fs, duplicates, args, o.parallelism, progress)
    total = merge_stats(all_stats)
    quarantined = sum(total.reasons.values())
    if total.rows_in != total.rows_kept + quarantined:
        raise RuntimeError(f"prepare lost rows: in {total.rows_in} != kept {total.rows_kept} + quarantined {quarantined}")
    summary = summarize(total, splits, list(o.settings), len(files), time.perf_counter() - start)
    _check_on_disk(out, summary)
    (out / "splits").mkdir(exist_ok=True)
    for setting, content in splits.manifest().items():
        (out / "splits" / f"{setting}.json").write_text(json.dumps(content, indent=1))
    (out / CONFIG_FILE).write_text(o.config_record)
    (out / PREPARED_SUMMARY).write_text(json.dumps(summary, indent=1))
    return summary


def _check_on_disk(out: Path, summary: dict[str, Any]) -> None:
    """The summary's row counts against the Parquet files written (their footers, no data read):
    a summary never claims rows that are not on disk."""
    for setting, parts in summary["settings"].items():
        for split in SPLITS:
            files = sorted((out / setting / split).glob("*.parquet"))
            on_disk = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            if on_disk != parts[split]["rows"]:
                raise PrepareError(
                    f"prepare counted {parts[split]['rows']:,} rows for {setting}/{split} but {out / setting / split} holds "
                    f"{on_disk:,}: something else wrote or deleted files there while prepare ran; run prepare again"
                )


def _replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder `new` where `target` is: the old one (every setting of it) goes."""
    old = target.with_name(f".{target.name}.old")
    _remove_tree(old)
    if target.exists():
        target.rename(old)
    new.rename(target)
    _remove_tree(old)


def _prepare_with_ray(files: list[str], fs: fsspec.AbstractFileSystem, duplicates: dict[int, set[int]], args: tuple,
                      parallelism: int, progress: Progress) -> list[FileStats]:
    """One Ray task per shard, at most `parallelism` at a time (0 = as many as Ray can run)."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    task = ray.remote(num_cpus=1)(prepare_file)
    # The splits can be large (sample-id mappings): store them once; Ray resolves the ref per task.
    args = (ray.put(args[0]), *args[1:])
    results = {}
    window = in_window(range(len(files)), [None] * (parallelism or len(files)),
                       lambda i, _: task.remote(i, files[i], fs, duplicates.get(i, set()), *args))
    for index, stats in window:
        results[index] = stats
        progress.done(len(results), f"prepare: shard {len(results)}/{len(files)} done")
    return [results[i] for i in range(len(files))]


def _remove_tree(path: Path) -> None:
    if path.is_dir():
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        path.rmdir()
