"""The Ray Data ingest graph: prepared Parquet -> tokenized, packed rows -> equal worker shards.

    read_parquet(prompt, answer)
      -> map_batches(TokenizePack) in a CPU actor pool (tokenizer loaded once per actor)
      -> streaming_split(num_workers, equal=True)   (Ray Train does this for `datasets=`)

A split small enough to tokenize faster than a tokenizer actor starts (each imports transformers:
~7 s on 2 cores) can be tokenized in the driver instead (`tokenize_in_driver`: the same rows, handed
to Ray Data as blocks). Every output row carries `num_tokens` and `num_samples` so statistics come
from the rows the workers actually consume; ingest_stats.py measures them as the workers would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from socrates_ray.data.tokenize import (EXAMPLE_COLUMNS, Encoder, PortableEncoder, collate, pack_rows, persona_classes,
                                       shared_prefix_rows, single_rows)
from socrates_ray.errors import SocratesError
from socrates_ray.models import load_tokenizer

ROW_SCHEMA = pa.schema(
    [
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("labels", pa.list_(pa.int32())),
        pa.field("position_ids", pa.list_(pa.int32())),
        pa.field("seq_ids", pa.list_(pa.int32())),
        pa.field("num_tokens", pa.int64()),
        pa.field("num_samples", pa.int64()),
        pa.field("persona", pa.list_(pa.int32())),  # persona_classes per example (train.persona_probe), else empty
        pa.field("teacher_ids", pa.list_(pa.int32())),  # train.anchor_teacher's option ids per example, else empty
        pa.field("teacher_probs", pa.list_(pa.float32())),  # ... and their probabilities
        pa.field("teacher_cell", pa.list_(pa.int32())),  # ... and each example's cell (anchor_teacher.cell_keys)
    ]
)


SHARED_PREFIX = "shared_prefix"  # the ingest.layout whose rows hold a participant's examples behind one prefix
PARTICIPANT_COLUMNS = ("study_id", "participant")  # who answered: the examples that may share a prefix


def participants(table: pa.Table) -> list[tuple[Any, ...]]:
    """Who answered each row of a table holding PARTICIPANT_COLUMNS, as (study_id, participant)."""
    return list(zip(*(table[c].to_pylist() for c in PARTICIPANT_COLUMNS)))


def read_columns(persona_buckets: int, teacher: Any = None, layout: str = "pack") -> list[str]:
    """The prepared split's columns that tokenizing reads (the persona too, for the persona probe;
    what the regression anchor reads, for the anchor teacher; who answered, for layout shared_prefix)."""
    columns = ["prompt", "answer"]
    if layout == SHARED_PREFIX:
        columns += list(PARTICIPANT_COLUMNS)
    if persona_buckets:
        columns.append("demographic")
    if teacher is not None:
        from socrates_ray.train.anchor_teacher import TEACHER_COLUMNS

        columns += [c for c in TEACHER_COLUMNS if c not in columns]
    return columns


class IngestError(SocratesError, ValueError):
    """Ingest input or settings that cannot work; says what to change."""


class TokenizePack:
    """Ray Data UDF: a batch of (prompt, answer) rows -> training rows (packed, one per sample, or a
    participant's consecutive samples behind their shared prefix: layout shared_prefix, which reads
    PARTICIPANT_COLUMNS and expects a participant's rows next to each other; participant_order).

    portable: Encoder.portable()'s values, checked in the driver: the actor then encodes with the
    `tokenizers` library alone and starts in ~0.3 s instead of ~7 s (transformers' imports).
    persona_buckets > 0: each row also carries its examples' persona_classes (the batch needs a
    `demographic` column; read_columns). teacher (a fitted regression anchor): each row also carries
    its examples' anchor_teacher.teacher_targets."""

    def __init__(self, tokenizer_path: str, system_prompt: str, max_length: int, layout: str,
                 portable: dict[str, Any] | None = None, persona_buckets: int = 0, teacher: Any = None) -> None:
        self.encoder = PortableEncoder(**portable) if portable else Encoder(load_tokenizer(tokenizer_path), system_prompt)
        self.max_length, self.layout, self.persona_buckets, self.teacher = max_length, layout, persona_buckets, teacher

    def __call__(self, batch: pa.Table) -> pa.Table:
        examples = self.encoder.encode(batch["prompt"].to_pylist(), batch["answer"].to_pylist())
        keep = [len(e[0]) <= self.max_length for e in examples]
        fitting = [e for e, k in zip(examples, keep) if k]
        extras: dict[str, Any] = {}
        if self.persona_buckets:
            extras["persona"] = [persona_classes(d, self.persona_buckets) for d, k in zip(batch["demographic"].to_pylist(), keep) if k]
        if self.teacher is not None:
            from socrates_ray.train.anchor_teacher import TEACHER_COLUMNS, cell_keys, teacher_arrays, teacher_targets

            records = [r for r, k in zip(batch.select(list(TEACHER_COLUMNS)).to_pylist(), keep) if k]
            extras.update(teacher_arrays(teacher_targets(self.teacher, records, self.encoder.encode_answers), cell_keys(records)))
        if not fitting:
            longest = max(len(e[0]) for e in examples)
            raise IngestError(
                f"ingest.max_length={self.max_length}: every sample in a batch of {len(examples)} is longer "
                f"(longest {longest} tokens); raise ingest.max_length"
            )
        # Samples longer than max_length are left out here and show up in ingest_stats.measure_ingest's
        # samples_not_in_rows (samples_in comes from the prepared split's row count).
        if self.layout == "pack":
            rows = pack_rows(fitting, self.max_length, self.encoder.pad_id, extras)
        elif self.layout == SHARED_PREFIX:
            rows = shared_prefix_rows(fitting, [w for w, k in zip(participants(batch), keep) if k], self.max_length, extras)
        else:
            rows = single_rows(fitting, extras)
        return pa.table(
            {
                "input_ids": [r.input_ids for r in rows],
                "labels": [r.labels for r in rows],
                "position_ids": [r.position_ids for r in rows],
                "seq_ids": [r.seq_ids for r in rows],
                "num_tokens": [r.num_tokens for r in rows],
                "num_samples": [int(r.seq_ids.max()) for r in rows],
                **{name: [getattr(r, name) for r in rows] for name in EXAMPLE_COLUMNS},
            },
            schema=ROW_SCHEMA,
        )


def _row_groups(split_dir: str) -> tuple[Any, list[tuple[str, int, int]]]:
    """(filesystem, [(file, row group, rows)]) of a prepared split, from the Parquet footers alone."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(split_dir)
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet")) if fs.exists(root) else []
    if not files:
        raise IngestError(f"data.prepared: no Parquet files under {split_dir}; run `socrates-ray prepare` first")
    groups = []
    for path in files:
        meta = pq.ParquetFile(fs.open(path, "rb")).metadata
        groups += [(path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return fs, groups


def split_samples(split_dir: str) -> int:
    """The samples in a prepared split (Parquet footers: nothing is read)."""
    return sum(n for *_, n in _row_groups(split_dir)[1])


@dataclass(frozen=True)
class RowEstimate:
    """How many training rows a split will give, from a tokenized sample (estimate_rows)."""

    samples: int  # samples in the split (Parquet metadata: nothing is read)
    sampled: int  # samples tokenized for the estimate
    rows: int  # training rows expected from the whole split


def estimate_rows(split_dir: str, tokenizer_path: str, system_prompt: str, max_length: int, layout: str,
                  pack_window: int, seed: int, sample_size: int = 4096) -> RowEstimate:
    """The training rows of a split without tokenizing it: its sample count from the Parquet footers
    times the rows per sample of a seeded sample of whole row groups, tokenized and packed here as
    TokenizePack does (pack_window shuffled samples at a time). A streamed run plans its schedule
    from this instead of a full tokenizing pass before step 1; the same seed gives the same estimate."""
    import numpy as np
    import pyarrow.parquet as pq

    fs, groups = _row_groups(split_dir)
    samples = sum(n for *_, n in groups)
    rng = np.random.default_rng(seed)
    tables, sampled = [], 0
    for i in rng.permutation(len(groups)):
        if sampled >= sample_size:
            break
        path, group, n = groups[i]
        tables.append(pq.ParquetFile(fs.open(path, "rb")).read_row_group(group, columns=read_columns(0, None, layout)))
        sampled += n
    if not sampled:
        return RowEstimate(samples=samples, sampled=0, rows=0)
    table = pa.concat_tables(tables)
    if layout == SHARED_PREFIX:  # whole participants, as the run reads them
        order = participant_order(participants(table), int(rng.integers(2**31)))
        table = table.take(pa.array(order[:sample_size]))
    else:
        table = table.take(pa.array(rng.permutation(table.num_rows)[:sample_size]))
    pack = TokenizePack(tokenizer_path, system_prompt, max_length, layout)
    rows = sum(pack(table.slice(start, pack_window)).num_rows for start in range(0, table.num_rows, pack_window))
    return RowEstimate(samples=samples, sampled=table.num_rows, rows=round(samples * rows / table.num_rows))


def portable_encoding(split_dir: str, tokenizer_path: str, system_prompt: str, probes: int = 64) -> dict[str, Any] | None:
    """Encoder.portable() for a local tokenizer folder, checked on the split's first `probes` samples
    besides its own awkward strings; None (the actors load transformers) where it would differ."""
    import pyarrow.parquet as pq

    tokenizer_file = Path(tokenizer_path) / "tokenizer.json"
    if "://" in tokenizer_path or not tokenizer_file.is_file():
        return None
    fs, groups = _row_groups(split_dir)
    first = pq.ParquetFile(fs.open(groups[0][0], "rb")).read_row_group(groups[0][1], columns=["prompt", "answer"])
    first = first.slice(0, probes)
    pairs = list(zip(first["prompt"].to_pylist(), first["answer"].to_pylist()))
    return Encoder(load_tokenizer(tokenizer_path), system_prompt).portable(str(tokenizer_file), pairs)


# What the pool's (and a streamed run's) order was read with: the Parquet reader orders the rows the
# seeded shuffle permutes, so it is part of a resume's fingerprint (train.trainer.run_fingerprint).
PARQUET_READER = "Ray Data V1 (ParquetDatasource)"


def read_parquet_v1(path: str, **kwargs: Any) -> Any:
    """ray.data.read_parquet through Ray Data's V1 Parquet datasource, for this read only.

    The pinned Ray Data reads Parquet through its V2 datasource by default, which provisions 32
    FooterReader actors (RAY_DATA_PARQUET_FOOTER_NUM_ACTORS) at every execution of the plan: each
    epoch and each eval of a streamed run, each pass of the actor pool: on a small machine those
    actors cost more than the read itself, and a streamed run waits longer for its first batch.
    V1 reads the same rows; the seeded shuffle orders them differently (PARQUET_READER)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    chosen, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(path, **kwargs)
    finally:
        context.use_datasource_v2 = chosen


def participant_order(participants: list[tuple[Any, ...]], seed: int) -> Any:
    """A seeded shuffle that keeps each participant's rows together (layout shared_prefix): the
    participants in a random order, each one's rows in their original order."""
    import numpy as np

    ids: dict[tuple[Any, ...], int] = {}
    group = np.array([ids.setdefault(p, len(ids)) for p in participants], dtype=np.int64)
    rank = np.random.default_rng(seed).permutation(len(ids))
    return np.lexsort((np.arange(len(participants)), rank[group])) if len(participants) else np.zeros(0, np.int64)


def participant_rank(batch: pa.Table, seed: int) -> pa.Table:
    """Ray Data batch function: each row's participant's place in a seeded shuffle (a hash of seed and
    participant) as a `_rank` column to sort by, so one participant's rows sort next to each other."""
    import zlib

    rank = [zlib.crc32(f"{seed}/{s}/{p}".encode()) for s, p in participants(batch)]
    return batch.append_column("_rank", pa.array(rank, pa.int64()))


def build_ingest_dataset(
    split_dir: str,
    tokenizer_path: str,
    system_prompt: str,
    max_length: int,
    layout: str,
    pack_window: int,
    tokenize_actors: int,
    cpus_per_task: float,
    shuffle_seed: int | None = None,
    persona_buckets: int = 0,
    teacher: Any = None,
) -> Any:
    """The lazy Ray Dataset of training rows for one prepared split folder.

    shuffle_seed: shuffle the examples first (seeded, so a resumed run sees the same order).
    Prepared splits are grouped by study; without it the last steps of an epoch see only the
    last studies, and the model ends biased toward them."""
    import ray.data

    if not Path(split_dir).exists() and "://" not in split_dir:
        raise IngestError(f"data.prepared: no prepared split at {split_dir}; run `socrates-ray prepare` first")
    # Reads and tokenizer actors ask for cpus_per_task CPUs each: on a small machine where
    # training workers hold whole CPUs, whole-CPU requests here would starve the reads forever.
    # Parquet reads yield few, large blocks (a small split is one block, which one actor would
    # tokenize alone); streaming repartition into packing-window-sized blocks feeds every actor.
    # Progress bars from every split coordinator would flood a training log; progress is ours.
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = read_parquet_v1(split_dir, columns=read_columns(persona_buckets, teacher, layout), num_cpus=cpus_per_task)
    if shuffle_seed is not None and layout == SHARED_PREFIX:  # participants shuffled, each one's rows together
        ds = ds.map_batches(participant_rank, fn_kwargs={"seed": shuffle_seed}, batch_format="pyarrow", num_cpus=cpus_per_task)
        ds = ds.sort(["_rank", *PARTICIPANT_COLUMNS])
    elif shuffle_seed is not None:
        ds = ds.random_shuffle(seed=shuffle_seed, num_cpus=cpus_per_task)
    ds = ds.repartition(target_num_rows_per_block=pack_window)
    return ds.map_batches(
        TokenizePack,
        fn_constructor_kwargs={
            "tokenizer_path": tokenizer_path,
            "system_prompt": system_prompt,
            "max_length": max_length,
            "layout": layout,
            "portable": portable_encoding(split_dir, tokenizer_path, system_prompt),
            "persona_buckets": persona_buckets,
            "teacher": teacher,
        },
        batch_size=pack_window,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=tokenize_actors),
        num_cpus=cpus_per_task,
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of a run's `epoch` (0-based): `seed` itself for the first epoch, and for each
    later one a seed derived from (seed, epoch), so every epoch of a materialized split reads its rows
    (and a contrast run its pairs) in an order of its own, the same order again on a resume."""
    import numpy as np

    return seed if epoch == 0 else int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def tokenize_in_driver(split_dir: str, tokenizer_path: str, system_prompt: str, max_length: int, layout: str,
                       pack_window: int, shuffle_seed: int | None = None, persona_buckets: int = 0, teacher: Any = None,
                       paired: bool = False, epoch: int = 0) -> Any:
    """build_ingest_dataset's rows, tokenized and packed in this process (TokenizePack, pack_window
    samples at a time, after a seeded shuffle) and handed to Ray Data as blocks in the object store.
    paired (train.anchor_teacher.contrast, with a teacher): the shuffle puts the rows of each cell
    two by two (anchor_teacher.paired_order). epoch: shuffle with epoch_seed(shuffle_seed, epoch).
    For small splits: on 2 cores each tokenizer actor spends ~7 s importing transformers before its
    first row (the 20k-answer demo's 8,356 training samples: 16.4 s in the pool, 4.0 s here); the
    40k demo's 15,244 training and 1,073 validation samples (~300-token prompts) take ~9-11 s here."""
    import numpy as np
    import pyarrow.parquet as pq
    import ray.data

    fs, groups = _row_groups(split_dir)
    files = sorted({path for path, *_ in groups})
    table = pa.concat_tables([pq.read_table(fs.open(path, "rb"), columns=read_columns(persona_buckets, teacher, layout)) for path in files])
    if shuffle_seed is not None:
        seed = epoch_seed(shuffle_seed, epoch)
        if layout == SHARED_PREFIX:
            order = participant_order(participants(table), seed)
        elif paired and teacher is not None:  # the teacher's columns name each row's cell
            from socrates_ray.train.anchor_teacher import TEACHER_COLUMNS, cell_keys, paired_order

            order = paired_order(cell_keys(table.select(list(TEACHER_COLUMNS)).to_pylist()), seed)
        else:
            order = np.random.default_rng(seed).permutation(table.num_rows)
        table = table.take(pa.array(order))
    pack = TokenizePack(tokenizer_path, system_prompt, max_length, layout, persona_buckets=persona_buckets, teacher=teacher)
    ray.data.DataContext.get_current().enable_progress_bars = False
    blocks = [pack(table.slice(start, pack_window)) for start in range(0, table.num_rows, pack_window)]
    return ray.data.from_arrow(blocks or [ROW_SCHEMA.empty_table()])


def collate_fn_for(pad_id: int, layout: str, max_length: int) -> Any:
    """The `collate_fn` for `iter_torch_batches` matching a layout (packed and pad_max_length
    rows are max_length wide; pad_longest pads to the longest row of each batch)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class Collate(NumpyBatchCollateFn):
        def __init__(self, pad_id: int, pad_to: int | None) -> None:
            self.pad_id, self.pad_to = pad_id, pad_to

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            return collate(batch, self.pad_id, self.pad_to)

    return Collate(pad_id, max_length if layout in ("pack", "pad_max_length") else None)  # shared_prefix: to the longest
