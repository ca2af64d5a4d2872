"""Batch simulation: rows (study, condition, task, persona, stimulus) -> predictions Parquet.

One driver per backend, over one resumable part folder (PartFolder):

- simulate_with_pool: the rows in batches through a ReplicaPool the caller keeps across passes
  (an evaluation or a screening: one pool of model replicas for every pass);
- simulate_with_processor: one pass through Ray Data's map_batches into an actor pool of model
  replicas started for it (processor.py; `socrates-ray simulate`);
- simulate_over_http: one pass through Ray Data into HTTP clients of the running Serve app.

`run_simulation` picks the driver a pass asks for. The driver writes each finished batch as its own
Parquet part (atomically, by rename), so a killed job loses at most the batches in flight:
re-running the same command skips every row whose (study_id, sample_id) is already in a part, and
refuses a folder whose parts were made with other settings (SimulationPass.resume_record).
Progress (rows, rate, ETA) is printed as parts land.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from socrates_ray.errors import SocratesError, innermost_cause, unwrap
from socrates_ray.eval.passes import SimulateError, SimulationPass
from socrates_ray.eval.processor import build_simulate_processor
from socrates_ray.eval.replica import HttpReplica, ReplicaPool

PART_GLOB = "part-*.parquet"
PARAMS_FILE = "simulate_params.json"
SKIPPED_FILE = "skipped.parquet"


def check_params(out: Path, p: SimulationPass) -> None:
    """Refuse to resume a folder whose finished rows were made with other settings (they would mix
    silently into one predictions file); record the settings on the first run."""
    params = p.resume_record()
    record = out / PARAMS_FILE
    if record.exists() and any(out.glob(PART_GLOB)):
        before = json.loads(record.read_text())
        changed = {k: (before.get(k), v) for k, v in params.items() if before.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise SimulateError(
                f"{out} holds predictions made with other settings ({what}); resuming would mix them. "
                "Delete the folder (or choose another output folder) to start over, or run with the old settings."
            )
    record.write_text(json.dumps(params, indent=1))


def done_keys(out_dir: Path) -> set[tuple[str, int]]:
    """(study_id, sample_id) of every row already in a finished part."""
    keys: set[tuple[str, int]] = set()
    for part in sorted(out_dir.glob(PART_GLOB)):
        t = pq.read_table(part, columns=["study_id", "sample_id"])
        keys.update(zip(t["study_id"].to_pylist(), t["sample_id"].to_pylist()))
    return keys


def write_part(out: Path, batch: pa.Table) -> None:
    """One finished batch as its own part, atomically (a killed job never leaves half a part)."""
    name = f"part-{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:6]}.parquet"
    pq.write_table(batch, out / (name + ".tmp"))
    os.replace(out / (name + ".tmp"), out / name)


class PartFolder:
    """The folder one pass writes: the rows still to do, each finished batch as a part, and at the
    end the merged predictions.parquet of exactly the pass's rows."""

    def __init__(self, rows: pa.Table, out_dir: str | Path, p: SimulationPass, how: str, log: Callable[[str], None]) -> None:
        self.out, self.log = Path(out_dir), log
        self.out.mkdir(parents=True, exist_ok=True)
        check_params(self.out, p)
        done = done_keys(self.out)
        self.keys = list(zip(rows["study_id"].to_pylist(), rows["sample_id"].to_pylist()))
        self.todo = rows.filter(pa.array([k not in done for k in self.keys])) if done else rows
        self.total = rows.num_rows
        log(f"simulate: {self.total:,} rows, {self.total - self.todo.num_rows:,} already done in {self.out}, "
            f"{self.todo.num_rows:,} to go ({p.decoding.mode} mode, {how})")

    def batches(self, size: int) -> list[pa.Table]:
        return [self.todo.slice(i, size) for i in range(0, self.todo.num_rows, size)]

    def write(self, results: Iterable[pa.Table]) -> None:
        """Write each batch as it finishes, with a progress line every tenth."""
        started, written, parts = time.time(), 0, 0
        stream = _unwrapped(results)
        try:
            for batch in stream:
                write_part(self.out, batch)
                written += batch.num_rows
                parts += 1
                rate = written / max(time.time() - started, 1e-9)
                if parts % 10 == 0 or written == self.todo.num_rows:
                    self.log(f"simulate: {self.total - self.todo.num_rows + written:,}/{self.total:,} rows, {rate:,.1f} rows/s, "
                             f"ETA {(self.todo.num_rows - written) / max(rate, 1e-9):,.0f}s")
        except Exception as exc:  # the project's own error: what failed, what is kept, how to go on
            wanted = set(self.keys)
            done = sum(key in wanted for key in done_keys(self.out))  # what is on disk, a part written as it failed included
            said = str(exc) if isinstance(exc, SocratesError) else innermost_cause(exc)
            raise SimulateError(f"simulation stopped at {done:,} of {self.total:,} rows: {said}. The {done:,} finished rows "
                                f"are kept in {self.out}; run the same command again to go on from them") from exc
        finally:
            stream.close()  # a stopped pass releases its actors now (Ray Data's executor, or the pool's queue)

    def merge(self) -> Path:
        """predictions.parquet: the parts' rows of this pass, sorted by (study_id, sample_id)."""
        merged = pa.concat_tables([pq.read_table(p) for p in sorted(self.out.glob(PART_GLOB))], promote_options="permissive")
        wanted = set(self.keys)
        merged = merged.filter(pa.array([k in wanted for k in zip(merged["study_id"].to_pylist(), merged["sample_id"].to_pylist())]))
        target = self.out / "predictions.parquet"
        merged = merged.sort_by([("study_id", "ascending"), ("sample_id", "ascending")])
        if "skipped" in merged.column_names:
            skipped = pc.is_valid(merged["skipped"])
            left_out = merged.filter(skipped)
            merged = merged.filter(pc.invert(skipped)).drop_columns(["skipped"])
            if left_out.num_rows:  # rows no model can read (over its context): listed, never scored as wrong
                pq.write_table(left_out.select(["study_id", "sample_id", "condition_num", "task_num", "skipped"]), self.out / SKIPPED_FILE)
                self.log(f"simulate: skipped {left_out.num_rows:,} row(s) longer than the model's context (listed with the reason in "
                         f"{self.out / SKIPPED_FILE}); the metrics leave them out")
        pq.write_table(merged, target)
        unparsable = merged.num_rows - pc.count(merged["prediction"]).as_py()
        self.log(f"simulate: wrote {target} ({merged.num_rows:,} rows, {unparsable:,} unparsable answers)")
        return target


