"""The training loss (train/loop.forward_loss) projects only label positions through the output
layer; it must equal the model's own loss over full logits with a dense mask, on packed and padded
rows, with and without a LoRA adapter on the output layer, with each attention path (dense mask, one
call per example, one varlen call over the batch), and give the same gradients.

torch's varlen kernel is CUDA-only: here `reference_varlen` (per-sequence causal SDPA, checking the
call's contract) stands in for it, so what is tested on CPU is everything around the kernel (the
cumulative lengths, the flattening, the kwargs through transformers and peft); tests/gpu runs the
real kernel against segment_attention."""

from __future__ import annotations

import pytest

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.models import load_tokenizer
from socrates_ray.data.tokenize import Encoder, collate_rows, pack_rows, packed_attention_mask, single_rows
from socrates_ray.train.steps import forward_loss, label_positions


class Engine:
    """What forward_loss needs of a DeepSpeed engine: a device and a forward."""

    def __init__(self, model) -> None:
        self.model, self.device = model, "cpu"

    def __call__(self, **kwargs):
        return self.model(**kwargs)


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """torch.nn.attention.varlen.varlen_attn's contract, on CPU: (T, H, D) tensors cut by int32
    cumulative lengths, causal with window_size (-1, 0)."""
    import torch
    import torch.nn.functional as F

    assert q.dim() == 3 and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and int(cu_q[-1]) == q.shape[0]
    assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max()) and window_size == (-1, 0)
    out = torch.empty_like(q)
    for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        o = F.scaled_dot_product_attention(*(t[start:end].transpose(0, 1)[None] for t in (q, k, v)), is_causal=True,
                                           scale=scale, enable_gqa=enable_gqa)
        out[start:end] = o[0].transpose(0, 1)
    return out


def test_varlen_cuts_at_every_example_and_every_row_start() -> None:
    import torch

    from socrates_ray.train.attention import varlen_arguments

    # row 0 is one example filling the row, row 1 starts with example 1 again: two sequences, not one
    seq_ids = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 0, 0], [1, 2, 2, 3, 3, 3]])
    args = varlen_arguments(seq_ids)
    assert args["packed_cu_seqlens"].tolist() == [0, 6, 9, 10, 12, 13, 15, 18] and args["packed_max_length"] == 6
    assert args["packed_cu_seqlens"].dtype == torch.int32


def reference_loss(model, batch):
    import torch

    return model(input_ids=batch["input_ids"], attention_mask=packed_attention_mask(batch["seq_ids"], torch.float32),
                 position_ids=batch["position_ids"], labels=batch["labels"]).loss


@pytest.mark.parametrize("attention", ["dense", "segments", "varlen"])
@pytest.mark.parametrize("layout", ["pack", "pad_longest"])
@pytest.mark.parametrize("lora", [False, True])
def test_label_position_loss_equals_the_full_logits_loss(tiny_model, layout, lora, attention, monkeypatch) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from socrates_ray.train import attention as attention_module

    monkeypatch.setattr(attention_module, "VARLEN_KERNEL", reference_varlen)

    torch.manual_seed(0)
    tok = load_tokenizer(str(tiny_model))
    enc = Encoder(tok, DEFAULT_SYSTEM_PROMPT)
    prompts = [f"- Age: {20 + 7 * i}\nHow fair is it? Only return an integer from 1 to 7, nothing else." * (1 + i % 3) for i in range(6)]
    examples = enc.encode(prompts, [str(1 + i) for i in range(6)])
    rows = pack_rows(examples, 512, enc.pad_id) if layout == "pack" else single_rows(examples)
    batch = collate_rows(rows, enc.pad_id)
    from socrates_ray.train.attention import register

    implementation = {"attn_implementation": register(attention)} if attention != "dense" else {}
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


@pytest.mark.parametrize("layout", ["pack", "pad_longest"])
def test_the_prompt_loss_is_each_examples_own_next_tokens_never_across_a_boundary(tiny_model, layout) -> None:
    """train.prompt_loss_weight: the answers' loss + w x the prompt tokens' mean next-token loss, each
    example's prompt predicted from itself alone (the model's own per-example loss, summed by hand)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from socrates_ray.train.steps import prompt_lm_loss

    torch.manual_seed(0)
    enc = Encoder(load_tokenizer(str(tiny_model)), DEFAULT_SYSTEM_PROMPT)
    prompts = [f"- Age: {20 + 7 * i}\nHow fair is it? Only return an integer from 1 to 7, nothing else." * (1 + i % 3) for i in range(5)]
    examples = enc.encode(prompts, [str(1 + i) for i in range(5)])
    rows = pack_rows(examples, 512, enc.pad_id) if layout == "pack" else single_rows(examples)
    batch = collate_rows(rows, enc.pad_id)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    answers_only = forward_loss(Engine(model), batch, torch.float32)
    assert torch.allclose(prompt_lm_loss(Engine(model), batch, torch.float32, "dense", 0.0), answers_only, atol=1e-5)
    # by hand: each example alone through the model, its prompt tokens' losses pooled over all examples
    total, count = 0.0, 0
    for ids, labels in examples:
        ids_t = torch.as_tensor(ids)[None]
        logits = model(input_ids=ids_t).logits[0, :-1]
        prompt = torch.as_tensor(labels)[1:] == -100
        total += float(F.cross_entropy(logits[prompt], ids_t[0, 1:][prompt], reduction="sum"))
        count += int(prompt.sum())
    weighted = prompt_lm_loss(Engine(model), batch, torch.float32, "dense", 0.5)
    assert torch.allclose(weighted, answers_only + 0.5 * total / count, atol=1e-4), (float(weighted), float(answers_only), total / count)
