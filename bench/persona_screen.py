"""A fast screen of training recipes for one question: does the model read the persona?

    python bench/persona_screen.py                       # after `make demo`: the demo's base and steps, answers only
    python bench/persona_screen.py --mode full --lr 1e-3
    python bench/persona_screen.py --persona-aux 1.0     # + recover each persona field at the answer position
    python bench/persona_screen.py --persona-aux 1.0 --aux-until 0.5   # ... with a weight that falls to 0 at mid-run
    python bench/persona_screen.py --persona-aux 1.0 --anchor-teacher 3.0   # ... + the regression anchor's soft labels
    python bench/persona_screen.py --persona-aux 1.0 --anchor-teacher 3.0 --pairs 120   # ... + the within-cell contrast
    python bench/persona_screen.py --persona-last        # diagnostic: the persona block moved after the question
    python bench/persona_screen.py --marginals           # the truth alone: does a persona field move answers on average?
    python bench/persona_screen.py data.raw=runs/big/synth data.prepared=runs/big/prepared   # another synth/prepare

One process, no Ray, no DeepSpeed: the demo's base (model.path), its LoRA shape and learning rate, batches
of 16 of the training split of train.setting, AdamW with warm-up and cosine decay. Every --report steps it
scores whole cells of three splits (training cells, unseen conditions, unseen studies; bounded scales of
one-digit options) from the next-token distribution at the answer position and prints, per split:

- persona reading: within each cell, the correlation, pooled over cells, of each participant's predicted
  mean position (0-1) with their TRUE mean position (the synthetic generator's ground_truth_rows.parquet),
  both centred on the cell's mean; what report.md calls persona reading, on this screen's rows;
- spread: the standard deviation of those centred predictions, beside the truth's;
- cell means: the share of uniform's distance between the cell's mean position and the truth's that
  the model removes.

--marginals prints, for party and ideology, each value's mean and SD of the true within-cell deviation over
the training split and stops: a value whose mean is near 0 and whose SD is large moves answers only together
with the stimulus (an interaction), which gives a model no first-order reason to read it.

It reproduces the order of the full pipeline's figures, not their values: `socrates-ray train` and
`evaluate` are what a recipe is judged on. --persona-aux adds a training-only linear probe on what the MLP
of layer --aux-layer (default: the last) reads at the answer position, which must recover every persona
field's value (hashed into --buckets classes): the attention before that MLP must bring the persona to
where the answer is predicted, so the MLP can combine it with the stimulus. The probe is thrown away.
--aux-until F lets its weight fall linearly to 0 at F x --steps, as train.persona_probe.until does in
`socrates-ray train`. --anchor-teacher W adds W x the cross-entropy from the regression anchor's
distribution over each training row's options (fitted on the training split) to the model's at the
answer position, as train.anchor_teacher does. --pairs W draws each batch as pairs of rows of one cell
and adds W x anchor_teacher.within_cell_contrast of the expected answer positions against the anchor's
(--pair-target teacher, the anchor fitted as --anchor-teacher fits it; train.anchor_teacher.contrast) or against the answers' own
positions (--pair-target answer); fresh pairs every step, or with --fixed-pairs one pairing replayed in
one order every pass, as `socrates-ray train` does. --stimulus-aux W adds a second probe at the same place
that must say which words (hashed) the row's stimulus holds.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from socrates_ray.config import load_config
from socrates_ray.data.prepared import load_split_rows
from socrates_ray.data.prompts import PERSONA_ORDER
from socrates_ray.eval.metrics import Cell
from socrates_ray.eval.truth import load_row_truth, load_truth, persona_reading
from socrates_ray.data.tokenize import IGNORE_INDEX, Encoder, persona_classes
from socrates_ray.train.anchor_teacher import paired_order, within_cell_contrast


def whole_cells(rows: list[dict], limit: int, seed: int) -> list[dict]:
    """Whole cells (study, condition, task) of bounded one-digit scales, in a seeded order, until `limit` rows."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["scale_low"] is not None and 0 <= r["scale_low"] and r["scale_high"] <= 9:
            cells.setdefault((r["study_id"], r["condition_num"], r["task_num"]), []).append(r)
    keys = sorted(cells)
    np.random.default_rng(seed).shuffle(keys)
    out: list[dict] = []
    for k in keys:
        if len(out) >= limit:
            break
        out.extend(cells[k])
    return out


