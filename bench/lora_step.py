"""Training-step time of the tiny model by LoRA layout: one micro batch as a demo worker sees it.

    .venv/bin/python bench/lora_step.py runs/tiny-model

8 prompts x 300 tokens (the demo's micro batch; its prompts are ~260-300 tokens), fp32, one thread
(a demo worker's share of 2 cores), forward + backward + AdamW step, the output layer run at 19
positions as the training loop does (logits_to_keep). Prints the median of 10 steps after 2 warm-up
steps for each layout, and its ratio to rank 128 on every layer (the demo's recipe before
2026-12-02), measured in the same run. No Ray, no DeepSpeed: what the LoRA layout alone costs.
"""

from __future__ import annotations

import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

BLOCKS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EMBEDDINGS = ["embed_tokens", "lm_head"]
LAYOUTS = {  # name: (r for the blocks, rank_pattern, targets); None = full finetuning
    "r128 everywhere": (128, {}, BLOCKS + EMBEDDINGS),
    "r64 blocks, r128 embed_tokens + lm_head": (64, {"embed_tokens": 128, "lm_head": 128}, BLOCKS + EMBEDDINGS),
    "r32 blocks, r128 embed_tokens + lm_head": (32, {"embed_tokens": 128, "lm_head": 128}, BLOCKS + EMBEDDINGS),
    "r128 attention + embed_tokens + lm_head (the demo recipe)": (128, {}, BLOCKS[:4] + EMBEDDINGS),
    "r128 attention + embed_tokens + lm_head, r32 MLP": (128, {"gate_proj": 32, "up_proj": 32, "down_proj": 32}, BLOCKS + EMBEDDINGS),
    "full finetuning": None,
}


def step_ms(path: str, layout: tuple | None) -> float:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if layout is not None:
        r, pattern, targets = layout
        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=targets, rank_pattern=pattern,
                                                 alpha_pattern=dict(pattern)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, 1400, (8, 300))
    keep = torch.arange(280, 299)
    times = []
    for _ in range(12):
        start = time.perf_counter()
        loss = model(input_ids=ids, logits_to_keep=keep).logits.float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    times = sorted(times[2:])
    return times[len(times) // 2] * 1e3


def main() -> None:
    torch.set_num_threads(1)
    path = sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-model"
    baseline = None
    for name, layout in LAYOUTS.items():
        ms = step_ms(path, layout)
        baseline = baseline or ms
        print(f"{name:<60s} {ms:6.0f} ms a micro batch   {ms / baseline:.2f} x r128 everywhere", flush=True)


if __name__ == "__main__":
    main()
