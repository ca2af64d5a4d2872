"""One thread that owns a VllmEngine's vLLM LLMs and steps them: continuous batching across callers.

vLLM's offline `LLM.generate` adds its prompts, steps the engine until they all finish and returns:
a replica calling it per batch made every request wait for the batch before it, and a batch only
held what had arrived together. Here any thread (each Serve request, each simulate batch in
flight) hands its requests to the loop; they join the engine's next step, and each caller gets its
own outputs back as soon as they finish while the others keep decoding. That is what vLLM's
`AsyncLLM` does for its OpenAI server, without its engine-core process: in process an engine
starts in 28 s on 2 cores against 71 s (see vllm_engine.VllmEngine).

Every vLLM call of a VllmEngine runs on this thread: building engines, removing adapters, adding
requests and stepping. In-process engines share vLLM's module-level state (the forward context,
the parallel groups), so two threads stepping two engines at once would corrupt each other.

    loop = EngineLoop()
    llm = loop.call(build_engine)                       # runs on the loop thread, returns its value
    outputs = loop.run(llm, prompts, params, lora)      # blocks this thread only; in prompt order
    with loop.cancelled_by(event):                      # event.set() from anywhere: this thread's
        vllm_engine.generate(...)                       # requests leave the engine, run raises Cancelled

A Serve replica cancels that way when its client disconnects: an abandoned request stops costing
engine steps at once, instead of decoding to its end under a server that is already behind.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence


class Cancelled(Exception):
    """The caller's cancel event was set: its requests were aborted in the engine."""


@dataclass
class _Batch:
    """One caller's requests to one engine: done when every output has come back."""

    engine: Any
    future: Future
    outputs: list[Any]
    remaining: int
    cancel: threading.Event | None = None
    ids: list[str] = field(default_factory=list)


class EngineLoop:
    """The thread that steps vLLM engines for every caller (see the module docstring).

    Figures for /healthz and bench/serve.py: steps (engine steps), step_requests (requests in flight
    summed over steps: / steps = how many shared a step), busy_seconds (time inside steps)."""

    def __init__(self, name: str = "vllm-engine-loop") -> None:
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: dict[str, tuple[_Batch, int]] = {}  # request id -> (its batch, its index there)
        self._in_flight: dict[Any, int] = {}  # engine (an LLM) -> its requests in flight
        self._ids = itertools.count()
        self.steps = 0
        self.step_requests = 0
        self.busy_seconds = 0.0
        self.cancelled = 0  # requests aborted because their caller gave up
        self._local = threading.local()  # the calling thread's cancel event (cancelled_by)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- called from any thread -------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run fn(*args, **kwargs) on the loop thread between two steps; its result or its error."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        done: Future = Future()
        self._inbox.put(("call", fn, args, kwargs, done))
        return done.result()

    def run(self, engine: Any, prompts: Sequence[Any], params: Sequence[Any], lora: Any = None) -> list[Any]:
        """Add one request per prompt (its own SamplingParams) to `engine` and wait for all of them;
        the finished RequestOutputs in prompt order. Other callers' requests share the steps."""
        if not prompts:
            return []
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        done: Future = Future()
        batch = _Batch(engine, done, [None] * len(prompts), len(prompts), getattr(self._local, "cancel", None))
        self._inbox.put(("run", batch, list(prompts), list(params), lora))
        return done.result()

    @contextlib.contextmanager
    def cancelled_by(self, event: threading.Event) -> Iterator[None]:
        """Within this block, every run() of the calling thread is aborted once `event` is set."""
        before = getattr(self._local, "cancel", None)
        self._local.cancel = event
        try:
            yield
        finally:
            self._local.cancel = before

    # --- the loop thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            items = [] if self._waiting else [self._inbox.get()]  # idle: sleep until someone asks
            while True:  # everything that arrived meanwhile joins the next step
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for item in items:
                self._take(item)
            for batch in {id(b): b for b, _ in self._waiting.values() if b.cancel is not None and b.cancel.is_set()}.values():
                self.cancelled += sum(1 for r in batch.ids if r in self._waiting)
                self._drop(batch, Cancelled("the caller cancelled these requests"))
            for engine in [e for e, n in self._in_flight.items() if n > 0]:
                self._step(engine)

    def _take(self, item: tuple) -> None:
        if item[0] == "call":
            _, fn, args, kwargs, done = item
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as err:  # the caller's error, raised in the caller's thread
                done.set_exception(err)
            return
        _, batch, prompts, params, lora = item
        from vllm.sampling_params import RequestOutputKind

        engine = batch.engine.llm_engine
        try:
            # what LLM.generate does with its prompts before adding them (token ids pass through)
            prompts = batch.engine._preprocess_cmpl(prompts)
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                p.output_kind = RequestOutputKind.FINAL_ONLY  # one output per request, when it is finished
                request_id = f"r{next(self._ids)}"
                engine.add_request(request_id, prompt, p, lora_request=lora)
                batch.ids.append(request_id)
                self._waiting[request_id] = (batch, i)
                self._in_flight[batch.engine] = self._in_flight.get(batch.engine, 0) + 1
        except BaseException as err:  # e.g. a prompt vLLM refuses: this caller's error, the others go on
            self._drop(batch, err)

    def _step(self, llm: Any) -> None:
        start = time.perf_counter()
        try:
            outputs = llm.llm_engine.step()
        except BaseException as err:  # fail every caller waiting on this engine, keep the loop alive
            for batch in {id(b): b for b, _ in self._waiting.values() if b.engine is llm}.values():
                self._drop(batch, err)
            return
        finally:
            self.steps += 1
            self.step_requests += self._in_flight.get(llm, 0)
            self.busy_seconds += time.perf_counter() - start
        for out in outputs:
            if not out.finished or out.request_id not in self._waiting:
                continue
            batch, i = self._waiting.pop(out.request_id)
            self._in_flight[llm] -= 1
            batch.outputs[i] = out
            batch.remaining -= 1
            if batch.remaining == 0:
                batch.future.set_result(batch.outputs)

    def _drop(self, batch: _Batch, err: BaseException) -> None:
        """Abort a batch's requests still in the engine and hand its caller the error."""
        live = [r for r in batch.ids if self._waiting.pop(r, None) is not None]
        if live:
            self._in_flight[batch.engine] -= len(live)
            try:
                batch.engine.llm_engine.abort_request(live)
            except Exception:  # the engine is already failing; the caller gets the first error
                pass
        if not batch.future.done():
            batch.future.set_exception(err)
