"""The model inside one Serve replica: a base model, LoRA adapters multiplexed over it, and
batching of concurrent requests.

transformers: requests arrive one per HTTP call; `@serve.batch` gathers those that arrive together
(up to serve.max_batch_size, waiting at most serve.batch_wait_timeout_s) and the replica scores
them in as few forward passes as it can: jobs are grouped by adapter and by kind (exact
distribution or generation with the same sampling settings). The model runs in a worker thread so
the event loop keeps accepting requests (and so batches fill) while a forward pass is running.

vLLM: no batching here. Each request goes to the engine at once (up to serve.max_ongoing_requests
in flight) and joins its next step; the engine answers it as soon as its own tokens are done
(continuous batching, vllm_loop.py), so a short request never waits for a long batch.

Adapters: names resolve to folders under serve.adapters_dir or in serve.adapters; a bounded LRU
(`serve.multiplexed`) keeps at most serve.max_loaded_adapters cached per replica, and a request
pins the adapter it uses until it is answered, so an eviction never pulls an adapter from under a
queued request (an evicted adapter is unloaded after the batch that last used it). Every adapter
is checked before it loads (infer/adapter_check.py): the listed ones when the replica starts (a
bad one stops the start, named), the others on first use (AdapterUnusable: the app's 422). A
failed load leaves the model as it was, and is remembered against the folder's files, so asking
again costs a stat of each file until the folder changes.

A replica reads no config: app.replica_settings builds a ReplicaSettings (plain values) from it
where the app is built, and Serve ships that to every replica. The deployment class itself
(routes, validation, auth) is app.SocratesModel; this module is the model it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from ray import serve

from socrates_ray.infer import ContextOverflow, EngineSpec, ScoreError, distributions, load_engine
from socrates_ray.infer.engine import CONTEXT_CODE
from socrates_ray.infer.adapter_check import AdapterUnusable, adapter_problem, check_adapter
from socrates_ray.infer.precision import resolve_precision
from socrates_ray.models import adapter_folder_problem

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
BASE_NAMES = ("base",)


class AdapterNotFound(LookupError):
    """404: no adapter of that name."""


class BadRequest(ValueError):
    """400: a request the replica cannot serve as asked; `code` names the kind where a client acts on
    it (CONTEXT_CODE: this prompt is over the model's context, as OpenAI's API says it)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def resolve_adapter(name: str, adapters_dir: str | None, extra: dict[str, str]) -> Path:
    """Adapter name -> its folder. Names that could leave the adapter folder are refused (400)."""
    if not ADAPTER_NAME.match(name) or ".." in name:
        raise BadRequest(
            f"adapter name {name!r} is not allowed: use letters, digits, '.', '_' or '-' "
            "(no path separators, no '..')"
        )
    if name in extra:
        if adapter_folder_problem(extra[name]) is not None:  # listed, and its folder has gone since
            raise AdapterNotFound(f"adapter {name!r} is listed in serve.adapters but its folder {extra[name]} "
                                  "no longer holds an adapter")
        return Path(extra[name])
    if adapters_dir:
        root = Path(adapters_dir).resolve()
        folder = (root / name).resolve()
        if folder.parent != root:
            raise BadRequest(f"adapter name {name!r} resolves outside serve.adapters_dir")
        if adapter_folder_problem(folder) is None:
            return folder
    raise AdapterNotFound(f"unknown adapter {name!r}; GET /v1/models lists the available ones")


def folder_signature(folder: Path) -> tuple:
    """What changes when an adapter folder's files do (names, sizes, modification times): the key a
    failed load is remembered under."""
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))
    except OSError:
        return ()


def list_adapters(adapters_dir: str | None, extra: dict[str, str]) -> list[str]:
    """The adapter names whose folders hold a whole adapter now (listed in serve.adapters, or under
    serve.adapters_dir): the folder checks of adapter_check, which read headers, never weights."""
    names = {name for name, path in extra.items() if adapter_problem(path, None) is None}
    if adapters_dir and Path(adapters_dir).is_dir():
        names.update(p.name for p in Path(adapters_dir).iterdir() if ADAPTER_NAME.match(p.name) and adapter_problem(p, None) is None)
    return sorted(names)


@dataclass(frozen=True)
class ReplicaSettings:
    """What one replica needs, as plain values (app.replica_settings builds it from cfg.serve)."""

    model_path: str
    system_prompt: str
    num_cpus: float
    num_gpus: float
    precision: str  # "auto" | "bf16" | "fp32", resolved where the replica runs
    max_length: int
    adapters_dir: str | None
    adapters: dict[str, str]
    max_loaded_adapters: int
    max_batch_size: int
    batch_wait_timeout_s: float
    max_n: int
    max_tokens_limit: int
    max_body_bytes: int
    token: str | None = field(default=None, repr=False)  # the bearer token clients must send; None = no auth
    engine: EngineSpec = field(default_factory=EngineSpec)  # model.engine: transformers or vllm
    max_ongoing_requests: int = 64  # vllm: requests handed to the engine at once (serve.max_ongoing_requests)


