"""A training worker's life around its loop: start (process group, model, DeepSpeed engine),
restore (the newest complete checkpoint), rank 0's metrics log and progress lines, and the
checkpoint/preemption cadence. Every method's loop (sft_loop.py) runs between start_worker and
Cadence.finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from socrates_ray.models import load_tokenizer
from socrates_ray.train.checkpoint import (
    TrainState, check_resume, load_checkpoint, newest_checkpoint, save_checkpoint, skipped_checkpoints,
)
from socrates_ray.train.deepspeed import normalize_cuda_arch_list, skip_inference_comm_op
from socrates_ray.train.model import count_parameters, load_model_for_training
from socrates_ray.train.persona_probe import PersonaProbe
from socrates_ray.train.steps import AUX_LOSSES, LoopArgs, peak_rss_mib

PROGRESS_FILE = "progress.log"


def say(*parts: object, progress: Path | None = None) -> None:
    """Print from a training worker once. Ray Train v2 patches print() to tee into its logger,
    which reaches the driver a second time (every line showed twice); sys.__stdout__ bypasses
    the patch and is still forwarded to the driver (verbose runs) and the worker's log file.
    `progress` (rank 0's run-folder progress.log) also gets the line: a quiet driver, which does
    not forward worker output, prints it from there (trainer.follow_progress)."""
    print(*parts, file=sys.__stdout__ or sys.stdout, flush=True)
    if progress is not None:
        with progress.open("a") as f:
            f.write(" ".join(str(p) for p in parts) + "\n")


class RunLog:
    """Rank 0's metrics: metrics.jsonl in the run folder, and every tracker train.report_to names
    (train/tracking.py: TensorBoard, W&B, MLflow)."""

    def __init__(self, folder: Path, enabled: bool, tracking: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.folder = folder
        self.sinks: list[Any] = []
        if not enabled:
            return
        from socrates_ray.train.tracking import open_sinks

        folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = (folder / "metrics.jsonl").open("a")
        self.sinks = open_sinks(folder, tracking or {"report_to": ["tensorboard"]})

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        """The end of the run: each tracker's run is marked finished."""
        if not self.enabled:
            return
        self.jsonl.close()
        for sink in self.sinks:
            sink.close()
        self.sinks = []

    def placement(self, workers: list[dict[str, Any]], resumed_from_step: int | None) -> None:
        """One line per attempt in placement.jsonl: which node and process runs each rank."""
        if not self.enabled:
            return
        record = {"time": time.time(), "resumed_from_step": resumed_from_step, "workers": workers}
        with (self.folder / "placement.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


def return_freed_memory_to_os(threshold: int = 1 << 20) -> bool:
    """Make glibc hand large freed buffers straight back to the OS.

    ZeRO-3 gathers each layer's full parameters, uses them, and frees them. glibc's default
    *dynamic* mmap threshold rises after the first such free, so later gathers land on the heap
    and are never returned: the worker's resident memory then grows to the full model and ZeRO-3
    ends up using more host RAM than ZeRO-2.
    Fixing the thresholds (the same as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_) keeps each
    gather's memory only as long as it is used. False where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, threshold))


@dataclass
class Worker:
    """One Ray Train worker, started: its rank, the DeepSpeed engine around the model, and where its
    loop reports (rank 0 writes the run folder's metrics and progress lines)."""

    args: LoopArgs
    rank: int
    world: int
    placement: list[dict[str, Any]]  # node, host and pid of every rank
    model_engine: Any  # deepspeed.DeepSpeedEngine
    keepalive: Any  # HfDeepSpeedConfig under ZeRO-3: must outlive the model
    tokenizer: Any
    dtype: Any
    trainable: int
    total: int
    rss_loaded: float  # MiB after loading the model
    rss_engine: float  # MiB after deepspeed.initialize
    log: "RunLog"
    progress: Path | None  # rank 0's progress.log, which a quiet driver prints
    probe: PersonaProbe | None = None  # train.persona_probe, attached to the model

    def say(self, line: str) -> None:
        """A progress line, from rank 0 only."""
        if self.rank == 0:
            say(line, progress=self.progress)


def start_worker(args: LoopArgs) -> Worker:
    """Join the process group, load the model (LoRA or full) and wrap it in a DeepSpeed engine."""
    if args.ds_config["zero_optimization"]["stage"] == 3:
        # Only where layers are gathered and freed every step: elsewhere the extra mmap/munmap
        # page faults cost speed for no memory gain.
        return_freed_memory_to_os()
    if not args.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    if not args.use_gpu:
        skip_inference_comm_op()
    deepspeed.init_distributed(dist_backend="nccl" if args.use_gpu else "gloo")
    # Where each rank runs (node, host, pid): written per attempt, so a multi-node run shows how
    # it was placed and where it went after a node was lost.
    here = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}
    placement: list[Any] = [None] * world
    torch.distributed.all_gather_object(placement, here)
    bf16 = args.ds_config["bf16"]["enabled"]
    model, keepalive = load_model_for_training(
        args.model_path, args.finetuning, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_targets,
        args.lora_rank_pattern, args.ds_config, bf16, args.gradient_checkpointing, args.attention, args.init_adapter,
    )
    trainable, total = count_parameters(model)  # the model's own: the probe is not part of what is exported
    probe = PersonaProbe(model, total_steps=args.total_steps, **args.persona_probe) if args.persona_probe else None
    rss_loaded = peak_rss_mib()
    fixed = normalize_cuda_arch_list()
    if fixed and rank == 0:
        say(f"TORCH_CUDA_ARCH_LIST -> {fixed!r} (DeepSpeed's op builder cannot parse arch-specific entries like '9.0a')")
    model_engine, *_ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=args.ds_config
    )
    run_dir = Path(args.run_dir)
    return Worker(args, rank, world, placement, model_engine, keepalive, load_tokenizer(args.model_path),
                  torch.bfloat16 if bf16 else torch.float32, trainable, total, rss_loaded, peak_rss_mib(),
                  RunLog(run_dir, rank == 0, args.tracking), run_dir / PROGRESS_FILE if rank == 0 else None, probe)


def restore(w: Worker) -> tuple[TrainState, Path | None]:
    """The state to continue from: the newest complete checkpoint of this run (Ray's registered one,
    or a newer complete folder), loaded into the engine; a fresh state when there is none."""
    import ray.train

    args, run_dir = w.args, Path(w.args.run_dir)
    state = TrainState(fingerprint=args.fingerprint)
    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(None)) as registered:
        resume_from = newest_checkpoint(run_dir, w.world, Path(registered) if registered else None)
        if w.rank == 0 and (skipped := skipped_checkpoints(run_dir, w.world, resume_from)):
            w.say(f"[socrates_ray] passing over incomplete checkpoint(s): {'; '.join(skipped)}; resuming from "
                  f"{resume_from.name if resume_from else 'the start (no complete checkpoint)'}")
        if resume_from is not None:
            # plan_run checked already; this guards TorchTrainers built some other way
            check_resume(resume_from, args.fingerprint, run_dir.name)
            state = load_checkpoint(w.model_engine, resume_from, args.finetuning)
    w.log.placement(w.placement, state.step if resume_from else None)
    return state, resume_from


