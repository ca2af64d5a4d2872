"""What a training run reads: train.setting's train and eval splits as ingest Datasets, streamed
(tokenized beside the workers) or materialized once into the object store.

    datasets, tokenized = materialize_splits(cfg, model_path, "val", pad_id, print)   # ingest.materialize
    datasets |= later_epochs(cfg, model_path, datasets["train"], tokenized, epochs, print, teacher)
    datasets = {"train": build_split_dataset(cfg, model_path, "train"), ...}           # streamed

A materialized train split is one set of blocks; read again it would give the next epoch the first
epoch's batches in the same order (and a contrast run the same pairs). later_epochs stores each
later epoch's own seeded order beside it as "train_1", "train_2", ... (epoch_dataset_name); the
loop reads epoch e from epoch_dataset_name(e).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from socrates_ray.config import Config
from socrates_ray.data.ingest import build_ingest_dataset, epoch_seed, estimate_rows, split_samples, tokenize_in_driver
from socrates_ray.data.ingest_stats import format_ingest, ingest_figures


def build_split_dataset(cfg: Config, model_path: str, part: str, teacher: Any = None) -> Any:
    """The ingest Dataset of train.setting's `part` ("train" is shuffled when ingest.shuffle, and
    carries the persona classes and `teacher`'s targets where the run trains on them)."""
    ing = cfg.ingest
    return build_ingest_dataset(
        str(Path(cfg.data.prepared) / cfg.train.setting / part), model_path, cfg.prompt.system_prompt, ing.max_length,
        ing.layout, ing.pack_window, ing.tokenize_actors, ing.cpus_per_task,
        shuffle_seed=cfg.run.seed if part == "train" and ing.shuffle else None,
        persona_buckets=persona_buckets(cfg) if part == "train" else 0, teacher=teacher if part == "train" else None,
    )


def anchor_teacher_weights(cfg: Config) -> tuple[float, float]:
    """train.anchor_teacher's (weight, contrast) where the run trains on them (sft), else zeros."""
    teacher = cfg.train.anchor_teacher
    return (teacher.weight, teacher.contrast) if cfg.train.method == "sft" else (0.0, 0.0)


def paired_cells(cfg: Config) -> bool:
    """Whether the train split is shuffled in same-cell pairs (train.anchor_teacher.contrast)."""
    return anchor_teacher_weights(cfg)[1] > 0 and cfg.ingest.shuffle


def warn_unpaired(cfg: Config, log: Any, why: str) -> None:
    """Say so where train.anchor_teacher.contrast is on but the train split cannot be shuffled in pairs."""
    if paired_cells(cfg):
        log(f"train: WARNING {why}, whose shuffle does not keep a cell's rows in pairs: train.anchor_teacher.contrast "
            "reads only the cells a micro-batch happens to share; pair them with ingest.materialize=true and "
            "ingest.tokenize_in_driver_below above the train split's sample count")


def training_teacher(cfg: Config, log: Any) -> Any:
    """train.anchor_teacher's regression anchor, fitted on train.setting's train split; None when off."""
    if not any(anchor_teacher_weights(cfg)):
        return None
    from socrates_ray.train.anchor_teacher import fit_teacher

    return fit_teacher(cfg.data.prepared, cfg.train.setting, log)


def persona_buckets(cfg: Config) -> int:
    """The classes per persona field that training rows carry (train.persona_probe), 0 for none.
    Only the train split carries them: the eval loss has no probe term."""
    return cfg.train.persona_probe.buckets if cfg.train.method == "sft" and cfg.train.persona_probe.weight > 0 else 0


def estimate_split_rows(cfg: Config, model_path: str, log: Any) -> int:
    """estimate_rows for train.setting's train split, logged (streamed ingest's plan)."""
    ing = cfg.ingest
    started = time.perf_counter()
    est = estimate_rows(str(Path(cfg.data.prepared) / cfg.train.setting / "train"), model_path, cfg.prompt.system_prompt,
                        ing.max_length, ing.layout, ing.pack_window, cfg.run.seed)
    log(f"train: about {est.rows:,} training rows from {est.samples:,} samples (estimated from {est.sampled:,} tokenized "
        f"in {time.perf_counter() - started:.1f}s; streamed ingest tokenizes the rest beside the workers)")
    return est.rows


def tokenized_where(cfg: Config, samples: int) -> str:
    """Where a materialized split is tokenized: "driver" (small splits) or "actors" (the pool)."""
    return "driver" if samples < cfg.ingest.tokenize_in_driver_below else "actors"


