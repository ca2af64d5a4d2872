"""Where rank 0's training metrics go besides metrics.jsonl: TensorBoard, Weights & Biases and MLflow
(train.report_to), each a `Sink` with log(record) and close().

- tensorboard: event files in <run>/tensorboard.
- wandb: a W&B run named after the training run, in <run>/wandb. Offline by default (train.tracking.wandb_mode):
  nothing leaves the machine, and `wandb sync <run>/wandb/offline-run-*` uploads it later; online needs
  WANDB_API_KEY in the workers' environment (the job's runtime_env).
- mlflow: an MLflow run in the experiment train.tracking.project, at train.tracking.mlflow_tracking_uri (else
  $MLFLOW_TRACKING_URI, else a SQLite store <run>/mlflow.db that `mlflow ui --backend-store-uri` opens).

The run's whole config is logged once, when a tracker's run is created. The tracker's run id is kept in
<run>/tracking.json, so a resumed run (a restarted worker group, or the same command again) goes on logging into
the same W&B and MLflow run instead of starting a new one.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("tensorboard", "wandb", "mlflow")
IDS_FILE = "tracking.json"
MLFLOW_PARAM_CHARS = 6000  # MLflow's longest parameter value


class Sink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a step record a tracker plots (not the step itself, not per-rank lists)."""
    out = {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
    if peaks := record.get("peak_rss_mb_per_rank"):
        out["peak_rss_mb_max_rank"] = float(max(peaks))
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}; lists and other leaves kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def missing_packages(report_to: list[str], mlflow_tracking_uri: str | None = None) -> list[str]:
    """The packages train.report_to needs that this environment lacks (checked before Ray starts); MLflow's
    SQLite store (the default) needs SQLAlchemy and Alembic besides MLflow's client."""
    import importlib.util

    uri = mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:"
    needs = {"tensorboard": ["tensorboard"], "wandb": ["wandb"],
             "mlflow": ["mlflow"] + (["sqlalchemy", "alembic"] if uri.startswith("sqlite:") else [])}
    return [p for t in report_to for p in needs[t] if importlib.util.find_spec(p) is None]


class TensorBoardSink:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, folder: Path, settings: dict[str, Any], ids: dict[str, str]) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")  # no banner per worker start: progress lines stay readable
        resumed = "wandb" in ids
        if not resumed:
            ids["wandb"] = secrets.token_hex(4)  # a W&B run id: short, lowercase, unique per training run
        self.run = wandb.init(
            project=settings["project"], name=settings["run_name"], id=ids["wandb"], resume="allow",
            mode=settings["wandb_mode"], dir=str(folder), config=None if resumed else settings["config"],
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class MlflowSink:
    def __init__(self, folder: Path, settings: dict[str, Any], ids: dict[str, str]) -> None:
        import mlflow

        uri = settings["mlflow_tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder / 'mlflow.db'}"
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        if "mlflow" not in ids:
            experiment = self.client.get_experiment_by_name(settings["project"])
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings["project"])
            run = self.client.create_run(experiment_id, run_name=settings["run_name"])
            ids["mlflow"] = run.info.run_id
            params = [mlflow.entities.Param(k, (v if isinstance(v, str) else json.dumps(v))[:MLFLOW_PARAM_CHARS])
                      for k, v in flatten(settings["config"]).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(ids["mlflow"], params=params[start : start + 100])
        else:
            self.client.update_run(ids["mlflow"], status="RUNNING")
        self.run_id = ids["mlflow"]
        self.metric = mlflow.entities.Metric

    def log(self, record: dict[str, Any]) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(k, v, now, record["step"]) for k, v in scalars(record).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")


def open_sinks(folder: Path, settings: dict[str, Any]) -> list[Sink]:
    """The sinks train.report_to names, their run ids read from and kept in <run>/tracking.json."""
    ids_path = folder / IDS_FILE
    ids: dict[str, str] = json.loads(ids_path.read_text()) if ids_path.exists() else {}
    sinks: list[Sink] = []
    for name in settings["report_to"]:
        if name == "tensorboard":
            sinks.append(TensorBoardSink(folder))
        elif name == "wandb":
            sinks.append(WandbSink(folder, settings, ids))
        elif name == "mlflow":
            sinks.append(MlflowSink(folder, settings, ids))
    if ids:
        ids_path.write_text(json.dumps(ids, indent=1) + "\n")
    return sinks
