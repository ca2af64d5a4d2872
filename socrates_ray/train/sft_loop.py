"""train_loop_per_worker for train.method=sft: supervised finetuning on each participant's own
answer (the loss is on the answer tokens only), one loop per Ray Train worker driving a DeepSpeed
engine.

Reads top to bottom: start the worker -> restore -> for each micro batch: forward, backward, step ->
at optimizer-step boundaries: metrics, eval, progress line, the checkpoint the cadence owes ->
final checkpoint. What another method would share with it lives in steps.py and worker.py; a second
method gets a loop file of its own, kept consistent with this one.
"""

from __future__ import annotations

import math
import time
from typing import Any

from socrates_ray.data.ingest import collate_fn_for
from socrates_ray.train.anchor_teacher import answer_and_teacher_loss
from socrates_ray.train.datasets import epoch_dataset_name
from socrates_ray.train.steps import LoopArgs, StepMeter, all_have_batch, eval_loss_of, forward_loss, step_record
from socrates_ray.train.worker import Cadence, announce, progress_line, restore, start_worker


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """`config` is a LoopArgs as a dict (what Ray Train's train_loop_config carries)."""
    import ray.train

    args = LoopArgs(**config)
    w = start_worker(args)
    state, resume_from = restore(w)
    announce(w, state, resume_from)
    model_engine = w.model_engine
    collate_fn = collate_fn_for(args.pad_id, args.layout, args.max_length)
    eval_shard = ray.train.get_dataset_shard("eval")
    micro = args.ds_config["train_micro_batch_size_per_gpu"]
    cadence = Cadence(w, state, resumed=resume_from is not None)

    def eval_loss() -> float:
        return eval_loss_of(model_engine, eval_shard, collate_fn, micro, args.eval_batches, w.dtype, args.attention)

    meter = StepMeter()
    latest_eval = float("nan")
    while state.step < args.total_steps:
        train_shard = ray.train.get_dataset_shard(epoch_dataset_name(state.epoch, args.epoch_orders))  # this epoch's order
        batches = iter(train_shard.iter_torch_batches(batch_size=micro, collate_fn=collate_fn, drop_last=True))
        for _ in range(state.micro_in_epoch):  # resume mid-epoch: skip what was already trained
            next(batches, None)
        trained_before = state.micro_in_epoch
        # a streamed run's count is an estimate: its epoch runs until the shards end
        per_epoch = args.micro_per_epoch if args.micro_per_epoch is not None else math.inf
        while state.micro_in_epoch < per_epoch and state.step < args.total_steps:
            t0 = time.perf_counter()
            batch = next(batches, None)
            meter.wait += time.perf_counter() - t0
            if not all_have_batch(batch, model_engine.device):
                break
            if args.anchor_teacher > 0 or args.anchor_contrast > 0:  # train.anchor_teacher: read from the same forward's logits
                answer_loss, taught, contrast = answer_and_teacher_loss(model_engine, batch, w.dtype, args.attention,
                                                                        contrast=args.anchor_contrast > 0)
                loss = answer_loss + args.anchor_teacher * taught
                meter.add_aux("anchor_teacher_loss", float(taught.detach()))
                if contrast is not None:
                    loss = loss + args.anchor_contrast * contrast
                    meter.add_aux("anchor_contrast_loss", float(contrast.detach()))
            else:
                loss = answer_loss = forward_loss(model_engine, batch, w.dtype, args.attention, args.prompt_loss_weight)
            if w.probe is not None:  # train.persona_probe: read back from that forward's hidden states
                probe_loss = w.probe.loss(batch)
                loss = loss + w.probe.weight_at(state.step) * probe_loss
                meter.add_aux("persona_probe_loss", float(probe_loss.detach()))
            model_engine.backward(loss)
            boundary = model_engine.is_gradient_accumulation_boundary()
            model_engine.step()
            state.micro_in_epoch += 1
            meter.add(float(answer_loss.detach()), batch)
            if not boundary:
                continue
            state.step += 1
            record = step_record(model_engine, w.rank, w.world, meter, state)
            last = state.step >= args.total_steps
            if state.step % args.eval_every == 0 or last:
                latest_eval = record["eval_loss"] = eval_loss()
            w.log.write(record)
            progress_line(w, record, last)
            cadence.after_step(record, latest_eval, last)
            meter.reset()  # the next step's clock starts here
        if state.micro_in_epoch == trained_before and state.step < args.total_steps:
            raise RuntimeError(f"rank {w.rank}: the training shard gave no batch in epoch {state.epoch}; is the split empty?")
        if state.micro_in_epoch >= per_epoch or state.step < args.total_steps:
            state.epoch += 1
            state.micro_in_epoch = 0
    # no eval since this attempt started (a resume at the last steps): one pass for the final record
    cadence.finish(lambda: latest_eval if not math.isnan(latest_eval) else eval_loss())
