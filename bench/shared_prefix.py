"""Shared prefixes benchmark: training forward + backward time per example with each participant's
examples behind their shared prompt prefix (ingest.layout shared_prefix) against one example a row
(pad_longest, the demo's layout), on the same examples in one process.

    make demo   # or any prepared split and model
    python bench/shared_prefix.py
    python bench/shared_prefix.py --split runs/demo/prepared/all_settings/train --model runs/tiny-model --examples 2000

Every layout trains the same LoRA (the demo's: rank 96 on the attention, embeddings and output layer)
on the same examples in the same participant order, about `--per-step` examples a micro batch; the
ratio is against pad_longest with the dense mask, measured in this run. The loss must agree too: the
same examples give the same mean answer loss whatever the layout (printed beside the times).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pyarrow.dataset as pads

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
from socrates_ray.data.ingest import PARTICIPANT_COLUMNS, participant_order, participants
from socrates_ray.data.tokenize import Encoder, collate_rows, shared_prefix_rows, single_rows
from socrates_ray.models import load_tokenizer

LAYOUTS = [  # (name, layout, max_length, attention)
    ("pad_longest, dense (the demo)", "pad_longest", 512, "dense"),
    ("shared_prefix 512, dense", "shared_prefix", 512, "dense"),
    ("shared_prefix 1024, segments", "shared_prefix", 1024, "segments"),
    ("shared_prefix 1024, dense", "shared_prefix", 1024, "dense"),
]


def micro_batches(rows, per_step: int):
    """Consecutive rows, cut where a batch reaches per_step examples."""
    batch, count = [], 0
    for row in rows:
        batch.append(row)
        count += int(row.seq_ids.max())
        if count >= per_step:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="runs/demo/prepared/all_settings/train")
    ap.add_argument("--model", default="runs/tiny-model")
    ap.add_argument("--examples", type=int, default=1600, help="examples timed per layout (whole participants)")
    ap.add_argument("--per-step", type=int, default=8, help="examples per micro batch (about)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from socrates_ray.train.attention import register
    from socrates_ray.train.steps import forward_loss

    torch.set_num_threads(args.threads)
    table = pads.dataset(args.split).to_table(columns=["prompt", "answer", *PARTICIPANT_COLUMNS])
    who = participants(table)
    order = participant_order(who, seed=0)
    table = table.take(order)
    who = [who[i] for i in order]
    keep = args.examples
    while keep < len(who) and who[keep] == who[keep - 1]:  # whole participants only
        keep += 1
    encoder = Encoder(load_tokenizer(args.model), DEFAULT_SYSTEM_PROMPT)
    examples = encoder.encode(table["prompt"].to_pylist()[:keep], table["answer"].to_pylist()[:keep])
    fits = [len(e[0]) <= min(m for *_, m, _ in LAYOUTS) for e in examples]  # the same examples in every layout
    examples = [e for e, f in zip(examples, fits) if f]
    who = [w for w, f in zip(who[:keep], fits) if f]
    keep = len(examples)
    print(f"{keep:,} examples of {len(set(who)):,} participants ({keep / len(set(who)):.2f} a participant) from {args.split}")

    class Engine:
        def __init__(self, model) -> None:
            self.model, self.device = model, "cpu"

        def __call__(self, **kw):
            return self.model(**kw)

    results = []
    for name, layout, max_length, attention in LAYOUTS:
        rows = (single_rows(examples) if layout == "pad_longest"
                else shared_prefix_rows(examples, who, max_length))
        batches = [collate_rows(b, encoder.pad_id) for b in micro_batches(rows, args.per_step)]
        implementation = {"attn_implementation": register(attention)} if attention != "dense" else {}
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, **implementation)
        model = get_peft_model(model, LoraConfig(r=96, lora_alpha=96, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                                       "embed_tokens", "lm_head"]))
        model.train()
        engine = Engine(model)
        forward_loss(engine, batches[0], torch.float32, attention).backward()  # warm-up
        model.zero_grad()
        tokens = sum(int((b["seq_ids"] != 0).sum()) for b in batches)
        slots = sum(b["seq_ids"].numel() for b in batches)
        losses, start = [], time.perf_counter()
        for b in batches:
            loss = forward_loss(engine, b, torch.float32, attention)
            loss.backward()
            model.zero_grad()
            losses.append((float(loss.detach()), int((b["labels"] != -100).sum())))
        seconds = time.perf_counter() - start
        mean_loss = sum(l * n for l, n in losses) / sum(n for _, n in losses)
        results.append((name, len(rows), tokens, slots, seconds, mean_loss))
    base = results[0]
    print(f"{'layout':<32} {'rows':>6} {'tokens':>9} {'non-pad':>8} {'ms/example':>11} {'vs the demo':>12} {'answer loss':>12}")
    for name, rows, tokens, slots, seconds, mean_loss in results:
        print(f"{name:<32} {rows:>6,} {tokens:>9,} {tokens / slots:>8.1%} {1000 * seconds / keep:>11.2f} "
              f"{base[4] / seconds:>11.2f}x {mean_loss:>12.4f}")
    print(f"tokens vs one example a row: {', '.join(f'{r[2] / base[2]:.2f}' for r in results[1:])}")


if __name__ == "__main__":
    main()
