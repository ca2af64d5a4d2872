"""Batch simulation: rows (study, condition, task, persona, stimulus) -> predictions Parquet.

The rows still to do go, a batch at a time, through Ray Data's `map_batches` to an actor pool of
model replicas (eval/processor.py: a Scorer per actor, on CPUs or GPUs) or of HTTP clients calling
the running Serve app; an evaluation instead keeps one ReplicaPool of model actors for all its passes. The
driver writes each finished batch as its own Parquet part (atomically, by rename), so a killed
job loses at most the batches in flight: re-running the same command skips every row whose
(study_id, sample_id) is already in a part. Progress (rows, rate, ETA) is printed as parts land.
"""

from __future__ import annotations

import glob
import json
import os
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from socrates_ray.config import SimulateSection
from socrates_ray.data.prepare import split_problem
from socrates_ray.errors import SocratesError, unwrap
from socrates_ray.score import Engine, make_scorer, parse_first_integer

INPUT_COLUMNS = [
    "study_id", "sample_id", "participant", "condition_num", "task_num", "demographic",
    "stimuli", "prompt", "response", "scale_low", "scale_high",
]
PART_GLOB = "part-*.parquet"


class SimulateError(SocratesError, ValueError):
    """Bad simulation input (missing split, columns, endpoint)."""


def load_eval_rows(prepared: str, setting: str, max_per_cell: int | None, seed: int = 0) -> pa.Table:
    """The eval split of one setting; with max_per_cell, a seeded subsample of each cell."""
    return load_split_rows(prepared, setting, "eval", max_per_cell, seed)


def load_split_rows(prepared: str, setting: str, split: str, max_per_cell: int | None, seed: int = 0) -> pa.Table:
    """One split (train / val / eval) of one setting; with max_per_cell, a seeded subsample of each cell."""
    if (problem := split_problem(prepared, setting, split)) is not None:
        raise SimulateError(problem)
    files = sorted(glob.glob(os.path.join(prepared, setting, split, "*.parquet")))
    table = pq.read_table(files, columns=INPUT_COLUMNS)
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


def draw(probs: np.ndarray, options: list[int], study_id: str, sample_id: int) -> int:
    """One answer drawn from a participant's distribution, seeded by the row key (reproducible)."""
    rng = np.random.default_rng(zlib.crc32(f"{study_id}/{sample_id}".encode()))
    return int(options[int(rng.choice(len(options), p=probs / probs.sum()))])


OUTPUT_FIELDS = [
    pa.field("prediction", pa.int64()), pa.field("options", pa.list_(pa.int64())),
    pa.field("probs", pa.list_(pa.float64())), pa.field("samples", pa.list_(pa.int64())),
]
KEPT_COLUMNS = ["study_id", "sample_id", "participant", "condition_num", "task_num", "response", "scale_low", "scale_high", "demographic"]


@dataclass(frozen=True)
class Decoding:
    """How answers are made, the same for every batch of a pass (built once from SimulateSection)."""

    mode: str  # exact: each bounded row's option distribution; sample: generated text
    temperature: float  # exact mode
    top_p: float
    sample_temperature: float  # sample mode and rows without a bounded scale
    sample_top_p: float
    max_new_tokens: int

    @classmethod
    def of(cls, sim: SimulateSection) -> "Decoding":
        if sim.temperature == "auto":
            raise SimulateError("simulate.temperature=auto must be resolved to a number first (calibrate.resolve_temperature)")
        return cls(sim.mode, float(sim.temperature), sim.top_p, sim.sample_temperature, sim.sample_top_p, sim.max_new_tokens)


def row_options(batch: dict[str, list[Any]]) -> list[list[int]]:
    """Each row's answer options from the scale prepare parsed (scale_low..scale_high); [] where the
    scale is open-ended or unknown (those rows are sampled)."""
    return [list(range(lo, hi + 1)) if lo is not None and hi is not None else []
            for lo, hi in zip(batch["scale_low"], batch["scale_high"])]


def exact_result(probs: np.ndarray, options: list[int], study_id: str, sample_id: int) -> dict[str, Any]:
    return {"options": list(options), "probs": np.asarray(probs, dtype=float).tolist(),
            "prediction": draw(np.asarray(probs, dtype=float), options, study_id, int(sample_id))}


def sampled_result(answers: list[int | None]) -> dict[str, Any]:
    return {"prediction": answers[0], "samples": answers}


