"""Resuming a simulation folder: settings that changed are refused, a record from before engines resumes."""

from __future__ import annotations

import json

import pytest

from socrates_ray.config import SimulateSection
from socrates_ray.eval.simulate import SimulateError, check_params


def test_a_folder_resumes_only_with_the_settings_and_engine_it_was_made_with(tmp_path) -> None:
    sim = SimulateSection()
    check_params(tmp_path, sim, "model", "vllm")
    (tmp_path / "part-0001.parquet").write_bytes(b"")
    check_params(tmp_path, sim, "model", "vllm")
    with pytest.raises(SimulateError, match="engine: 'vllm' -> 'transformers'"):
        check_params(tmp_path, sim, "model", "transformers")
    with pytest.raises(SimulateError, match="top_p: 1.0 -> 0.5"):
        check_params(tmp_path, sim.model_copy(update={"top_p": 0.5}), "model", "vllm")
    # a record written before the engine was recorded resumes on any engine, as before
    record = json.loads((tmp_path / "simulate_params.json").read_text())
    del record["engine"]
    (tmp_path / "simulate_params.json").write_text(json.dumps(record))
    check_params(tmp_path, sim, "model", "http")
