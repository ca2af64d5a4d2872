"""The training loss (train/loop.forward_loss) projects only label positions through the output
layer; it must equal the model's own loss over full logits with a dense mask, on packed and padded
rows, with and without a LoRA adapter on the output layer, with either attention path (dense mask or
one call per example), and give the same gradients."""

from __future__ import annotations

import pytest

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.data.ingest import load_tokenizer
from socrates_ray.data.tokenize import Encoder, collate_rows, pack_rows, packed_attention_mask, single_rows
from socrates_ray.train.loop import forward_loss, label_positions


class Engine:
    """What forward_loss needs of a DeepSpeed engine: a device and a forward."""

    def __init__(self, model) -> None:
        self.model, self.device = model, "cpu"

    def __call__(self, **kwargs):
        return self.model(**kwargs)


def reference_loss(model, batch):
    import torch

    return model(input_ids=batch["input_ids"], attention_mask=packed_attention_mask(batch["seq_ids"], torch.float32),
                 position_ids=batch["position_ids"], labels=batch["labels"]).loss


@pytest.mark.parametrize("attention", ["dense", "segments"])
@pytest.mark.parametrize("layout", ["pack", "pad_longest"])
@pytest.mark.parametrize("lora", [False, True])
def test_label_position_loss_equals_the_full_logits_loss(tiny_model, layout, lora, attention) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_model))
    enc = Encoder(tok, DEFAULT_SYSTEM_PROMPT)
    prompts = [f"- Age: {20 + 7 * i}\nHow fair is it? Only return an integer from 1 to 7, nothing else." * (1 + i % 3) for i in range(6)]
    examples = enc.encode(prompts, [str(1 + i) for i in range(6)])
    rows = pack_rows(examples, 512, enc.pad_id) if layout == "pack" else single_rows(examples)
    batch = collate_rows(rows, enc.pad_id)
    from socrates_ray.train.attention import register

    implementation = {"attn_implementation": register()} if attention == "segments" else {}
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32, **implementation)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False))
    keep = label_positions(batch["labels"])
    assert 0 < len(keep) < batch["labels"].shape[1] // 4  # answers are a small share of positions
    ours = forward_loss(Engine(model), batch, torch.float32, attention)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    model.set_attn_implementation("sdpa")  # the reference: the model's own SDPA with a dense mask
    theirs = reference_loss(model, batch)
    theirs.backward()
    assert torch.allclose(ours, theirs, atol=1e-5), (float(ours), float(theirs))
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        assert torch.allclose(g, p.grad, atol=1e-5)
