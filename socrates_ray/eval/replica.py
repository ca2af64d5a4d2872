"""What answers a batch of rows: a model replica in a Ray actor (LocalReplica, kept in a ReplicaPool
across passes) or an HTTP client of the Serve app (HttpReplica). Both turn a batch of rows
(data.prepared.INPUT_COLUMNS) into the same prediction table: the row keys + prediction, options,
probs (exact mode) and samples (sampled answers).
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from socrates_ray.eval.passes import Decoding, Replicas, SimulateError
from socrates_ray.infer import ContextOverflow, distributions, load_engine, parse_first_integer, sample_answers
from socrates_ray.infer.engine import CONTEXT_CODE
from socrates_ray.infer.precision import resolve_precision
from socrates_ray.ray_window import in_window

OUTPUT_FIELDS = [
    pa.field("prediction", pa.int64()), pa.field("options", pa.list_(pa.int64())),
    pa.field("probs", pa.list_(pa.float64())), pa.field("samples", pa.list_(pa.int64())),
    pa.field("skipped", pa.string()),  # why a row got no prediction (longer than the model's context); null when it got one
]
KEPT_COLUMNS = ["study_id", "sample_id", "participant", "condition_num", "task_num", "response", "scale_low", "scale_high", "demographic"]


def draw(probs: np.ndarray, options: list[int], study_id: str, sample_id: int) -> int:
    """One answer drawn from a participant's distribution, seeded by the row key (reproducible)."""
    rng = np.random.default_rng(zlib.crc32(f"{study_id}/{sample_id}".encode()))
    return int(options[int(rng.choice(len(options), p=probs / probs.sum()))])


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


def row_by_row(rows: list[int], score: Callable[[list[int]], list[Any]]) -> list[Any]:
    """score(rows) in one call; where one row overflows the context, each row alone, the overflowing
    ones answered by their ContextOverflow (skipped, never fatal to the batch)."""
    try:
        return score(rows)
    except ContextOverflow:
        out: list[Any] = []
        for i in rows:
            try:
                out.extend(score([i]))
            except ContextOverflow as error:
                out.append(error)
        return out


def prediction_table(batch: pa.Table, results: list[dict[str, Any]]) -> pa.Table:
    """The batch's key columns + prediction, options, probs, samples (typed, nulls where absent)."""
    out = batch.select(KEPT_COLUMNS)
    for f in OUTPUT_FIELDS:
        out = out.append_column(f, pa.array([r.get(f.name) for r in results], type=f.type))
    return out


class LocalReplica:
    """An inference engine inside a Ray actor: one copy of the model, with every adapter it may be
    asked for attached by name, so one replica serves base and finetuned passes alike."""

    def __init__(self, model_path: str, system_prompt: str, adapters: dict[str, str], replicas: Replicas) -> None:
        import torch

        torch.set_num_threads(replicas.threads)
        device = "cuda" if replicas.gpus > 0 else "cpu"
        # resolved here, on the node the replica runs on
        self.engine = load_engine(replicas.engine, model_path, system_prompt, device=device,
                                  precision=resolve_precision(replicas.precision, device == "cuda"))
        for name, path in adapters.items():
            self.engine.load_adapter(name, path)

    def predict(self, table: pa.Table, d: Decoding, adapter: str | None) -> pa.Table:
        """Predictions for `table`'s rows decoded as `d`, by `adapter` (None = base)."""
        batch = table.to_pydict()
        options = row_options(batch)
        results: list[dict[str, Any]] = [{} for _ in options]
        exact_rows = [i for i, opts in enumerate(options) if d.mode == "exact" and opts]
        if exact_rows:
            dists = row_by_row(exact_rows, lambda rows: distributions(
                self.engine, [batch["prompt"][i] for i in rows], [options[i] for i in rows], adapter, d.temperature, d.top_p))
            for i, probs in zip(exact_rows, dists):
                results[i] = {"skipped": str(probs)} if isinstance(probs, ContextOverflow) else \
                    exact_result(probs, options[i], batch["study_id"][i], batch["sample_id"][i])
        exact = set(exact_rows)
        other = [i for i in range(len(options)) if i not in exact]
        if other:
            answers = row_by_row(other, lambda rows: sample_answers(
                self.engine, [batch["prompt"][i] for i in rows], 1, d.sample_temperature, d.sample_top_p, d.max_new_tokens, adapter))
            for i, a in zip(other, answers):
                results[i] = {"skipped": str(a)} if isinstance(a, ContextOverflow) else sampled_result(a)
        return prediction_table(table, results)


def replica_concurrency(engine_name: str) -> tuple[int, int]:
    """(batches kept queued per replica, batches it runs at once): 2 and 1 for transformers (one runs,
    one waits: its engine is not thread-safe); 4 and 4 for vLLM, whose replica runs them at once in
    threads that share the engine's steps (continuous batching, infer/vllm_loop.py: a batch's last long
    generations decode beside the next batches' prompts instead of alone)."""
    return (4, 4) if engine_name == "vllm" else (2, 1)


