"""bf16 against fp32 on this machine's CPU: LoRA training steps and exact scoring, same model and rows.

    .venv/bin/python bench/precision.py --model runs/tiny-model --prepared runs/demo/prepared \\
        --adapter runs/demo/checkpoint_001000/export

What `precision: auto` decides (socrates_ray/precision.py): bf16 on CPUs with native bf16 matrix
instructions (AMX, AVX512-BF16), fp32 elsewhere. Prints, per format, the time of one training micro
batch (forward + backward, the demo's LoRA on 8 rows of the training split, one thread as each
training worker has) and the exact-scoring rate (rows/s, batches of 16, one thread), the ratios, and
how far the bf16 option distributions are from fp32's. Timings are medians of repeated runs in this
process; the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, load_config
from socrates_ray.precision import cpu_has_native_bf16
from socrates_ray.score import Scorer
from socrates_ray.eval.simulate import load_eval_rows, load_split_rows


def train_step_ms(model_path: str, prompts: list[str], answers: list[str], dtype: torch.dtype, repeats: int) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from socrates_ray.data.ingest import load_tokenizer
    from socrates_ray.data.tokenize import Encoder, collate_rows, single_rows

    lora = load_config("configs/demo.yaml", []).train.lora
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules))).to(dtype)
    encoder = Encoder(load_tokenizer(model_path), DEFAULT_SYSTEM_PROMPT)
    batch = collate_rows(single_rows(encoder.encode(prompts, answers)), encoder.pad_id)
    keep = (batch["labels"][:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], logits_to_keep=keep).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["labels"][:, keep + 1].flatten(), ignore_index=-100)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first call warms up
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/tiny-model")
    p.add_argument("--prepared", default="runs/demo/prepared")
    p.add_argument("--adapter", default=None, help="an exported adapter to score with (default: the base model)")
    p.add_argument("--rows", type=int, default=320, help="rows scored per format")
    p.add_argument("--repeats", type=int, default=8, help="timed training micro batches per format")
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"CPU with native bf16 (AMX or AVX512-BF16): {cpu_has_native_bf16()}; precision auto -> "
          f"{'bf16' if cpu_has_native_bf16() else 'fp32'}")
    train = load_split_rows(a.prepared, "all_settings", "train", None).slice(0, 8).to_pylist()
    prompts, answers = [r["prompt"] for r in train], [str(r["response"]) for r in train]
    rows = [r for r in load_eval_rows(a.prepared, "unseen_conditions", 5).to_pylist() if r["scale_low"] is not None][: a.rows]
    options = [list(range(r["scale_low"], r["scale_high"] + 1)) for r in rows]
    step, rate, dists = {}, {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        step[name] = train_step_ms(a.model, prompts, answers, dtype, a.repeats)
        scorer = Scorer(a.model, DEFAULT_SYSTEM_PROMPT, precision=name)
        if a.adapter:
            scorer.load_adapter("a", a.adapter)
        adapter = "a" if a.adapter else None
        scorer.distributions([r["prompt"] for r in rows[:16]], options[:16], adapter=adapter)  # warm up
        start = time.perf_counter()
        dists[name] = []
        for i in range(0, len(rows), 16):
            dists[name] += scorer.distributions([r["prompt"] for r in rows[i:i + 16]], options[i:i + 16], adapter=adapter)
        rate[name] = len(rows) / (time.perf_counter() - start)
        print(f"{name}: training micro batch of 8 (LoRA r{load_config('configs/demo.yaml', []).train.lora.r}) "
              f"{step[name]:.0f} ms; exact scoring {rate[name]:.1f} rows/s")
    diff = [np.abs(x - y).max() for x, y in zip(dists["fp32"], dists["bf16"])]
    print(f"bf16 vs fp32: training step {step['fp32'] / step['bf16']:.2f}x faster, scoring {rate['bf16'] / rate['fp32']:.2f}x; "
          f"option probabilities differ by {np.mean(diff):.4f} on average, {np.max(diff):.4f} at most ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