@dataclass
class DistributionJob:
    """One request's exact answer distribution: a prompt and the options to score."""

    adapter: str | None
    prompt: str
    options: list[int]
    temperature: float = 1.0
    top_p: float = 1.0
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)  # set when the client gives up (vLLM)

    def group(self) -> tuple:
        """Jobs of one group are scored in one engine call."""
        return (DistributionJob, self.adapter, self.temperature, self.top_p)


@dataclass
class GenerationJob:
    """One request's sampled continuations of an already-templated prefix."""

    adapter: str | None
    prefix: str
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    max_tokens: int = 32
    logprobs: bool | int = False  # True: the chosen tokens' log-probabilities; k: and the k most likely tokens
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)

    def group(self) -> tuple:
        return (GenerationJob, self.adapter, self.temperature, self.top_p, self.n, self.max_tokens, self.logprobs)


Job = DistributionJob | GenerationJob


class _AdapterHandle:
    """What the multiplexer caches for one load of an adapter. Ray calls __del__ when its LRU evicts
    the handle (and Python may call it again at garbage collection): that only tells the replica the
    adapter left the cache; the replica unloads it once no request still in flight uses it."""

    def __init__(self, core: "ModelCore", name: str, generation: int) -> None:
        self.core, self.name, self.generation, self.evicted = core, name, generation, False

    def __del__(self) -> None:
        if not self.evicted:
            self.evicted = True
            self.core._left_cache(self.name, self.generation)


