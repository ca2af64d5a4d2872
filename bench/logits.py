"""Training step time with logits only at label positions (train/loop.forward_loss) against the
model's own full-logits loss, same micro batches, same LoRA recipe (configs/demo.yaml), one process.

    .venv/bin/python bench/logits.py --prepared runs/demo/prepared --model runs/tiny-model   # after `make demo`

Prints ms per micro batch (forward + backward) for each, interleaved over --rounds, and the ratio.
The two losses are equal (tests/unit/test_loss.py); this measures only what skipping the output
layer at the ~99% of positions that carry no label saves.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from socrates_ray.config import load_config
from socrates_ray.data.ingest import load_tokenizer
from socrates_ray.data.tokenize import Encoder, collate_rows, packed_attention_mask, single_rows
from socrates_ray.eval.simulate import load_split_rows
from socrates_ray.train.loop import forward_loss


class _Engine:
    device = "cpu"

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, **kwargs):
        return self.model(**kwargs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--prepared", default="runs/demo/prepared")
    parser.add_argument("--model", default="runs/tiny-model")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a demo worker has one core)")
    args = parser.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [])
    enc = Encoder(load_tokenizer(args.model), cfg.prompt.system_prompt)
    micro = cfg.ingest.micro_batch_size
    rows = load_split_rows(args.prepared, cfg.train.setting, "train", None).slice(0, micro * args.batches).to_pylist()
    examples = enc.encode([r["prompt"] for r in rows], [str(r["response"]) for r in rows])
    batches = [collate_rows(single_rows(examples[i:i + micro]), enc.pad_id) for i in range(0, len(examples), micro)]
    lora = cfg.train.lora
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32),
                           LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)))

    def full(batch):
        return model(input_ids=batch["input_ids"], attention_mask=packed_attention_mask(batch["seq_ids"], torch.float32),
                     position_ids=batch["position_ids"], labels=batch["labels"]).loss

    def label_only(batch):
        return forward_loss(_Engine(model), batch, torch.float32)

    times = {"full logits": [], "label positions": []}
    for _ in range(args.rounds):
        for name, loss_fn in (("full logits", full), ("label positions", label_only)):
            start = time.perf_counter()
            for batch in batches:
                loss_fn(batch).backward()
                model.zero_grad(set_to_none=True)
            times[name].append((time.perf_counter() - start) / len(batches) * 1000)
    best = {k: min(v) for k, v in times.items()}
    tokens = sum(int(b["input_ids"].numel()) for b in batches) / len(batches)
    print(f"{len(batches)} micro batches of {micro} rows (~{tokens:.0f} padded tokens each), LoRA r{lora.r} on "
          f"{', '.join(lora.target_modules)}, {args.threads} thread(s), best of {args.rounds} rounds:")
    for name, ms in best.items():
        print(f"  {name}: {ms:.0f} ms per micro batch (forward + backward)")
    print(f"  label positions / full logits: {best['label positions'] / best['full logits']:.2f}x the time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
