"""Training as Ray Train runs it: plan_run (rows, steps, the resume check) -> the DeepSpeed config
-> the loop's plain arguments -> TorchTrainer; run_training does all of it and fits.

train.method picks the loop: each method has a loop file of its own (sft_loop.py; steps.py holds
what every loop shares, worker.py starts and checkpoints them), never flags in one loop. The run name is pinned (cfg.run.name), so
re-running the same command finds <storage_path>/<name>/ and resumes from its latest checkpoint
instead of starting over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from socrates_ray.config import Config, dump_config
from socrates_ray.data.ingest import PARQUET_READER
from socrates_ray.data.packing import PACKER
from socrates_ray.data.prepared import split_problem, training_eval_part
from socrates_ray.data.tokenize import Encoder
from socrates_ray.errors import SocratesError, innermost_cause
from socrates_ray.infer.precision import resolve_precision
from socrates_ray.locks import folder_lock
from socrates_ray.models import folder_digest, load_tokenizer
from socrates_ray.train import dpo_loop, sft_loop
from socrates_ray.train.checkpoint import TrainState, check_resume, is_complete, newest_checkpoint_any
from socrates_ray.train.datasets import (anchor_teacher_weights, build_split_dataset, epochs_reached, estimate_split_rows,
                                        later_epochs, materialize_splits, persona_buckets, training_teacher, warn_unpaired)
from socrates_ray.train.pairs_dataset import materialize_pairs, reference_of
from socrates_ray.train.deepspeed import build_ds_config, lora_persistence_threshold
from socrates_ray.train.steps import LoopArgs
from socrates_ray.train.worker import PROGRESS_FILE


class TrainError(SocratesError, RuntimeError):
    """A run that failed for good (its retries spent), or that cannot start (a split it needs is missing)."""


def storage_root(cfg: Config) -> str:
    """Absolute local path (Ray Train needs one) or a URI such as s3://bucket/runs."""
    path = cfg.train.storage_path
    return path if "://" in path else str(Path(path).resolve())


def run_folder(cfg: Config) -> Path:
    """Where metrics.jsonl and TensorBoard files go: the run's folder on local/NFS storage."""
    root = storage_root(cfg)
    return Path(root) / cfg.run.name if "://" not in root else Path(cfg.run.output_dir).resolve() / cfg.run.name


def loop_for(method: str) -> Callable[[dict[str, Any]], None]:
    """The worker loop of a training method (train.method)."""
    if method == "sft":
        return sft_loop.train_loop_per_worker
    if method == "dpo":
        return dpo_loop.train_loop_per_worker
    raise ValueError(f"train.method={method!r} has no loop (expected sft or dpo)")


def check_training_splits(cfg: Config) -> None:
    """The train split of train.setting and the split its eval loss reads must hold rows: said before
    anything starts, with what to do."""
    for part in ("train", training_eval_part(cfg.data.prepared, cfg.train.setting)):
        if (problem := split_problem(cfg.data.prepared, cfg.train.setting, part)) is not None:
            raise TrainError(f"train.setting={cfg.train.setting}: {problem}")


def run_fingerprint(cfg: Config, model_path: str, rows: int, total_steps: int, bf16: bool, tokenized: str = "actors",
                    reference_digest: str | None = None, epoch_orders: int = 1) -> dict[str, Any]:
    """What defines a run's data stream and optimizer schedule: a resumed run must find the same
    (checkpoint.check_resume). Keys are the config paths a user would change, or for what the run
    derives, the plain names checkpoint.DERIVED describes. `tokenized`: "driver" or "actors" (the
    driver shuffles with numpy and reads with pyarrow; the actor pool's order follows Ray Data's
    seeded shuffle of the blocks its Parquet reader makes). `epoch_orders`: the epochs that read the
    split in an order of their own (datasets.later_epochs); absent at 1, so runs from before resume."""
    t, ing, lora = cfg.train, cfg.ingest, cfg.train.lora
    return {
        "data.prepared": cfg.data.prepared, "train.setting": t.setting, "training_rows": rows, "model.path": model_path,
        "prompt.system_prompt": cfg.prompt.system_prompt, "ingest.layout": ing.layout, "ingest.max_length": ing.max_length,
        "ingest.pack_window": ing.pack_window, "ingest.shuffle": ing.shuffle, "run.seed": cfg.run.seed, "tokenized_in": tokenized,
        "parquet_reader": PARQUET_READER if tokenized == "actors" else "pyarrow",
        "packer": PACKER if ing.layout in ("pack", "shared_prefix") else None, "epoch_orders": epoch_orders if epoch_orders > 1 else None,
        "ingest.micro_batch_size": ing.micro_batch_size, "ingest.num_workers": ing.num_workers, "train.grad_accum": t.grad_accum,
        "optimizer_steps": total_steps, "train.lr": t.lr, "train.warmup_ratio": t.warmup_ratio,
        "train.weight_decay": t.weight_decay, "train.grad_clip": t.grad_clip, "train.method": t.method,
        "train.finetuning": t.finetuning, "train.zero_stage": t.zero_stage, "precision": "bf16" if bf16 else "fp32",
        "train.init_adapter": _absolute(t.init_adapter),
        "train.dpo": {**t.dpo.model_dump(), "reference": reference_digest} if t.method == "dpo" else None,
        "train.prompt_loss_weight": t.prompt_loss_weight or None,  # absent (None) at 0: runs from before it resume
        "train.persona_probe": t.persona_probe.model_dump() if persona_buckets(cfg) else None,  # likewise
        # likewise, and its contrast absent at 0
        "train.anchor_teacher": {k: v for k, v in t.anchor_teacher.model_dump().items() if k != "contrast" or v}
        if any(anchor_teacher_weights(cfg)) else None,
        "train.lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": lora.target_modules,
                       "rank_pattern": lora.rank_pattern} if t.finetuning == "lora" else None,
    }


