"""The anchor teacher (train.anchor_teacher): soft labels from the regression anchor beside the answers.

A participant's single answer is a noisy draw from their distribution; the persona moves that
distribution only a little, and only together with the stimulus. The regression anchor
(eval/anchor.py), fitted on the same training split, gives every training row a smooth distribution
over its options that already varies with the persona lines and the stimulus words. SFT adds
`weight` x the cross-entropy from that distribution to the model's distribution over the same
options at the position that predicts the answer: a denoised target for the persona's effect that a
single answer does not give. The anchor never sees the evaluation splits, so nothing leaks.

The soft label teaches the stimulus's effect far more than the persona's: within one cell (one
stimulus, one question) the anchor's distributions differ by little, so a model can match it closely
while giving every participant the same answer. `contrast` (train.anchor_teacher.contrast) adds a
term on that difference alone: training rows are shuffled in pairs from the same cell
(`paired_order`), and within each micro-batch every example's expected answer position (0 to 1
across its options) minus its cell's mean must match the teacher's (`contrast_loss`): the stimulus
cancels, and only how the persona moves the answer is left to learn.

Three places use it:

- the driver fits the teacher once before tokenizing (`fit_teacher`, the evaluation's own fit: ridge
  penalty and spread chosen on the validation split);
- tokenizing gives each training example TEACHER_WIDTH option token ids and their probabilities
  (`teacher_targets`), and its cell (`cell_keys`); an example whose options are not all one token
  each (a 0-10 scale with a two-token "10", an open-ended amount) gets none and is trained on its
  answer alone;
- the loop reads the logits it already computed for the answer loss (`teacher_loss`, `contrast_loss`).
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Sequence

import numpy as np

from socrates_ray.data.tokenize import IGNORE_INDEX, answer_positions

TEACHER_WIDTH = 12  # options carried per example; a longer scale gets no teacher
# what the anchor reads of a prepared row, and the row's cell
TEACHER_COLUMNS = ("stimuli", "demographic", "scale_low", "scale_high", "study_id", "condition_num", "task_num")


def fit_teacher(prepared: str, setting: str, log: Callable[[str], None]) -> Any:
    """The regression anchor on `setting`'s train split (penalty and spread chosen on its validation
    split, as `socrates-ray evaluate` fits it)."""
    import time

    from socrates_ray.data.prepared import load_split_rows, val_or_train
    from socrates_ray.eval.anchor import fit_anchor

    started = time.perf_counter()
    anchor = fit_anchor(load_split_rows(prepared, setting, "train"), val_or_train(prepared, setting))
    log(f"train: anchor teacher fitted on {setting}/train in {time.perf_counter() - started:.1f}s (ridge alpha "
        f"{anchor.alpha:g}, spread {anchor.spread:g}; train.anchor_teacher)")
    return anchor


def teacher_targets(anchor: Any, records: Sequence[dict[str, Any]],
                    encode_answers: Callable[[list[str]], list[list[int]]]) -> list[tuple[list[int], list[float]]]:
    """Per record: (TEACHER_WIDTH option token ids, their teacher probabilities), padded with
    IGNORE_INDEX / 0; all IGNORE_INDEX where the record gets no teacher. `encode_answers` tokenizes
    answer texts as training does, so an option's id is the first token its answer would have."""
    from socrates_ray.eval.anchor import option_distributions

    none = ([IGNORE_INDEX] * TEACHER_WIDTH, [0.0] * TEACHER_WIDTH)
    out = []
    dists = option_distributions(anchor, list(records))
    texts = sorted({str(v) for r, p in zip(records, dists) if p is not None and len(p) <= TEACHER_WIDTH
                    for v in range(r["scale_low"], r["scale_high"] + 1)})
    single = {t: ids[0] for t, ids in zip(texts, encode_answers(texts) if texts else []) if len(ids) == 1}
    for r, p in zip(records, dists):
        if p is None or len(p) > TEACHER_WIDTH:
            out.append(none)
            continue
        ids = [single.get(str(v)) for v in range(r["scale_low"], r["scale_high"] + 1)]
        if any(i is None for i in ids) or len(set(ids)) < len(ids):
            out.append(none)
            continue
        pad = TEACHER_WIDTH - len(ids)
        out.append((ids + [IGNORE_INDEX] * pad, [float(x) for x in p] + [0.0] * pad))
    return out


def cell_keys(records: Sequence[dict[str, Any]]) -> list[int]:
    """Each record's cell (study, condition, task) as a non-negative 31-bit key: what contrast_loss
    groups the examples of a micro-batch by."""
    return [zlib.crc32(f"{r['study_id']}|{r['condition_num']}|{r['task_num']}".encode()) & 0x7FFFFFFF for r in records]


