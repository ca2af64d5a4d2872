"""train_loop_per_worker: THE training loop (one per Ray Train worker, driving a DeepSpeed engine).

Reads top to bottom: set up -> restore -> for each micro batch: forward, backward, step ->
at optimizer-step boundaries: log, eval, checkpoint, fault injection -> final checkpoint.

Rules it keeps (STACK_NOTES.md):
- every collective (all_reduce, DeepSpeed step, checkpoint gather, ray.train.report) is made by
  every rank the same number of times;
- every rank trains the same number of micro batches: the shards are equal and, as a guard, ranks
  agree each step (all_reduce MIN) that all of them still have a batch, so none waits forever;
- side effects (metrics file, TensorBoard, progress line) happen on rank 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from socrates_ray.train.checkpoint import TrainState, check_resume, load_checkpoint, newest_checkpoint, save_checkpoint
from socrates_ray.data.ingest import collate_fn_for, load_tokenizer
from socrates_ray.data.tokenize import IGNORE_INDEX, packed_attention_mask
from socrates_ray.train.deepspeed import normalize_cuda_arch_list, skip_inference_comm_op
from socrates_ray.train.attention import row_segments, varlen_arguments
from socrates_ray.train.model import count_parameters, load_model_for_training


PROGRESS_FILE = "progress.log"


@dataclass(frozen=True)
class LoopArgs:
    """Everything a worker's loop needs, as plain values (trainer.loop_args_for builds it from the
    config; Ray Train ships it to each worker as `dataclasses.asdict`)."""

    model_path: str
    finetuning: str  # "lora" | "full"
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: list[str]
    lora_rank_pattern: dict[str, int]
    gradient_checkpointing: bool
    attention: str  # "dense" | "segments" | "varlen" (train.attention)
    ds_config: dict[str, Any]  # train.deepspeed.build_ds_config
    use_gpu: bool
    seed: int
    torch_threads: int
    pad_id: int
    layout: str  # ingest.layout
    max_length: int
    # micro batches each worker trains per epoch (train.trainer.plan_steps); None: until the shards
    # end (a streamed run, whose count is an estimate)
    micro_per_epoch: int | None
    total_steps: int  # optimizer steps of the whole run
    eval_every: int
    log_every: int
    eval_batches: int
    checkpoint_every: int
    preemption_check_every: int
    run_dir: str
    fingerprint: dict[str, Any]  # what a resumed run must share (checkpoint.check_resume)
    # test-only (trainer.fault_injection): [rank, step] pairs; that rank exits hard at that optimizer
    # step, each once per run
    fault_kills: list[list[int]] = field(default_factory=list)


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


def label_positions(labels: Any) -> Any:
    """Sequence positions whose logits predict a label token in some row: t where labels[:, t + 1]
    is set (a causal LM's logits at t score token t + 1). For SocSci210 rows that is the answer and
    the end-of-turn token of each example: a few percent of a batch's positions."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


def forward_loss(engine: Any, batch: dict[str, Any], dtype: Any, attention: str = "dense") -> Any:
    """Mean loss over the batch's label tokens; packed examples never attend to each other.

    attention "dense": a (B, 1, L, L) additive mask from seq_ids; "segments": no mask, one causal
    attention call per example; "varlen": no mask, one flash varlen call per layer over all the
    examples (CUDA; train/attention.py; the model was loaded with it). The output layer
    and the softmax over the vocabulary run only at label_positions (the model's logits_to_keep),
    not at every prompt token: the same loss as the model's own full-logits loss
    (tests/unit/test_loss.py), without projecting ~99% of the hidden states that no label reads."""
    import torch.nn.functional as F

    device = engine.device
    labels = batch["labels"].to(device)
    keep = label_positions(labels)
    if attention == "segments":
        mask = {"attention_mask": None, "packed_segments": row_segments(batch["seq_ids"])}
    elif attention == "varlen":
        mask = {"attention_mask": None, **varlen_arguments(batch["seq_ids"], device)}
    else:
        mask = {"attention_mask": packed_attention_mask(batch["seq_ids"].to(device), dtype)}
    logits = engine(
        input_ids=batch["input_ids"].to(device),
        position_ids=batch["position_ids"].to(device),
        logits_to_keep=keep,
        use_cache=False,  # training builds no KV cache (transformers would, for a config with use_cache)
        **mask,
    ).logits
    return F.cross_entropy(logits.float().flatten(0, 1), labels[:, keep + 1].flatten(), ignore_index=IGNORE_INDEX)


def all_have_batch(batch: Any, device: Any) -> bool:
    """True only if every rank still has a batch (a collective: every rank calls it each step)."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([0 if batch is None else 1], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def all_sum(values: list[float], device: Any) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def eval_loss_of(engine: Any, shard: Any, collate_fn: Any, micro: int, max_batches: int, dtype: Any, attention: str) -> float:
    """Token-weighted eval loss over up to max_batches micro batches per rank (collective)."""
    import torch

    engine.eval()
    loss_sum = count = 0.0
    batches = iter(shard.iter_torch_batches(batch_size=micro, collate_fn=collate_fn, drop_last=True))
    with torch.no_grad():
        for _ in range(max_batches):
            batch = next(batches, None)
            if not all_have_batch(batch, engine.device):
                break
            n = int((batch["labels"] != IGNORE_INDEX).sum())
            loss_sum += float(forward_loss(engine, batch, dtype, attention)) * n
            count += n
    engine.train()
    loss_sum, count = all_sum([loss_sum, count], engine.device)
    return loss_sum / count if count else float("nan")


class RunLog:
    """Rank 0's metrics: JSONL + TensorBoard in the run folder, and a progress line."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.folder = folder
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.jsonl = (folder / "metrics.jsonl").open("a")
        self.tb = SummaryWriter(str(folder / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.tb.add_scalar(key, value, record["step"])
        self.tb.flush()

    def placement(self, workers: list[dict[str, Any]], resumed_from_step: int | None) -> None:
        """One line per attempt in placement.jsonl: which node and process runs each rank."""
        if not self.enabled:
            return
        record = {"time": time.time(), "resumed_from_step": resumed_from_step, "workers": workers}
        with (self.folder / "placement.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


class StepMeter:
    """What one optimizer step trained (label-weighted loss, tokens, padding, data wait) and how
    long it took; reset after each step's bookkeeping, so eval and checkpoint time never count."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = self.labels = self.tokens = self.slots = self.wait = 0.0
        self.start = time.perf_counter()

    def add(self, loss: float, batch: dict[str, Any]) -> None:
        labels = int((batch["labels"] != IGNORE_INDEX).sum())
        self.loss += loss * labels
        self.labels += labels
        self.tokens += int((batch["seq_ids"] > 0).sum())
        self.slots += batch["seq_ids"].numel()


def return_freed_memory_to_os(threshold: int = 1 << 20) -> bool:
    """Make glibc hand large freed buffers straight back to the OS.

    ZeRO-3 gathers each layer's full parameters, uses them, and frees them. glibc's default
    *dynamic* mmap threshold rises after the first such free, so later gathers land on the heap
    and are never returned: the worker's resident memory then grows to the full model and ZeRO-3
    ends up using more host RAM than ZeRO-2 (measured: 2.1-2.4 GiB vs 1.7 GiB on a 152M model).
    Fixing the thresholds (the same as MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_) keeps each
    gather's memory only as long as it is used. False where the C library is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, threshold))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """`config` is a LoopArgs as a dict (what Ray Train's train_loop_config carries)."""
    args = LoopArgs(**config)
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
    workers: list[Any] = [None] * world
    torch.distributed.all_gather_object(workers, here)
    ds_config = args.ds_config
    bf16 = ds_config["bf16"]["enabled"]
    dtype = torch.bfloat16 if bf16 else torch.float32
    tokenizer = load_tokenizer(args.model_path)

    # --- model and engine ---------------------------------------------------------------------
    model, _keepalive = load_model_for_training(
        args.model_path, args.finetuning, args.lora_r, args.lora_alpha,
        args.lora_dropout, args.lora_targets, args.lora_rank_pattern, ds_config, bf16, args.gradient_checkpointing,
        args.attention,
    )
    trainable, total = count_parameters(model)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fixed = normalize_cuda_arch_list()
    if fixed and rank == 0:
        say(f"TORCH_CUDA_ARCH_LIST -> {fixed!r} (DeepSpeed's op builder cannot parse arch-specific entries like '9.0a')")
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
    )
    rss_engine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    run_dir = Path(args.run_dir)
    log = RunLog(run_dir, rank == 0)
    progress = run_dir / PROGRESS_FILE if rank == 0 else None

    # --- restore ------------------------------------------------------------------------------
    state = TrainState(fingerprint=args.fingerprint)
    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext(None)) as registered:
        resume_from = newest_checkpoint(run_dir, world, Path(registered) if registered else None)
        if resume_from is not None:
            # plan_run checked already; this guards TorchTrainers built some other way
            check_resume(resume_from, args.fingerprint, run_dir.name)
            state = load_checkpoint(engine, resume_from, args.finetuning)
    log.placement(workers, state.step if resume_from else None)
    if rank == 0:
        say(
            f"[socrates_ray] {world} workers on {len({w['node_id'] for w in workers})} node(s); rank 0/{world}: {args.finetuning} ZeRO-{ds_config['zero_optimization']['stage']} "
            f"{'bf16' if bf16 else 'fp32'}, attention {args.attention}{', gradient checkpointing' if args.gradient_checkpointing else ''}, {trainable:,} of {total:,} parameters trainable; global batch "
            f"{ds_config['train_batch_size']} = micro {ds_config['train_micro_batch_size_per_gpu']} x accumulation "
            f"{ds_config['gradient_accumulation_steps']} x {world} workers; {args.total_steps} optimizer steps; "
            f"peak memory {rss_loaded:,.0f} MiB after loading the model, {rss_engine:,.0f} MiB after deepspeed.initialize"
            + (f"; resumed from {resume_from.name} at step {state.step} (epoch {state.epoch}, micro batch {state.micro_in_epoch})" if resume_from else ""),
            progress=progress,
        )

    collate_fn = collate_fn_for(args.pad_id, args.layout, args.max_length)
    train_shard = ray.train.get_dataset_shard("train")
    eval_shard = ray.train.get_dataset_shard("eval")
    micro = ds_config["train_micro_batch_size_per_gpu"]
    last_checkpoint_step = state.step if resume_from else -1

    def checkpoint_now(metrics: dict[str, Any]) -> None:
        nonlocal last_checkpoint_step
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(engine, Path(tmp), state, args.finetuning, rank, tokenizer)
            # A barrier: Ray merges every rank's folder into checkpoint_<step> in storage.
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"checkpoint_{state.step:06d}")
        last_checkpoint_step = state.step

    # --- train --------------------------------------------------------------------------------
    meter = StepMeter()
    eval_loss = float("nan")
    while state.step < args.total_steps:
        batches = iter(train_shard.iter_torch_batches(batch_size=micro, collate_fn=collate_fn, drop_last=True))
        for _ in range(state.micro_in_epoch):  # resume mid-epoch: skip what was already trained
            next(batches, None)
        trained_before = state.micro_in_epoch
        per_epoch = args.micro_per_epoch if args.micro_per_epoch is not None else math.inf
        while state.micro_in_epoch < per_epoch and state.step < args.total_steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            meter.wait += time.perf_counter() - t0
            if not all_have_batch(batch, engine.device):
                break
            loss = forward_loss(engine, batch, dtype, args.attention)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            state.micro_in_epoch += 1
            meter.add(float(loss.detach()), batch)
            if not boundary:
                continue
            state.step += 1
            # Peak resident memory of this worker process so far (Linux reports KiB).
            peak = [0.0] * world
            peak[rank] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            loss_sum, label_count, tokens, slots, wait, *peak = all_sum(
                [meter.loss, meter.labels, meter.tokens, meter.slots, meter.wait, *peak], engine.device
            )
            seconds = time.perf_counter() - meter.start
            state.tokens += int(tokens)
            record = {
                "step": state.step,
                "epoch": state.epoch,
                "loss": loss_sum / label_count if label_count else float("nan"),
                "lr": engine.get_lr()[0],
                "tokens_per_s": tokens / seconds,
                "non_padding_share": tokens / slots if slots else 0.0,
                "step_time_s": seconds,
                "data_wait_s": wait / world,
                "tokens": state.tokens,
                "peak_rss_mb_per_rank": [round(m, 1) for m in peak],
            }
            last = state.step >= args.total_steps
            if state.step % args.eval_every == 0 or last:
                eval_loss = eval_loss_of(engine, eval_shard, collate_fn, micro, args.eval_batches, dtype, args.attention)
                record["eval_loss"] = eval_loss
            log.write(record)
            if rank == 0 and (state.step % args.log_every == 0 or "eval_loss" in record or last):
                say(
                    f"[socrates_ray] step {state.step}/{args.total_steps} loss {record['loss']:.4f}"
                    + (f" eval_loss {eval_loss:.4f}" if "eval_loss" in record else "")
                    + f" lr {record['lr']:.2e} {record['tokens_per_s']:,.0f} tok/s wait {record['data_wait_s']:.2f}s",
                    progress=progress,
                )
            if state.step % args.checkpoint_every == 0 and not last:
                checkpoint_now({"step": state.step, "loss": record["loss"], "eval_loss": eval_loss})
            every = args.preemption_check_every
            # A barrier every rank reaches equally often; a notice means a node (spot instance)
            # goes soon: checkpoint now, keep training, and Ray Train restarts from this step.
            if every and state.step % every == 0 and not last and last_checkpoint_step != state.step:
                notice = ray.train.get_preemption_info()
                if notice is not None:
                    if rank == 0:
                        say(f"[socrates_ray] preemption notice for ranks {notice.preempted_ranks} "
                            f"(deadline {notice.deadline_ms} ms): checkpointing step {state.step}", progress=progress)
                    checkpoint_now({"step": state.step, "loss": record["loss"], "eval_loss": eval_loss, "preempted": True})
            if [rank, state.step] in args.fault_kills:
                marker = run_dir / f"fault_fired_step{state.step}_rank{rank}"
                if not marker.exists():  # once per run, so the retried attempt gets past it
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
                    say(f"[socrates_ray] fault injection: rank {rank} exits at step {state.step}")
                    os._exit(1)
            meter.reset()  # the next step's clock starts here
        if state.micro_in_epoch == trained_before and state.step < args.total_steps:
            raise RuntimeError(f"rank {rank}: the training shard gave no batch in epoch {state.epoch}; is the split empty?")
        if state.micro_in_epoch >= per_epoch or state.step < args.total_steps:
            state.epoch += 1
            state.micro_in_epoch = 0
    if last_checkpoint_step != state.step:
        if math.isnan(eval_loss):  # no eval since this attempt started
            eval_loss = eval_loss_of(engine, eval_shard, collate_fn, micro, args.eval_batches, dtype, args.attention)
        checkpoint_now({"step": state.step, "eval_loss": eval_loss, "final": True})