def _finish(batch: pa.Table, results: list[dict[str, Any]]) -> pa.Table:
    """The batch's key columns + prediction, options, probs, samples (typed, nulls where absent)."""
    out = batch.select(KEPT_COLUMNS)
    for f in OUTPUT_FIELDS:
        out = out.append_column(f, pa.array([r.get(f.name) for r in results], type=f.type))
    return out


class LocalReplica:
    """A Scorer inside a Ray actor: one copy of the model, with every adapter it may be asked for
    attached by name, so one replica serves base and finetuned passes alike."""

    def __init__(self, model_path: str, system_prompt: str, adapters: dict[str, str], threads: int, gpu: bool, precision: str,
                 engine: Engine) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        from socrates_ray.precision import resolve_precision

        device = "cuda" if gpu else "cpu"
        # resolved here, on the node the replica runs on
        self.scorer = make_scorer(engine, model_path, system_prompt, device=device, precision=resolve_precision(precision, device == "cuda"))
        for name, path in adapters.items():
            self.scorer.load_adapter(name, path)

    def predict(self, table: pa.Table, d: Decoding, adapter: str | None) -> pa.Table:
        """Predictions for `table`'s rows decoded as `d`, by `adapter` (None = base)."""
        batch = table.to_pydict()
        options = row_options(batch)
        results: list[dict[str, Any]] = [{} for _ in options]
        exact_rows = [i for i, opts in enumerate(options) if d.mode == "exact" and opts]
        if exact_rows:
            dists = self.scorer.distributions(
                [batch["prompt"][i] for i in exact_rows], [options[i] for i in exact_rows], adapter, d.temperature, d.top_p
            )
            for i, probs in zip(exact_rows, dists):
                results[i] = exact_result(probs, options[i], batch["study_id"][i], batch["sample_id"][i])
        exact = set(exact_rows)
        other = [i for i in range(len(options)) if i not in exact]
        if other:
            answers = self.scorer.sample_answers(
                [batch["prompt"][i] for i in other], 1, d.sample_temperature, d.sample_top_p, d.max_new_tokens, adapter
            )
            for i, a in zip(other, answers):
                results[i] = sampled_result(a)
        return _finish(table, results)