def materialize_splits(cfg: Config, model_path: str, eval_part: str, pad_id: int, out_dir: Path, log: Any,
                       teacher: Any = None) -> tuple[dict[str, Any], str]:
    """Tokenize the train and eval splits once into the object store: the row count, the ingest
    figures and every epoch read these blocks. Small splits are tokenized in the driver, larger ones
    by the tokenizer actor pool (ingest.tokenize_in_driver_below); the second value says which did
    the train split. The ingest figures (padding, steps per worker, samples left out) come from
    batching the stored train rows as the workers will, and go to out_dir/ingest_stats.json, so no
    separate `socrates-ray ingest` pass is needed. `teacher`: train.anchor_teacher's fitted anchor, or None."""
    ing = cfg.ingest
    stored, where, seconds = {}, {}, {}
    parts = {"train": "train", "eval": eval_part}
    split_dirs = {name: str(Path(cfg.data.prepared) / cfg.train.setting / part) for name, part in parts.items()}
    for name, part in parts.items():
        split_dir = split_dirs[name]
        where[name] = tokenized_where(cfg, split_samples(split_dir))
        started = time.perf_counter()
        if where[name] == "driver":
            stored[name] = tokenize_in_driver(split_dir, model_path, cfg.prompt.system_prompt, ing.max_length, ing.layout,
                                              ing.pack_window, cfg.run.seed if name == "train" and ing.shuffle else None,
                                              persona_buckets(cfg) if name == "train" else 0,
                                              teacher if name == "train" else None, paired=name == "train" and paired_cells(cfg))
        else:
            if name == "train":
                warn_unpaired(cfg, log, f"the train split ({split_samples(split_dir):,} samples) is tokenized by the actor pool")
            ds = build_split_dataset(cfg, model_path, part, teacher)
            # blocks in input order, not in the order the tokenizer actors finish them: the same
            # run twice (and a resumed run skipping what it trained) sees the same rows in the same steps
            ds.context.execution_options.preserve_order = True
            stored[name] = ds.materialize()
        seconds[name] = time.perf_counter() - started
    size = sum(ds.size_bytes() for ds in stored.values())
    how = {"driver": "in the driver", "actors": f"by {ing.tokenize_actors} tokenizer actors"}
    by = how[where["train"]] if where["train"] == where["eval"] else f"{how[where['train']]} and {how[where['eval']]}"
    log(f"train: tokenized the train and {eval_part} splits once {by} in {sum(seconds.values()):.1f}s "
        f"({size / 2**20:,.0f} MiB in the object store; ingest.materialize)")
    stats = ingest_figures(stored["train"], split_dirs["train"], ing.num_workers, ing.micro_batch_size, ing.layout, ing.max_length,
                           pad_id, out_dir, seconds=seconds["train"])
    log(format_ingest(stats, ing.layout))
    return stored, where["train"]


def epoch_dataset_name(epoch: int, orders: int = 1) -> str:
    """The dataset a loop reads epoch `epoch` (0-based) from: "train" for the first, "train_<e>" for
    each later epoch that later_epochs stored (`orders` of them in all; past them the last repeats)."""
    e = min(epoch, orders - 1)
    return "train" if e <= 0 else f"train_{e}"


def epochs_reached(micro_per_epoch: int, total_steps: int, grad_accum: int) -> int:
    """How many epochs (a last partial one included) a run of total_steps optimizer steps starts."""
    return max(1, -(-total_steps * grad_accum // micro_per_epoch)) if micro_per_epoch else 1


def later_epochs(cfg: Config, model_path: str, first: Any, tokenized: str, epochs: int, log: Any,
                 teacher: Any = None) -> dict[str, Any]:
    """For a materialized, shuffled train split: epochs 2..`epochs` each in an order of its own,
    seeded by (run.seed, epoch) (ingest.epoch_seed), as {epoch_dataset_name(e): Dataset}.
    Tokenized in the driver: the split is shuffled (in same-cell pairs for train.anchor_teacher.contrast)
    and tokenized again, an epoch's rows stored beside the first's (what the object store holds grows
    by one train split an epoch). Tokenized by the actor pool: the first epoch's stored rows, shuffled
    again as the epoch reads them (Ray Data's seeded random_shuffle; nothing is tokenized again).
    Empty when the run has one epoch or no shuffle."""
    ing = cfg.ingest
    if epochs <= 1 or not ing.shuffle:
        return {}
    started = time.perf_counter()
    out: dict[str, Any] = {}
    split_dir = str(Path(cfg.data.prepared) / cfg.train.setting / "train")
    for e in range(1, epochs):
        if tokenized == "driver":
            out[epoch_dataset_name(e, epochs)] = tokenize_in_driver(
                split_dir, model_path, cfg.prompt.system_prompt, ing.max_length, ing.layout, ing.pack_window, cfg.run.seed,
                persona_buckets(cfg), teacher, paired=paired_cells(cfg), epoch=e)
        else:
            out[epoch_dataset_name(e, epochs)] = first.random_shuffle(seed=epoch_seed(cfg.run.seed, e), num_cpus=ing.cpus_per_task)
    how = ("shuffled and tokenized again in the driver" if tokenized == "driver"
           else "the stored rows shuffled again as the epoch reads them")
    which = "epoch 2 reads" if epochs == 2 else f"epochs 2-{epochs} each read"
    log(f"train: {which} the train split in an order of its own ({how}, {time.perf_counter() - started:.1f}s)")
    return out
