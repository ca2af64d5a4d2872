"""What does a tiny-model recipe learn, measured against every participant's own true distribution?

    .venv/bin/python bench/learning_probe.py --world runs/demo --steps 500                  # the demo's LoRA recipe
    .venv/bin/python bench/learning_probe.py --world runs/demo --steps 1200 --eval-at 800   # more steps
    .venv/bin/python bench/learning_probe.py --world runs/demo --pt-steps 300               # LM-pretrained base first
    .venv/bin/python bench/learning_probe.py --world runs/demo --mode bow --steps 5000      # a bag-of-words control
    .venv/bin/python bench/learning_probe.py --world runs/demo --adapter runs/demo/checkpoint_001000/export

One process, no Ray: trains on <world>/prepared/all_settings/train (the demo's recipe: LoRA r128 on
every linear layer + embeddings + output layer, AdamW lr 5e-4, wd 0.1, 5% warm-up then cosine, 16
prompts a step, answer-only loss), then scores whole cells (6 answers each) of the training split and
of the unseen-conditions and unseen-studies eval splits with the exact scorer at a temperature fitted
on the validation split, and prints per split:

- corr: correlation of each participant's predicted mean position on the scale with their true one
  (within each scale length): does it read the prompt at all;
- wcorr: the same within cells (both centred on the cell): persona reading, since a cell is one stimulus;
- nll: the answers' negative log-likelihood under the model / under the true distributions;
- cell / row: the share of uniform's Wasserstein distance to the truth removed, per cell (pooled over
  the scored participants, against their pooled truth) and per participant.

--mode bow is a control that is not a transformer: token embeddings averaged over the prompt
(IDF-weighted with --idf), an MLP, an output layer; it asks whether the persona interactions are
learnable from these rows at all, and in how many steps. Needs a world made by `socrates-ray synth`
(ground_truth_rows.parquet).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow.parquet as pq
import torch
from scipy.stats import wasserstein_distance

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.data.ingest import load_tokenizer
from socrates_ray.data.synthetic import ROW_TRUTH_FILE
from socrates_ray.data.tokenize import Encoder
from socrates_ray.score import Scorer
from socrates_ray.eval.simulate import load_split_rows

DEMO_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,embed_tokens,lm_head"
PER_CELL = 6


def cell_sample(prepared: str, setting: str, split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Whole cells (PER_CELL answers each, bounded scales of at most 11 options) until n rows."""
    rows = [r for r in load_split_rows(prepared, setting, split, None).to_pylist()
            if r["scale_low"] is not None and r["scale_high"] - r["scale_low"] <= 10]
    by: dict[tuple, list] = collections.defaultdict(list)
    for r in rows:
        by[(r["study_id"], r["condition_num"], r["task_num"])].append(r)
    keys = [k for k, v in by.items() if len(v) >= PER_CELL]
    np.random.default_rng(seed).shuffle(keys)
    out: list[dict[str, Any]] = []
    for k in keys:
        out += by[k][:PER_CELL]
        if len(out) >= n:
            break
    return out