def _absolute(path: str | None) -> str | None:
    """A local folder as an absolute path (workers may start elsewhere); URIs and None unchanged."""
    return path if path is None or "://" in path else str(Path(path).resolve())


def model_sizes(model_path: str) -> tuple[int | None, int | None]:
    """(hidden size, intermediate size) from the model's config (they size DeepSpeed's buckets and
    the LoRA persistence threshold), where it has them."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path).to_dict()
    return config.get("hidden_size"), config.get("intermediate_size")


def plan_steps(rows: int, workers: int, micro: int, accum: int, epochs: int, max_steps: int | None) -> tuple[int, int]:
    """(micro batches per worker per epoch, optimizer steps in total) for equal shards."""
    micro_per_epoch = (rows // workers) // micro
    micro_per_epoch -= micro_per_epoch % accum  # an epoch ends on an optimizer-step boundary
    total = epochs * (micro_per_epoch // accum)
    if max_steps is not None:
        total = min(total, max_steps) if total else max_steps
    return micro_per_epoch, total


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run trains on and for how long, fixed before any worker starts (plan_run)."""

    datasets: dict[str, Any]  # "train" and "eval" ingest Datasets (materialized under ingest.materialize)
    rows: int  # packed training rows
    micro_per_epoch: int  # micro batches per worker per epoch
    total_steps: int  # optimizer steps of the whole run
    bf16: bool
    pad_id: int
    fingerprint: dict[str, Any]  # what a resume must find unchanged (run_fingerprint)
    finished: Path | None  # a complete checkpoint at the last step: nothing is left to train
    estimated: bool = False  # rows (and so micro_per_epoch) from a tokenized sample (streamed ingest)
    epoch_orders: int = 1  # epochs with an order of their own: datasets "train", "train_1", ... (datasets.later_epochs)


@dataclasses.dataclass(frozen=True)
class TrainingOutcome:
    """What run_training returns: the newest checkpoint folder (a path or URI) and the run's folder."""

    checkpoint: str | None
    run_dir: Path
    error: BaseException | None = None