class ModelCore:
    """An inference engine + multiplexed adapters + batching; owned by the ingress deployment (app.SocratesModel)."""

    def __init__(self, s: ReplicaSettings) -> None:
        import torch

        device = "cuda" if s.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(s.num_cpus)))
        self.settings = s
        precision = resolve_precision(s.precision, device == "cuda")  # resolved where the replica runs
        self.engine = load_engine(s.engine, s.model_path, s.system_prompt, device=device, max_length=s.max_length, precision=precision)
        self.lock = threading.Lock()  # one forward pass / adapter switch at a time
        self.batches = 0
        self.batched_jobs = 0
        self.model_seconds = 0.0  # wall time inside engine calls (healthz; bench/serve.py's busy share)
        # vLLM batches across requests itself, step by step (continuous batching, vllm_loop.py): each
        # request goes straight to the engine from a thread of its own, no @serve.batch, no model lock
        self.continuous = s.engine.name == "vllm"
        self._callers = ThreadPoolExecutor(max_workers=max(1, s.max_ongoing_requests), thread_name_prefix="engine-caller") if self.continuous else None
        self.run_batch.set_max_batch_size(s.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

        self._init_adapters()
        for name, path in s.adapters.items():  # the listed adapters: a broken one stops the start, named
            check_adapter(name, path, s.model_path)

        async def load(name: str) -> _AdapterHandle:  # a plain function: Serve sets attributes on what it wraps
            return await self._load_adapter(name)

        self.get_adapter = serve.multiplexed(max_num_models_per_replica=s.max_loaded_adapters)(load)

    # --- adapters: an LRU of loaded adapters, each pinned while a request uses it -------------------
    def _init_adapters(self) -> None:
        self._cached: dict[str, int] = {}  # adapter -> generation of the multiplexer's handle for it
        self._pins: Counter[str] = Counter()  # adapter -> requests in flight that use it
        self._generations = itertools.count()
        self._state = threading.Lock()  # guards _cached and _pins (event loop, executor threads, GC)
        self._unusable: dict[str, tuple[tuple, str]] = {}  # adapter -> (its folder's signature, why it failed)

    def unusable(self, name: str, path: Path) -> str | None:
        """Why `name` failed to load, if it did and its folder has not changed since."""
        known = self._unusable.get(name)
        return known[1] if known is not None and known[0] == folder_signature(path) else None

    async def _load_adapter(self, name: str) -> _AdapterHandle:
        """What the multiplexer calls on a miss. Loading a name that is still loaded (evicted while a
        request held it) reuses it."""
        path = resolve_adapter(name, self.settings.adapters_dir, self.settings.adapters)
        generation = next(self._generations)
        await asyncio.to_thread(self._load_sync, name, path, generation)
        return _AdapterHandle(self, name, generation)

    def _load_sync(self, name: str, path: Path, generation: int) -> None:
        with self.lock:
            self._unload_unused()
            self.engine.load_adapter(name, path)
            with self._state:  # cached before the model lock is released: no batch's sweep can unload it first
                self._cached[name] = generation

    def _left_cache(self, name: str, generation: int) -> None:
        with self._state:
            if self._cached.get(name) == generation:  # not a handle an earlier load left behind
                del self._cached[name]

    def _unload_unused(self) -> None:
        """Unload adapters neither cached nor used by a request in flight (the caller holds self.lock)."""
        with self._state:
            keep = set(self._cached) | {name for name, count in self._pins.items() if count > 0}
        for name in [n for n in self.engine.adapters if n not in keep]:
            self.engine.unload_adapter(name)

    @contextlib.asynccontextmanager
    async def using_adapter(self, name: str | None) -> AsyncIterator[str | None]:
        """The adapter one request scores with (None/'base': the base model), loaded and pinned until
        the request is answered: other requests that make the LRU evict it meanwhile never unload it
        under this one."""
        if name is None or name in BASE_NAMES:
            yield None
            return
        path = resolve_adapter(name, self.settings.adapters_dir, self.settings.adapters)  # 400 / 404 before the multiplexer
        if (known := self.unusable(name, path)) is not None:
            raise AdapterUnusable(known)
        try:
            await self.get_adapter(name)
        except Exception as error:  # remembered: a repeat is answered from here, never reloaded
            unusable = error if isinstance(error, AdapterUnusable) else AdapterUnusable(
                f"adapter {name!r} cannot be used: loading it failed ({type(error).__name__}: {error})")
            self._unusable[name] = (folder_signature(path), str(unusable))
            raise unusable from error
        with self._state:  # no await between the load and the pin: nothing can evict it in between
            self._pins[name] += 1
        try:
            yield name
        finally:
            with self._state:
                self._pins[name] -= 1
                if self._pins[name] <= 0:
                    del self._pins[name]

    @serve.batch  # sized in __init__ from the settings (set_max_batch_size, set_batch_wait_timeout_s)
    async def run_batch(self, jobs: list[Job]) -> list[Any]:
        self.batches += 1
        self.batched_jobs += len(jobs)
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(self._run_sync, jobs)
        finally:
            self.model_seconds += time.perf_counter() - start

    def _run_sync(self, jobs: list[Job]) -> list[Any]:
        """Group jobs so each group is one engine call. A group that fails is retried one job at a
        time, so each job gets its own answer or its own error: one bad request never fails its
        neighbours (a ScoreError becomes that request's 400, anything else its 500)."""
        results: list[Any] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.group(), []).append(i)
        with self.lock:
            for idx in groups.values():
                try:
                    for i, value in zip(idx, self._score([jobs[i] for i in idx])):
                        results[i] = value
                except Exception as err:
                    if len(idx) == 1:
                        results[idx[0]] = err
                        continue
                    for i in idx:
                        try:
                            results[i] = self._score([jobs[i]])[0]
                        except Exception as own:
                            results[i] = own
            self._unload_unused()
        return results

    def _score(self, group: list[Job]) -> list[Any]:
        """One engine call for jobs of one group (same kind, adapter and decoding)."""
        first = group[0]
        if isinstance(first, DistributionJob):
            return distributions(self.engine, [j.prompt for j in group], [j.options for j in group], first.adapter,
                                 first.temperature, first.top_p)
        return self.engine.generate([j.prefix for j in group], first.n, first.temperature, first.top_p,
                                    first.max_tokens, first.adapter, first.logprobs)

    def _score_alone(self, job: Job) -> Any:
        """One request, straight to a thread-safe engine (vLLM): the engine shares its steps among every
        request in flight. Its own error is its answer, as in a batch."""
        try:
            with self.engine.loop.cancelled_by(job.cancel):
                return self._score([job])[0]
        except Exception as err:
            return err
        finally:
            if self.lock.acquire(blocking=False):  # sweep evicted adapters, never wait on an adapter load for it
                try:
                    self._unload_unused()
                finally:
                    self.lock.release()

    def stats(self) -> dict[str, float]:
        """batches / batched_requests / model_seconds for /healthz: @serve.batch's batches, or with vLLM the
        engine's steps, the engine requests that shared them (contexts and samples, summed over steps),
        the time inside them and the engine requests aborted because their client went away."""
        if self.continuous:
            loop = self.engine.loop
            return {"batches": loop.steps, "batched_requests": loop.step_requests, "model_seconds": loop.busy_seconds,
                    "cancelled_requests": loop.cancelled}
        return {"batches": self.batches, "batched_requests": self.batched_jobs, "model_seconds": self.model_seconds}

    async def submit(self, job: Job) -> Any:
        if self.continuous:
            try:
                result = await asyncio.get_running_loop().run_in_executor(self._callers, self._score_alone, job)
            except asyncio.CancelledError:  # the client went away (Serve cancels its request): free the engine now
                job.cancel.set()
                raise
        else:
            result = await self.run_batch(job)
        if isinstance(result, ScoreError):
            raise BadRequest(str(result), CONTEXT_CODE if isinstance(result, ContextOverflow) else None)
        if isinstance(result, Exception):
            raise result  # this request's own 500; its batch neighbours got their answers
        return result

    def context_tokens(self, text: str) -> int:
        return len(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])
