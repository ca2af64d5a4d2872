"""Simulation as a Ray Data processor: a Dataset of rows -> a Dataset of predictions, in the shape
of ray.data.llm's processors (config in, `Dataset -> Dataset` out, an actor pool of engines inside).

    process = build_simulate_processor(sim, model_path, system_prompt, Engine.of(cfg.model))
    predictions = process(ray.data.read_parquet("runs/demo/prepared/unseen_studies/eval"))  # lazy

Each actor of the pool (sim.replicas, sim.cpus_per_replica / gpus_per_replica each) holds one
model replica (simulate.LocalReplica: the base and the adapter at sim.adapter_path) and turns a
batch of rows (simulate.INPUT_COLUMNS) into their keys + prediction, options, probs, samples. With
vLLM an actor runs `in_flight` batches at once in threads that share the engine's steps
(continuous batching, vllm_loop.py); the transformers Scorer takes one at a time.

`socrates-ray simulate` (one pass) streams it into resumable parts (simulate.run_simulation). An
evaluation runs a dozen passes (calibration, settings, fit check; base and finetuned) and keeps one
simulate.ReplicaPool across them instead: an actor pool per pass would load the model again each time.
"""

from __future__ import annotations

from typing import Any, Callable

import pyarrow as pa

from socrates_ray.config import SimulateSection
from socrates_ray.eval.simulate import Decoding, LocalReplica, ReplicaPool
from socrates_ray.score import Engine

ADAPTER = "adapter"  # the name the replica knows sim.adapter_path by


class ReplicaStage:
    """The engine stage: one model replica per actor (a map_batches class UDF)."""

    def __init__(self, model_path: str, system_prompt: str, adapter_path: str | None, threads: int, gpu: bool, precision: str,
                 engine: Engine, decoding: Decoding) -> None:
        self.replica = LocalReplica(model_path, system_prompt, {ADAPTER: adapter_path} if adapter_path else {}, threads, gpu, precision, engine)
        self.adapter = ADAPTER if adapter_path else None
        self.decoding = decoding

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.replica.predict(batch, self.decoding, self.adapter)


def build_simulate_processor(sim: SimulateSection, model_path: str, system_prompt: str, engine: Engine = Engine()) -> Callable[[Any], Any]:
    """`Dataset -> Dataset`: rows (simulate.INPUT_COLUMNS) -> predictions, decoded as `sim` says."""
    import ray

    decoding = Decoding.of(sim)  # refuses temperature=auto before any actor starts
    in_flight, at_once = ReplicaPool.concurrency(engine)
    compute = ray.data.ActorPoolStrategy(
        size=sim.replicas, max_tasks_in_flight_per_actor=in_flight,
        **({"max_concurrent_calls_per_actor": at_once, "enable_true_multi_threading": True} if at_once > 1 else {}),
    )
    args = (model_path, system_prompt, sim.adapter_path, max(1, int(sim.cpus_per_replica)), sim.gpus_per_replica > 0, sim.precision, engine, decoding)

    def process(rows: Any) -> Any:
        return rows.map_batches(
            ReplicaStage, fn_constructor_args=args, batch_size=sim.batch_size, batch_format="pyarrow", compute=compute,
            num_cpus=sim.cpus_per_replica, num_gpus=sim.gpus_per_replica,
        )

    return process