def plan_run(cfg: Config, model_path: str, log: Any = print) -> RunPlan:
    """Count the training rows (materialized: exactly, from the stored rows; streamed: estimated from
    a tokenized sample, estimate_rows), plan the schedule, and check the run's checkpoints: a resume
    under another data stream or schedule is refused here, before any worker starts."""
    t, ing = cfg.train, cfg.ingest
    eval_part = training_eval_part(cfg.data.prepared, t.setting)
    if eval_part == "eval":
        log(f"train: warning: no validation split under {cfg.data.prepared}/{cfg.train.setting}/val (prepared with "
            "data.validation_fraction=0, or before it existed); eval loss and keep_by read the TEST split. "
            "Re-run `socrates-ray prepare` with data.validation_fraction > 0 to keep the test split unseen.")
    pad_id = Encoder(load_tokenizer(model_path), cfg.prompt.system_prompt).pad_id
    tokenized = "actors"
    bf16 = resolve_precision(t.precision, t.use_gpu) == "bf16"
    reference = teacher = None
    if t.method == "dpo":  # pairs, scored by the reference policy, always materialized (train/pairs_dataset.py)
        datasets, _ = materialize_pairs(cfg, model_path, eval_part, bf16, log)
        rows, estimated, tokenized = datasets["train"].count(), False, "driver"
        reference = folder_digest(reference_of(cfg, model_path))
    elif ing.materialize:
        teacher = training_teacher(cfg, log)
        datasets, tokenized = materialize_splits(cfg, model_path, eval_part, pad_id, run_folder(cfg), log, teacher)
        rows, estimated = datasets["train"].count(), False
    else:
        warn_unpaired(cfg, log, "the train split is streamed (ingest.materialize=false) through the actor pool")
        datasets = {"train": build_split_dataset(cfg, model_path, "train", training_teacher(cfg, log)),
                    "eval": build_split_dataset(cfg, model_path, eval_part)}
        # Streamed: the workers' stream is the only tokenizing pass (on SocSci210 a counting pass
        # would tokenize 2.9M prompts on the driver before step 1). The schedule is planned from a
        # sample; each epoch still runs until the shards end, so no row is left out.
        rows, estimated = estimate_split_rows(cfg, model_path, log), True
    micro_per_epoch, total = plan_steps(rows, ing.num_workers, ing.micro_batch_size, t.grad_accum, t.epochs, t.max_steps)
    if micro_per_epoch < t.grad_accum:
        raise ValueError(
            f"train: {rows} training rows give no full optimizer step with {ing.num_workers} workers x micro batch "
            f"{ing.micro_batch_size} x accumulation {t.grad_accum}; use more data or smaller batches"
        )
    orders = 1
    if ing.materialize and t.method == "sft":  # each later epoch its own order, not a replay of the first's batches
        orders = epochs_reached(micro_per_epoch, total, t.grad_accum) if ing.shuffle else 1
    fingerprint = run_fingerprint(cfg, model_path, rows, total, bf16, tokenized, reference, orders)
    finished = None
    if (last := newest_checkpoint_any(run_folder(cfg))) is not None:
        check_resume(last, fingerprint, cfg.run.name)  # refused, never silently continued
        if TrainState.load(last).step >= total and is_complete(last, ing.num_workers):
            finished = last
    if orders > 1 and finished is None:  # built only once the run is known to train (a refused or finished run needs none)
        datasets |= later_epochs(cfg, model_path, datasets["train"], tokenized, orders, log, teacher)
    return RunPlan(datasets, rows, micro_per_epoch, total, bf16, pad_id, fingerprint, finished, estimated, orders)


def deepspeed_config_for(cfg: Config, plan: RunPlan, model_path: str) -> dict[str, Any]:
    """train.* and ingest.* as DeepSpeed's config dict (train.deepspeed.build_ds_config)."""
    t, ing = cfg.train, cfg.ingest
    hidden, intermediate = model_sizes(model_path)
    persistence = t.zero3_persistence_threshold
    if persistence is None and t.finetuning == "lora" and t.zero_stage == 3 and hidden:
        persistence = lora_persistence_threshold(t.lora.r, t.lora.rank_pattern, hidden, intermediate)
    return build_ds_config(
        zero_stage=t.zero_stage, offload_optimizer=t.offload_optimizer, offload_params=t.offload_params, bf16=plan.bf16,
        micro_batch_size=ing.micro_batch_size, grad_accum=t.grad_accum, world_size=ing.num_workers,
        lr=t.lr, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
        warmup_steps=int(t.warmup_ratio * plan.total_steps), total_steps=plan.total_steps,
        on_gpu=t.use_gpu, persistence_threshold=persistence, hidden_size=hidden,
    )


def loop_args_for(cfg: Config, plan: RunPlan, model_path: str, ds_config: dict[str, Any]) -> LoopArgs:
    """The plain values each worker's loop runs on (train.steps.LoopArgs)."""
    t, ing = cfg.train, cfg.ingest
    return LoopArgs(
        model_path=str(Path(model_path).resolve()) if "://" not in model_path and Path(model_path).exists() else model_path,
        finetuning=t.finetuning, gradient_checkpointing=t.gradient_checkpointing, attention=t.attention,
        lora_r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout, lora_targets=t.lora.target_modules,
        lora_rank_pattern=t.lora.rank_pattern, init_adapter=_absolute(t.init_adapter),
        ds_config=ds_config, use_gpu=t.use_gpu, seed=cfg.run.seed, torch_threads=max(1, int(t.cpus_per_worker)),
        # the data: how each worker's shard is collated, and how much of it an epoch and the run take
        pad_id=plan.pad_id, layout=ing.layout,
        max_length=ing.max_length, micro_per_epoch=None if plan.estimated else plan.micro_per_epoch, total_steps=plan.total_steps,
        epoch_orders=plan.epoch_orders,
        # the cadence of metrics, eval loss, checkpoints and preemption checks (optimizer steps)
        log_every=t.log_every, eval_every=t.eval_every, eval_batches=t.eval_batches,
        checkpoint_every=t.checkpoint_every, preemption_check_every=t.preemption_check_every,
        run_dir=str(run_folder(cfg)), fingerprint=plan.fingerprint,
        dpo={"beta": t.dpo.beta, "sft_weight": t.dpo.sft_weight} if t.method == "dpo" else None,
        prompt_loss_weight=t.prompt_loss_weight if t.method == "sft" else 0.0,
        persona_probe=t.persona_probe.model_dump() if persona_buckets(cfg) else None,
        anchor_teacher=anchor_teacher_weights(cfg)[0],
        anchor_contrast=anchor_teacher_weights(cfg)[1],
        tracking={"report_to": list(dict.fromkeys(t.report_to)), "project": t.tracking.project, "wandb_mode": t.tracking.wandb_mode,
                  "mlflow_tracking_uri": t.tracking.mlflow_tracking_uri, "run_name": cfg.run.name,
                  "config": cfg.model_dump(mode="json")},
    )


