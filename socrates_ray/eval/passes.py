"""One simulation pass, as one frozen value built once: which model answers (base model, adapter),
how its answers are decoded, and where it runs (local replicas or the Serve app).

    p = build_pass(cfg.simulate, model_path, cfg.prompt.system_prompt, engine_spec(cfg.model),
                   adapter_path=adapter, adapter_name="finetuned", temperature=0.9)
    run_simulation(rows, out, p)                     # simulate.py: the driver for its backend
    run_simulation(rows, out_at_one, p.at_temperature(1.0, top_p=1.0))   # what calibration scores

Evaluation, screening and `socrates-ray simulate` build their passes here and nowhere else; the
drivers, the replicas and the resume record read the pass, never the config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from socrates_ray.config import SimulateSection
from socrates_ray.errors import SocratesError
from socrates_ray.infer import EngineSpec


class SimulateError(SocratesError, ValueError):
    """Bad simulation input (missing split, columns, endpoint)."""


@dataclass(frozen=True)
class Decoding:
    """How answers are made, the same for every batch of a pass."""

    mode: str  # exact: each bounded row's option distribution; sample: generated text
    temperature: float  # exact mode
    top_p: float
    sample_temperature: float  # sample mode and rows without a bounded scale
    sample_top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class Replicas:
    """Local model replicas: how many, what each reserves, its number format and engine. With the
    Serve app (backend http) `count` is the number of HTTP clients."""

    count: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    precision: str = "auto"  # resolved where each replica runs
    engine: EngineSpec = field(default_factory=EngineSpec)

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


@dataclass(frozen=True)
class SimulationPass:
    """Everything one pass of one model reads (build_pass)."""

    model_path: str
    system_prompt: str
    decoding: Decoding
    replicas: Replicas
    batch_size: int
    adapter_path: str | None = None  # local replicas load the adapter from here (None = the base model)
    adapter_name: str | None = None  # the name replicas and the Serve app know it by
    endpoint: str | None = None  # the Serve app's URL: its replicas answer (backend http); None = local replicas
    http_concurrency: int = 16  # backend http: requests each client keeps in flight
    http_retries: int = 8  # backend http: resends of one request after 429/502/503/504 or a failed connection
    token: str | None = field(default=None, repr=False)  # the Serve app's bearer token

    @property
    def backend(self) -> str:
        return "http" if self.endpoint else "local"

    def at_temperature(self, temperature: float, top_p: float | None = None) -> "SimulationPass":
        """The same pass with exact-mode distributions at another temperature (and top_p)."""
        decoding = dataclasses.replace(self.decoding, temperature=temperature, top_p=self.decoding.top_p if top_p is None else top_p)
        return dataclasses.replace(self, decoding=decoding)

    def resume_record(self) -> dict[str, Any]:
        """What the predictions in a folder were made with: a folder resumes only under the same record."""
        d = self.decoding
        return {"mode": d.mode, "temperature": d.temperature, "top_p": d.top_p, "sample_temperature": d.sample_temperature,
                "sample_top_p": d.sample_top_p, "max_new_tokens": d.max_new_tokens, "adapter": self.adapter_name,
                "adapter_path": self.adapter_path, "precision": self.replicas.precision, "model_path": self.model_path,
                "engine": self.replicas.engine.name if self.backend == "local" else "http"}


def build_decoding(sim: SimulateSection, temperature: float | None = None, mode: str | None = None) -> Decoding:
    """simulate.* -> Decoding; `temperature` (a fitted one) replaces simulate.temperature, which must
    otherwise be a number, and `mode` replaces simulate.mode (screening always scores exactly)."""
    if temperature is None:
        if sim.temperature == "auto":
            raise SimulateError("simulate.temperature=auto must be resolved to a number first (calibrate.resolve_temperature)")
        temperature = float(sim.temperature)
    return Decoding(mode or sim.mode, float(temperature), sim.top_p, sim.sample_temperature, sim.sample_top_p, sim.max_new_tokens)


def build_replicas(sim: SimulateSection, engine: EngineSpec) -> Replicas:
    """simulate.* (+ model.engine) -> Replicas."""
    return Replicas(sim.replicas, sim.cpus_per_replica, sim.gpus_per_replica, sim.precision, engine)


def build_pass(
    sim: SimulateSection, model_path: str, system_prompt: str, engine: EngineSpec, *, adapter_path: str | None = None,
    adapter_name: str | None = None, temperature: float | None = None, endpoint: str | None = None, token: str | None = None,
    mode: str | None = None,
) -> SimulationPass:
    """The builder: simulate.* and the model to simulate -> one SimulationPass."""
    return SimulationPass(
        model_path=model_path, system_prompt=system_prompt, decoding=build_decoding(sim, temperature, mode),
        replicas=build_replicas(sim, engine), batch_size=sim.batch_size, adapter_path=adapter_path, adapter_name=adapter_name,
        endpoint=endpoint, http_concurrency=sim.http_concurrency, http_retries=sim.http_retries, token=token,
    )
