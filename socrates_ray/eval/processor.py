"""Simulation as a Ray Data processor: a Dataset of rows -> a Dataset of predictions, in the shape
of ray.data.llm's processors (settings in, `Dataset -> Dataset` out, an actor pool of engines inside).

    process = build_simulate_processor(p)             # p: a SimulationPass (passes.build_pass)
    predictions = process(ray.data.read_parquet("runs/demo/prepared/unseen_studies/eval"))  # lazy

Each actor of the pool (p.replicas.count of them, p.replicas.cpus / gpus each) holds one model
replica (replica.LocalReplica: the base and the adapter at p.adapter_path) and turns a batch of rows
(data.prepared.INPUT_COLUMNS) into their keys + prediction, options, probs, samples. With vLLM an
actor runs several batches at once in threads that share the engine's steps (continuous batching,
infer/vllm_loop.py); the transformers engine takes one at a time.

`socrates-ray simulate` (one pass) streams it into resumable parts (simulate.simulate_with_processor).
An evaluation runs a dozen passes (calibration, settings, fit check; base and finetuned) and keeps one
replica.ReplicaPool across them instead: an actor pool per pass would load the model again each time.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from socrates_ray.eval.passes import Decoding, Replicas, SimulationPass
from socrates_ray.eval.replica import LocalReplica, replica_concurrency

ADAPTER = "adapter"  # the name the replica knows the pass's adapter_path by


class ReplicaStage:
    """The engine stage: one model replica per actor (a map_batches class UDF)."""

    def __init__(self, model_path: str, system_prompt: str, adapter_path: str | None, replicas: Replicas, decoding: Decoding) -> None:
        self.replica = LocalReplica(model_path, system_prompt, {ADAPTER: adapter_path} if adapter_path else {}, replicas)
        self.adapter = ADAPTER if adapter_path else None
        self.decoding = decoding

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.replica.predict(batch, self.decoding, self.adapter)


def build_simulate_processor(p: SimulationPass) -> Callable[[Any], Any]:
    """`Dataset -> Dataset`: rows (data.prepared.INPUT_COLUMNS) -> predictions, decoded as `p` says."""
    import ray

    r = p.replicas
    in_flight, at_once = replica_concurrency(r.engine.name)
    compute = ray.data.ActorPoolStrategy(
        size=r.count, max_tasks_in_flight_per_actor=in_flight,
        **({"max_concurrent_calls_per_actor": at_once, "enable_true_multi_threading": True} if at_once > 1 else {}),
    )
    args = (p.model_path, p.system_prompt, p.adapter_path, r, p.decoding)

    def process(rows: Any) -> Any:
        return rows.map_batches(
            ReplicaStage, fn_constructor_args=args, batch_size=p.batch_size, batch_format="pyarrow", compute=compute,
            num_cpus=r.cpus, num_gpus=r.gpus,
        )

    return process