class ReplicaPool:
    """Model replicas (Ray actors holding a LocalReplica) kept for as many simulation passes as
    their owner runs: an evaluation scores calibration, every setting and the fit check, base and
    finetuned, through one pool (Ray Data's actor pool would start new actors, importing torch
    and loading the model, for each of those passes: 12-15 s each on 2 CPU cores).

        with ReplicaPool(sim, model_path, system_prompt, {"finetuned": adapter_dir}) as pool:
            run_simulation(rows, out, sim, model_path, system_prompt, pool=pool)

    Each replica keeps `in_flight` batches queued, so it never waits on the driver: 2 for
    transformers (one runs, one waits), 4 for vLLM, whose replica runs them at once in threads that
    share the engine's steps (continuous batching, vllm_loop.py: a batch's last long generations
    decode beside the next batches' prompts instead of alone)."""

    IN_FLIGHT = {"transformers": 2, "vllm": 4}

    @classmethod
    def concurrency(cls, engine: Engine) -> tuple[int, int]:
        """(batches kept queued per replica, batches it runs at once) for `engine`: the transformers
        Scorer is not thread-safe, so it runs one; vLLM runs all it holds, sharing the engine's steps."""
        in_flight = cls.IN_FLIGHT.get(engine.name, 2)
        return in_flight, in_flight if engine.name == "vllm" else 1

    def __init__(self, sim: SimulateSection, model_path: str, system_prompt: str, adapters: dict[str, str] | None = None,
                 engine: Engine = Engine()) -> None:
        import ray

        self.model_path, self.system_prompt, self.precision, self.engine = model_path, system_prompt, sim.precision, engine
        self.adapters = dict(adapters or {})
        self.in_flight, concurrent = self.concurrency(engine)
        actor = ray.remote(LocalReplica).options(num_cpus=sim.cpus_per_replica, num_gpus=sim.gpus_per_replica, max_concurrency=concurrent)
        threads, gpu = max(1, int(sim.cpus_per_replica)), sim.gpus_per_replica > 0
        self.actors = [actor.remote(model_path, system_prompt, self.adapters, threads, gpu, sim.precision, engine) for _ in range(sim.replicas)]

    def adapter_name(self, adapter_path: str | None) -> str | None:
        """The name the replicas know `adapter_path` by (None = the base model)."""
        if adapter_path is None:
            return None
        for name, path in self.adapters.items():
            if path == adapter_path:
                return name
        raise SimulateError(f"adapter {adapter_path} is not loaded in this replica pool (loaded: {sorted(self.adapters.values())})")

    def map(self, batches: list[pa.Table], decoding: Decoding, adapter: str | None) -> Any:
        """Yield each batch's predictions as soon as it is done (in completion order)."""
        import ray

        todo = iter(batches)
        pending: dict[Any, Any] = {}

        def submit(actor: Any) -> None:
            batch = next(todo, None)
            if batch is not None:
                pending[actor.predict.remote(batch, decoding, adapter)] = actor

        for actor in self.actors:
            for _ in range(self.in_flight):
                submit(actor)
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            actor = pending.pop(ready)
            submit(actor)
            yield ray.get(ready)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> "ReplicaPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class HttpReplica:
    """Calls the Serve app's /v1/predict, one request per row, `concurrency` at a time (so the
    server's dynamic batching has something to merge)."""

    def __init__(self, endpoint: str, adapter: str | None, decoding: Decoding, concurrency: int, token: str | None = None) -> None:
        import requests

        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.url = endpoint.rstrip("/") + "/v1/predict"
        self.adapter, self.d = adapter, decoding
        self.pool = ThreadPoolExecutor(max_workers=concurrency)

    def _one(self, prompt: str, options: list[int]) -> dict[str, Any]:
        d = self.d
        exact = d.mode == "exact" and bool(options)
        body = {
            "prompt": prompt, "adapter": self.adapter, "mode": "distribution" if exact else "sample",
            "temperature": d.temperature if exact else d.sample_temperature,
            "top_p": d.top_p if exact else d.sample_top_p, "n": 1, "max_tokens": d.max_new_tokens,
        }
        if exact:
            body["options"] = options  # the scale prepare parsed; the server need not parse the text again
        reply = self.session.post(self.url, json=body, timeout=600)
        if reply.status_code != 200:
            raise SimulateError(f"{self.url} answered {reply.status_code}: {reply.text[:500]}")
        return reply.json()

    def __call__(self, table: pa.Table) -> pa.Table:
        batch = table.to_pydict()
        replies = list(self.pool.map(self._one, list(batch["prompt"]), row_options(batch)))
        results = [
            exact_result(np.asarray(r["probs"]), r["options"], batch["study_id"][i], batch["sample_id"][i]) if "probs" in r
            else sampled_result([parse_first_integer(t) for t in r["samples"]])
            for i, r in enumerate(replies)
        ]
        return _finish(table, results)


def done_keys(out_dir: Path) -> set[tuple[str, int]]:
    """(study_id, sample_id) of every row already in a finished part."""
    keys: set[tuple[str, int]] = set()
    for part in sorted(out_dir.glob(PART_GLOB)):
        t = pq.read_table(part, columns=["study_id", "sample_id"])
        keys.update(zip(t["study_id"].to_pylist(), t["sample_id"].to_pylist()))
    return keys


def _unwrapped(batches: Any) -> Any:
    """Iterate, re-raising a replica's typed error (SimulateError, ScoreError) as itself: Ray wraps
    it in a task error whose traceback buries the one line that says what to fix."""
    try:
        yield from batches
    except Exception as exc:
        found = unwrap(exc)
        if found is exc:
            raise
        raise found from None


RESUME_KEYS = ("mode", "temperature", "top_p", "sample_temperature", "sample_top_p", "max_new_tokens", "adapter", "adapter_path", "precision")


def check_params(out: Path, sim: SimulateSection, model_path: str, engine: str = "transformers") -> None:
    """Refuse to resume a folder whose finished rows were made with other settings (they would mix
    silently into one predictions file); record the settings on the first run."""
    params = {k: getattr(sim, k) for k in RESUME_KEYS} | {"model_path": model_path, "engine": engine}
    record = out / "simulate_params.json"
    if record.exists() and any(out.glob(PART_GLOB)):
        before = {"engine": engine} | json.loads(record.read_text())  # a record from before engines: the same one
        changed = {k: (before.get(k), v) for k, v in params.items() if before.get(k) != v}
        if changed:
            what = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise SimulateError(
                f"{out} holds predictions made with other settings ({what}); resuming would mix them. "
                "Delete the folder (or choose another output folder) to start over, or run with the old settings."
            )
    record.write_text(json.dumps(params, indent=1))


