"""Shared fixtures: a small synthetic dataset, the offline tiny model, a local Ray instance.

Tests are hermetic: HF_HUB_OFFLINE=1 makes any accidental download fail loudly.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray Train's controller polls its workers every 2 s by default: a finished or failed attempt was
# noticed up to 2 s late, once per training run or restart (about a dozen in the suite). Polled
# every 0.5 s here; a missed poll is still only an error after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

from pathlib import Path

import pytest

from socrates_ray.config import TinyModelSection
from socrates_ray.data.synthetic_files import write_synthetic
from socrates_ray.models import ensure_tiny_model


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, studies=12, rows=3000, rows_per_shard=1000, seed=1, refusal_rate=0.0, within_subject_share=0.5)
    return out


@pytest.fixture(scope="session")
def train_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared unseen_studies split for the training tests. Every training run tokenizes
    its splits before it starts (ingest.materialize): 1,000 rows, not 3,000, saves seconds a run."""
    from socrates_ray.config import load_config
    from socrates_ray.data.prepare import prepare_options, run_prepare

    raw = tmp_path_factory.mktemp("synth-train")
    write_synthetic(raw, studies=8, rows=1000, rows_per_shard=500, seed=1, refusal_rate=0.0, within_subject_share=0.5)
    out = tmp_path_factory.mktemp("prepared-train")
    overrides = [f"data.raw={raw}", f"data.prepared={out}", "data.parallelism=1", "data.settings=[unseen_studies]"]
    run_prepare(prepare_options(load_config(None, overrides)), log=lambda *_: None)
    return out


# The tests' tiny model: 2 layers 128 wide, cheaper to train and score on 2 cores than the default shape
# (model.tiny's defaults, the demo's), and enough to show what the tests check. A command given
# model.path={tiny_model} also names this shape (the tiny_shape fixture's overrides): a tiny model folder
# refuses a config of another shape.
TEST_SHAPE = {"num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4,
              "num_key_value_heads": 4, "tokenizer_corpus_rows": 600}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("tiny"), TinyModelSection(**TEST_SHAPE), seed=0)


@pytest.fixture(scope="session")
def tiny_shape() -> list[str]:
    """The overrides naming tiny_model's shape, for every command given model.path={tiny_model}."""
    return [f"model.tiny.{key}={value}" for key, value in TEST_SHAPE.items()]


def _make_adapter(model: Path, out: Path, seed: int, r: int = 4, target_modules: tuple[str, ...] = ("q_proj", "v_proj", "lm_head")) -> Path:
    """A LoRA adapter with random (non-zero) weights, so it changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model),
        LoraConfig(r=r, lora_alpha=64, target_modules=list(target_modules), init_lora_weights=False),
    )
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_adapter():
    """make_adapter(model_folder, out_folder, seed, r=4, target_modules=...) -> out_folder."""
    return _make_adapter


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # A test-owned instance: never attach to another cluster that happens to run here.
    os.environ.pop("RAY_ADDRESS", None)
    # 4 logical CPUs on 2 cores, as `socrates-ray` itself starts them (see cli.ensure_ray).
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
