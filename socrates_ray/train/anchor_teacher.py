"""The anchor teacher (train.anchor_teacher): soft labels from the regression anchor beside the answers.

A participant's single answer is a noisy draw from their distribution; the persona moves that
distribution only a little, and only together with the stimulus. The regression anchor
(eval/anchor.py), fitted on the same training split, gives every training row a smooth distribution
over its options that already varies with the persona lines and the stimulus words. SFT adds
`weight` x the cross-entropy from that distribution to the model's distribution over the same
options at the position that predicts the answer: a denoised target for the persona's effect that a
single answer does not give. The anchor never sees the evaluation splits, so nothing leaks.

Three places use it:

- the driver fits the teacher once before tokenizing (`fit_teacher`, the evaluation's own fit: ridge
  penalty and spread chosen on the validation split);
- tokenizing gives each training example TEACHER_WIDTH option token ids and their probabilities
  (`teacher_targets`); an example whose options are not all one token each (a 0-10 scale with a
  two-token "10", an open-ended amount) gets none and is trained on its answer alone;
- the loop reads the logits it already computed for the answer loss (`teacher_loss`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from socrates_ray.data.tokenize import IGNORE_INDEX, answer_positions

TEACHER_WIDTH = 12  # options carried per example; a longer scale gets no teacher
TEACHER_COLUMNS = ("stimuli", "demographic", "scale_low", "scale_high")  # what the anchor reads of a prepared row


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


def teacher_loss(logits: Any, keep: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy from each example's teacher distribution to the model's, renormalized over
    the example's options, at the position that predicts its answer. `logits`: label_logits' (B, K, V)
    at the columns `keep` (steps.label_positions). Examples without a teacher are left out; a batch
    with none gives a zero that still reaches every parameter."""
    import torch

    labels = batch["labels"].to(logits.device)
    rows, positions, example = answer_positions(labels)
    columns = torch.searchsorted(keep.to(logits.device), positions)
    ids = batch["teacher_ids"].to(logits.device).view(labels.shape[0], -1, TEACHER_WIDTH)[rows, example]
    probs = batch["teacher_probs"].to(logits.device).view(labels.shape[0], -1, TEACHER_WIDTH)[rows, example].float()
    valid = ids != IGNORE_INDEX
    taught = valid.any(1)
    if not bool(taught.any()):
        return logits.sum() * 0.0
    chosen = logits[rows, columns].float().gather(1, ids.clamp(min=0)).masked_fill(~valid, float("-inf"))
    logq = torch.log_softmax(chosen[taught], dim=1).masked_fill(~valid[taught], 0.0)
    return -(probs[taught] * logq).sum(1).mean()


def answer_and_teacher_loss(model_engine: Any, batch: dict[str, Any], dtype: Any, attention: str) -> tuple[Any, Any]:
    """(the answers' mean loss as steps.forward_loss computes it, teacher_loss) from one forward."""
    from socrates_ray.train.steps import label_cross_entropy, label_logits, label_positions

    logits, targets = label_logits(model_engine, batch, dtype, attention)
    return label_cross_entropy(logits, targets), teacher_loss(logits, label_positions(batch["labels"]), batch)


def teacher_arrays(pairs: Sequence[tuple[list[int], list[float]]]) -> dict[str, list[np.ndarray]]:
    """teacher_targets' pairs as the per-example columns data.tokenize packs beside the tokens."""
    return {"teacher_ids": [np.asarray(i, np.int32) for i, _ in pairs],
            "teacher_probs": [np.asarray(p, np.float32) for _, p in pairs]}