def announce(w: Worker, state: TrainState, resume_from: Path | None) -> None:
    """Rank 0's start line: placement, method, precision, parameters, batch, steps, memory, resume point."""
    args, ds = w.args, w.args.ds_config
    w.say(
        f"[socrates_ray] {w.world} workers on {len({p['node_id'] for p in w.placement})} node(s); rank 0/{w.world}: {args.finetuning} "
        f"ZeRO-{ds['zero_optimization']['stage']} {'bf16' if ds['bf16']['enabled'] else 'fp32'}, attention {args.attention}"
        f"{', gradient checkpointing' if args.gradient_checkpointing else ''}, {w.trainable:,} of {w.total:,} parameters trainable; "
        f"global batch {ds['train_batch_size']} = micro {ds['train_micro_batch_size_per_gpu']} x accumulation "
        f"{ds['gradient_accumulation_steps']} x {w.world} workers; {args.total_steps} optimizer steps; "
        f"peak memory {w.rss_loaded:,.0f} MiB after loading the model, {w.rss_engine:,.0f} MiB after deepspeed.initialize"
        + (f"; resumed from {resume_from.name} at step {state.step} (epoch {state.epoch}, micro batch {state.micro_in_epoch})"
           if resume_from else "")
    )


def progress_line(w: Worker, record: dict[str, Any], last: bool) -> None:
    """Every log_every steps, at each eval and at the last step: one line from rank 0, and the step's
    metrics to Ray Train from every rank (ray.train.report is a barrier: all ranks reach the same steps)."""
    if record["step"] % w.args.log_every == 0 or "eval_loss" in record or last:
        import ray.train

        from socrates_ray.train.tracking import scalars

        ray.train.report({"step": record["step"], **scalars(record)})
        w.say(f"[socrates_ray] step {record['step']}/{w.args.total_steps} loss {record['loss']:.4f}"
              + (f" eval_loss {record['eval_loss']:.4f}" if "eval_loss" in record else "")
              + (f" preferred {record['preference_accuracy']:.3f}" if "preference_accuracy" in record else "")
              + (f" eval_preferred {record['eval_preference_accuracy']:.3f}" if "eval_preference_accuracy" in record else "")
              + "".join(f" {name.removesuffix('_loss')} {record[name]:.3f}" for name in AUX_LOSSES if name in record)
              + f" lr {record['lr']:.2e} {record['tokens_per_s']:,.0f} tok/s wait {record['data_wait_s']:.2f}s")