def metrics(rows: list[dict[str, Any]], dists: list[np.ndarray], truth: dict) -> dict[str, float]:
    true = [np.asarray(truth[(r["study_id"], r["sample_id"])]) for r in rows]
    pos = [np.linspace(0, 1, len(t)) for t in true]
    pm = np.array([d @ x for d, x in zip(dists, pos)])
    tm = np.array([t @ x for t, x in zip(true, pos)])

    def centred(groups: np.ndarray) -> float:
        p, t = pm.copy(), tm.copy()
        for g in set(groups.tolist()):
            m = groups == g
            p[m] -= p[m].mean()
            t[m] -= t[m].mean()
        return float(np.corrcoef(p, t)[0, 1])

    cells = np.array([hash((r["study_id"], r["condition_num"], r["task_num"])) for r in rows])
    by: dict[int, list[int]] = collections.defaultdict(list)
    for i, c in enumerate(cells):
        by[int(c)].append(i)
    w_model, w_uniform = [], []
    for idx in by.values():
        d, t, x = np.mean([dists[i] for i in idx], 0), np.mean([true[i] for i in idx], 0), pos[idx[0]]
        w_model.append(wasserstein_distance(x, x, d, t))
        w_uniform.append(wasserstein_distance(x, x, np.ones(len(t)), t))
    row_model = [wasserstein_distance(x, x, d, t) for d, t, x in zip(dists, true, pos)]
    row_uniform = [wasserstein_distance(x, x, np.ones(len(t)), t) for t, x in zip(true, pos)]
    inside = [(r, d, t) for r, d, t in zip(rows, dists, true) if r["scale_low"] <= r["response"] <= r["scale_high"]]
    return {
        "corr": centred(np.array([len(t) for t in true])),
        "wcorr": centred(cells),
        "nll": float(np.mean([-np.log(max(d[r["response"] - r["scale_low"]], 1e-9)) for r, d, _ in inside])),
        "true_nll": float(np.mean([-np.log(max(t[r["response"] - r["scale_low"]], 1e-9)) for r, _, t in inside])),
        "cell": 1 - float(np.mean(w_model) / np.mean(w_uniform)),
        "row": 1 - float(np.mean(row_model) / np.mean(row_uniform)),
    }


def fit_temperature(logprobs: list[np.ndarray], rows: list[dict[str, Any]]) -> float:
    """The temperature minimising the validation answers' NLL on a log grid (0.3..5)."""
    picks = [(lp, r["response"] - r["scale_low"]) for lp, r in zip(logprobs, rows) if r["scale_low"] <= r["response"] <= r["scale_high"]]
    grid = np.exp(np.linspace(np.log(0.3), np.log(5), 40))
    nll = [sum(-(lp[k] / t - np.logaddexp.reduce(lp / t)) for lp, k in picks) for t in grid]
    return float(grid[int(np.argmin(nll))])


class Probe:
    """The rows, the truth and the report line shared by every mode."""

    def __init__(self, world: str, eval_rows: int) -> None:
        self.prepared = f"{world}/prepared"
        table = pq.read_table(f"{world}/synth/{ROW_TRUTH_FILE}")
        self.truth = {(s, i): p for s, i, p in zip(table["study_id"].to_pylist(), table["sample_id"].to_pylist(), table["probs"].to_pylist())}
        self.splits = {"train": cell_sample(self.prepared, "all_settings", "train", 300)}
        for setting in ("unseen_conditions", "unseen_studies"):
            self.splits[setting] = cell_sample(self.prepared, setting, "eval", eval_rows)
        self.val = cell_sample(self.prepared, "all_settings", "val", 300)

    def report(self, label: str, score: Any) -> None:
        """score(rows) -> option log-probabilities per row."""
        temperature = fit_temperature(score(self.val), self.val)
        parts = [f"{label} T {temperature:.2f}"]
        for name, rows in self.splits.items():
            dists = [np.exp(lp / temperature - np.logaddexp.reduce(lp / temperature)) for lp in score(rows)]
            m = metrics(rows, dists, self.truth)
            parts.append(f"{name}: corr {m['corr']:+.2f} wcorr {m['wcorr']:+.2f} nll {m['nll']:.3f}/{m['true_nll']:.3f} "
                         f"cell {m['cell']:+.2f} row {m['row']:+.2f}")
        print(" | ".join(parts), flush=True)


def options(rows: list[dict[str, Any]]) -> list[list[int]]:
    return [list(range(r["scale_low"], r["scale_high"] + 1)) for r in rows]


def scorer_for(model: Any, base_path: str, lora: bool, tok: Any, folder: str) -> Any:
    """Save the model being trained and score with the production Scorer."""
    model.save_pretrained(folder)
    if lora:
        scorer = Scorer(base_path, DEFAULT_SYSTEM_PROMPT)
        scorer.load_adapter("a", folder)
        return lambda rows: scorer.option_logprobs([r["prompt"] for r in rows], options(rows), adapter="a")
    tok.save_pretrained(folder)
    scorer = Scorer(folder, DEFAULT_SYSTEM_PROMPT)
    return lambda rows: scorer.option_logprobs([r["prompt"] for r in rows], options(rows))


