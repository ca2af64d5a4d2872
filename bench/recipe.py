"""Tiny-model recipe experiments in one process (no Ray, no DeepSpeed): does a recipe learn the prompt?

    .venv/bin/python bench/recipe.py --prepared runs/demo/prepared --raw runs/demo/synth            # random base + LoRA
    .venv/bin/python bench/recipe.py --prepared runs/demo/prepared --raw runs/demo/synth --mode full
    .venv/bin/python bench/recipe.py ... --pretrain recall --pretrain-steps 400                    # a reading-pretrained base

Trains a tiny Qwen2 (tokenizer trained on the train split's prompts) on <setting>/train with answer-only
logits, then scores training cells and one held-out setting with the exact scorer and prints, per
temperature: W, uniform's W, the true-distribution floor, the share of the gap closed, the correlation of
predicted with true cell means, and the within-scale spread of predicted cell means against the humans'.
A recipe that learns the prompt shows spread near the humans' and a clearly positive correlation on
training cells first. The production loop (Ray Train + DeepSpeed) is what `socrates-ray demo` measures;
this script exists to try recipes in minutes.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.data.prompts import PERSONA_HEADER, parse_answer_scale
from socrates_ray.data.tokenize import Encoder
from socrates_ray.eval.job import load_truth
from socrates_ray.eval.metrics import baseline_metrics, cell_spread, gap_closed, group_cells, model_metrics
from socrates_ray.score import Scorer, shape_distribution
from socrates_ray.eval.simulate import load_split_rows
from socrates_ray.models import build_tiny_tokenizer

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"]


def batches(examples, batch_size: int, pad_id: int, rng: np.random.Generator):
    order = rng.permutation(len(examples))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        chunk = [examples[i] for i in order[start:start + batch_size]]
        length = max(len(x) for x, _ in chunk)
        ids = torch.full((batch_size, length), pad_id)
        labels = torch.full((batch_size, length), -100)
        mask = torch.zeros((batch_size, length), dtype=torch.long)
        for j, (x, y) in enumerate(chunk):
            ids[j, :len(x)], labels[j, :len(y)], mask[j, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        yield ids, mask, labels


def answer_loss(model, ids, mask, labels):
    """Cross-entropy on the label positions only (the answer and end-of-turn tokens)."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = core.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    return torch.nn.functional.cross_entropy(core.lm_head(hidden[keep]), targets[keep])


def train(model, params, examples, pad_id: int, steps: int, lr: float, batch_size: int, tag: str) -> float:
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    rng, losses, step, started = np.random.default_rng(0), [], 0, time.time()
    model.train()
    while step < steps:
        for ids, mask, labels in batches(examples, batch_size, pad_id, rng):
            loss = answer_loss(model, ids, mask, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0 or step == steps:
                print(f"{tag}: step {step}/{steps} loss {np.mean(losses[-100:]):.3f} ({time.time() - started:.0f}s)", flush=True)
            if step == steps:
                break
    model.eval()
    return float(np.mean(losses[-100:]))


def pretraining_examples(kind: str, encoder: Encoder, seed: int):
    """Prompts of a synthetic world with another seed, answered by a task that knows nothing of people:
    'recall' = one word of the prompt drawn at random; 'valence' = each word a fixed pseudo-random value,
    the sum placed on the prompt's own scale."""
    import pyarrow.parquet as pq

    from socrates_ray.data.synthetic import write_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, 40, 8000, 8000, seed + 1000, 0.0, 0.5)
        rows = pq.read_table(sorted(Path(tmp, "data").glob("*.parquet")), columns=["prompt", "stimuli"]).to_pylist()
    rng = np.random.default_rng(seed)
    prompts, answers = [], []
    for r in rows:
        scale = parse_answer_scale(r["stimuli"])
        if not scale.bounded:
            continue
        words = re.findall(r"[A-Za-z]+", r["prompt"].split(PERSONA_HEADER, 1)[-1])
        if kind == "recall":
            answer = words[int(rng.integers(len(words)))]
        else:
            distinct = {w.lower() for w in words}
            value = sum((zlib.crc32(w.encode()) % 10007) / 10007 * 2 - 1 for w in distinct) / np.sqrt(len(distinct))
            k = scale.high - scale.low + 1
            answer = str(scale.low + min(k - 1, int(k / (1 + np.exp(-1.5 * value - 0.3 * rng.logistic())))))
        prompts.append(r["prompt"])
        answers.append(answer)
    return encoder.encode(prompts, answers)


