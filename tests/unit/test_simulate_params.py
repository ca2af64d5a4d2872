"""Resuming a simulation folder: settings that changed are refused, the same ones resume."""

from __future__ import annotations

import dataclasses

import pytest

from socrates_ray.config import SimulateSection
from socrates_ray.eval.passes import SimulateError, build_pass
from socrates_ray.eval.simulate import check_params
from socrates_ray.infer import EngineSpec


def test_a_folder_resumes_only_with_the_settings_and_engine_it_was_made_with(tmp_path) -> None:
    on_vllm = build_pass(SimulateSection(), "model", "", EngineSpec("vllm"))
    check_params(tmp_path, on_vllm)
    (tmp_path / "part-0001.parquet").write_bytes(b"")
    check_params(tmp_path, on_vllm)
    with pytest.raises(SimulateError, match="engine: 'vllm' -> 'transformers'"):
        check_params(tmp_path, build_pass(SimulateSection(), "model", "", EngineSpec("transformers")))
    with pytest.raises(SimulateError, match="top_p: 1.0 -> 0.5"):
        check_params(tmp_path, build_pass(SimulateSection(top_p=0.5), "model", "", EngineSpec("vllm")))
    # through the Serve app the engine is the app's: recorded as http
    with pytest.raises(SimulateError, match="engine: 'vllm' -> 'http'"):
        check_params(tmp_path, dataclasses.replace(on_vllm, endpoint="http://127.0.0.1:8000"))
