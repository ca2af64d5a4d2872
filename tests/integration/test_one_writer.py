"""One writer per folder, through the CLI as a careless operator would meet it: two `prepare` runs
into one folder started together (one refused, exit 2, naming the other; the folder whole and its
summary true to the files), and a `train` of a run another process is training (refused before
Ray starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from socrates_ray.data.synthetic_files import write_synthetic
from socrates_ray.locks import folder_lock

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "socrates_ray", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_two_prepares_into_one_folder_one_is_refused_and_nothing_is_lost(tmp_path):
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    write_synthetic(raw, studies=12, rows=12000, rows_per_shard=3000, seed=2, refusal_rate=0.0, within_subject_share=0.5)
    args = ("prepare", f"data.raw={raw}", f"data.prepared={prepared}", "data.parallelism=1", "data.settings=[unseen_studies]")
    runs = [cli(*args), cli(*args)]  # started together: both reach the lock within the same second
    outs = [(p.wait(timeout=300), p.stdout.read()) for p in runs]
    codes = sorted(code for code, _ in outs)
    assert codes == [0, 2], outs
    refused = next(out for code, out in outs if code == 2)
    assert "is being written by another prepare" in refused and "pid" in refused and "Traceback" not in refused, refused
    summary = json.loads((prepared / "summary.json").read_text())
    for split, counts in summary["settings"]["unseen_studies"].items():
        if split == "source":
            continue
        on_disk = sum(pq.ParquetFile(f).metadata.num_rows for f in (prepared / "unseen_studies" / split).glob("*.parquet"))
        assert on_disk == counts["rows"], (split, on_disk, counts)
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in (raw / "data").glob("*.parquet"))
    assert summary["rows_in"] == written == summary["rows_kept"] + summary["rows_quarantined"]
    assert not list(tmp_path.glob(".prepared*"))  # no staging folder and no lock left behind


def test_a_train_of_a_run_being_trained_is_refused_before_ray_starts(tmp_path, train_prepared, tiny_model):
    run_dir = tmp_path / "runs" / "busy"
    with folder_lock(run_dir, "train"):  # the first writer: this test process
        p = cli("train", f"data.prepared={train_prepared}", f"model.path={tiny_model}", "run.name=busy",
                f"run.output_dir={tmp_path / 'runs'}", f"train.storage_path={tmp_path / 'runs'}", "train.setting=unseen_studies")
        code, out = p.wait(timeout=120), p.stdout.read()
    assert code == 2 and f"is being written by another train: pid {os.getpid()}" in out, out
    assert "run.name" in out and "Traceback" not in out and "Started a local Ray instance" not in out