def _unwrapped(batches: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Iterate, re-raising a replica's typed error (SimulateError, ScoreError) as itself: Ray wraps
    it in a task error whose traceback buries the one line that says what to fix."""
    try:
        yield from batches
    except Exception as exc:
        found = unwrap(exc)
        if found is exc:
            raise
        raise found from None


def _through_ray_data(todo: pa.Table, batch_size: int) -> Any:
    import ray

    return ray.data.from_arrow(todo).repartition(max(1, -(-todo.num_rows // batch_size)))


def simulate_with_pool(rows: pa.Table, out_dir: str | Path, p: SimulationPass, pool: ReplicaPool,
                       log: Callable[[str], None] = print) -> Path:
    """Predict the rows not yet done through `pool`'s replicas; returns the merged predictions.parquet."""
    if (pool.model_path, pool.system_prompt, pool.replicas.precision) != (p.model_path, p.system_prompt, p.replicas.precision):
        raise SimulateError(f"the replica pool holds {pool.model_path} ({pool.replicas.precision}); this pass asks for "
                            f"{p.model_path} ({p.replicas.precision})")
    parts = PartFolder(rows, out_dir, p, f"local backend, {pool.replicas.engine.name}, {len(pool.actors)} replica(s)", log)
    if parts.todo.num_rows:
        parts.write(pool.map(parts.batches(p.batch_size), p.decoding, pool.adapter_name(p.adapter_path)))
    return parts.merge()


def simulate_with_processor(rows: pa.Table, out_dir: str | Path, p: SimulationPass, log: Callable[[str], None] = print) -> Path:
    """Predict the rows not yet done through model replicas started for this pass (processor.py)."""
    parts = PartFolder(rows, out_dir, p, f"local backend, {p.replicas.engine.name}, {p.replicas.count} replica(s)", log)
    if parts.todo.num_rows:
        ds = build_simulate_processor(p)(_through_ray_data(parts.todo, p.batch_size))
        parts.write(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    return parts.merge()


def simulate_over_http(rows: pa.Table, out_dir: str | Path, p: SimulationPass, log: Callable[[str], None] = print) -> Path:
    """Predict the rows not yet done through the Serve app at p.endpoint (p.replicas.count clients)."""
    import ray

    parts = PartFolder(rows, out_dir, p, f"http backend, {p.replicas.count} replica(s)", log)
    if parts.todo.num_rows:
        ds = _through_ray_data(parts.todo, p.batch_size).map_batches(
            HttpReplica, fn_constructor_args=(p.endpoint, p.adapter_name, p.decoding, p.http_concurrency, p.token, p.http_retries),
            batch_size=p.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=p.replicas.count), num_cpus=0.1,
        )
        parts.write(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    return parts.merge()


def run_simulation(rows: pa.Table, out_dir: str | Path, p: SimulationPass, pool: ReplicaPool | None = None,
                   log: Callable[[str], None] = print) -> Path:
    """The driver `p` asks for: the Serve app (p.endpoint), the caller's pool, or replicas of its own."""
    if p.endpoint:
        return simulate_over_http(rows, out_dir, p, log)
    if pool is not None:
        return simulate_with_pool(rows, out_dir, p, pool, log)
    return simulate_with_processor(rows, out_dir, p, log)