def persona_last(rows: list[dict]) -> list[dict]:
    """The persona block moved after the question (a diagnostic layout, not the SocSci210 format)."""
    for r in rows:
        head, rest = r["prompt"].split("\n\nRead the question below", 1)
        r["prompt"] = "Read the question below" + rest + "\n\n" + head
    return rows


def print_marginals(rows: list[dict], truth: dict) -> None:
    cells: dict[tuple, list[tuple[dict, float]]] = {}
    for r in rows:
        t = truth.get((r["study_id"], r["sample_id"]))
        if t is not None:
            cells.setdefault((r["study_id"], r["condition_num"], r["task_num"]), []).append(
                (r["demographic"], float(np.dot(t, np.linspace(0, 1, len(t))))))
    for field in ("party_id", "ideology"):
        by: dict[str, list[float]] = {}
        for v in cells.values():
            centre = np.mean([m for _, m in v])
            for demo, m in v:
                by.setdefault(str(demo.get(field)), []).append(m - centre)
        print(f"{field}: value, rows, mean true deviation from the cell's mean position, its SD")
        for value, d in sorted(by.items()):
            print(f"  {value:32s} {len(d):6d} {np.mean(d):+.3f} {np.std(d):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides, as the CLI takes them (data.prepared=runs/big/prepared)")
    parser.add_argument("--model", default=None, help="base model folder (default: the config's model.path)")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's train.max_steps")
    parser.add_argument("--report", type=int, default=500, help="score the three splits every this many steps")
    parser.add_argument("--lr", type=float, default=None, help="default: the config's train.lr")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--mode", choices=["lora", "lora_mlp", "full"], default="lora")
    parser.add_argument("--persona-aux", type=float, default=0.0, help="weight of the persona-recovery probe's loss")
    parser.add_argument("--aux-until", type=float, default=0.0,
                        help="the probe's weight falls linearly to 0 at this fraction of --steps (0: constant)")
    parser.add_argument("--aux-layer", type=int, default=-1, help="the probe reads this layer's MLP input (0-based; -1: the last)")
    parser.add_argument("--buckets", type=int, default=64)
    parser.add_argument("--persona-last", action="store_true", help="diagnostic: the persona block after the question")
    parser.add_argument("--rows", type=int, default=1500, help="rows scored per split (whole cells)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--marginals", action="store_true", help="print how much party and ideology move answers on average, and stop")
    parser.add_argument("--anchor-teacher", type=float, default=0.0,
                        help="weight of a soft-label term: the regression anchor's distribution for each training row")
    parser.add_argument("--stimulus-aux", type=float, default=0.0,
                        help="weight of a second probe at the same place: which words (hashed) the row's stimulus holds")
    parser.add_argument("--fixed-pairs", action="store_true",
                        help="with --pairs: pair the rows once with the training pipeline's own pairing (anchor_teacher.paired_order) "
                             "and replay them in that order every pass (default: fresh pairs every step)")
    parser.add_argument("--pairs", type=float, default=0.0,
                        help="weight of the within-cell contrast (train.anchor_teacher.contrast): batches of same-cell pairs, "
                             "each one's expected position minus its cell's mean must match the target's (--pair-target)")
    parser.add_argument("--pair-target", choices=["teacher", "answer"], default="teacher")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    args.steps = args.steps or cfg.train.max_steps or 1000
    model_path = args.model or cfg.model.path
    lr = args.lr if args.lr is not None else cfg.train.lr
    layout = persona_last if args.persona_last else (lambda rows: rows)
    truth, cell_truth = load_row_truth(cfg.data.raw), load_truth(cfg.data.raw)
    if not truth or not cell_truth:
        raise SystemExit(f"{cfg.data.raw} has no ground_truth.parquet / ground_truth_rows.parquet: this screen needs a synthetic "
                         "world's true distributions (run `make demo`)")

    def split(setting: str, name: str) -> list[dict]:
        return load_split_rows(cfg.data.prepared, setting, name).to_pylist()

    train = layout(split(cfg.train.setting, "train"))
    if args.marginals:
        print_marginals(train, truth)
        return 0
    held = "unseen_conditions" if cfg.train.setting == "all_settings" else cfg.train.setting
    scored = {"training cells": whole_cells(train, args.rows, 1),  # rows of `train`: already laid out
              "unseen conditions": layout(whole_cells(split(held, "eval"), args.rows, 0)),
              "unseen studies": layout(whole_cells(split("unseen_studies", "eval"), args.rows, 0))}
    tok = AutoTokenizer.from_pretrained(model_path)
    enc = Encoder(tok, cfg.prompt.system_prompt)
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    examples = enc.encode([r["prompt"] for r in train], [str(r["response"]) for r in train])
    fields = [persona_classes(r["demographic"], args.buckets) for r in train]
    word_bins = 256
    stimulus_words = []
    if args.stimulus_aux > 0:
        import re
        import zlib

        for r in train:
            bag = np.zeros(word_bins, np.float32)
            bag[[zlib.crc32(w.encode()) % word_bins for w in set(re.findall(r"[a-z]+", r["stimuli"].lower()))]] = 1.0
            stimulus_words.append(bag)
    teacher: list[list[float] | None] = [None] * len(train)
    if args.anchor_teacher > 0 or (args.pairs > 0 and args.pair_target == "teacher"):
        from socrates_ray.train.anchor_teacher import fit_teacher
        from socrates_ray.eval.anchor import option_distributions

        anchor = fit_teacher(cfg.data.prepared, cfg.train.setting, print)
        teacher = [q if r["scale_low"] is not None and 0 <= r["scale_low"] and r["scale_high"] <= 9 else None
                   for r, q in zip(train, option_distributions(anchor, train))]  # one-digit scales, as the screen scores
    print(f"{len(train)} training rows; scored: " + ", ".join(f"{k} {len(v)}" for k, v in scored.items()), flush=True)

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if args.mode != "full":
        from peft import LoraConfig, get_peft_model

        targets = list(cfg.train.lora.target_modules)
        if args.mode == "lora_mlp":
            targets += [m for m in ("gate_proj", "up_proj", "down_proj") if m not in targets]
        model = get_peft_model(model, LoraConfig(r=cfg.train.lora.r, lora_alpha=cfg.train.lora.alpha, lora_dropout=0.0,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    layer = args.aux_layer % model.config.num_hidden_layers
    seen: dict[str, Any] = {}
    if args.persona_aux > 0 or args.stimulus_aux > 0:
        mlp = next(m for name, m in model.named_modules() if name.endswith(f"layers.{layer}.mlp"))
        mlp.register_forward_pre_hook(lambda module, inputs: seen.__setitem__("h", inputs[0]))
    probe = torch.nn.Linear(model.config.hidden_size, len(PERSONA_ORDER) * args.buckets)
    word_probe = torch.nn.Linear(model.config.hidden_size, word_bins)
    params = [p for p in model.parameters() if p.requires_grad] + list(probe.parameters()) + list(word_probe.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, int(cfg.train.warmup_ratio * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))

    def batchify(items: list[tuple[list[int], list[int]]]) -> tuple:
        width = max(len(i) for i, _ in items)
        ids = torch.full((len(items), width), enc.pad_id)
        labels = torch.full((len(items), width), IGNORE_INDEX)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for j, (i, lab) in enumerate(items):
            ids[j, : len(i)], labels[j, : len(lab)], mask[j, : len(i)] = torch.tensor(i), torch.tensor(lab), 1
        return ids, labels, mask

    @torch.no_grad()
    def option_probs(rows: list[dict]) -> list[list[float]]:
        """Each row's distribution over its scale's options (one-digit answers: the next token's)."""
        model.eval()
        prefixes, out = enc.encode_prompts([r["prompt"] for r in rows]), []
        for s in range(0, len(rows), 32):
            ids, _, mask = batchify([(p, p) for p in prefixes[s : s + 32]])
            logits = model(input_ids=ids, attention_mask=mask).logits[torch.arange(len(ids)), mask.sum(1) - 1][:, digits]
            for j, r in enumerate(rows[s : s + 32]):
                out.append(torch.softmax(logits[j, r["scale_low"] : r["scale_high"] + 1], -1).tolist())
        model.train()
        return out

    def reading(rows: list[dict], probs: list[list[float]]) -> str:
        """Persona reading as the evaluation computes it (eval/truth.py), the spread of the centred predicted
        positions beside the truth's, and how close the cells' mean positions come to the truth's."""
        cells: dict[tuple, list[tuple[dict, list[float]]]] = {}
        for r, q in zip(rows, probs):
            cells.setdefault((r["study_id"], r["condition_num"], r["task_num"]), []).append((r, q))
        scored, p, t, miss, uni = {}, [], [], [], []
        for key, members in cells.items():
            options = list(range(members[0][0]["scale_low"], members[0][0]["scale_high"] + 1))
            scored[key] = Cell(key, np.asarray([r["response"] for r, _ in members], dtype=np.float64), [None] * len(members),
                               [options] * len(members), [q for _, q in members], sample_ids=[r["sample_id"] for r, _ in members])
            x = np.linspace(0, 1, len(options))
            pm = np.asarray([np.dot(q, x) for _, q in members])
            tm = np.asarray([np.dot(truth[(r["study_id"], r["sample_id"])], x) for r, _ in members])
            p.extend(pm - pm.mean())
            t.extend(tm - tm.mean())
            miss.append(abs(pm.mean() - tm.mean()))
            uni.append(abs(0.5 - tm.mean()))
        corr = persona_reading(scored, cell_truth, truth).within_cell_corr
        return (f"persona {corr:+.3f}, spread {np.std(p):.3f} (truth {np.std(t):.3f}), "
                f"cell means {1 - np.mean(miss) / np.mean(uni):+.2f}")

    one_digit = [r["scale_low"] is not None and 0 <= r["scale_low"] and r["scale_high"] <= 9 and r["scale_high"] > r["scale_low"]
                 for r in train]
    members: dict[tuple, list[int]] = {}
    for i, r in enumerate(train):
        if one_digit[i] and (args.pair_target == "answer" or teacher[i] is not None):
            members.setdefault((r["study_id"], r["condition_num"], r["task_num"]), []).append(i)
    cells = list(members.values())
    pairable = np.asarray([i for m in cells if len(m) > 1 for i in m])
    cell_of = {i: n for n, m in enumerate(cells) for i in m}  # row -> its cell's index in `cells`

    def position_target(i: int) -> float:
        r = train[i]
        x = np.linspace(0, 1, r["scale_high"] - r["scale_low"] + 1)
        if args.pair_target == "teacher":
            return float(np.dot(teacher[i], x))
        return float(x[int(r["response"]) - r["scale_low"]]) if r["scale_low"] <= int(r["response"]) <= r["scale_high"] else float("nan")

    rng = np.random.default_rng(args.seed)
    order, at, t0, answer_loss, probe_loss = rng.permutation(len(examples)), 0, time.time(), 0.0, 0.0
    fixed = np.zeros(0, dtype=np.int64)  # --fixed-pairs: the pipeline's pairing of the rows, replayed in one order
    if args.fixed_pairs:
        rows = np.asarray([i for m in cells for i in m])
        fixed = rows[paired_order([cell_of[i] for i in rows], args.seed + 1)]
    pair_at = 0
    for step in range(1, args.steps + 1):
        if at + args.batch > len(order):
            order, at = rng.permutation(len(examples)), 0
        take = order[at : at + args.batch]
        at += args.batch
        if args.pairs > 0 and args.fixed_pairs:
            if pair_at + args.batch > len(fixed):
                pair_at = 0
            take = fixed[pair_at : pair_at + args.batch]
            pair_at += args.batch
        elif args.pairs > 0:  # the batch as pairs: half drawn from pairable rows, each with a partner from its own cell
            first = rng.choice(pairable, args.batch // 2, replace=False)
            second = [rng.choice([j for j in cells[cell_of[i]] if j != i]) for i in first]
            take = np.asarray([x for ab in zip(first, second) for x in ab])
        ids, labels, mask = batchify([examples[i] for i in take])
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        loss = out.loss
        if args.persona_aux > 0:
            at_answer = (labels != IGNORE_INDEX).float().argmax(1) - 1  # the position that predicts the answer
            h = seen["h"][torch.arange(len(take)), at_answer]
            aux = torch.nn.functional.cross_entropy(probe(h).view(-1, args.buckets), torch.tensor([fields[i] for i in take]).view(-1),
                                                    ignore_index=-100)
            weight = args.persona_aux * (1.0 if args.aux_until <= 0 else max(0.0, 1 - step / (args.aux_until * args.steps)))
            loss = loss + weight * aux
            probe_loss += float(aux.detach())
        if args.stimulus_aux > 0:
            at_answer = (labels != IGNORE_INDEX).float().argmax(1) - 1
            h = seen["h"][torch.arange(len(take)), at_answer]
            words = torch.nn.functional.binary_cross_entropy_with_logits(
                word_probe(h), torch.from_numpy(np.stack([stimulus_words[i] for i in take])))
            loss = loss + args.stimulus_aux * words
        if args.anchor_teacher > 0:
            at_answer = (labels != IGNORE_INDEX).float().argmax(1) - 1
            logp = torch.log_softmax(out.logits[torch.arange(len(take)), at_answer][:, digits], -1)
            terms = [-(torch.tensor(teacher[i]) * torch.log_softmax(logp[j, train[i]["scale_low"] : train[i]["scale_high"] + 1], -1)).sum()
                     for j, i in enumerate(take) if teacher[i] is not None]
            if terms:
                loss = loss + args.anchor_teacher * torch.stack(terms).mean()
        if args.pairs > 0:
            at_answer = (labels != IGNORE_INDEX).float().argmax(1) - 1
            logits = out.logits[torch.arange(len(take)), at_answer][:, digits]
            expected = torch.stack([
                (torch.softmax(logits[j, train[i]["scale_low"] : train[i]["scale_high"] + 1], -1)
                 * torch.linspace(0, 1, train[i]["scale_high"] - train[i]["scale_low"] + 1)).sum() for j, i in enumerate(take)])
            target = torch.tensor([position_target(i) for i in take], dtype=torch.float32)
            ok = ~torch.isnan(target)  # an answer outside its scale (a refusal code) has no position
            contrast = within_cell_contrast(expected[ok], target[ok], torch.tensor([cell_of[i] for i in take])[ok])
            if contrast is not None:
                loss = loss + args.pairs * contrast
        answer_loss += float(out.loss.detach())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % args.report == 0 or step == args.steps:
            n = args.report if step % args.report == 0 else step % args.report
            aux_text = f", probe loss {probe_loss / n:.3f}" if args.persona_aux > 0 else ""
            print(f"step {step}: answer loss {answer_loss / n:.4f}{aux_text} ({time.time() - t0:.0f} s)", flush=True)
            for name, rows in scored.items():
                print(f"  {name}: {reading(rows, option_probs(rows))}", flush=True)
            answer_loss = probe_loss = 0.0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