def score(folder: Path, adapter: Path | None, rows: list[dict], truth, temperatures: list[float], label: str) -> None:
    scorer = Scorer(str(folder), DEFAULT_SYSTEM_PROMPT)
    name = None
    if adapter is not None:
        scorer.load_adapter("recipe", adapter)
        name = "recipe"
    rows = [r for r in rows if r["scale_low"] is not None and r["scale_high"] is not None and r["scale_high"] - r["scale_low"] <= 100]
    options = [list(range(r["scale_low"], r["scale_high"] + 1)) for r in rows]
    logprobs = scorer.option_logprobs([r["prompt"] for r in rows], options, adapter=name)
    for t in temperatures:
        scored = [{**r, "options": o, "probs": shape_distribution(lp, t).tolist(), "prediction": None}
                  for r, o, lp in zip(rows, options, logprobs)]
        cells = group_cells(scored)
        w = model_metrics(cells)["wasserstein"]
        base = baseline_metrics(cells, truth, 5)
        uniform, floor = base["uniform"]["wasserstein"], base["true_floor"]["wasserstein"]
        predicted, true = [], []
        for key, cell in cells.items():
            if key not in truth or cell.probs is None:
                continue
            opts, probs = truth[key]
            lo, hi = opts[0], opts[-1]
            if hi > lo:
                true.append(float(np.dot(probs, (np.asarray(opts) - lo) / (hi - lo))))
                predicted.append(float(np.mean([np.dot(p, (np.asarray(o) - lo) / (hi - lo)) for o, p in zip(cell.options, cell.probs)])))
        spread = cell_spread(cells)
        print(f"{label} T={t:g}: W {w:.4f} uniform {uniform:.4f} true floor {floor:.4f} gap closed {gap_closed(w, uniform, floor):+.2f} "
              f"corr(predicted, true cell means) {np.corrcoef(predicted, true)[0, 1]:+.2f} "
              f"within-scale spread {spread['predicted']:.3f} (humans {spread['human']:.3f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", required=True)
    p.add_argument("--raw", required=True, help="the synthetic data folder (its ground_truth.parquet)")
    p.add_argument("--setting", default="all_settings", help="train on <setting>/train")
    p.add_argument("--heldout", default="unseen_conditions", help="also score this setting's eval split")
    p.add_argument("--mode", choices=["lora", "full"], default="lora")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--pretrain", choices=["none", "recall", "valence"], default="none")
    p.add_argument("--pretrain-steps", type=int, default=400)
    p.add_argument("--per-cell", type=int, default=5, help="scored participants per cell")
    p.add_argument("--temperatures", default="1,2")
    p.add_argument("--out", default="runs/recipe")
    a = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    train_rows = load_split_rows(a.prepared, a.setting, "train", None).to_pylist()
    tokenizer = build_tiny_tokenizer(iter([DEFAULT_SYSTEM_PROMPT] + [f"{r['prompt']}\n{r['response']}" for r in train_rows[:3000]]), a.vocab)
    encoder = Encoder(tokenizer, DEFAULT_SYSTEM_PROMPT)
    examples = encoder.encode([r["prompt"] for r in train_rows], [str(r["response"]) for r in train_rows])
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
                         num_attention_heads=a.heads, num_key_value_heads=a.heads, max_position_embeddings=2048, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model = Qwen2ForCausalLM(config)
    if a.pretrain != "none":
        train(model, list(model.parameters()), pretraining_examples(a.pretrain, encoder, 0), encoder.pad_id, a.pretrain_steps, 3e-3,
              a.batch, f"pretrain ({a.pretrain})")
    out = Path(a.out)
    adapter = None
    if a.mode == "full":
        train(model, list(model.parameters()), examples, encoder.pad_id, a.steps, a.lr, a.batch, "full finetuning")
        model.save_pretrained(out)
    else:
        from peft import LoraConfig, get_peft_model

        model.save_pretrained(out)  # the base; the adapter beside it (merging would fold both tied LoRAs into one matrix)
        model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.rank, lora_dropout=0.0, target_modules=LORA_TARGETS))
        train(model, [q for q in model.parameters() if q.requires_grad], examples, encoder.pad_id, a.steps, a.lr, a.batch, "LoRA")
        adapter = out / "adapter"
        model.save_pretrained(adapter)
    tokenizer.save_pretrained(out)
    truth = load_truth(a.raw)
    temperatures = [float(t) for t in a.temperatures.split(",")]
    score(out, adapter, load_split_rows(a.prepared, a.setting, "train", a.per_cell).to_pylist(), truth, temperatures, f"{a.setting}/train")
    score(out, adapter, load_split_rows(a.prepared, a.heldout, "eval", a.per_cell).to_pylist(), truth, temperatures, f"{a.heldout}/eval")


if __name__ == "__main__":
    main()
