"""How far does the demo's LoRA recipe go with more steps? One process, no Ray, no DeepSpeed; CPU or CUDA.

    .venv/bin/python bench/ceiling.py --steps 500 2000 --prepared runs/demo/prepared --raw runs/demo/synth \\
        --model runs/tiny-model

For each step count, trains a fresh LoRA adapter with configs/demo.yaml's recipe (rank, targets,
lr, warmup + cosine, weight decay, global batch; one row per sequence, padded to the longest in
the batch) on train.setting's train split, then evaluates it as `socrates-ray evaluate` does: the
exact-mode temperature fitted on the validation split, exact distributions on the eval split of
each evaluate.settings (at most simulate.max_per_cell rows a cell), the paper's Wasserstein, and
the share of the uniform-to-true-floor gap closed, beside the regression anchor's. It answers
"is the tiny model limited by its training budget or by something else?" without the pipeline's
start-up costs (the demo's numbers come from the pipeline itself, not from here).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow as pa

from socrates_ray.eval.anchor import fit_anchor, predict_anchor
from socrates_ray.eval.calibrate import fit_temperature
from socrates_ray.config import load_config
from socrates_ray.data.ingest import load_tokenizer
from socrates_ray.data.tokenize import Encoder
from socrates_ray.eval.job import _val_or_train, load_truth
from socrates_ray.eval.metrics import baseline_metrics, gap_closed, group_cells, model_metrics
from socrates_ray.eval.simulate import Decoding, LocalReplica, load_eval_rows, load_split_rows


def train_adapter(cfg, model_path: str, rows: list[dict], steps: int, device: str, seed: int, out: str) -> float:
    """The demo's LoRA recipe for `steps` optimizer steps; saves the adapter to `out`; returns seconds."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tok = load_tokenizer(model_path)
    enc = Encoder(tok, cfg.prompt.system_prompt)
    examples = [e for e in enc.encode([r["prompt"] for r in rows], [str(r["response"]) for r in rows])
                if len(e[0]) <= cfg.ingest.max_length]
    lora = cfg.train.lora
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=list(lora.target_modules)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warm = max(1, int(cfg.train.warmup_ratio * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    batch = cfg.ingest.micro_batch_size * cfg.ingest.num_workers * cfg.train.grad_accum
    rng = np.random.default_rng(seed)
    order: list[int] = []
    model.train()
    start = time.time()
    for step in range(steps):
        if len(order) < batch:
            order += rng.permutation(len(examples)).tolist()
        picked, order = order[:batch], order[batch:]
        width = max(len(examples[i][0]) for i in picked)
        ids = torch.full((batch, width), enc.pad_id, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, i in enumerate(picked):
            x, y = examples[i]
            ids[row, : len(x)], labels[row, : len(y)], mask[row, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % max(1, steps // 5) == 0:
            print(f"  step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    seconds = time.time() - start
    model.save_pretrained(out)
    return seconds


def predictions(replica: LocalReplica, decoding: Decoding, rows: pa.Table, temperature: float, batch: int = 64) -> list[dict]:
    decoding = dataclasses.replace(decoding, temperature=temperature)
    parts = [replica.predict(rows.slice(i, batch), decoding, "finetuned") for i in range(0, rows.num_rows, batch)]
    return pa.concat_tables(parts).to_pylist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--prepared", default="runs/demo/prepared")
    parser.add_argument("--raw", default="runs/demo/synth")
    parser.add_argument("--model", default="runs/tiny-model")
    parser.add_argument("--steps", type=int, nargs="+", default=[500])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cuda when available, else cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.lr=1e-3")
    parser.add_argument("--smoke", action="store_true", help="a few rows of each split: checks the script, measures nothing")
    args = parser.parse_args()
    import torch

    device = "cuda" if torch.cuda.is_available() and args.device == "cuda" else "cpu"
    cfg = load_config(args.config, [f"data.prepared={args.prepared}", f"data.raw={args.raw}", *args.set])
    setting = cfg.train.setting
    train_rows = load_split_rows(args.prepared, setting, "train", None).to_pylist()
    val = _val_or_train(args.prepared, setting)
    if val.num_rows > cfg.simulate.calibration_rows:
        val = val.take(np.sort(np.random.default_rng(cfg.run.seed).choice(val.num_rows, cfg.simulate.calibration_rows, replace=False)))
    truth = load_truth(args.raw)
    evals = {s: load_eval_rows(args.prepared, s, cfg.simulate.max_per_cell, cfg.run.seed) for s in cfg.evaluate.settings}
    if args.smoke:
        train_rows, val = train_rows[:200], val.slice(0, 40)
        evals = {s: rows.slice(0, 60) for s, rows in evals.items()}
    anchor = fit_anchor(load_split_rows(args.prepared, setting, "train", None), _val_or_train(args.prepared, setting))
    lines = []
    reference = {}
    for s, rows in evals.items():
        cells = group_cells(predict_anchor(anchor, rows).to_pylist())
        b = baseline_metrics(cells, truth, 2, cfg.run.seed)
        reference[s] = (b["uniform"]["wasserstein"], b["true_floor"]["wasserstein"])
        lines.append(f"anchor: {s} gap closed {gap_closed(model_metrics(cells)['wasserstein'], *reference[s]):.3f}")
    print("\n".join(lines), flush=True)
    params = Decoding.of(cfg.simulate.model_copy(update={"mode": "exact", "temperature": 1.0, "top_p": 1.0}))
    for steps in args.steps:
        with tempfile.TemporaryDirectory() as tmp:
            seconds = train_adapter(cfg, args.model, train_rows, steps, device, args.seed, tmp)
            replica = LocalReplica(args.model, cfg.prompt.system_prompt, {"finetuned": tmp}, torch.get_num_threads(),
                                   device == "cuda", cfg.simulate.precision)
            scored = [r for r in predictions(replica, params, val, 1.0) if r["probs"] is not None]
            t = fit_temperature([r["options"] for r in scored], [r["probs"] for r in scored], [r["response"] for r in scored])
            out = [f"{steps} steps ({seconds:.0f}s train): T {t['temperature']:.2f}"]
            for s, rows in evals.items():
                metrics = model_metrics(group_cells(predictions(replica, params, rows, t["temperature"])))
                out.append(f"{s} gap closed {gap_closed(metrics['wasserstein'], *reference[s]):.3f} "
                           f"(W {metrics['wasserstein']:.4f}, cell spread {metrics['cell_spread']['predicted']:.3f}"
                           f" vs human {metrics['cell_spread']['human']:.3f})")
            print(" | ".join(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
