"""A command's inputs, checked before anything heavy starts (Ray, torch, a model load): a wrong
`data.raw`, `data.prepared`, `model.path` or adapter folder is an error within a second or two,
naming the config key and the fix, not after Ray's start-up.

`check_inputs(command, cfg, ...)` is called by the CLI before it imports the stages, and by each
function of socrates_ray.api before it starts Ray, so the Python API fails as early.
"""

from __future__ import annotations

import os
from pathlib import Path

from socrates_ray.config import Config, ConfigError
from socrates_ray.data.prepared import split_problem
from socrates_ray.infer.adapter_check import adapter_problem, base_vocab


def model_problem(source: str, path: str) -> str | None:
    """Why model.path cannot be loaded, or None. A tiny model is built there when missing; a
    pretrained one must be a Hugging Face model folder (or a hub id where a network exists)."""
    if source == "tiny":
        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            return f"model.path: {path} is a file, not a folder (model.source=tiny builds the tiny model into a folder)"
        return None
    folder = Path(path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            return (f"model.path: {path} is not a Hugging Face model folder (no config.json); point it at the folder "
                    "`save_pretrained` wrote (config.json, *.safetensors, tokenizer files)")
        return None
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        return (f"model.path: {path} does not exist (model.source=pretrained expects a Hugging Face model folder); "
                "fix the path, or set model.source=tiny to build the offline tiny model there")
    return None


def raw_problem(raw: str) -> str | None:
    """Why data.raw cannot be prepared, or None. Remote URLs (s3://, hf://, ...) are listed by prepare itself."""
    if "://" in raw:
        return None
    folder = Path(raw)
    if not folder.exists():
        return (f"data.raw: {raw} does not exist (expected a folder of SocSci210 Parquet shards); make one with "
                f"`socrates-ray synth --out {raw}` or point data.raw at the dataset")
    if not folder.is_dir() or not any(folder.rglob("*.parquet")):
        return f"data.raw: {raw} holds no *.parquet files (expected SocSci210's shards, e.g. data/train-00000-of-00017.parquet)"
    return None


def _splits(cfg: Config, command: str, setting: str | None) -> list[tuple[str, str]]:
    """The (setting, split) pairs a command reads."""
    fits_temperature = cfg.simulate.temperature == "auto" and cfg.simulate.mode == "exact"
    calibration = [(cfg.train.setting, "val")] if fits_temperature else []
    match command:
        case "train":
            return [(cfg.train.setting, "train")]
        case "simulate":
            return [(setting or "unseen_studies", "eval"), *calibration]
        case "evaluate":
            return [*((s, "eval") for s in cfg.evaluate.settings), *calibration]
        case "screen":
            return [(setting, "eval"), *calibration] if setting else calibration
        case "pilot":  # the replay reads the held-out studies and the general adapter's training split
            return [(setting, "eval"), (cfg.train.setting, "train"), *calibration] if setting else []
    return []


def _adapters(cfg: Config, command: str) -> list[tuple[str, str]]:
    """(config key, folder) of every adapter folder a command loads by path."""
    named = [("evaluate.adapter_path", cfg.evaluate.adapter_path)]
    if command == "simulate":
        named = [("simulate.adapter_path", cfg.simulate.adapter_path)]
    if command == "train":
        named = [("train.init_adapter", cfg.train.init_adapter)]
    if command == "serve":
        named += [(f"serve.adapters.{name}", path) for name, path in cfg.serve.adapters.items()]
    return [(key, path) for key, path in named if path]


def tracking_problem(cfg: Config) -> str | None:
    """Why train.report_to cannot log, or None: a tracker whose package is missing, or W&B online with no key."""
    from socrates_ray.train.tracking import missing_packages

    t = cfg.train
    if missing := missing_packages(t.report_to, t.tracking.mlflow_tracking_uri):
        return (f"train.report_to: {', '.join(t.report_to)} needs {', '.join(missing)}, which this environment lacks; "
                "install them with pip install 'socrates_ray[tracking]', or drop the tracker from train.report_to")
    if "wandb" in t.report_to and t.tracking.wandb_mode == "online" and not os.environ.get("WANDB_API_KEY"):
        return ("train.tracking.wandb_mode=online needs WANDB_API_KEY in the environment (on a cluster: in the job's "
                "runtime_env env_vars); export it, or use wandb_mode=offline and `wandb sync` the run later")
    return None


def check_inputs(command: str, cfg: Config, setting: str | None = None, experiment: str | None = None) -> None:
    """Raise ConfigError for the first input of `command` that cannot work; `setting` is simulate's
    --setting or screen's --from-split, `experiment` screen's --experiment."""
    if command in ("train", "curve", "pilot") and (problem := tracking_problem(cfg)) is not None:
        raise ConfigError(problem)
    if command in ("prepare", "curve"):
        problem = raw_problem(cfg.data.raw) or (model_problem(cfg.model.source, cfg.model.path) if command == "curve" else None)
        if problem:
            raise ConfigError(problem)
        return
    if command not in ("train", "serve", "simulate", "evaluate", "screen", "pilot"):
        return
    for split_setting, part in _splits(cfg, command, setting):
        if (problem := split_problem(cfg.data.prepared, split_setting, part)) is not None:
            raise ConfigError(problem)
    if (problem := model_problem(cfg.model.source, cfg.model.path)) is not None:
        raise ConfigError(problem)
    base = base_vocab(cfg.model.path)
    for key, path in _adapters(cfg, command):
        if (problem := adapter_problem(path, base)) is not None:
            raise ConfigError(f"{key}: adapter {path} cannot be used: {problem}")
    if command == "serve" and cfg.serve.adapters_dir and not Path(cfg.serve.adapters_dir).is_dir():
        raise ConfigError(f"serve.adapters_dir: {cfg.serve.adapters_dir} is not a folder (expected one sub-folder per PEFT adapter)")
    if experiment is not None and not Path(experiment).is_file():
        raise ConfigError(f"--experiment: no such file {experiment} (expected a YAML spec such as "
                          "configs/experiments/carbon_tax_framing.yaml)")
