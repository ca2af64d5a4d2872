"""socrates_ray: finetune language models to simulate people in social-science experiments, on Ray.

The Python API, for notebooks and scripts (the CLI makes the same calls):

    import socrates_ray as sr
    cfg = sr.load_config("configs/demo.yaml", ["run.name=notebook"])
    sr.synth(cfg); sr.prepare(cfg)
    outcome = sr.train(cfg)                     # TrainingOutcome: the run folder, steps, the adapter export
    result = sr.evaluate(cfg)                   # EvaluationResult: typed metrics, also in metrics.json
    table = sr.predict(cfg, personas, stimuli)  # DataFrame: options, probabilities, mean per persona x stimulus
    screen = sr.screen(cfg, "configs/experiments/carbon_tax_framing.yaml")   # ScreenResult

docs/python-api.md describes every function. The stage functions are imported on first use: they
bring Ray, torch and transformers, which `import socrates_ray` (and the CLI's --help) need not wait for.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from socrates_ray.config import Config, ConfigError, load_config
from socrates_ray.errors import SocratesError

try:
    __version__ = version("socrates_ray")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

# name -> the module that defines it (imported when the name is first used)
_LAZY = {
    **{name: "socrates_ray.api" for name in (
        "synth", "prepare", "model_path", "ingest", "train", "serve", "simulate", "evaluate", "screen", "screen_trust", "predict")},
    "persona_grid": "socrates_ray.infer.table",
    "plot_distributions": "socrates_ray.plots",
    "EvaluationResult": "socrates_ray.eval.results",
    "TrainingOutcome": "socrates_ray.train.trainer",
    "ScreenResult": "socrates_ray.screen.results",
    "TrustResult": "socrates_ray.screen.results",
}

__all__ = ["Config", "ConfigError", "SocratesError", "__version__", "load_config", *_LAZY]

if TYPE_CHECKING:
    from socrates_ray.api import (  # noqa: F401
        evaluate, ingest, model_path, predict, prepare, screen, screen_trust, serve, simulate, synth, train,
    )
    from socrates_ray.eval.results import EvaluationResult  # noqa: F401
    from socrates_ray.infer.table import persona_grid  # noqa: F401
    from socrates_ray.plots import plot_distributions  # noqa: F401
    from socrates_ray.screen.results import ScreenResult, TrustResult  # noqa: F401
    from socrates_ray.train.trainer import TrainingOutcome  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'socrates_ray' has no attribute {name!r}")
