"""The models a screening asks, simulated: one pass per model (exact distributions whatever
simulate.mode says: effects, intervals and power are computed from them), through one local replica
pool holding every adapter or through the Serve app; each model's temperature fitted once on the
validation split, as evaluate fits it.

    setup = build_screen_setup(cfg, model_path, {"base": None, "finetuned": adapter})   # the builder
    with simulator(setup) as sim:
        table = sim.predict("finetuned", rows, folder)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.config import Config
from socrates_ray.eval.calibrate import CalibrationSplit, build_calibration_split, resolve_temperature
from socrates_ray.eval.passes import SimulationPass, build_pass
from socrates_ray.eval.replica import ReplicaPool
from socrates_ray.eval.simulate import run_simulation
from socrates_ray.infer import engine_spec

SCREEN_CALIBRATION = "screen_calibration.json"  # each model's fitted error (trust.py writes it, job.py reads it)


@dataclass(frozen=True)
class ScreenSetup:
    """What every screening and trust check of a run reads, as plain values (build_screen_setup)."""

    root: Path  # <run>/screen: screenings, the trust checks and SCREEN_CALIBRATION
    prepared: str
    raw: str
    seed: int
    trained_on: str  # train.setting: its validation split fits temperatures and model errors
    temperature: float | str  # simulate.temperature: a number, or "auto"
    calibration: CalibrationSplit
    passes: dict[str, SimulationPass]  # per model (base = no adapter), exact mode

    @property
    def adapters(self) -> dict[str, str | None]:
        return {name: p.adapter_path for name, p in self.passes.items()}


def build_screen_setup(cfg: Config, model_path: str, adapters: dict[str, str | None], endpoint: str | None = None,
                       token: str | None = None) -> ScreenSetup:
    """The builder: model name -> adapter folder (None = the base model) and the config's simulate,
    data and run sections -> ScreenSetup."""
    placeholder = 1.0 if cfg.simulate.temperature == "auto" else None
    passes = {
        name: build_pass(cfg.simulate, model_path, cfg.prompt.system_prompt, engine_spec(cfg.model), adapter_path=path,
                         adapter_name=None if path is None else name, temperature=placeholder, endpoint=endpoint, token=token,
                         mode="exact")
        for name, path in adapters.items()
    }
    return ScreenSetup(cfg.run_dir / "screen", cfg.data.prepared, str(cfg.data.raw), cfg.run.seed, cfg.train.setting,
                       cfg.simulate.temperature, build_calibration_split(cfg), passes)


class Simulator:
    """Predictions of the setup's models on any rows, through `pool` (None: each pass's own driver)."""

    def __init__(self, setup: ScreenSetup, log: Callable[[str], None], pool: ReplicaPool | None) -> None:
        self.setup, self.log, self.pool = setup, log, pool
        self.temperatures: dict[str, float] = {}

    def temperature(self, name: str) -> float:
        if name not in self.temperatures:
            self.temperatures[name], _ = resolve_temperature(self.setup.temperature, self.setup.passes[name], self.setup.calibration,
                                                             self.setup.root / "calibration" / name, self.log, self.pool)
        return self.temperatures[name]

    def predict(self, name: str, rows: pa.Table, folder: Path) -> pa.Table:
        p = self.setup.passes[name].at_temperature(self.temperature(name))
        return pq.read_table(run_simulation(rows, folder, p, self.pool, self.log))


@contextmanager
def simulator(setup: ScreenSetup, log: Callable[[str], None] = print) -> Iterator[Simulator]:
    """A Simulator over one local replica pool holding every adapter (or over the Serve app)."""
    first = next(iter(setup.passes.values()))
    if first.endpoint:
        yield Simulator(setup, log, None)
        return
    loaded = {name: path for name, path in setup.adapters.items() if path is not None}
    with ReplicaPool(first.model_path, first.system_prompt, loaded, first.replicas) as pool:
        yield Simulator(setup, log, pool)
