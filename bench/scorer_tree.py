"""Exact scoring with the options under a dense tree mask vs on cached prompts (TransformersEngine.tree).

    python bench/scorer_tree.py --adapter runs/demo/checkpoint_000750/export   # after `make demo`

The same participants of an eval split are scored with `tree="mask"` (one row per prompt holding every
option, a dense (B, 1, L, L) mask) and `tree="cache"` (the prompts alone, causal with no mask, then each
option on a copy of its prompt's key/value cache), alternately, `--rounds` times each; prints prompts/s
of each, the ratio, and the largest difference between the two paths' option probabilities.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from socrates_ray.config import load_config
from socrates_ray.data.prompts import parse_answer_scale
from socrates_ray.data.prepared import load_split_rows
from socrates_ray.infer import TransformersEngine, distributions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--adapter", default=None, help="adapter folder (default: base model)")
    parser.add_argument("--setting", default="unseen_studies")
    parser.add_argument("--per-cell", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16, help="prompts per scoring call (simulate.batch_size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    rows = [r for r in load_split_rows(cfg.data.prepared, args.setting, "eval", args.per_cell).to_pylist() if r["scale_low"] is not None]
    prompts = [r["prompt"] for r in rows]
    options = [parse_answer_scale(r["stimuli"]).options for r in rows]
    scorer = TransformersEngine(cfg.model.path, cfg.prompt.system_prompt, precision=args.precision)
    adapter = None
    if args.adapter:
        scorer.load_adapter("ft", args.adapter)
        adapter = "ft"
    seconds: dict[str, list[float]] = {"mask": [], "cache": []}
    probs: dict[str, list] = {}
    for _ in range(args.rounds):
        for tree in ("mask", "cache"):
            scorer.tree = tree
            distributions(scorer, prompts[:4], options[:4], adapter)  # warm-up
            t = time.perf_counter()
            probs[tree] = [d for i in range(0, len(rows), args.batch)
                           for d in distributions(scorer, prompts[i : i + args.batch], options[i : i + args.batch], adapter)]
            seconds[tree].append(time.perf_counter() - t)
    n = len(rows)
    rate = {tree: n / float(np.median(s)) for tree, s in seconds.items()}
    diff = max(float(np.abs(a - b).max()) for a, b in zip(probs["mask"], probs["cache"]))
    print(f"{n} prompts of {args.setting} ({args.per_cell} a cell), model {cfg.model.path}, adapter {args.adapter}, "
          f"{args.precision}, batches of {args.batch}, {args.threads} threads, median of {args.rounds} rounds")
    for tree in ("mask", "cache"):
        print(f"tree={tree:5s}: {rate[tree]:7.1f} prompts/s  (rounds: {', '.join(f'{s:.2f}s' for s in seconds[tree])})")
    print(f"ratio cache / mask: {rate['cache'] / rate['mask']:.2f}x; largest probability difference {diff:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
