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
      manifest.rank<r>.json  each rank's files and their sizes, written last: a checkpoint is
                           complete when every rank's manifest is there and every file it lists
                           has its size (a copy cut short by a crash is not complete)

Every function here that touches parameters is collective: all ranks call it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from socrates_ray.errors import SocratesError
from socrates_ray.train.persona_probe import ATTRIBUTE as PROBE_ATTRIBUTE

DS_TAG = "ds"
STATE_FILE = "state.json"
EXPORT_DIR = "export"
MANIFEST = "manifest.rank{rank}.json"


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
        state = read_state(folder)
        if state is None:
            raise ResumeError(f"{folder / STATE_FILE} is missing or damaged (not the JSON a checkpoint writes); "
                              f"delete {folder} and run the same command again to resume from the checkpoint before it")
        return state


def read_state(folder: Path) -> TrainState | None:
    """A checkpoint's resume state; None where state.json is missing, cut short or not one."""
    try:
        return TrainState(**json.loads((folder / STATE_FILE).read_text()))
    except (OSError, UnicodeDecodeError, ValueError, TypeError):
        return None


def write_manifest(folder: Path, rank: int) -> None:
    """This rank's files in `folder` and their sizes, written after them."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.name.startswith("manifest.rank")}
    (folder / MANIFEST.format(rank=rank)).write_text(json.dumps(files))


def save_checkpoint(engine: Any, folder: Path, state: TrainState, finetuning: str, rank: int, tokenizer: Any) -> None:
    """Write DeepSpeed state, the resume state and the export into `folder` (collective)."""
    folder.mkdir(parents=True, exist_ok=True)
    # LoRA: the frozen base is reloaded from the model path, so only trainable weights are kept.
    engine.save_checkpoint(str(folder), tag=DS_TAG, exclude_frozen_parameters=finetuning == "lora")
    if rank == 0:
        state.save(folder)
    export_model(engine, folder / EXPORT_DIR, finetuning, rank, tokenizer)
    write_manifest(folder, rank)


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
        if rank == 0 and state_dict is not None:  # a training-only persona probe is not part of the model
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(f"{PROBE_ATTRIBUTE}.")}
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
    if rank == 0:
        tokenizer.save_pretrained(str(out))


def load_checkpoint(engine: Any, folder: Path, finetuning: str) -> TrainState:
    """Restore DeepSpeed state (collective) and return the resume state."""
    engine.load_checkpoint(str(folder), tag=DS_TAG, load_module_strict=finetuning != "lora")
    return TrainState.load(folder)


def incomplete(folder: Path, world_size: int) -> str | None:
    """Why `folder` is not a checkpoint a run can resume from (a file missing or cut short, a
    damaged state.json), or None when it is complete."""
    if not any(folder.glob("manifest.rank*.json")):  # a checkpoint written before manifests: the files' names alone
        return _incomplete_by_name(folder, world_size)
    for rank in range(world_size):
        if (problem := _manifest_problem(folder, rank)) is not None:
            return problem
    if read_state(folder) is None:
        return f"{STATE_FILE} is missing or damaged"
    return None


def _manifest_problem(folder: Path, rank: int, under: str = "") -> str | None:
    """The first file of rank `rank`'s manifest (those whose path starts with `under`) that is missing
    or not its recorded size, or the manifest itself missing or damaged; None when all are whole."""
    path = folder / MANIFEST.format(rank=rank)
    try:
        files = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"rank {rank}'s manifest {path.name} is missing or damaged"
    for name, size in files.items():
        file = folder / name
        if not name.startswith(under):
            continue
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size:,} of its {size:,} bytes"
    return None


def _incomplete_by_name(folder: Path, world_size: int) -> str | None:
    ds = folder / DS_TAG
    if not ((folder / STATE_FILE).is_file() and (folder / EXPORT_DIR).is_dir() and ds.is_dir()):
        return f"it lacks {STATE_FILE}, {EXPORT_DIR}/ or {DS_TAG}/"
    if read_state(folder) is None:
        return f"{STATE_FILE} is damaged"
    names = [p.name for p in ds.iterdir()]
    # DeepSpeed names a rank's optimizer partition zero_pp_rank_<r>_..., or bf16_zero_pp_rank_<r>_...
    # when it trains in bf16 (its BF16_Optimizer)
    for r in range(world_size):
        if not any(n.removeprefix("bf16_").startswith(f"zero_pp_rank_{r}_") and n.endswith("optim_states.pt") for n in names):
            return f"rank {r}'s optimizer state is missing"
    return None


def export_whole(folder: Path) -> bool:
    """Whether the checkpoint's export has every file rank 0's manifest lists, at its size (True for
    a checkpoint without a manifest: nothing to check against)."""
    if not (folder / MANIFEST.format(rank=0)).exists():
        return True
    return _manifest_problem(folder, 0, f"{EXPORT_DIR}/") is None


def is_complete(folder: Path, world_size: int) -> bool:
    """True when every rank's DeepSpeed files, the resume state and the export are in `folder`, whole."""
    return incomplete(folder, world_size) is None


