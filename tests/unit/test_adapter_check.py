"""Broken adapter folders are refused before they touch the model, with a message naming what is
wrong, and a load that fails anyway leaves the base and the adapters loaded before exactly as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from socrates_ray.infer.adapter_check import AdapterUnusable, adapter_problem, base_shapes, base_vocab

PROMPTS = ["Age: 40\nParty: Democrat\n\nHow fair is this plan? Only return an integer from 1 to 7, nothing else."]
OPTIONS = [list(range(1, 8))]


def _edit_tensors(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _cut(folder: Path, keep: int | float) -> None:
    path = folder / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])


def _wider_vocab(tensors) -> None:
    import torch

    key = next(k for k in tensors if k.endswith("lm_head.lora_B.weight"))
    tensors[key] = torch.cat([tensors[key], tensors[key][:10]])


def _narrower_lora_a(tensors) -> None:
    key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = tensors[key][:, :64].contiguous()


def _symlink_to_nothing(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.safetensors").symlink_to(folder / "gone.safetensors")


# kind -> (how to break a good adapter folder, a fragment of the message)
BROKEN = {
    "weights cut short": (lambda f: _cut(f, 0.5), "truncated"),
    "header cut": (lambda f: _cut(f, 20), "truncated"),
    "empty config": (lambda f: (f / "adapter_config.json").write_text(""), "adapter_config.json is not readable JSON"),
    "config of another rank": (lambda f: _edit_config(f, r=8), "at rank 8"),
    "target_modules edited": (lambda f: _edit_config(f, target_modules=["k_proj", "o_proj", "lm_head"]), "target_modules do not match"),
    "weights of another shape": (lambda f: _edit_tensors(f, _narrower_lora_a), "does not fit"),
    "another base's vocabulary": (lambda f: _edit_tensors(f, _wider_vocab), "trained on base"),
    "weights a dangling symlink": (_symlink_to_nothing, "not a regular file"),
    "no weights": (lambda f: (f / "adapter_model.safetensors").unlink(), "has no weights"),
    "no folder": (lambda f: shutil.rmtree(f), "does not exist"),
}


@pytest.fixture(scope="module")
def good(tiny_model, tmp_path_factory, make_adapter) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("good") / "a", seed=3)


def test_a_whole_adapter_passes_and_each_broken_kind_is_named(tiny_model, good, tmp_path):
    base = base_shapes(str(tiny_model))
    assert base is not None and base.vocab == base_vocab(str(tiny_model)).vocab
    assert adapter_problem(good, base) is None and adapter_problem(good, None) is None
    for kind, (breaking, fragment) in BROKEN.items():
        folder = tmp_path / kind.replace(" ", "_").replace("'", "")
        shutil.copytree(good, folder)
        breaking(folder)
        problem = adapter_problem(folder, base)
        assert problem is not None and fragment in problem, (kind, problem)
    # the vocabulary is named without torch, as the preflight checks it
    wider = tmp_path / "another_bases_vocabulary"
    said = adapter_problem(wider, base_vocab(str(tiny_model)))
    assert f"(vocab {base.vocab + 10}); this base is" in said and f"(vocab {base.vocab})" in said


def test_a_failed_load_leaves_the_base_and_the_loaded_adapters_bit_for_bit(tiny_model, good, tmp_path, make_adapter):
    from socrates_ray.infer import TransformersEngine

    engine = TransformersEngine(str(tiny_model), "You are a survey respondent.", max_length=512)
    base_before = engine.option_logprobs(PROMPTS, OPTIONS)
    for kind, (breaking, fragment) in BROKEN.items():  # each refused before the model is touched
        folder = tmp_path / kind.replace(" ", "_").replace("'", "")
        shutil.copytree(good, folder)
        breaking(folder)
        with pytest.raises(AdapterUnusable, match="cannot be used"):
            engine.load_adapter(kind, folder)
        assert kind not in engine.adapters
        assert np.array_equal(engine.option_logprobs(PROMPTS, OPTIONS)[0], base_before[0]), kind

    # a load that passes the checks and fails half way (after peft injected its layers): rolled back,
    # whether it was the first adapter (peft wraps the base in place) or joins one loaded before
    other = make_adapter(tiny_model, tmp_path / "other", seed=4, target_modules=("k_proj", "o_proj"))
    inject = engine._inject

    def fails_after_injecting(name, path):
        inject(name, path)
        engine._inject = inject  # once: the rollback's own loads go through
        raise RuntimeError("the disk went away")

    engine._inject = fails_after_injecting
    with pytest.raises(AdapterUnusable, match="the disk went away"):
        engine.load_adapter("other", other)
    assert engine.adapters == {} and np.array_equal(engine.option_logprobs(PROMPTS, OPTIONS)[0], base_before[0])

    engine.load_adapter("good", good)
    with_good = engine.option_logprobs(PROMPTS, OPTIONS, "good")
    assert not np.allclose(with_good[0], base_before[0])  # the adapter changes the answers
    engine._inject = fails_after_injecting
    with pytest.raises(AdapterUnusable, match="the disk went away"):
        engine.load_adapter("other", other)
    assert sorted(engine.adapters) == ["good"] and sorted(engine.model.peft_config) == ["good"]  # no stray layers left
    assert np.array_equal(engine.option_logprobs(PROMPTS, OPTIONS)[0], base_before[0])
    assert np.array_equal(engine.option_logprobs(PROMPTS, OPTIONS, "good")[0], with_good[0])
    engine.load_adapter("other", other)  # and the same folder loads once the fault is gone
    assert not np.allclose(engine.option_logprobs(PROMPTS, OPTIONS, "other")[0], base_before[0])


@pytest.mark.parametrize("command", ["evaluate", "screen"])
def test_an_adapter_of_another_base_is_named_before_anything_starts(command, tiny_model, good, train_prepared, tmp_path_factory):
    """`screen` once printed PyTorch's `size mismatch for ...embed_tokens` lines for an adapter trained
    on another tiny model: now evaluate and screen say which base it needs, in one line, exit 2."""
    import os
    import subprocess
    import sys

    from socrates_ray.config import TinyModelSection
    from socrates_ray.models import ensure_tiny_model

    other = ensure_tiny_model(tmp_path_factory.mktemp("other-tiny"), TinyModelSection(vocab_size=500, tokenizer_corpus_rows=300), seed=1)
    assert base_vocab(str(other)).vocab != base_vocab(str(tiny_model)).vocab
    repo = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-m", "socrates_ray", command, f"data.prepared={train_prepared}", f"model.path={other}",
            f"evaluate.adapter_path={good}", "train.setting=unseen_studies", "evaluate.settings=[unseen_studies]"]
    if command == "screen":
        args += ["--experiment", str(repo / "configs" / "experiments" / "carbon_tax_framing.yaml")]
    done = subprocess.run(args, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=120)
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert f"evaluate.adapter_path: adapter {good} cannot be used: it was trained on base" in said, said
    assert f"(vocab {base_vocab(str(tiny_model)).vocab}); this base is" in said and "size mismatch" not in said and "Traceback" not in said


def test_a_listed_adapter_that_is_broken_stops_the_replica_start_naming_it(tiny_model, good, tmp_path):
    """serve.adapters are checked when a replica starts: a broken one is a start-up error that names
    the adapter and the fault, not a 500 on every request that names it."""
    from socrates_ray.config import load_config
    from socrates_ray.serve.app import replica_settings
    from socrates_ray.serve.replica import ModelCore

    cut = tmp_path / "cut"
    shutil.copytree(good, cut)
    _cut(cut, 0.5)
    cfg = load_config(None, ["serve.max_length=512"])
    with pytest.raises(AdapterUnusable, match="adapter 'finetuned' cannot be used: adapter_model.safetensors is truncated"):
        ModelCore(replica_settings(cfg, str(tiny_model), {"finetuned": str(cut)}))
    core = ModelCore(replica_settings(cfg, str(tiny_model), {"finetuned": str(good)}))  # a whole one starts
    assert core.engine.adapters == {}  # loaded on first use, as before