def run_simulation(
    rows: pa.Table, out_dir: str | Path, sim: SimulateSection, model_path: str, system_prompt: str,
    log: Callable[[str], None] = print, token: str | None = None, stop_after_parts: int | None = None,
    pool: ReplicaPool | None = None, engine: Engine = Engine(),
) -> Path:
    """Predict every row not yet done; returns the merged predictions.parquet.

    pool: the local replicas to use (kept by the caller across passes, with their engine); None
    streams the rows through eval/processor.py's Ray Data stage (sim.replicas running `engine`) for
    this pass (backend local).
    stop_after_parts (a test aid) stops the driver after writing that many parts, as a kill would."""
    decoding = Decoding.of(sim)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if pool is not None:
        engine = pool.engine
    check_params(out, sim, model_path, engine.name if sim.backend == "local" else "http")
    done = done_keys(out)
    keys = list(zip(rows["study_id"].to_pylist(), rows["sample_id"].to_pylist()))
    todo = rows.filter(pa.array([k not in done for k in keys])) if done else rows
    total = rows.num_rows
    replicas = len(pool.actors) if pool is not None and sim.backend == "local" else sim.replicas
    log(f"simulate: {total:,} rows, {total - todo.num_rows:,} already done in {out}, {todo.num_rows:,} to go "
        f"({sim.mode} mode, {sim.backend} backend{', ' + engine.name if sim.backend == 'local' else ''}, {replicas} replica(s))")
    if pool is not None and sim.backend == "local" and (pool.model_path, pool.system_prompt, pool.precision) != (model_path, system_prompt, sim.precision):
        raise SimulateError(f"the replica pool holds {pool.model_path} ({pool.precision}); this pass asks for {model_path} ({sim.precision})")
    if todo.num_rows:
        if sim.backend == "local" and pool is not None:
            batches = [todo.slice(i, sim.batch_size) for i in range(0, todo.num_rows, sim.batch_size)]
            results = pool.map(batches, decoding, pool.adapter_name(sim.adapter_path))
        else:  # one pass through Ray Data: model replicas (eval/processor.py) or HTTP clients in an actor pool
            import ray

            ds = ray.data.from_arrow(todo).repartition(max(1, -(-todo.num_rows // sim.batch_size)))
            if sim.backend == "local":
                from socrates_ray.eval.processor import build_simulate_processor  # it builds on this module

                ds = build_simulate_processor(sim, model_path, system_prompt, engine)(ds)
            else:
                ds = ds.map_batches(
                    HttpReplica, fn_constructor_args=(sim.endpoint, sim.adapter, decoding, sim.http_concurrency, token),
                    batch_size=sim.batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=sim.replicas), num_cpus=0.1,
                )
            results = ds.iter_batches(batch_size=None, batch_format="pyarrow")
        stream = _unwrapped(results)
        try:
            started, written, parts = time.time(), 0, 0
            for batch in stream:
                name = f"part-{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:6]}.parquet"
                pq.write_table(batch, out / (name + ".tmp"))
                os.replace(out / (name + ".tmp"), out / name)
                written += batch.num_rows
                parts += 1
                rate = written / max(time.time() - started, 1e-9)
                if parts % 10 == 0 or written == todo.num_rows:
                    log(f"simulate: {total - todo.num_rows + written:,}/{total:,} rows, {rate:,.1f} rows/s, "
                        f"ETA {(todo.num_rows - written) / max(rate, 1e-9):,.0f}s")
                if stop_after_parts is not None and parts >= stop_after_parts:
                    log(f"simulate: stopping after {parts} parts (stop_after_parts)")
                    return out
        finally:
            stream.close()  # a stopped pass releases its actors now (Ray Data's executor, or the pool's queue)
    merged = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob(PART_GLOB))], promote_options="permissive")
    key_set = set(keys)
    mkeys = list(zip(merged["study_id"].to_pylist(), merged["sample_id"].to_pylist()))
    merged = merged.filter(pa.array([k in key_set for k in mkeys]))
    target = out / "predictions.parquet"
    pq.write_table(merged.sort_by([("study_id", "ascending"), ("sample_id", "ascending")]), target)
    unparsable = merged.num_rows - pc.count(merged["prediction"]).as_py()
    log(f"simulate: wrote {target} ({merged.num_rows:,} rows, {unparsable:,} unparsable answers)")
    return target
