"""The process a command runs in: a Ray instance to join or start (with enough logical CPUs for what
the run reserves), and quiet libraries below run.log_level=info."""

from __future__ import annotations

import os
from typing import Any

from socrates_ray.config import Config, RunSection


def ensure_ray(cfg: Config) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local instance with enough logical CPUs.

    A local run reserves whole or fractional CPUs for training workers, for the train and eval
    tokenizer pools and for Ray Data's file listing (one whole CPU, not configurable). On a
    2-core laptop that exceeds the cores, and Ray would wait forever for the listing task; the
    local instance therefore gets max(cores, what the run reserves) logical CPUs. The cores are
    shared: the data side mostly idles while the workers compute.
    """
    import math

    import ray

    if ray.is_initialized():
        return
    verbose = cfg.run.verbose
    # Quiet runs keep Ray workers' output out of the terminal (it stays in /tmp/ray/session_latest/logs);
    # training progress reaches the driver through the run folder instead (trainer.follow_progress).
    options = {"log_to_driver": verbose, "logging_config": ray.LoggingConfig(log_level=cfg.run.log_level.upper())}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**options)
    else:
        ing, t = cfg.ingest, cfg.train
        reserved = ing.num_workers * t.cpus_per_worker + 2 * ing.tokenize_actors * ing.cpus_per_task + 2
        # address="local": a new instance even where another local one runs (without it ray.init joins
        # that one and refuses num_cpus: "When connecting to an existing cluster, num_cpus ... must not be provided")
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(reserved)), include_dashboard=False, **options)
    if not verbose:  # on a cluster too: the Parquet reader's planning lines come from this process
        import logging

        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        # Ray Data sets its loggers' levels from its own logging config when first imported
        # ("Starting execution of Dataset ...", "Execution plan ...", "execution finished" per dataset)
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def quiet_libraries(run: RunSection) -> None:
    """Below `info`: no library warnings, progress bars or INFO lines from Ray, DeepSpeed, transformers and
    peft in this process and in the Ray workers it starts (they inherit the environment).
    socrates_ray's own lines are prints and stay."""
    import logging
    import warnings

    if run.verbose:
        return
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    level = getattr(logging, run.log_level.upper())
    for name in ("ray", "ray.data", "ray.train", "ray.serve", "DeepSpeed", "transformers", "peft", "torch"):
        logging.getLogger(name).setLevel(level)
    # DeepSpeed and Serve set their loggers' levels again when imported or started (DeepSpeed's
    # "Setting accelerator to CPU" warning, Serve's "Started Serve" INFO lines); a filter stays.
    for name in ("DeepSpeed", "ray.serve"):
        logger = logging.getLogger(name)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, AtLeast)]  # one per logger, however many runs
        logger.addFilter(AtLeast(level))


class AtLeast:
    """A logging filter that keeps records at `level` and above, whatever the logger's level is set to later."""

    def __init__(self, level: int) -> None:
        self.level = level

    def filter(self, record: Any) -> bool:
        return record.levelno >= self.level
