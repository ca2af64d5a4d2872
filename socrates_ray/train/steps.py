"""What every training method's worker loop shares (sft_loop.py; a second method's loop file uses
the same, and worker.py starts and checkpoints them all): the loop's plain arguments, the loss over
label tokens, the collectives every rank makes, the eval loss, and one optimizer step's meter and
metrics record.

Rules every loop keeps:
- every collective (all_reduce, DeepSpeed step, checkpoint gather, ray.train.report) is made by
  every rank the same number of times (Ray Train's report is a barrier; DeepSpeed hangs when ranks
  see different numbers of batches);
- every rank trains the same number of micro batches: the shards are equal and, as a guard, ranks
  agree each step (all_reduce MIN) that all of them still have a batch, so none waits forever;
- side effects (metrics file, TensorBoard, progress line) happen on rank 0.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from typing import Any

from socrates_ray.data.tokenize import IGNORE_INDEX, packed_attention_mask
from socrates_ray.train.attention import row_segments, varlen_arguments
from socrates_ray.train.checkpoint import TrainState


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
    init_adapter: str | None  # train.init_adapter: continue this adapter (its shape replaces lora_*)
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
    dpo: dict[str, float] | None = None  # train.method dpo: beta, sft_weight
    prompt_loss_weight: float = 0.0  # train.prompt_loss_weight (sft)
    persona_probe: dict[str, Any] | None = None  # train.persona_probe (sft, weight > 0): weight, until, layer, buckets
    anchor_teacher: float = 0.0  # train.anchor_teacher.weight (sft)
    anchor_contrast: float = 0.0  # train.anchor_teacher.contrast (sft)
    # train.report_to and train.tracking, the run's name and its whole config (train.tracking.open_sinks)
    tracking: dict[str, Any] | None = None
    # epochs that read the train split in an order of their own (datasets.later_epochs, epoch_dataset_name)
    epoch_orders: int = 1


def label_positions(labels: Any) -> Any:
    """Sequence positions whose logits predict a label token in some row: t where labels[:, t + 1]
    is set (a causal LM's logits at t score token t + 1). For SocSci210 rows that is the answer and
    the end-of-turn token of each example: a few percent of a batch's positions."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


def label_logits(model: Any, batch: dict[str, Any], dtype: Any, attention: str = "dense") -> tuple[Any, Any]:
    """(logits at label_positions, the labels they predict): one forward of `model` (a DeepSpeed
    engine or a plain model) in which packed examples never attend to each other.

    attention "dense": a (B, 1, L, L) additive mask from seq_ids; "segments": no mask, one causal
    attention call per example; "varlen": no mask, one flash varlen call per layer over all the
    examples (CUDA; train/attention.py; the model was loaded with it). The output layer
    and the softmax over the vocabulary run only at label_positions (the model's logits_to_keep),
    not at every prompt token: the same loss as the model's own full-logits loss
    (tests/unit/test_loss.py), without projecting ~99% of the hidden states that no label reads."""
    device = model.device
    labels = batch["labels"].to(device)
    keep = label_positions(labels)
    if attention == "segments":
        mask = {"attention_mask": None, "packed_segments": row_segments(batch["seq_ids"])}
    elif attention == "varlen":
        mask = {"attention_mask": None, **varlen_arguments(batch["seq_ids"], device)}
    else:
        mask = {"attention_mask": packed_attention_mask(batch["seq_ids"].to(device), dtype)}
    logits = model(
        input_ids=batch["input_ids"].to(device),
        position_ids=batch["position_ids"].to(device),
        logits_to_keep=keep,
        use_cache=False,  # training builds no KV cache (transformers would, for a config with use_cache)
        **mask,
    ).logits
    return logits, labels[:, keep + 1]


def forward_loss(model_engine: Any, batch: dict[str, Any], dtype: Any, attention: str = "dense", prompt_weight: float = 0.0) -> Any:
    """Mean loss over the batch's label tokens (label_logits' forward). prompt_weight > 0 adds that
    multiple of the mean loss over the prompt tokens (train.prompt_loss_weight; prompt_lm_loss)."""
    if prompt_weight > 0:
        return prompt_lm_loss(model_engine, batch, dtype, attention, prompt_weight)
    return label_cross_entropy(*label_logits(model_engine, batch, dtype, attention))


def label_cross_entropy(logits: Any, targets: Any) -> Any:
    """Mean cross-entropy of label_logits' (logits, targets) over the label tokens."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def prompt_lm_loss(model: Any, batch: dict[str, Any], dtype: Any, attention: str, weight: float) -> Any:
    """The answers' mean loss + `weight` x the prompt tokens' mean next-token loss, from one forward
    over every position. A prompt token is predicted only from its own example (never across a packed
    row's boundary, never a padding token). For a base that has read no text, the prompt tokens teach
    what the persona lines and the stimulus are, which the answer tokens alone barely do."""
    import torch.nn.functional as F

    device = model.device
    labels, ids, seq = batch["labels"].to(device), batch["input_ids"].to(device), batch["seq_ids"].to(device)
    if attention == "segments":
        mask = {"attention_mask": None, "packed_segments": row_segments(batch["seq_ids"])}
    elif attention == "varlen":
        mask = {"attention_mask": None, **varlen_arguments(batch["seq_ids"], device)}
    else:
        mask = {"attention_mask": packed_attention_mask(seq, dtype)}
    logits = model(input_ids=ids, position_ids=batch["position_ids"].to(device), use_cache=False, **mask).logits[:, :-1].float()
    answer = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
    in_prompt = (labels[:, 1:] == IGNORE_INDEX) & (seq[:, 1:] == seq[:, :-1]) & (seq[:, 1:] != 0)
    prompt_targets = ids[:, 1:].masked_fill(~in_prompt, IGNORE_INDEX)
    prompt = F.cross_entropy(logits.flatten(0, 1), prompt_targets.flatten(), ignore_index=IGNORE_INDEX)
    return answer + weight * prompt


def sequence_logps(model: Any, batch: dict[str, Any], dtype: Any, attention: str = "dense") -> tuple[Any, Any]:
    """(each row's summed log-probability of its label tokens, each row's label count): log pi(answer
    | prompt) of one example per row, as DPO compares them. The policy in the loop and the reference
    scorer before it both call this, so the two agree exactly where the weights do."""
    import torch

    logits, targets = label_logits(model, batch, dtype, attention)
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(dim=1), mask.sum(dim=1)


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


def eval_loss_of(model_engine: Any, shard: Any, collate_fn: Any, micro: int, max_batches: int, dtype: Any, attention: str) -> float:
    """Token-weighted eval loss over up to max_batches micro batches per rank (collective)."""
    import torch

    model_engine.eval()
    loss_sum = count = 0.0
    batches = iter(shard.iter_torch_batches(batch_size=micro, collate_fn=collate_fn, drop_last=True))
    with torch.no_grad():
        for _ in range(max_batches):
            batch = next(batches, None)
            if not all_have_batch(batch, model_engine.device):
                break
            n = int((batch["labels"] != IGNORE_INDEX).sum())
            loss_sum += float(forward_loss(model_engine, batch, dtype, attention)) * n
            count += n
    model_engine.train()
    loss_sum, count = all_sum([loss_sum, count], model_engine.device)
    return loss_sum / count if count else float("nan")


# terms beside the answers' loss (train.persona_probe, train.anchor_teacher's weight and contrast)
AUX_LOSSES = ("persona_probe_loss", "anchor_teacher_loss", "anchor_contrast_loss")


class StepMeter:
    """What one optimizer step trained (label-weighted loss, tokens, padding, data wait) and how
    long it took; reset after each step's bookkeeping, so eval and checkpoint time never count."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = self.labels = self.tokens = self.slots = self.wait = 0.0
        self.aux = {name: [0.0, 0] for name in AUX_LOSSES}  # name -> [sum over micro batches, micro batches]
        self.start = time.perf_counter()

    def add_aux(self, name: str, value: float) -> None:
        """One micro batch's value of an AUX_LOSSES term (a mean over micro batches in the record)."""
        self.aux[name][0] += value
        self.aux[name][1] += 1

    def add(self, loss: float, batch: dict[str, Any]) -> None:
        labels = int((batch["labels"] != IGNORE_INDEX).sum())
        self.loss += loss * labels
        self.labels += labels
        self.tokens += int((batch["seq_ids"] != 0).sum())
        self.slots += batch["seq_ids"].numel()


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_record(model_engine: Any, rank: int, world: int, meter: StepMeter, state: TrainState) -> dict[str, Any]:
    """One optimizer step's metrics, summed over the ranks (a collective): loss per label token,
    learning rate, tokens/s, non-padding share, step and data-wait time, each rank's peak memory."""
    peak = [0.0] * world
    peak[rank] = peak_rss_mib()
    aux = [v for name in AUX_LOSSES for v in meter.aux[name]]
    summed = all_sum([meter.loss, meter.labels, meter.tokens, meter.slots, meter.wait, *aux, *peak], model_engine.device)
    loss_sum, label_count, tokens, slots, wait = summed[:5]
    aux, peak = summed[5 : 5 + len(aux)], summed[5 + len(aux) :]
    seconds = time.perf_counter() - meter.start
    state.tokens += int(tokens)
    extra = {name: aux[2 * i] / aux[2 * i + 1] for i, name in enumerate(AUX_LOSSES) if aux[2 * i + 1]}
    return {
        "step": state.step,
        "epoch": state.epoch,
        "loss": loss_sum / label_count if label_count else float("nan"),
        "lr": model_engine.get_lr()[0],
        "tokens_per_s": tokens / seconds,
        "non_padding_share": tokens / slots if slots else 0.0,
        "step_time_s": seconds,
        "data_wait_s": wait / world,
        "tokens": state.tokens,
        "peak_rss_mb_per_rank": [round(m, 1) for m in peak],
        **extra,
    }