def lm_pretrain(model: Any, prefixes: list[list[int]], pad_id: int, steps: int, batch: int, seed: int) -> None:
    """Plain next-token pretraining of the whole base on the training prompts (no answers)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    rng, started, losses = np.random.default_rng(seed + 1), time.time(), []
    model.train()
    for step in range(1, steps + 1):
        picked = rng.choice(len(prefixes), batch, replace=False)
        width = max(len(prefixes[i]) for i in picked)
        ids = torch.full((batch, width), pad_id)
        labels = torch.full((batch, width), -100)
        for j, i in enumerate(picked):
            ids[j, : len(prefixes[i])] = torch.tensor(prefixes[i])
            labels[j, : len(prefixes[i])] = torch.tensor(prefixes[i])
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"pretrain step {step} loss {np.mean(losses[-100:]):.3f} {time.time() - started:.0f}s", flush=True)


def run_transformer(a: argparse.Namespace, probe: Probe, tok: Any, examples: list) -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    base_path = a.model or f"{a.world}/tiny-model"
    if a.adapter:
        from peft import PeftModel

        with tempfile.TemporaryDirectory() as tmp:
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), a.adapter)
            probe.report(f"adapter {a.adapter}", scorer_for(model, base_path, True, tok, tmp))
        return
    work = tempfile.TemporaryDirectory()
    if a.layers:  # another shape: a fresh random base with the world's tokenizer
        config = Qwen2Config(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=4 * a.hidden, num_hidden_layers=a.layers,
                             num_attention_heads=a.heads, num_key_value_heads=a.heads, head_dim=a.hidden // a.heads,
                             max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, bos_token_id=None)
        model = Qwen2ForCausalLM(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if a.pt_steps:
        prefixes = [x[: next(t for t, label in enumerate(y) if label != -100)] for x, y in examples]
        lm_pretrain(model, prefixes, a.pad_id, a.pt_steps, a.batch, a.seed)
    if a.layers or a.pt_steps:
        base_path = f"{work.name}/base"
        model.save_pretrained(base_path)
        tok.save_pretrained(base_path)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    lora = a.mode == "lora"
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.r, lora_dropout=0.0, target_modules=a.targets.split(",")))
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.1)
    warm = max(1, int(0.05 * a.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, a.steps - warm))))
    rng, order, losses, started = np.random.default_rng(a.seed), [], [], time.time()
    model.train()
    for step in range(1, a.steps + 1):
        if len(order) < a.batch:
            order += rng.permutation(len(examples)).tolist()
        picked, order = order[: a.batch], order[a.batch:]
        width = max(len(examples[i][0]) for i in picked)
        ids = torch.full((a.batch, width), a.pad_id)
        labels = torch.full((a.batch, width), -100)
        mask = torch.zeros((a.batch, width), dtype=torch.long)
        for j, i in enumerate(picked):
            x, y = examples[i]
            ids[j, : len(x)], labels[j, : len(y)], mask[j, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        keep = (labels[:, 1:] != -100).any(0).nonzero().squeeze(-1)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels[:, keep + 1].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"step {step} loss {np.mean(losses[-100:]):.3f} {time.time() - started:.0f}s", flush=True)
        if step in a.eval_at or step == a.steps:
            model.eval()
            with tempfile.TemporaryDirectory() as tmp:
                probe.report(f"step {step}", scorer_for(model, base_path, lora, tok, tmp))
            model.train()
    print(f"seconds {time.time() - started:.0f} (training and probes)")
    work.cleanup()


def run_bow(a: argparse.Namespace, probe: Probe, tok: Any, examples: list) -> None:
    """Mean-pooled (optionally IDF-weighted) token embeddings -> residual MLP -> output layer."""
    encoder = Encoder(tok, DEFAULT_SYSTEM_PROMPT)
    prefixes = [x[: next(t for t, label in enumerate(y) if label != -100)] for x, y in examples]
    answers = [y[len(p)] for p, (_, y) in zip(prefixes, examples)]
    df: collections.Counter = collections.Counter()
    for x in prefixes:
        df.update(set(x))
    weight = torch.tensor([math.log(len(prefixes) / (1 + df.get(i, 0))) if a.idf else 1.0 for i in range(len(tok))])

    class Bow(torch.nn.Module):
        def __init__(self, vocab: int, width: int = 128) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, width)
            torch.nn.init.normal_(self.emb.weight, std=0.02)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.SiLU(), torch.nn.Linear(4 * width, width))
            self.out = torch.nn.Linear(width, vocab)

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            h = (self.emb(ids) * (mask * weight[ids])[..., None]).sum(1) / mask.sum(1, keepdim=True)
            h = h / (h.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)
            return self.out(h + self.mlp(h))

    def padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids, mask = torch.zeros(len(seqs), width, dtype=torch.long), torch.zeros(len(seqs), width)
        for j, s in enumerate(seqs):
            ids[j, : len(s)], mask[j, : len(s)] = torch.tensor(s), 1
        return ids, mask

    option_ids: dict[int, int] = {}

    def score(rows: list[dict[str, Any]]) -> list[np.ndarray]:
        with torch.no_grad():
            logits = model(*padded(encoder.encode_prompts([r["prompt"] for r in rows])))
        out = []
        for r, row_logits in zip(rows, logits):
            # one-token options only: the first token of "10" is "1", so 0-10 scales are approximate here
            ids = [option_ids.setdefault(o, tok(str(o), add_special_tokens=False)["input_ids"][0]) for o in range(r["scale_low"], r["scale_high"] + 1)]
            out.append(torch.log_softmax(row_logits[ids], -1).numpy())
        return out

    torch.manual_seed(a.seed)
    model = Bow(len(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    rng, started = np.random.default_rng(a.seed), time.time()
    for step in range(1, a.steps + 1):
        picked = rng.choice(len(prefixes), a.batch, replace=False)
        loss = torch.nn.functional.cross_entropy(model(*padded([prefixes[i] for i in picked])), torch.tensor([answers[i] for i in picked]))
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step in a.eval_at or step == a.steps:
            model.eval()
            probe.report(f"bow step {step} ({time.time() - started:.0f}s)", score)
            model.train()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="runs/demo", help="a demo run folder: <world>/synth, <world>/prepared (and <world>/tiny-model)")
    p.add_argument("--model", default=None, help="base model folder (default: <world>/tiny-model; the demo's is runs/tiny-model)")
    p.add_argument("--mode", choices=["lora", "full", "bow"], default="lora")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval-at", default="", help="comma-separated steps to probe at before the last")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default 5e-4 (lora), 1e-3 (full, bow)")
    p.add_argument("--r", type=int, default=128, help="LoRA rank (alpha = rank)")
    p.add_argument("--targets", default=DEMO_TARGETS)
    p.add_argument("--layers", type=int, default=0, help="another tiny shape, from a fresh random base (0: the world's base)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--pt-steps", type=int, default=0, help="LM-pretrain the base on the training prompts first")
    p.add_argument("--idf", action="store_true", help="bow: weight tokens by inverse document frequency")
    p.add_argument("--adapter", default=None, help="probe an exported adapter instead of training")
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    a.eval_at = {int(s) for s in a.eval_at.split(",") if s}
    a.lr = a.lr or (5e-4 if a.mode == "lora" else 1e-3)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = load_tokenizer(a.model or f"{a.world}/tiny-model")
    encoder = Encoder(tok, DEFAULT_SYSTEM_PROMPT)
    a.pad_id = encoder.pad_id
    rows = load_split_rows(f"{a.world}/prepared", "all_settings", "train", None).to_pylist()
    examples = encoder.encode([r["prompt"] for r in rows], [str(r["response"]) for r in rows])
    print(f"{len(examples):,} training rows, {np.mean([len(x) for x, _ in examples]):.0f} tokens on average", flush=True)
    probe = Probe(a.world, a.eval_rows)
    (run_bow if a.mode == "bow" else run_transformer)(a, probe, tok, examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