class ReplicaPool:
    """Model replicas (Ray actors holding a LocalReplica) kept for as many simulation passes as
    their owner runs: an evaluation scores calibration, every setting and the fit check, base and
    finetuned, through one pool (Ray Data's actor pool would start new actors, importing torch
    and loading the model, for each of those passes: 12-15 s each on 2 CPU cores).

        with ReplicaPool(model_path, system_prompt, {"finetuned": adapter_dir}, replicas) as pool:
            simulate_with_pool(rows, out, p, pool)

    Each replica keeps replica_concurrency's batches queued, so it never waits on the driver."""

    def __init__(self, model_path: str, system_prompt: str, adapters: dict[str, str] | None, replicas: Replicas) -> None:
        import ray

        self.model_path, self.system_prompt, self.replicas = model_path, system_prompt, replicas
        self.adapters = dict(adapters or {})
        self.in_flight, concurrent = replica_concurrency(replicas.engine.name)
        actor = ray.remote(LocalReplica).options(num_cpus=replicas.cpus, num_gpus=replicas.gpus, max_concurrency=concurrent)
        self.actors = [actor.remote(model_path, system_prompt, self.adapters, replicas) for _ in range(replicas.count)]

    def adapter_name(self, adapter_path: str | None) -> str | None:
        """The name the replicas know `adapter_path` by (None = the base model)."""
        if adapter_path is None:
            return None
        for name, path in self.adapters.items():
            if path == adapter_path:
                return name
        raise SimulateError(f"adapter {adapter_path} is not loaded in this replica pool (loaded: {sorted(self.adapters.values())})")

    def map(self, batches: list[pa.Table], decoding: Decoding, adapter: str | None) -> Iterator[pa.Table]:
        """Yield each batch's predictions as soon as it is done (in completion order)."""
        slots = [actor for actor in self.actors for _ in range(self.in_flight)]
        for _, predictions in in_window(batches, slots, lambda batch, actor: actor.predict.remote(batch, decoding, adapter)):
            yield predictions

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []

    def __enter__(self) -> "ReplicaPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _error_code(reply: Any) -> str | None:
    try:
        return reply.json()["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


RETRY_STATUSES = (429, 502, 503, 504)  # back-pressure and a replica restarting: worth asking again


def retrying_session(retries: int, pool_size: int) -> Any:
    """A requests session whose requests are sent again, up to `retries` times, after a failed
    connection or a RETRY_STATUSES answer, with exponential backoff (0.5 s, 1 s, 2 s, ... at most
    30 s; a Retry-After header is honoured). /v1/predict is a pure function of its body, so a POST
    sent twice answers the same. urllib3 logs a retry after a broken connection on its logger (WARNING)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=retries, connect=retries, read=retries, status=retries, other=0, backoff_factor=0.5, backoff_max=30,
                  status_forcelist=RETRY_STATUSES, allowed_methods=None, respect_retry_after_header=True, raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class HttpReplica:
    """Calls the Serve app's /v1/predict, one request per row, `concurrency` at a time (so the
    server's dynamic batching has something to merge); a request that meets back-pressure or a
    restarting replica is sent again (retrying_session)."""

    def __init__(self, endpoint: str, adapter: str | None, decoding: Decoding, concurrency: int, token: str | None = None,
                 retries: int = 8) -> None:
        self.session, self.retries = retrying_session(retries, concurrency), retries
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.url = endpoint.rstrip("/") + "/v1/predict"
        self.adapter, self.d = adapter, decoding
        self.pool = ThreadPoolExecutor(max_workers=concurrency)

    def _one(self, prompt: str, options: list[int]) -> dict[str, Any]:
        import requests

        d = self.d
        exact = d.mode == "exact" and bool(options)
        body = {
            "prompt": prompt, "adapter": self.adapter, "mode": "distribution" if exact else "sample",
            "temperature": d.temperature if exact else d.sample_temperature,
            "top_p": d.top_p if exact else d.sample_top_p, "n": 1, "max_tokens": d.max_new_tokens,
        }
        if exact:
            body["options"] = options  # the scale prepare parsed; the server need not parse the text again
        try:
            reply = self.session.post(self.url, json=body, timeout=600)
        except requests.ConnectionError as error:
            raise SimulateError(f"{self.url} could not be reached, {self.retries} retries included ({type(error).__name__}); "
                                "is the Serve app running? (simulate.http_retries)") from None
        if reply.status_code == 400 and _error_code(reply) == CONTEXT_CODE:  # this row alone: skipped and counted
            return {"skipped": reply.json()["error"].get("message", CONTEXT_CODE)}
        if reply.status_code != 200:
            again = f" after {self.retries} retries (simulate.http_retries)" if reply.status_code in RETRY_STATUSES else ""
            raise SimulateError(f"{self.url} answered {reply.status_code}{again}: {reply.text[:500]}")
        return reply.json()

    def __call__(self, table: pa.Table) -> pa.Table:
        batch = table.to_pydict()
        replies = list(self.pool.map(self._one, list(batch["prompt"]), row_options(batch)))
        results = [
            r if "skipped" in r
            else exact_result(np.asarray(r["probs"]), r["options"], batch["study_id"][i], batch["sample_id"][i]) if "probs" in r
            else sampled_result([parse_first_integer(t) for t in r["samples"]])
            for i, r in enumerate(replies)
        ]
        return prediction_table(table, results)
