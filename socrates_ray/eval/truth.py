"""Synthetic data only: the models against the TRUE distributions the generator drew answers from
(ground_truth.parquet per cell, ground_truth_rows.parquet per participant). Unlike W against the
sampled humans, no answer noise enters; with the per-participant truth, neither does persona
sampling, and a model's persona reading (does it order participants within a cell as the truth
does?) can be measured. Pure: numpy + scipy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import wasserstein_distance

from socrates_ray.data.synthetic_files import ROW_TRUTH_FILE
from socrates_ray.eval.metrics import Cell, CellKey, macro, mixture
from socrates_ray.eval.results import PersonaReading, TruthDistance

Truth = dict[CellKey, tuple[list[int], list[float]]]  # cell -> (options, true probabilities)

RowTruth = dict[tuple[str, int], list[float]]  # (study_id, sample_id) -> the participant's true probabilities


def load_truth(raw: str) -> Truth | None:
    """The synthetic data's true distribution per cell, if the raw folder has one."""
    path = Path(raw) / "ground_truth.parquet"
    if not path.is_file():
        return None
    return {
        (r["study_id"], r["condition_num"], r["task_num"]): (r["options"], r["probs"])
        for r in pq.read_table(path, columns=["study_id", "condition_num", "task_num", "options", "probs"]).to_pylist()
    }


def load_row_truth(raw: str) -> RowTruth | None:
    """The synthetic data's true distribution of every participant's answer, keyed by (study_id,
    sample_id), if the raw folder has one (datasets synthesized before it existed do not)."""
    path = Path(raw) / ROW_TRUTH_FILE
    if not path.is_file():
        return None
    table = pq.read_table(path)
    return {(s, i): p for s, i, p in zip(table["study_id"].to_pylist(), table["sample_id"].to_pylist(), table["probs"].to_pylist())
            if p is not None}


def _truth_support(options: list[int]) -> tuple[np.ndarray, float, float]:
    o = np.asarray(options, dtype=np.float64)
    return o, float(o.min()), float(o.max() - o.min())


def people_truth(cell: Cell, options: list[int], rows: RowTruth | None) -> list[np.ndarray] | None:
    """The true distributions of exactly the participants scored in `cell` (synthetic data, when the
    generator's per-participant truth covers all of them), else None."""
    if not rows or not cell.sample_ids:
        return None
    found = [rows.get((cell.key[0], sid)) for sid in cell.sample_ids]
    if any(p is None or len(p) != len(options) for p in found):
        return None
    return [np.asarray(p, dtype=np.float64) for p in found]


def w_to_truth(cell: Cell, options: list[int], probs: list[float], rows: RowTruth | None = None) -> float | None:
    """Synthetic data: the model's pooled distribution against the TRUE distribution, both on the
    scale's own 0-1 range. Unlike W against the sampled humans, no answer noise enters (a smaller
    sample raises every W against the humans, and the floor most). With the per-participant truth the
    reference is the true distributions of the very participants scored, so persona sampling does not
    enter either and the figure does not depend on how many were scored; without it, the cell's truth
    over all its participants (then even a perfect model stays above 0, more so with fewer scored)."""
    o, lo, span = _truth_support(options)
    if cell.probs is None or span <= 0:
        return None
    people = people_truth(cell, options, rows)
    reference = np.mean(people, axis=0) if people is not None else np.asarray(probs)
    values, weights = mixture(cell, lambda x: (x - lo) / span)
    return float(wasserstein_distance(values, (o - lo) / span, u_weights=weights, v_weights=reference))


def uniform_to_truth(cell: Cell, options: list[int], probs: list[float], rows: RowTruth | None = None) -> float | None:
    o, lo, span = _truth_support(options)
    if span <= 0:
        return None
    people = people_truth(cell, options, rows)
    reference = np.mean(people, axis=0) if people is not None else np.asarray(probs)
    x = (o - lo) / span
    return float(wasserstein_distance(x, x, v_weights=reference))


def persona_reading(cells: dict[CellKey, Cell], truth: Truth, rows: RowTruth) -> PersonaReading:
    """Does the model read the persona? Within each cell (one stimulus) participants differ only by
    persona; the correlation, pooled over cells, of each participant's predicted mean position on the
    scale with their TRUE mean position, both centred on their cell's mean. 0: persona ignored (one
    distribution per stimulus); 1: every participant ordered as the truth orders them. Beside it, the
    standard deviation of those centred positions, the model's and the truth's."""
    predicted, true = [], []
    for key, cell in cells.items():
        if key not in truth or cell.probs is None or len(cell.probs) < 2:
            continue
        options = truth[key][0]
        o, lo, span = _truth_support(options)
        people = people_truth(cell, options, rows)
        if people is None or span <= 0:
            continue
        x = (o - lo) / span
        p = np.asarray([np.dot(np.asarray(q), (np.asarray(opts, dtype=np.float64) - lo) / span)
                        for q, opts in zip(cell.probs, cell.options)])  # type: ignore[arg-type]
        t = np.asarray([np.dot(q, x) for q in people])
        predicted.extend(p - p.mean())
        true.extend(t - t.mean())
    if len(predicted) < 2:
        return PersonaReading(None, len(predicted))
    spread, true_spread = float(np.std(predicted)), float(np.std(true))
    if spread == 0 or true_spread == 0:  # one prediction per stimulus: nothing about the persona read
        return PersonaReading(0.0, len(predicted), spread, true_spread)
    return PersonaReading(float(np.corrcoef(predicted, true)[0, 1]), len(predicted), spread, true_spread)


def truth_distance(
    cells: dict[CellKey, Cell], truth: Truth | None, rows: RowTruth | None = None,
) -> TruthDistance | None:
    """Macro W to the true distributions of the model and of the uniform guess on the cells the model
    scored exactly, and the share of uniform's distance the model removes (1 = the truth itself);
    with per-participant truth (`rows`), against the scored participants' own truth, plus how well
    the model orders participants within a cell (persona reading)."""
    if not truth:
        return None
    known = {k: c for k, c in cells.items() if k in truth and c.scorable() and c.probs is not None}
    model = macro({k: w_to_truth(c, *truth[k], rows) for k, c in known.items()})
    uniform = macro({k: uniform_to_truth(c, *truth[k], rows) for k, c in known.items()})
    if model is None or not uniform:
        return None
    return TruthDistance(model, uniform, 1.0 - model / uniform, len(known), "scored participants" if rows else "cell",
                         persona_reading(known, truth, rows) if rows else None)