def paired_order(keys: Sequence[int], seed: int) -> np.ndarray:
    """A seeded permutation that puts the rows of each cell two by two: rows 2i and 2i+1 share a
    cell wherever the cell has a row left to pair (a cell's odd row is paired with another cell's).
    Pairs stay together through pack_window-sized (even) slices and micro-batches of even size."""
    rng = np.random.default_rng(seed)
    cells: dict[int, list[int]] = {}
    for i in rng.permutation(len(keys)):
        cells.setdefault(int(keys[i]), []).append(int(i))
    pairs, odd = [], []
    for members in cells.values():
        pairs += [members[j : j + 2] for j in range(0, len(members) - 1, 2)]
        if len(members) % 2:
            odd.append(members[-1])
    pairs += [odd[j : j + 2] for j in range(0, len(odd), 2)]
    return np.asarray([i for k in rng.permutation(len(pairs)) for i in pairs[k]], dtype=np.int64)


def _option_distributions(logits: Any, keep: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(model log-probabilities, teacher probabilities, valid option mask, (row, example within the
    row)) of each taught example, the model's renormalized over the example's options."""
    import torch

    labels = batch["labels"].to(logits.device)
    rows, positions, example = answer_positions(labels)
    columns = torch.searchsorted(keep.to(logits.device), positions)
    ids = batch["teacher_ids"].to(logits.device).view(labels.shape[0], -1, TEACHER_WIDTH)[rows, example]
    probs = batch["teacher_probs"].to(logits.device).view(labels.shape[0], -1, TEACHER_WIDTH)[rows, example].float()
    valid = ids != IGNORE_INDEX
    taught = valid.any(1).nonzero(as_tuple=True)[0]
    chosen = logits[rows[taught], columns[taught]].float().gather(1, ids[taught].clamp(min=0)).masked_fill(~valid[taught], float("-inf"))
    logq = torch.log_softmax(chosen, dim=1).masked_fill(~valid[taught], 0.0)
    return logq, probs[taught], valid[taught], (rows[taught], example[taught])


def teacher_loss(logits: Any, keep: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy from each example's teacher distribution to the model's, renormalized over
    the example's options, at the position that predicts its answer. `logits`: label_logits' (B, K, V)
    at the columns `keep` (steps.label_positions). Examples without a teacher are left out; a batch
    with none gives a zero that still reaches every parameter."""
    logq, probs, _, _ = _option_distributions(logits, keep, batch)
    if not len(logq):
        return logits.sum() * 0.0
    return -(probs * logq).sum(1).mean()


def within_cell_contrast(expected: Any, target: Any, cell: Any) -> Any:
    """Mean over the examples that share their cell with another of the batch of ((expected - its
    cell's mean) - (target - its cell's mean))^2; None where no two examples share a cell."""
    import torch

    _, group, size = torch.unique(cell, return_inverse=True, return_counts=True)
    shared = size[group] > 1
    if not bool(shared.any()):
        return None
    groups = len(size)

    def centred(x: Any) -> Any:
        means = torch.zeros(groups, dtype=x.dtype, device=x.device).index_add(0, group, x) / size.to(x.dtype)
        return x - means[group]

    return ((centred(expected) - centred(target))[shared] ** 2).mean()


def contrast_loss(logits: Any, keep: Any, batch: dict[str, Any]) -> Any:
    """within_cell_contrast of the model's and the teacher's expected answer positions (0 at an
    example's lowest option, 1 at its highest) over the taught examples of a micro-batch, grouped by
    teacher_cell; a zero that still reaches every parameter where no two examples share a cell."""
    import torch

    logq, probs, valid, (rows, example) = _option_distributions(logits, keep, batch)
    if len(logq):
        n = valid.sum(1, keepdim=True)
        position = torch.arange(TEACHER_WIDTH, device=logq.device, dtype=logq.dtype)[None, :] / (n - 1).clamp(min=1)
        cell = batch["teacher_cell"].to(logits.device).view(batch["labels"].shape[0], -1)[rows, example]
        loss = within_cell_contrast((logq.exp() * position).sum(1), (probs * position).sum(1), cell)
        if loss is not None:
            return loss
    return logits.sum() * 0.0


def answer_and_teacher_loss(model_engine: Any, batch: dict[str, Any], dtype: Any, attention: str,
                            contrast: bool = False) -> tuple[Any, Any, Any]:
    """(the answers' mean loss as steps.forward_loss computes it, teacher_loss, contrast_loss or
    None) from one forward."""
    from socrates_ray.train.steps import label_cross_entropy, label_logits, label_positions

    logits, targets = label_logits(model_engine, batch, dtype, attention)
    keep = label_positions(batch["labels"])
    return (label_cross_entropy(logits, targets), teacher_loss(logits, keep, batch),
            contrast_loss(logits, keep, batch) if contrast else None)


def teacher_arrays(pairs: Sequence[tuple[list[int], list[float]]], cells: Sequence[int]) -> dict[str, list[np.ndarray]]:
    """teacher_targets' pairs and cell_keys as the per-example columns data.tokenize packs beside the tokens."""
    return {"teacher_ids": [np.asarray(i, np.int32) for i, _ in pairs],
            "teacher_probs": [np.asarray(p, np.float32) for _, p in pairs],
            "teacher_cell": [np.asarray([c], np.int32) for c in cells]}
