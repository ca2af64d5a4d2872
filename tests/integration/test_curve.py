"""`socrates-ray curve`: one run per share of participants, every run scored on the same held-out
people, a table and a plot; re-running resumes (prepared shares kept, finished runs not retrained)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from socrates_ray.cli import main

pytestmark = pytest.mark.ray


def people(folder) -> set[tuple[str, int]]:
    table = pq.read_table(folder)
    return set(zip(table["study_id"].to_pylist(), table["participant"].to_pylist()))


def test_the_learning_curve_scores_every_share_on_the_same_held_out_people(ray_local, synth_dir, tiny_model, tiny_shape, tmp_path, capsys):
    overrides = [
        f"run.output_dir={tmp_path}", f"train.storage_path={tmp_path}", "run.name=lc", f"data.raw={synth_dir}",
        f"model.path={tiny_model}", *tiny_shape, "data.parallelism=1",
        "curve.fractions=[0.2, 0.5]", "train.max_steps=3", "train.eval_every=1000", "train.checkpoint_every=1000",
        "ingest.max_length=1024", "simulate.max_per_cell=4", "simulate.calibration_rows=40", "simulate.replicas=1",
    ]
    assert main(["curve", "--config", "configs/demo.yaml", *overrides]) == 0
    out = capsys.readouterr().out
    curve = json.loads((tmp_path / "lc" / "curve" / "curve.json").read_text())
    assert [p["fraction"] for p in curve["points"]] == [0.2, 0.5]
    # the larger share trains on more people, and nobody scored was trained on by either run
    assert curve["points"][0]["participants"] < curve["points"][1]["participants"]
    scored = people(tmp_path / "lc" / "curve" / "f0_2" / "predictions.parquet")
    for share in ("0.2", "0.5"):
        trained = people(tmp_path / "lc" / "curve" / f"prepared_f{share}" / "unseen_participants" / "train")
        assert trained and not scored & trained
        assert people(tmp_path / "lc" / "curve" / f"f{share.replace('.', '_')}" / "predictions.parquet") == scored  # the same people
    for p in curve["points"]:
        assert 0 <= p["accuracy"] <= 1 and 0 <= p["wasserstein"] <= 1 and p["anchor_accuracy"] is not None
    assert 0 <= curve["uniform_accuracy"] <= 1 and curve["base"]["wasserstein"] is not None
    assert (tmp_path / "lc" / "curve" / "curve.png").stat().st_size > 10_000
    assert "| 20% |" in out and "| uniform guess |" in out
    # re-running resumes: the prepared shares are kept and the finished runs start no workers
    assert main(["curve", "--config", "configs/demo.yaml", *overrides]) == 0
    again = capsys.readouterr().out
    assert again.count("already finished") == 2 and "prepare:" not in again