def torch_trainer(cfg: Config, plan: RunPlan, args: LoopArgs) -> Any:
    """Ray Train's TorchTrainer: scaling, storage, failure handling, checkpoint retention, data."""
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    keep_best = t.keep_by == "eval_loss"
    return TorchTrainer(
        loop_for(t.method),
        train_loop_config=dataclasses.asdict(args),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ingest.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker},
            placement_strategy=t.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_root(cfg),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=t.keep_checkpoints,
                checkpoint_score_attribute="eval_loss" if keep_best else None,
                checkpoint_score_order="min",
            ),
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}} if not t.use_gpu else None,
        ),
        datasets=plan.datasets,
        # Same order every run, so skipping the micro batches already trained resumes exactly.
        dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )


def run_training(cfg: Config, model_path: str, log: Any = print) -> TrainingOutcome:
    """Plan, then fit on the connected Ray instance; a run whose last step is already checkpointed
    starts no workers (re-running a finished command is free). One writer per run: a second
    training of the same run folder while this one runs is refused (locks.py, LockHeld)."""
    with folder_lock(run_folder(cfg), "train", log):
        return _run_training(cfg, model_path, log)


def _run_training(cfg: Config, model_path: str, log: Any) -> TrainingOutcome:
    ing, t = cfg.ingest, cfg.train
    plan = plan_run(cfg, model_path, log)
    if plan.finished is not None:
        log(f"train: run.name={cfg.run.name} already finished: {plan.finished} holds step {plan.total_steps} of "
            f"{plan.total_steps}; nothing to train (choose a new run.name to train again)")
        return TrainingOutcome(str(plan.finished), run_folder(cfg))
    ds_config = deepspeed_config_for(cfg, plan, model_path)
    log(
        f"train: {'about ' if plan.estimated else ''}{plan.rows:,} {'packed ' if ing.layout == 'pack' else 'shared-prefix ' if ing.layout == 'shared_prefix' else ''}rows -> "
        f"{plan.micro_per_epoch:,} micro batches per worker per epoch, "
        f"{plan.total_steps} optimizer steps; global batch {ds_config['train_batch_size']} rows = micro "
        f"{ing.micro_batch_size} x accumulation {t.grad_accum} x {ing.num_workers} workers"
    )
    trainer = torch_trainer(cfg, plan, loop_args_for(cfg, plan, model_path, ds_config))
    # after plan_run's resume check: a refused run leaves the folder's recorded config as it was
    dump_config(cfg, run_folder(cfg))
    import ray.train

    try:
        if cfg.run.verbose:  # worker output reaches the terminal through Ray itself
            result = trainer.fit()
        else:
            with follow_progress(run_folder(cfg) / PROGRESS_FILE, log):
                result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise TrainError(
            f"training failed after train.max_failures={t.max_failures} retries ({innermost_cause(exc)}; the whole traceback is "
            "in the workers' logs, /tmp/ray/session_latest/logs/worker-*.err on their nodes); "
            f"run the same command again to resume from the latest checkpoint in {run_folder(cfg)}"
        ) from None
    checkpoint = result.checkpoint.path if result.checkpoint else None
    log(f"train: finished; latest checkpoint {checkpoint}; metrics {run_folder(cfg) / 'metrics.jsonl'}")
    return TrainingOutcome(checkpoint, run_folder(cfg), result.error)


@contextlib.contextmanager
def follow_progress(path: Path, log: Any) -> Iterator[None]:
    """Print the lines rank 0 appends to `path` (worker.say) while the block runs: the progress of a
    quiet run, whose Ray workers' own output stays in Ray's log files."""
    start = path.stat().st_size if path.exists() else 0
    done = threading.Event()

    def follow() -> None:
        offset = start
        while True:
            finished = done.is_set()
            if path.exists():
                with path.open() as f:
                    f.seek(offset)
                    chunk = f.read()
                complete = chunk[: chunk.rfind("\n") + 1]
                offset += len(complete.encode())
                for line in complete.splitlines():
                    log(line)
            if finished:
                return
            done.wait(1.0)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)
