"""Evaluation benchmark: exact answer distributions vs the paper's sampling protocol on the same
participants, same model: time per participant and the Wasserstein each gives.

    python bench/eval.py --adapter runs/demo/checkpoint_000250/export   # after `make demo`
    python bench/eval.py --engine both     # the same rows through transformers and vLLM (model.engine)

vLLM gets --in-flight batches at once from as many threads (default 4, what a simulate replica
keeps: they share the engine's steps); the transformers engine takes one batch at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from socrates_ray.config import load_config
from socrates_ray.data.prompts import parse_answer_scale
from socrates_ray.eval.metrics import group_cells, model_metrics
from socrates_ray.infer import distributions, engine_spec, load_engine, sample_answers
from socrates_ray.data.prepared import load_split_rows
from socrates_ray.eval.replica import draw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--adapter", default=None, help="adapter folder (default: base model)")
    parser.add_argument("--setting", default="unseen_studies")
    parser.add_argument("--per-cell", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--engine", choices=["transformers", "vllm", "both"], default="transformers")
    parser.add_argument("--in-flight", type=int, default=4, help="vLLM: batches in flight at once (simulate's replicas keep 4)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    cfg = load_config(args.config)
    rows = [r for r in load_split_rows(cfg.data.prepared, args.setting, "eval", args.per_cell).to_pylist() if r["scale_low"] is not None]
    engines = ["transformers", "vllm"] if args.engine == "both" else [args.engine]
    results = {name: bench(name, cfg, rows, args) for name in engines}
    if len(results) == 2:
        t, v = results["transformers"], results["vllm"]
        print(f"vllm / transformers rows/s: exact {v['exact_rps'] / t['exact_rps']:.2f}x, sample {v['sample_rps'] / t['sample_rps']:.2f}x; "
              f"largest difference in an exact probability {max(float(abs(a - b).max()) for a, b in zip(t['exact'], v['exact'])):.1e}")
    return 0


def bench(engine: str, cfg, rows: list[dict], args) -> dict:
    scorer = load_engine(engine_spec(cfg.model.model_copy(update={"engine": engine})), cfg.model.path, cfg.prompt.system_prompt)
    adapter = None
    if args.adapter:
        scorer.load_adapter("ft", args.adapter)
        adapter = "ft"
    prompts = [r["prompt"] for r in rows]
    options = [parse_answer_scale(r["stimuli"]).options for r in rows]
    distributions(scorer, prompts[:4], options[:4], adapter)  # warm-up
    starts = range(0, len(rows), args.batch)
    in_flight = args.in_flight if engine == "vllm" else 1
    with ThreadPoolExecutor(in_flight) as pool:  # results in batch order
        t = time.perf_counter()
        exact = [d for ds in pool.map(lambda i: distributions(scorer, prompts[i : i + args.batch], options[i : i + args.batch], adapter), starts) for d in ds]
        t_exact = time.perf_counter() - t
        t = time.perf_counter()
        sampled = [a[0] for rs in pool.map(lambda i: sample_answers(scorer, prompts[i : i + args.batch], 1, adapter=adapter), starts) for a in rs]
        t_sample = time.perf_counter() - t
    exact_rows = [dict(r, options=o, probs=p.tolist(), prediction=draw(p, o, r["study_id"], r["sample_id"])) for r, o, p in zip(rows, options, exact)]
    sample_rows = [dict(r, prediction=a) for r, a in zip(rows, sampled)]
    m_exact = model_metrics(group_cells(exact_rows))
    m_sample = model_metrics(group_cells(sample_rows))
    n = len(rows)
    print(f"[{engine}] {n} participants, {m_exact['cells']} cells, model {cfg.model.path} adapter {args.adapter}, batches of {args.batch}, {in_flight} in flight")
    print(f"[{engine}] exact distributions : {n / t_exact:7.1f} rows/s ({1000 * t_exact / n:6.1f} ms/participant)  W exact {m_exact['wasserstein']:.4f} "
          f"(one draw per participant: W {m_exact['wasserstein_sampled']:.4f})")
    w_sample = m_sample["wasserstein_sampled"]
    print(f"[{engine}] paper-style sampling: {n / t_sample:7.1f} rows/s ({1000 * t_sample / n:6.1f} ms/participant)  "
          f"W {'n/a' if w_sample is None else f'{w_sample:.4f}'}  unparsable {m_sample['unparsable']}/{n}")
    print(f"[{engine}] sampling / exact time per participant: {t_sample / t_exact:.2f}x", flush=True)
    return {"exact_rps": n / t_exact, "sample_rps": n / t_sample, "exact": exact}


if __name__ == "__main__":
    sys.exit(main())
