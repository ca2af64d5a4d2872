"""What ingest delivers, measured as the training workers would see it: `measure_ingest` runs a
Dataset of training rows into `num_workers` equal streaming shards consumed concurrently, batched
and collated as the loop does, and reports tokens/s, padding, packing and the samples left out;
`ingest_figures` writes that to ingest_stats.json."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from socrates_ray.data.ingest import collate_fn_for
from socrates_ray.errors import unwrap


@dataclass
class WorkerTally:
    rows: int = 0
    batches: int = 0
    tokens: int = 0  # real (non-padding) tokens the model sees
    slots: int = 0  # all positions, padding included
    samples: int = 0
    label_tokens: int = 0


def consume(iterator: Any, micro_batch_size: int, collate_fn: Any, tally: WorkerTally) -> None:
    """What a training worker does with its shard, minus the model: batch, collate, count."""
    for batch in iterator.iter_torch_batches(batch_size=micro_batch_size, collate_fn=collate_fn, drop_last=True):
        seq = batch["seq_ids"]
        tally.rows += seq.shape[0]
        tally.batches += 1
        tally.slots += seq.numel()
        tally.tokens += int((seq != 0).sum())
        tally.samples += int(seq.max(dim=1).values.sum())
        tally.label_tokens += int((batch["labels"] != -100).sum())


def measure_ingest(ds: Any, num_workers: int, micro_batch_size: int, collate_fn: Any, samples_in: int) -> dict[str, Any]:
    """Run the dataset into `num_workers` equal streaming shards, consumed concurrently as Ray
    Train workers would, and report throughput and padding."""
    shards = ds.streaming_split(num_workers, equal=True)
    tallies = [WorkerTally() for _ in shards]
    errors: list[BaseException] = []

    def worker(it: Any, tally: WorkerTally) -> None:
        try:
            consume(it, micro_batch_size, collate_fn, tally)
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(it, t)) for it, t in zip(shards, tallies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if errors:
        raise unwrap(errors[0])
    tokens = sum(t.tokens for t in tallies)
    slots = sum(t.slots for t in tallies)
    samples = sum(t.samples for t in tallies)
    return {
        "workers": num_workers,
        "rows_per_worker": [t.rows for t in tallies],
        "steps_per_worker": [t.batches for t in tallies],
        "samples_in": samples_in,
        "samples_in_rows": samples,
        "samples_not_in_rows": samples_in - samples,
        "tokens": tokens,
        "label_tokens": sum(t.label_tokens for t in tallies),
        "padding_fraction": round(1 - tokens / slots, 4) if slots else 0.0,
        "non_padding_share": round(tokens / slots, 4) if slots else 0.0,
        "samples_per_row": round(samples / max(1, sum(t.rows for t in tallies)), 2),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
    }


def ingest_figures(ds: Any, split_dir: str, num_workers: int, micro_batch_size: int, layout: str, max_length: int,
                   pad_id: int, out_dir: Path, seconds: float | None = None) -> dict[str, Any]:
    """measure_ingest over `ds` (the tokenized rows of split_dir), written to out_dir/ingest_stats.json.
    seconds: the time a tokenizing pass took, when `ds` was stored by it (reading it back is not ingest)."""
    samples_in = pq.ParquetDataset(split_dir).read(columns=["answer"]).num_rows
    stats = measure_ingest(ds, num_workers, micro_batch_size, collate_fn_for(pad_id, layout, max_length), samples_in)
    if seconds is not None:
        stats.update(seconds=round(seconds, 2), tokens_per_s=round(stats["tokens"] / seconds, 1) if seconds else 0.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ingest_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def format_ingest(stats: dict[str, Any], layout: str) -> str:
    return (
        f"ingest ({layout}): {stats['tokens']:,} tokens in {stats['seconds']}s = {stats['tokens_per_s']:,.0f} tokens/s; "
        f"non-padding {stats['non_padding_share']:.1%} (padding {stats['padding_fraction']:.1%}); "
        f"{stats['samples_per_row']} samples/row; steps per worker {stats['steps_per_worker']}; "
        f"{stats['samples_not_in_rows']:,} of {stats['samples_in']:,} samples not in any step "
        "(longer than max_length, or in the rows equal splitting and drop_last leave out)"
    )
