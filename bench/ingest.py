"""Ingest benchmark: the Ray Data pipeline vs a single-process loop over the same rows, and the
share of non-padding tokens with packing vs padding to max_length.

    python bench/ingest.py                      # ~30k synthetic answers, tiny offline tokenizer
    python bench/ingest.py --rows 100000 --workers 2 --actors 2

Both paths tokenize, pack (or pad) and collate the same prepared split into micro batches the
way a training worker would; only who does the work differs. Everything is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import pyarrow.parquet as pq

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, TinyModelSection, load_config
from socrates_ray.data.ingest import build_ingest_dataset, collate_fn_for
from socrates_ray.data.ingest_stats import measure_ingest
from socrates_ray.models import load_tokenizer
from socrates_ray.data.prepare import prepare_options, run_prepare
from socrates_ray.data.synthetic_files import write_synthetic
from socrates_ray.data.tokenize import Encoder, collate_rows, pack_rows, single_rows
from socrates_ray.models import ensure_tiny_model


def single_process(split: str, tokenizer_path: str, max_length: int, layout: str, window: int, micro: int, torch_threads: int) -> dict:
    """The baseline: one process reads, tokenizes, packs and collates every row itself."""
    import torch

    torch.set_num_threads(torch_threads)
    start = time.perf_counter()
    encoder = Encoder(load_tokenizer(tokenizer_path), DEFAULT_SYSTEM_PROMPT)
    tokens = slots = 0
    pending = []
    for batch in _batches(split, window):
        examples = [e for e in encoder.encode(batch["prompt"].to_pylist(), batch["answer"].to_pylist()) if len(e[0]) <= max_length]
        rows = pack_rows(examples, max_length, encoder.pad_id) if layout == "pack" else single_rows(examples)
        pending.extend(rows)
        while len(pending) >= micro:
            chunk, pending = pending[:micro], pending[micro:]
            out = collate_rows(chunk, encoder.pad_id, max_length if layout != "pad_longest" else None)
            tokens += int((out["seq_ids"] > 0).sum())
            slots += out["seq_ids"].numel()
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1), "non_padding_share": round(tokens / slots, 4)}


def _batches(split: str, window: int):
    for path in sorted(Path(split).glob("*.parquet")):
        yield from pq.ParquetFile(path).iter_batches(batch_size=window, columns=["prompt", "answer"])


def padding_shares(split: str, tokenizer_path: str, max_lengths: list[int], window: int) -> dict:
    """Non-padding share of packed rows vs one sample per row padded to max_length / to the
    longest in a micro batch of 4, for several max_length values (no Ray, pure arithmetic)."""
    encoder = Encoder(load_tokenizer(tokenizer_path), DEFAULT_SYSTEM_PROMPT)
    batches = [encoder.encode(b["prompt"].to_pylist(), b["answer"].to_pylist()) for b in _batches(split, window)]
    lengths = np.array([len(e[0]) for b in batches for e in b])
    out = {"sample_tokens": {"mean": round(float(lengths.mean()), 1), "p5": int(np.percentile(lengths, 5)), "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max())}}
    for max_length in max_lengths:
        fitting = [[e for e in b if len(e[0]) <= max_length] for b in batches]
        real = sum(len(e[0]) for b in fitting for e in b)
        packed_rows = sum(len(pack_rows(b, max_length, encoder.pad_id)) for b in fitting)
        n = sum(len(b) for b in fitting)
        sizes = [len(e[0]) for b in fitting for e in b]
        longest_slots = sum(max(sizes[i : i + 4]) * len(sizes[i : i + 4]) for i in range(0, len(sizes), 4))
        out[max_length] = {
            "pack": round(real / (packed_rows * max_length), 4),
            "pad_max_length": round(real / (n * max_length), 4),
            "pad_longest": round(real / longest_slots, 4),
            "samples_per_packed_row": round(n / packed_rows, 2),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30000, help="synthetic answers to generate")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2, help="streaming_split consumers (training workers)")
    parser.add_argument("--actors", type=int, default=2, help="tokenizer actors")
    parser.add_argument("--micro", type=int, default=2, help="rows per micro batch")
    parser.add_argument("--window", type=int, default=2048, help="samples per packing window")
    parser.add_argument("--workdir", default=None, help="where data and the tiny model go (default: a temp folder)")
    args = parser.parse_args()

    import ray

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    print(f"bench/ingest: workdir {work}, {args.rows:,} synthetic answers, max_length {args.max_length}, machine {os.cpu_count()} CPUs")
    write_synthetic(work / "synth", studies=40, rows=args.rows, rows_per_shard=max(1000, args.rows // 8), seed=0, refusal_rate=0.005, within_subject_share=0.5)
    run_prepare(prepare_options(load_config(None, [f"data.raw={work / 'synth'}", f"data.prepared={work / 'prepared'}", "data.settings=[unseen_studies]"])), log=lambda *_: None)
    model = str(ensure_tiny_model(work / "tiny", TinyModelSection(), seed=0))
    split = str(work / "prepared" / "unseen_studies" / "train")
    samples = pq.read_table(split, columns=["answer"]).num_rows

    baseline = single_process(split, model, args.max_length, "pack", args.window, args.micro, torch_threads=2)
    print(f"single process  : {baseline['tokens']:,} tokens in {baseline['seconds']}s = {baseline['tokens_per_s']:,.0f} tokens/s")

    if not ray.is_initialized():
        ray.init(log_to_driver=False, include_dashboard=False)
    ds = build_ingest_dataset(split, model, DEFAULT_SYSTEM_PROMPT, args.max_length, "pack", args.window, args.actors, cpus_per_task=0.25)
    collate_fn = collate_fn_for(Encoder(load_tokenizer(model), DEFAULT_SYSTEM_PROMPT).pad_id, "pack", args.max_length)
    warm = measure_ingest(ds, args.workers, args.micro, collate_fn, samples)  # first pass starts actors
    ray_stats = measure_ingest(ds, args.workers, args.micro, collate_fn, samples)
    print(
        f"Ray Data        : {ray_stats['tokens']:,} tokens in {ray_stats['seconds']}s = {ray_stats['tokens_per_s']:,.0f} tokens/s "
        f"({args.actors} tokenizer actors -> {args.workers} equal shards; steps per worker {ray_stats['steps_per_worker']}; "
        f"first, cold pass {warm['seconds']}s)"
    )
    ratio = ray_stats["tokens_per_s"] / baseline["tokens_per_s"]
    print(f"ratio Ray Data / single process: {ratio:.2f}x  (same rows, same tokenizer, same packing)")

    shares = padding_shares(split, model, sorted({1024, 2048, 4096, args.max_length}), args.window)
    st = shares["sample_tokens"]
    print(f"sample length in tokens: mean {st['mean']}, p5 {st['p5']}, p95 {st['p95']}, max {st['max']}")
    print(f"{'max_length':>10}  {'pack':>7}  {'pad to max_length':>17}  {'pad to longest (mb 4)':>21}  samples/packed row")
    for max_length in sorted(k for k in shares if isinstance(k, int)):
        s = shares[max_length]
        print(f"{max_length:>10}  {s['pack']:>7.1%}  {s['pad_max_length']:>17.1%}  {s['pad_longest']:>21.1%}  {s['samples_per_packed_row']}")
    chosen = shares[args.max_length]
    measured = ray_stats["non_padding_share"]
    verdict = "meets" if measured >= 0.95 else "misses"
    print(
        f"non-padding at max_length {args.max_length}: packing {measured:.1%} as the workers received it "
        f"({chosen['pack']:.1%} recomputed per {args.window}-sample window) vs padding to max_length "
        f"{chosen['pad_max_length']:.1%} = {measured / chosen['pad_max_length']:.1f}x the useful tokens per step; "
        f"{verdict} the >= 95% target"
    )
    result = {"baseline": baseline, "ray": ray_stats, "ratio": round(ratio, 3), "padding": {str(k): v for k, v in shares.items()}}
    (work / "bench_ingest.json").write_text(json.dumps(result, indent=1))
    print(f"results: {work / 'bench_ingest.json'}")


if __name__ == "__main__":
    sys.exit(main())
