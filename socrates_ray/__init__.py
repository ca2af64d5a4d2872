"""socrates_ray: finetune language models to simulate people in social-science experiments, on Ray.

The Python API, for notebooks and scripts (the CLI makes the same calls):

    import socrates_ray as sr
    cfg = sr.load_config("configs/demo.yaml", ["run.name=notebook"])
    sr.synth(cfg); sr.prepare(cfg)
    outcome = sr.finetune(cfg)                  # TrainingOutcome: the newest checkpoint, the run folder
    result = sr.evaluate(cfg)                   # EvaluationResult: typed metrics, also in metrics.json
    table = sr.predict(cfg, personas, stimuli)  # DataFrame: options, probabilities, mean per persona x stimulus
    screen = sr.screen_experiment(cfg, "configs/experiments/carbon_tax_framing.yaml")   # ScreenResult

docs/python-api.md describes every function. The stage functions are imported on first use: they
bring Ray, torch and transformers, which `import socrates_ray` (and the CLI's --help) need not wait for.
They are named `finetune`, `deploy` and `screen_experiment`, not after the CLI's `train`, `serve` and
`screen`: those are the names of subpackages, and importing a subpackage rebinds its name on the package.
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

# public name -> (the module that defines it, its name there); imported when the name is first used
_LAZY = {
    **{name: ("socrates_ray.api", name) for name in (
        "synth", "prepare", "model_path", "ingest", "simulate", "evaluate", "screen_trust", "predict")},
    "finetune": ("socrates_ray.api", "train"),
    "deploy": ("socrates_ray.api", "serve"),
    "screen_experiment": ("socrates_ray.api", "screen"),
    "learning_curve": ("socrates_ray.curves", "run_learning_curve"),
    "pilot": ("socrates_ray.pilots", "run_pilot"),
    "replay_pilots": ("socrates_ray.pilots", "replay_pilots"),
    "persona_grid": ("socrates_ray.infer.table", "persona_grid"),
    "plot_distributions": ("socrates_ray.plots", "plot_distributions"),
    "EvaluationResult": ("socrates_ray.eval.results", "EvaluationResult"),
    "TrainingOutcome": ("socrates_ray.train.trainer", "TrainingOutcome"),
    "ScreenResult": ("socrates_ray.screen.results", "ScreenResult"),
    "TrustResult": ("socrates_ray.screen.results", "TrustResult"),
    "CurveResult": ("socrates_ray.eval.results", "CurveResult"),
    "PilotResult": ("socrates_ray.eval.results", "PilotResult"),
    "PilotReplay": ("socrates_ray.eval.results", "PilotReplay"),
}

__all__ = ["Config", "ConfigError", "SocratesError", "__version__", "load_config", *_LAZY]

if TYPE_CHECKING:
    from socrates_ray.api import evaluate, ingest, model_path, predict, prepare, screen_trust, simulate, synth  # noqa: F401
    from socrates_ray.api import screen as screen_experiment, serve as deploy, train as finetune  # noqa: F401
    from socrates_ray.eval.results import CurveResult, EvaluationResult, PilotReplay, PilotResult  # noqa: F401
    from socrates_ray.curves import run_learning_curve as learning_curve  # noqa: F401
    from socrates_ray.pilots import replay_pilots, run_pilot as pilot  # noqa: F401
    from socrates_ray.infer.table import persona_grid  # noqa: F401
    from socrates_ray.plots import plot_distributions  # noqa: F401
    from socrates_ray.screen.results import ScreenResult, TrustResult  # noqa: F401
    from socrates_ray.train.trainer import TrainingOutcome  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'socrates_ray' has no attribute {name!r}")
