"""Checkpoint layout, ZeRO-3-safe export, and resume state.

One checkpoint folder (Ray merges every worker's files into it):

    checkpoint_000040/
      ds/                  DeepSpeed state for exact resume: each rank's optimizer partition,
                           the (trainable) module weights, scheduler and step counters
      latest               DeepSpeed's pointer to the `ds` tag
      state.json           step, epoch, micro batches done in the epoch, tokens seen, and the run's
                           fingerprint: what defines its data stream and optimizer schedule
      export/              what users load: a PEFT adapter (LoRA) or a consolidated HF model in
                           safetensors (full finetuning)

Every function here that touches parameters is collective: all ranks call it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from socrates_ray.errors import SocratesError

DS_TAG = "ds"
STATE_FILE = "state.json"
EXPORT_DIR = "export"


@dataclass
class TrainState:
    """Where a run is; restored on resume so no optimizer step is repeated."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    micro_in_epoch: int = 0  # micro batches of `epoch` already trained
    tokens: int = 0  # real tokens trained on, all ranks
    # Settings (config keys, or DERIVED's names) that fix the data order and the optimizer schedule:
    # resuming under others would skip micro_in_epoch batches of a different stream (trainer.run_fingerprint).
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, folder: Path) -> "TrainState":
        return cls(**json.loads((folder / STATE_FILE).read_text()))


def save_checkpoint(engine: Any, folder: Path, state: TrainState, finetuning: str, rank: int, tokenizer: Any) -> None:
    """Write DeepSpeed state, the resume state and the export into `folder` (collective)."""
    folder.mkdir(parents=True, exist_ok=True)
    # LoRA: the frozen base is reloaded from the model path, so only trainable weights are kept.
    engine.save_checkpoint(str(folder), tag=DS_TAG, exclude_frozen_parameters=finetuning == "lora")
    if rank == 0:
        state.save(folder)
    export_model(engine, folder / EXPORT_DIR, finetuning, rank, tokenizer)


def export_model(engine: Any, out: Path, finetuning: str, rank: int, tokenizer: Any) -> None:
    """LoRA: a PEFT adapter folder; full: a consolidated HF model in safetensors (collective)."""
    import deepspeed

    model = engine.module
    zero3 = engine.zero_optimization_stage() == 3
    if finetuning == "lora":
        trainable = [p for p in model.parameters() if p.requires_grad]
        # Under ZeRO-3 each rank holds a slice: a plain save_pretrained writes EMPTY tensors.
        # Every rank must enter the gather; only rank 0 writes.
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None, enabled=zero3):
            if rank == 0:
                out.mkdir(parents=True, exist_ok=True)
                model.save_pretrained(str(out), safe_serialization=True)
    else:
        state_dict = engine._zero3_consolidated_16bit_state_dict() if zero3 else model.state_dict()
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
    if rank == 0:
        tokenizer.save_pretrained(str(out))


def load_checkpoint(engine: Any, folder: Path, finetuning: str) -> TrainState:
    """Restore DeepSpeed state (collective) and return the resume state."""
    engine.load_checkpoint(str(folder), tag=DS_TAG, load_module_strict=finetuning != "lora")
    return TrainState.load(folder)


def is_complete(folder: Path, world_size: int) -> bool:
    """True when every rank's DeepSpeed files, the resume state and the export are in `folder`."""
    ds = folder / DS_TAG
    if not ((folder / STATE_FILE).is_file() and (folder / EXPORT_DIR).is_dir() and ds.is_dir()):
        return False
    names = [p.name for p in ds.iterdir()]
    # DeepSpeed names a rank's optimizer partition zero_pp_rank_<r>_..., or bf16_zero_pp_rank_<r>_...
    # when it trains in bf16 (its BF16_Optimizer)
    return all(any(n.removeprefix("bf16_").startswith(f"zero_pp_rank_{r}_") and n.endswith("optim_states.pt") for n in names)
               for r in range(world_size))


# The fingerprint's keys that are not config paths (trainer.run_fingerprint), and what sets them.
DERIVED = {
    "training_rows": "the rows data.prepared gives; estimated unless ingest.materialize",
    "tokenized_in": "ingest.materialize, ingest.tokenize_in_driver_below",
    "parquet_reader": "what read the split: it orders the rows the seeded shuffle permutes",
    "packer": "which examples share a row under ingest.layout pack",
    "optimizer_steps": "train.epochs, train.max_steps",
    "precision": "train.precision",
}


class ResumeError(SocratesError, RuntimeError):
    """A run folder whose checkpoints were made with settings other than the current ones."""


def fingerprint_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, current)} for every fingerprint entry that differs (missing on one side included)."""
    return {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)}


def check_resume(checkpoint: Path, current: dict[str, Any], run_name: str) -> None:
    """Refuse to resume `checkpoint` under another data stream or optimizer schedule.

    The position a run resumes at is a count of micro batches into an epoch: under another micro
    batch size, worker count, split, layout, seed or step count that count points somewhere else,
    and training would go on silently at the wrong place (or fail later inside DeepSpeed)."""
    changes = fingerprint_changes(TrainState.load(checkpoint).fingerprint, current)
    if not changes:
        return
    what = "; ".join(f"{k}{f' ({DERIVED[k]})' if k in DERIVED else ''}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    raise ResumeError(
        f"run.name={run_name} has a checkpoint ({checkpoint}) made with other settings ({what}). Resuming it would "
        f"continue its data stream and schedule at the wrong position. Choose a new run.name to train with these "
        f"settings, run with the old ones to resume, or delete {checkpoint.parent} to start this run over."
    )


def newest_checkpoint_any(run_dir: Path) -> Path | None:
    """The highest-step checkpoint folder with a resume state, complete or not (what a resume would
    start from under some worker count: the fingerprint check must see it whatever the count)."""
    found = [p for p in run_dir.glob("checkpoint_0*") if (p / STATE_FILE).is_file()] if run_dir.is_dir() else []
    return max(found, key=lambda p: TrainState.load(p).step) if found else None


def newest_checkpoint(run_dir: Path, world_size: int, registered: Path | None) -> Path | None:
    """The checkpoint to resume from: Ray's latest registered one, or a newer complete folder.

    Ray Train registers a reported checkpoint when its controller next polls the workers; a
    worker that dies in between leaves a checkpoint that is fully in storage but unknown to Ray,
    and resuming from the older registered one would train those steps again.
    """
    candidates = [registered] if registered is not None else []
    if run_dir.is_dir():
        candidates += [p for p in run_dir.glob("checkpoint_0*") if is_complete(p, world_size)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: TrainState.load(p).step)


def chosen_adapter(run_dir: Path, keep_by: str = "latest") -> str | None:
    """The exported adapter a training run folder offers: its newest checkpoint's, or with
    keep_by="eval_loss" (train.keep_by) the one whose step had the lowest eval loss in metrics.jsonl
    (checkpoints without a recorded eval loss count only when none has one)."""
    found = sorted(run_dir.glob(f"checkpoint_*/{EXPORT_DIR}/adapter_config.json"))
    if not found:
        return None
    if keep_by == "eval_loss" and (run_dir / "metrics.jsonl").is_file():
        losses = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("eval_loss") is not None:
                losses[record["step"]] = record["eval_loss"]
        scored = [(losses[step], path) for path in found if (step := int(path.parent.parent.name.removeprefix("checkpoint_"))) in losses]
        if scored:
            return str(min(scored)[1].parent)
    return str(found[-1].parent)
