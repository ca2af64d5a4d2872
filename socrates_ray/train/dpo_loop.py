"""train_loop_per_worker for train.method=dpo: direct preference optimisation on pairs of answers
to the same prompt, the participant's own (chosen) and another participant's (rejected)
(data/pairs.py), one loop per Ray Train worker driving a DeepSpeed engine.

The reference policy is where the policy starts (the SFT adapter given as train.init_adapter, or the
model itself for full finetuning). Its log-probabilities are computed once before training, by the
same forward as the policy's (steps.sequence_logps), and stream with the pairs
(train/pairs_dataset.py): no second model in a worker's memory, LoRA and full alike.

Reads top to bottom as sft_loop.py does: start the worker -> restore -> for each micro batch of
pairs: one forward over chosen and rejected, the loss, backward, step -> at optimizer-step
boundaries: metrics (with preference accuracy and the reward margin), eval, progress, checkpoints.
"""

from __future__ import annotations

import math
import time
from typing import Any

from socrates_ray.train.steps import LoopArgs, StepMeter, all_have_batch, all_sum, sequence_logps, step_record
from socrates_ray.train.worker import Cadence, announce, progress_line, restore, start_worker


def dpo_loss(policy: Any, counts: Any, ref_chosen: Any, ref_rejected: Any, beta: float, sft_weight: float) -> tuple[Any, Any, Any]:
    """(loss, preference accuracy, reward margin) of a batch of B pairs. `policy`: the 2B summed
    answer log-probabilities (chosen rows first), `counts` their label counts. The sigmoid DPO
    loss: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))); log 2 where policy = reference.
    sft_weight > 0 adds that multiple of the chosen answers' per-token negative log-likelihood."""
    import torch.nn.functional as F

    half = policy.shape[0] // 2
    chosen, rejected = policy[:half], policy[half:]
    margin = beta * ((chosen - ref_chosen.to(chosen)) - (rejected - ref_rejected.to(rejected)))
    loss = -F.logsigmoid(margin).mean()
    if sft_weight > 0:
        loss = loss + sft_weight * (-chosen / counts[:half].clamp(min=1)).mean()
    return loss, (margin > 0).float().mean(), margin.mean() / beta


def pair_metrics(model_engine: Any, batch: dict[str, Any], dtype: Any, attention: str, beta: float, sft_weight: float) -> tuple[Any, Any, Any]:
    policy, counts = sequence_logps(model_engine, batch, dtype, attention)
    return dpo_loss(policy, counts, batch["ref_chosen"], batch["ref_rejected"], beta, sft_weight)


def eval_pairs(model_engine: Any, shard: Any, collate_fn: Any, micro: int, max_batches: int, dtype: Any, attention: str,
               beta: float, sft_weight: float) -> tuple[float, float]:
    """(DPO loss, preference accuracy) over up to max_batches micro batches of pairs per rank (collective)."""
    import torch

    model_engine.eval()
    loss_sum = acc_sum = count = 0.0
    batches = iter(shard.iter_torch_batches(batch_size=micro, collate_fn=collate_fn, drop_last=True))
    with torch.no_grad():
        for _ in range(max_batches):
            batch = next(batches, None)
            if not all_have_batch(batch, model_engine.device):
                break
            loss, accuracy, _ = pair_metrics(model_engine, batch, dtype, attention, beta, sft_weight)
            n = batch["ref_chosen"].shape[0]
            loss_sum, acc_sum, count = loss_sum + float(loss) * n, acc_sum + float(accuracy) * n, count + n
    model_engine.train()
    loss_sum, acc_sum, count = all_sum([loss_sum, acc_sum, count], model_engine.device)
    return (loss_sum / count, acc_sum / count) if count else (float("nan"), float("nan"))


def pair_collate_fn(pad_id: int) -> Any:
    from ray.data.collate_fn import NumpyBatchCollateFn

    from socrates_ray.data.tokenize import collate_pairs

    class CollatePairs(NumpyBatchCollateFn):
        def __init__(self, pad_id: int) -> None:
            self.pad_id = pad_id

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            return collate_pairs(batch, self.pad_id)

    return CollatePairs(pad_id)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """`config` is a LoopArgs as a dict (what Ray Train's train_loop_config carries)."""
    import ray.train

    args = LoopArgs(**config)
    beta, sft_weight = args.dpo["beta"], args.dpo["sft_weight"]
    w = start_worker(args)
    state, resume_from = restore(w)
    announce(w, state, resume_from)
    model_engine = w.model_engine
    collate_fn = pair_collate_fn(args.pad_id)
    train_shard, eval_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("eval")
    micro = args.ds_config["train_micro_batch_size_per_gpu"]
    cadence = Cadence(w, state, resumed=resume_from is not None)

    def eval_loss() -> float:
        loss, accuracy = eval_pairs(model_engine, eval_shard, collate_fn, micro, args.eval_batches, w.dtype, args.attention, beta, sft_weight)
        record["eval_preference_accuracy"] = accuracy
        return loss

    meter = StepMeter()
    preferred = pairs = margin_sum = 0.0
    latest_eval = float("nan")
    record: dict[str, Any] = {}
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
            if not all_have_batch(batch, model_engine.device):
                break
            loss, accuracy, margin = pair_metrics(model_engine, batch, w.dtype, args.attention, beta, sft_weight)
            model_engine.backward(loss)
            boundary = model_engine.is_gradient_accumulation_boundary()
            model_engine.step()
            state.micro_in_epoch += 1
            meter.add(float(loss.detach()), batch)
            n = batch["ref_chosen"].shape[0]
            preferred, pairs, margin_sum = preferred + float(accuracy) * n, pairs + n, margin_sum + float(margin) * n
            if not boundary:
                continue
            state.step += 1
            record = step_record(model_engine, w.rank, w.world, meter, state)
            preferred, pairs, margin_sum = all_sum([preferred, pairs, margin_sum], model_engine.device)
            record["preference_accuracy"], record["reward_margin"] = preferred / pairs, margin_sum / pairs
            preferred = pairs = margin_sum = 0.0
            last = state.step >= args.total_steps
            if state.step % args.eval_every == 0 or last:
                latest_eval = record["eval_loss"] = eval_loss()
            w.log.write(record)
            progress_line(w, record, last)
            cadence.after_step(record, latest_eval, last)
            meter.reset()
        if state.micro_in_epoch == trained_before and state.step < args.total_steps:
            raise RuntimeError(f"rank {w.rank}: the training shard gave no batch in epoch {state.epoch}; is the split empty?")
        if state.micro_in_epoch >= per_epoch or state.step < args.total_steps:
            state.epoch += 1
            state.micro_in_epoch = 0
    cadence.finish(lambda: latest_eval if not math.isnan(latest_eval) else eval_loss())
