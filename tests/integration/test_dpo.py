"""train.method=dpo through the production path: pairs and reference log-probabilities through Ray
Data, 2 gloo workers under ZeRO-2 and ZeRO-3, LoRA continuing an SFT adapter; the loss starts at
log 2, preference accuracy rises, the stages agree, the export reloads, a changed beta is refused."""

from __future__ import annotations

import json
import math

import pytest
import torch

from socrates_ray.cli import main

pytestmark = pytest.mark.ray


def sft_adapter(model, out):
    """A LoRA adapter with random non-zero weights: the SFT adapter DPO starts from (its reference)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                                LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                           init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


def dpo(tmp_path, prepared, tiny_model, shape, adapter, name, *overrides):
    return main([
        "train", "--config", "configs/demo.yaml", f"run.name={name}", f"run.output_dir={tmp_path}", f"train.storage_path={tmp_path}",
        f"data.prepared={prepared}", f"model.path={tiny_model}", *shape, "train.setting=unseen_studies",
        "train.method=dpo", f"train.init_adapter={adapter}", "train.dpo.beta=0.5", "ingest.max_length=1024", "ingest.micro_batch_size=4",
        "train.max_steps=16", "train.warmup_ratio=0.0", "train.lr=5.0e-3", "train.eval_every=8", "train.eval_batches=8",
        "train.checkpoint_every=8", "train.precision=fp32", *overrides,
    ])


def metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_dpo_trains_under_zero2_and_zero3_and_prefers_the_participants_answers(ray_local, train_prepared, tiny_model, tiny_shape, tmp_path, capsys):
    adapter = sft_adapter(tiny_model, tmp_path / "sft")
    assert dpo(tmp_path, train_prepared, tiny_model, tiny_shape, adapter, "d2", "train.zero_stage=2") == 0
    out = capsys.readouterr().out
    assert "dpo pairs of unseen_studies/train" in out and "reference log-probabilities" in out
    assert dpo(tmp_path, train_prepared, tiny_model, tiny_shape, adapter, "d3", "train.zero_stage=3", "train.zero3_persistence_threshold=0") == 0
    d2, d3 = metrics(tmp_path / "d2"), metrics(tmp_path / "d3")
    assert [m["step"] for m in d2] == list(range(1, 17)) == [m["step"] for m in d3]
    # the policy starts as the reference: log 2; then it learns to prefer the participant's own answer
    assert d2[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert sum(m["loss"] for m in d2[-6:]) / 6 < math.log(2) - 0.02  # 8 pairs a step: single steps are noisy
    assert sum(m["preference_accuracy"] for m in d2[-6:]) / 6 > 0.55
    assert d2[-1]["eval_loss"] < d2[7]["eval_loss"] < math.log(2) and d2[-1]["eval_preference_accuracy"] > 0.55
    assert d2[0]["loss"] == pytest.approx(d3[0]["loss"], abs=1e-4) and d2[1]["loss"] == pytest.approx(d3[1]["loss"], abs=1e-3)

    # the exported adapter reloads with the logits the run ended with, and differs from the SFT adapter it started from
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    export = sorted((tmp_path / "d2").glob("checkpoint_0*"))[-1] / "export"
    ids = torch.tensor([[5, 17, 33, 8, 90, 4]])
    logits = {}
    for name, folder in (("dpo", export), ("sft", adapter)):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), folder).eval()
        with torch.no_grad():
            logits[name] = model(input_ids=ids).logits
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), export).eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, logits["dpo"])
    assert (logits["dpo"] - logits["sft"]).abs().max() > 1e-4

    # resuming under another beta is refused, naming it
    assert dpo(tmp_path, train_prepared, tiny_model, tiny_shape, adapter, "d2", "train.zero_stage=2", "train.dpo.beta=0.2", "train.max_steps=20") != 0
    assert "train.dpo" in capsys.readouterr().err