# The fingerprint's keys that are not config paths (trainer.run_fingerprint), and what sets them.
DERIVED = {
    "training_rows": "the rows data.prepared gives; estimated unless ingest.materialize",
    "tokenized_in": "ingest.materialize, ingest.tokenize_in_driver_below",
    "parquet_reader": "what read the split: it orders the rows the seeded shuffle permutes",
    "packer": "which examples share a row under ingest.layout pack",
    "optimizer_steps": "train.epochs, train.max_steps",
    "precision": "train.precision",
    "epoch_orders": "train.epochs, train.max_steps: each epoch after the first reads the split in an order of its own",
}
# Keys a checkpoint made before they existed lacks. Its run read the first epoch as runs do now, so it
# resumes unchanged while it is still in that epoch or has no step left to train.
FIRST_EPOCH_ONLY = ("epoch_orders",)


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
    state = TrainState.load(checkpoint)
    changes = fingerprint_changes(state.fingerprint, current)
    if state.epoch == 0 or state.step >= (current.get("optimizer_steps") or 0):
        for key in FIRST_EPOCH_ONLY:
            if key in changes and key not in state.fingerprint:
                del changes[key]
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
    found = [(state.step, p) for p in run_dir.glob("checkpoint_0*") if (state := read_state(p)) is not None] if run_dir.is_dir() else []
    return max(found)[1] if found else None


def newest_checkpoint(run_dir: Path, world_size: int, registered: Path | None) -> Path | None:
    """The checkpoint to resume from: Ray's latest registered one, or a newer complete folder.

    Ray Train registers a reported checkpoint when its controller next polls the workers; a
    worker that dies in between leaves a checkpoint that is fully in storage but unknown to Ray,
    and resuming from the older registered one would train those steps again.
    """
    candidates = [registered] if registered is not None and is_complete(registered, world_size) else []
    if run_dir.is_dir():
        candidates += [p for p in run_dir.glob("checkpoint_0*") if is_complete(p, world_size)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: TrainState.load(p).step)


def skipped_checkpoints(run_dir: Path, world_size: int, resume_from: Path | None) -> list[str]:
    """The checkpoints newer than `resume_from` that a resume passes over, each with why."""
    floor = TrainState.load(resume_from).step if resume_from is not None else -1
    said = []
    for p in sorted(run_dir.glob("checkpoint_0*")) if run_dir.is_dir() else []:
        state = read_state(p)
        if (state is None or state.step > floor) and (why := incomplete(p, world_size)) is not None:
            said.append(f"{p.name} ({why})")
    return said


def chosen_adapter(run_dir: Path, keep_by: str = "latest") -> str | None:
    """The exported adapter a training run folder offers: its newest complete checkpoint's, or with
    keep_by="eval_loss" (train.keep_by) the one whose step had the lowest eval loss in metrics.jsonl
    (checkpoints without a recorded eval loss count only when none has one)."""
    found = sorted(p for p in run_dir.glob(f"checkpoint_*/{EXPORT_DIR}/adapter_config.json") if export_whole(p.parent.parent))
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
