"""Training tokens/s of packed rows: the dense-mask path vs one attention call per example.

    .venv/bin/python bench/attention.py runs/tiny-model [max_length ...]

The demo's LoRA recipe (rank 128 on q/k/v/o, embed_tokens and lm_head) on the given base, fp32,
one thread (a 2-core demo worker's share), 2 packed rows per micro batch of `max_length` tokens
(default 512 1024 2048) holding ~290-token examples as the demo's prompts are; forward + backward +
AdamW step through train/loop.forward_loss, the loop's own function, with `attention` dense and
segments. Prints the median of 8 steps after 2 warm-up steps, tokens/s, the ratio to dense measured
in the same run, and checks that both paths give the same loss. No Ray, no DeepSpeed.
"""

from __future__ import annotations

import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from socrates_ray.data.tokenize import IGNORE_INDEX
from socrates_ray.train.attention import register
from socrates_ray.train.loop import forward_loss

EXAMPLE = 290  # tokens in a demo prompt + answer, about
ROWS = 2


class Engine:
    def __init__(self, model) -> None:
        self.model, self.device = model, "cpu"

    def __call__(self, **kwargs):
        return self.model(**kwargs)


def packed_batch(length: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (ROWS, length), generator=g)
    seq = torch.zeros(ROWS, length, dtype=torch.long)
    pos = torch.zeros(ROWS, length, dtype=torch.long)
    labels = torch.full((ROWS, length), IGNORE_INDEX, dtype=torch.long)
    for r in range(ROWS):
        start, n = 0, 1
        while start + 64 <= length:  # the packer leaves a tail it cannot fill
            end = min(start + EXAMPLE + 17 * ((n + r) % 5) - 34, length)
            seq[r, start:end], pos[r, start:end] = n, torch.arange(end - start)
            labels[r, end - 3 : end] = ids[r, end - 3 : end]  # answer + end of turn
            start, n = end, n + 1
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "seq_ids": seq}


def run(path: str, attention: str, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    torch.manual_seed(0)
    implementation = {"attn_implementation": register()} if attention == "segments" else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **implementation)
    model = get_peft_model(model, LoraConfig(r=128, lora_alpha=128, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "embed_tokens", "lm_head"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    first = float(forward_loss(Engine(model), batch, torch.float32, attention))
    times = []
    for _ in range(10):
        start = time.perf_counter()
        forward_loss(Engine(model), batch, torch.float32, attention).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    times = sorted(times[2:])
    return times[len(times) // 2], first


def main() -> None:
    torch.set_num_threads(1)
    path = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-model"
    lengths = [int(a) for a in sys.argv[2:]] or [512, 1024, 2048]
    vocab = AutoModelForCausalLM.from_pretrained(path).config.vocab_size
    for length in lengths:
        batch = packed_batch(length, vocab)
        tokens = int((batch["seq_ids"] > 0).sum())
        dense, loss_dense = run(path, "dense", batch)
        segments, loss_segments = run(path, "segments", batch)
        assert abs(loss_dense - loss_segments) < 1e-4, (loss_dense, loss_segments)
        print(f"max_length {length:5d}: {tokens:,} tokens a micro batch; dense {tokens / dense:8,.0f} tokens/s, "
              f"segments {tokens / segments:8,.0f} tokens/s = {dense / segments:.2f} x dense (loss {loss_dense:.5f} vs {loss_segments:.5f})",
              flush=True)


if __name__ == "__main__":
    main()