class Cadence:
    """When a run checkpoints: every checkpoint_every steps, at once on a preemption notice, and at the
    end. Each checkpoint is a barrier (ray.train.report) every rank reaches in the same step."""

    def __init__(self, w: Worker, state: TrainState, resumed: bool) -> None:
        self.w, self.state = w, state
        self.last_checkpoint_step = state.step if resumed else -1

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        import ray.train

        w, state = self.w, self.state
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(w.model_engine, Path(tmp), state, w.args.finetuning, w.rank, w.tokenizer)
            # A barrier: Ray merges every rank's folder into checkpoint_<step> in storage.
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"checkpoint_{state.step:06d}")
        self.last_checkpoint_step = state.step

    def after_step(self, record: dict[str, Any], eval_loss: float, last: bool) -> None:
        """The checkpoint this step owes: its regular one, or one a preemption notice asks for."""
        import ray.train

        step, args = self.state.step, self.w.args
        if step % args.checkpoint_every == 0 and not last:
            self.checkpoint({"step": step, "loss": record["loss"], "eval_loss": eval_loss})
        every = args.preemption_check_every
        # A barrier every rank reaches equally often; a notice means a node (spot instance)
        # goes soon: checkpoint now, keep training, and Ray Train restarts from this step.
        if every and step % every == 0 and not last and self.last_checkpoint_step != step:
            notice = ray.train.get_preemption_info()
            if notice is not None:
                self.w.say(f"[socrates_ray] preemption notice for ranks {notice.preempted_ranks} "
                           f"(deadline {notice.deadline_ms} ms): checkpointing step {step}")
                self.checkpoint({"step": step, "loss": record["loss"], "eval_loss": eval_loss, "preempted": True})

    def finish(self, eval_loss: Callable[[], float]) -> None:
        """The final checkpoint, unless the last step has one (eval_loss: the latest, or a pass now); then
        the run's trackers are closed."""
        if self.last_checkpoint_step != self.state.step:
            self.checkpoint({"step": self.state.step, "eval_loss": eval_loss(), "final": True})
        self.w.log.close()
