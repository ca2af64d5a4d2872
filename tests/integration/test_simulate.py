"""Batch simulation: a killed job, re-run, skips the rows it already finished."""

from __future__ import annotations

import glob

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, SimulateSection
from socrates_ray.data.prompts import parse_answer_scale
from socrates_ray.simulate import INPUT_COLUMNS, run_simulation

pytestmark = pytest.mark.ray


def rows_from(synth_dir, n: int) -> pa.Table:
    table = pq.read_table(sorted(glob.glob(f"{synth_dir}/data/*.parquet"))[0]).slice(0, n)
    scales = [parse_answer_scale(s) for s in table["stimuli"].to_pylist()]
    table = table.append_column("scale_low", pa.array([s.low for s in scales], pa.int64()))
    table = table.append_column("scale_high", pa.array([s.high for s in scales], pa.int64()))
    return table.select(INPUT_COLUMNS)


def test_killed_simulation_resumes_without_redoing_rows(ray_local, synth_dir, tiny_model, tmp_path) -> None:
    rows = rows_from(synth_dir, 40)
    sim = SimulateSection(batch_size=8, replicas=1, cpus_per_replica=1)
    out = tmp_path / "sim"
    logs: list[str] = []
    run_simulation(rows, out, sim, str(tiny_model), DEFAULT_SYSTEM_PROMPT, log=logs.append, stop_after_parts=2)
    first = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert first.num_rows == 16 and not (out / "predictions.parquet").exists()

    logs.clear()
    target = run_simulation(rows, out, sim, str(tiny_model), DEFAULT_SYSTEM_PROMPT, log=logs.append)
    assert any("16 already done" in line and "24 to go" in line for line in logs), logs
    table = pq.read_table(target)
    keys = list(zip(table["study_id"].to_pylist(), table["sample_id"].to_pylist()))
    assert len(keys) == len(set(keys)) == 40
    # exact mode on bounded scales: a distribution per row, summing to 1, and a drawn answer in it
    for r in table.to_pylist():
        if r["scale_low"] is not None:
            assert abs(sum(r["probs"]) - 1) < 1e-6 and r["prediction"] in r["options"]
    # rows finished before the kill were not predicted again
    assert sum(int(p.stat().st_size > 0) for p in out.glob("part-*.parquet")) == 5
