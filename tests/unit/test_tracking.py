"""train.report_to: the trackers' sinks, a resumed run logging into the same tracker run, and the
preflight's errors for a tracker that cannot work."""

import json

import pytest

from socrates_ray.config import ConfigError, load_config
from socrates_ray.preflight import check_inputs, tracking_problem
from socrates_ray.train import tracking
from socrates_ray.train.tracking import flatten, open_sinks, scalars


def settings(report_to, **extra):
    return {"report_to": report_to, "project": "unit", "wandb_mode": "offline", "mlflow_tracking_uri": None,
            "run_name": "r", "config": {"train": {"lr": 0.1, "lora": {"target_modules": ["q_proj"]}}, "run": {"name": "r"}}, **extra}


def test_scalars_keep_the_numbers_a_tracker_plots():
    record = {"step": 3, "loss": 1.5, "lr": 1e-4, "epoch": 0, "peak_rss_mb_per_rank": [10.0, 12.5], "note": "x", "final": True}
    assert scalars(record) == {"loss": 1.5, "lr": 1e-4, "epoch": 0.0, "peak_rss_mb_max_rank": 12.5}


def test_flatten_names_nested_keys_with_dots():
    assert flatten({"train": {"lr": 0.1, "lora": {"r": 8}}, "run": {"name": "x"}, "empty": {}}) == {
        "train.lr": 0.1, "train.lora.r": 8, "run.name": "x", "empty": {}}


def test_a_resumed_run_logs_into_the_same_mlflow_and_wandb_runs(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = open_sinks(tmp_path, settings(["mlflow", "wandb"]))
    for step in (1, 2):
        for sink in first:
            sink.log({"step": step, "loss": 1.0 / step})
    for sink in first:
        sink.close()
    ids = json.loads((tmp_path / "tracking.json").read_text())
    again = open_sinks(tmp_path, settings(["mlflow", "wandb"]))  # what a restarted worker group does
    for sink in again:
        sink.log({"step": 3, "loss": 0.25})
        sink.close()
    assert json.loads((tmp_path / "tracking.json").read_text()) == ids
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_runs([client.get_experiment_by_name("unit").experiment_id])) == 1
    assert [(m.step, m.value) for m in sorted(client.get_metric_history(ids["mlflow"], "loss"), key=lambda m: m.step)] == [
        (1, 1.0), (2, 0.5), (3, 0.25)]
    params = client.get_run(ids["mlflow"]).data.params
    assert params["train.lr"] == "0.1" and json.loads(params["train.lora.target_modules"]) == ["q_proj"]
    assert client.get_run(ids["mlflow"]).info.status == "FINISHED"
    # W&B writes a folder per attempt, all under the one run id
    assert {p.name.rsplit("-", 1)[-1] for p in tmp_path.glob("wandb/offline-run-*")} == {ids["wandb"]}


def test_a_tracker_whose_package_is_missing_is_refused_before_ray_starts(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = load_config("configs/demo.yaml", ["train.report_to=[tensorboard,wandb]"])
    with pytest.raises(ConfigError, match=r"needs wandb.*pip install 'socrates_ray\[tracking\]'"):
        check_inputs("train", cfg)
    assert tracking.missing_packages(["tensorboard", "mlflow"], "http://tracking:5000") == []


def test_wandb_online_without_a_key_is_refused(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = load_config("configs/demo.yaml", ["train.report_to=[wandb]", "train.tracking.wandb_mode=online"])
    assert "WANDB_API_KEY" in tracking_problem(cfg)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking_problem(cfg) is None
    assert tracking_problem(load_config("configs/demo.yaml", ["train.report_to=[wandb]"])) is None  # offline needs no key
