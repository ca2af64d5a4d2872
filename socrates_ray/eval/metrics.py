"""The paper's evaluation metrics over prediction tables (pure: numpy + scipy, no Ray, no model).

A prediction table has one row per human answer: study_id, condition_num, task_num, sample_id,
participant, response (the human), prediction (one model answer, null when unparsable) and, in
exact mode, options + probs (the participant's full predicted distribution); demographic for the
subgroup metric. Definitions follow the paper (Kolluri et al., EMNLP 2025, section 5):

- per (study, condition, task) cell, rescale with the min/max of *all* the cell's human answers in
  the split (`ranges`, whatever subset is scored: a handful of answers spans less of the scale than
  the cell's humans do), clip model answers to [0, 1]; skip cells with < 2 answers scored or max == min;
- Wasserstein per cell (scipy.stats.wasserstein_distance), then macro average: cells -> study ->
  overall; individual accuracy 1 - mean(|m - h| / (max - min)), model answers clipped to the range
  as for W (so it stays in [0, 1]), averaged the same way;
- exact mode: the Wasserstein between the humans and the mixture of every participant's full
  distribution, and the expected accuracy under it (cells without distributions, i.e. open-ended
  amounts, fall back to the sampled answers); the sampled variant uses `prediction` everywhere;
- uniform guess: every option of the cell's scale equally likely (open-ended cells: uniform on
  the human range); empirical floor: humans vs a bootstrap resample of themselves; true floor
  (synthetic data): humans vs the true distribution of the cell.

Subgroup gap error (socrates_ray's documented stand-in for the paper's undefined "demographic
parity difference"): in each cell and for each demographic field, the gap is the spread (max -
min) of the mean rescaled answer across that field's groups (groups with >= 3 participants, at
least 2 groups). The error is |model gap - human gap|, averaged over fields and cells, then macro
averaged like the Wasserstein. Lower is better; 0 means the model reproduces how much subgroups
differ, not just the overall distribution.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from scipy.stats import wasserstein_distance

from socrates_ray.eval.results import (
    Baselines, CellSpread, Comparison, FinetunedVsBase, FloorBaseline, Gain, ModelScores, TrueFloor, UniformBaseline,
)

CellKey = tuple[str, int, int]
MIN_GROUP = 3


@dataclass
class Cell:
    key: CellKey
    human: np.ndarray
    predicted: list[int | None]
    options: list[list[int]] | None = None
    probs: list[list[float]] | None = None
    groups: dict[str, list[Any]] = field(default_factory=dict)
    scale: tuple[int | None, int | None] = (None, None)
    sample_ids: list[int] = field(default_factory=list)
    range: tuple[float, float] | None = None  # min/max of all the cell's human answers; None: of those scored

    @property
    def lo(self) -> float:
        return float(self.range[0]) if self.range else float(self.human.min())

    @property
    def span(self) -> float:
        return float(self.range[1] - self.range[0]) if self.range else float(self.human.max() - self.human.min())

    def scorable(self) -> bool:
        return len(self.human) >= 2 and self.span > 0

    def rescale(self, values: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(values, dtype=np.float64) - self.lo) / self.span, 0.0, 1.0)


def group_cells(rows: Iterable[dict[str, Any]], parity_fields: list[str] = (),
                ranges: dict[CellKey, tuple[float, float]] | None = None) -> dict[CellKey, Cell]:
    """Prediction rows -> cells, keeping row order within a cell. `ranges`: each cell's human min/max
    over the whole split (data.prepared.cell_ranges), the paper's rescaling whatever subset is scored."""
    raw: dict[CellKey, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["study_id"], int(r["condition_num"]), int(r["task_num"]))
        c = raw[key]
        c["human"].append(r["response"])
        c["predicted"].append(r.get("prediction"))
        if r.get("probs") is not None:
            c["options"].append(list(r["options"]))
            c["probs"].append(list(r["probs"]))
        demo = r.get("demographic") or {}
        for f in parity_fields:
            c[f"g:{f}"].append(demo.get(f) if isinstance(demo, dict) else None)
        c["scale"] = [(r.get("scale_low"), r.get("scale_high"))]
        c["sample_ids"].append(r.get("sample_id"))
    cells = {}
    for key, c in raw.items():
        exact = len(c["probs"]) == len(c["human"]) and len(c["human"]) > 0
        cells[key] = Cell(
            key=key, human=np.asarray(c["human"], dtype=np.float64), predicted=c["predicted"],
            options=c["options"] if exact else None, probs=c["probs"] if exact else None,
            groups={f: c[f"g:{f}"] for f in parity_fields}, scale=c["scale"][0], sample_ids=c["sample_ids"],
            range=_widest(ranges.get(key), c["human"]) if ranges is not None else None,
        )
    return cells


def _widest(recorded: tuple[float, float] | None, human: list[float]) -> tuple[float, float]:
    """The recorded range, widened to the answers scored (rows from outside the split it was read from)."""
    lo, hi = (min(human), max(human)) if recorded is None else recorded
    return float(min(lo, min(human))), float(max(hi, max(human)))


# --- per-cell metrics ----------------------------------------------------------------------------
def w_sampled(cell: Cell) -> tuple[float | None, int]:
    """(Wasserstein of the sampled answers, unparsable count); None when no answer parsed."""
    m = np.asarray([p for p in cell.predicted if p is not None], dtype=np.float64)
    bad = len(cell.predicted) - len(m)
    if len(m) == 0:
        return None, bad
    return float(wasserstein_distance(cell.rescale(cell.human), cell.rescale(m))), bad


def mixture(cell: Cell, rescale: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Every participant's distribution pooled: (option values rescaled by `rescale`, default the
    cell's human range; weights summing to 1)."""
    rescale = rescale or cell.rescale
    values = np.concatenate([rescale(np.asarray(o, dtype=np.float64)) for o in cell.options])  # type: ignore[union-attr]
    weights = np.concatenate([np.asarray(p, dtype=np.float64) for p in cell.probs]) / len(cell.probs)  # type: ignore[arg-type]
    return values, weights


def w_exact(cell: Cell) -> float:
    values, weights = mixture(cell)
    return float(wasserstein_distance(cell.rescale(cell.human), values, v_weights=weights))


def accuracy_sampled(cell: Cell) -> float | None:
    """1 - the mean distance between each answer and the model's, both rescaled (model answers clipped)."""
    pairs = [(h, m) for h, m in zip(cell.human, cell.predicted) if m is not None]
    if not pairs:
        return None
    h, m = (np.asarray(v, dtype=np.float64) for v in zip(*pairs))
    return 1.0 - float(np.mean(np.abs(cell.rescale(m) - cell.rescale(h))))


def accuracy_exact(cell: Cell) -> float:
    """Expected individual accuracy under each participant's distribution."""
    hs = cell.rescale(cell.human)
    errors = [float(np.dot(np.asarray(p), np.abs(cell.rescale(np.asarray(o, dtype=np.float64)) - h)))
              for h, o, p in zip(hs, cell.options, cell.probs)]  # type: ignore[arg-type]
    return 1.0 - float(np.mean(errors))


def uniform_support(cell: Cell) -> np.ndarray:
    """The uniform guess's support: the scale's options, or 101 points over the human range."""
    low, high = cell.scale
    if low is not None and high is not None and high > low and high - low <= 1000:
        return np.arange(low, high + 1, dtype=np.float64)
    return np.linspace(cell.lo, cell.lo + cell.span, 101)


def w_uniform(cell: Cell) -> float:
    return float(wasserstein_distance(cell.rescale(cell.human), cell.rescale(uniform_support(cell))))


def accuracy_uniform(cell: Cell) -> float:
    support = cell.rescale(uniform_support(cell))
    return 1.0 - float(np.mean(np.abs(cell.rescale(cell.human)[:, None] - support[None, :])))


def w_floor(cell: Cell, rng: np.random.Generator, draws: int) -> float:
    """Humans vs a same-size bootstrap resample of themselves: what sampling noise alone costs."""
    hs = cell.rescale(cell.human)
    return float(np.mean([wasserstein_distance(hs, rng.choice(hs, size=len(hs), replace=True)) for _ in range(draws)]))


def w_true(cell: Cell, options: list[int], probs: list[float]) -> float:
    return float(wasserstein_distance(cell.rescale(cell.human), cell.rescale(np.asarray(options)), v_weights=np.asarray(probs)))


def expected_rescaled(cell: Cell, exact: bool) -> list[float | None]:
    """Each participant's predicted answer on the cell's 0-1 range: the expectation under their
    distribution (exact), or their sampled answer (None when unparsable)."""
    if exact:
        return [float(np.dot(p, cell.rescale(np.asarray(o)))) for o, p in zip(cell.options, cell.probs)]  # type: ignore[arg-type]
    return [None if m is None else float(cell.rescale(np.asarray([m]))[0]) for m in cell.predicted]


def field_gaps(cell: Cell, exact: bool) -> dict[str, tuple[float, float]]:
    """Per demographic field with >= 2 groups of >= MIN_GROUP people: (human gap, model gap), each the
    spread (max - min) of the groups' mean rescaled answers."""
    hs = cell.rescale(cell.human)
    ms = expected_rescaled(cell, exact)
    gaps = {}
    for name, values in cell.groups.items():
        members: dict[Any, list[int]] = defaultdict(list)
        for i, v in enumerate(values):
            if v is not None and ms[i] is not None:
                members[v].append(i)
        groups = [ix for ix in members.values() if len(ix) >= MIN_GROUP]
        if len(groups) < 2:
            continue
        human = [float(np.mean(hs[ix])) for ix in groups]
        model = [float(np.mean([ms[i] for i in ix])) for ix in groups]  # type: ignore[misc]
        gaps[name] = (max(human) - min(human), max(model) - min(model))
    return gaps


def subgroup_gap_error(cell: Cell, exact: bool) -> float | None:
    """Mean over fields of |model gap - human gap| (see the module docstring); None if no field has 2 groups."""
    errors = [abs(model - human) for human, model in field_gaps(cell, exact).values()]
    return float(np.mean(errors)) if errors else None


def cell_spread(cells: dict[CellKey, Cell]) -> CellSpread:
    """How much predictions differ across cells, against how much the humans' answers do.

    Per cell, the mean answer as a position on its scale (0 = lowest option, 1 = highest: the
    expected position under each participant's distribution, averaged); then the standard
    deviation of those means across the cells of each scale (cells with the same option list),
    averaged over scales with >= 3 cells. A model that ignores its prompt predicts one
    distribution per scale: spread 0, whatever the humans' spread."""
    by_scale: dict[tuple[int, ...], list[tuple[float, float]]] = defaultdict(list)
    for cell in cells.values():
        if cell.probs is None or not cell.scorable():
            continue
        options = np.asarray(cell.options[0], dtype=np.float64)  # type: ignore[index]
        if options.max() == options.min():
            continue
        position = (options - options.min()) / (options.max() - options.min())
        predicted = float(np.mean([np.dot(p, position) for p in cell.probs]))  # type: ignore[union-attr]
        human = float(np.mean((cell.human - options.min()) / (options.max() - options.min())))
        by_scale[tuple(cell.options[0])].append((predicted, human))  # type: ignore[index]
    groups = [np.asarray(v) for v in by_scale.values() if len(v) >= 3]
    if not groups:
        return CellSpread(None, None, 0)
    return CellSpread(float(np.mean([g[:, 0].std() for g in groups])), float(np.mean([g[:, 1].std() for g in groups])), len(groups))


# --- aggregation -----------------------------------------------------------------------------------
def per_study(per_cell: dict[CellKey, float | None]) -> dict[str, float]:
    """Mean over each study's cells (cells with None are left out)."""
    studies: dict[str, list[float]] = defaultdict(list)
    for (study, _, _), value in per_cell.items():
        if value is not None:
            studies[study].append(value)
    return {s: float(np.mean(v)) for s, v in sorted(studies.items())}


def macro(per_cell: dict[CellKey, float | None]) -> float | None:
    """Cells -> study means -> mean over studies."""
    studies = per_study(per_cell)
    return float(np.mean(list(studies.values()))) if studies else None


def model_metrics(cells: dict[CellKey, Cell]) -> ModelScores:
    """Every metric of one model's predictions, on its scorable cells.

    `wasserstein`/`accuracy` use each cell's full predicted distributions where the cell has them
    (bounded scales in exact mode) and the sampled answers elsewhere (open-ended amounts);
    `wasserstein_sampled`/`accuracy_sampled` use one answer per participant everywhere."""
    scorable = {k: c for k, c in cells.items() if c.scorable()}
    exact_cells = {k for k, c in scorable.items() if c.probs is not None}
    sampled = {k: w_sampled(c) for k, c in scorable.items()}
    w_s = {k: v[0] for k, v in sampled.items()}
    w = {k: (w_exact(c) if k in exact_cells else w_s[k]) for k, c in scorable.items()}
    acc = {k: (accuracy_exact(c) if k in exact_cells else accuracy_sampled(c)) for k, c in scorable.items()}
    return ModelScores(
        cells=len(scorable),
        cells_exact=len(exact_cells),
        cells_skipped=len(cells) - len(scorable),
        rows=int(sum(len(c.human) for c in scorable.values())),
        unparsable=int(sum(v[1] for v in sampled.values())),
        mode="exact" if exact_cells else "sample",
        wasserstein=macro(w),
        accuracy=macro(acc),
        wasserstein_sampled=macro(w_s),
        accuracy_sampled=macro({k: accuracy_sampled(c) for k, c in scorable.items()}),
        subgroup_gap_error=macro({k: subgroup_gap_error(c, k in exact_cells) for k, c in scorable.items()}),
        cell_spread=cell_spread(scorable),
        per_cell={"|".join(map(str, k)): v for k, v in w.items()},
        per_study=per_study(w),
    )


def baseline_metrics(
    cells: dict[CellKey, Cell], truth: dict[CellKey, tuple[list[int], list[float]]] | None, draws: int, seed: int = 0
) -> Baselines:
    """Uniform guess, empirical floor and (synthetic data) the true-distribution floor."""
    rng = np.random.default_rng(seed)
    scorable = {k: c for k, c in cells.items() if c.scorable()}
    uniform = UniformBaseline(
        wasserstein=macro({k: w_uniform(c) for k, c in scorable.items()}),
        accuracy=macro({k: accuracy_uniform(c) for k, c in scorable.items()}),
        per_study=per_study({k: w_uniform(c) for k, c in scorable.items()}),
    )
    floor = FloorBaseline(macro({k: w_floor(c, rng, draws) for k, c in scorable.items()}), draws,
                          int(np.median([len(c.human) for c in scorable.values()])) if scorable else 0)
    true_floor = None
    if truth:
        known = {k: w_true(c, *truth[k]) for k, c in scorable.items() if k in truth}
        true_floor = TrueFloor(macro(known), len(known))
    return Baselines(uniform, floor, true_floor)


def relative(model: float | None, reference: float | None) -> float | None:
    """(reference - model) / reference: the share by which the model lowers the reference's W."""
    if model is None or not reference:
        return None
    return (reference - model) / reference


def gap_closed(model: float | None, uniform: float | None, floor: float | None) -> float | None:
    """(W_uniform - W_model) / (W_uniform - W_floor): the paper's scale-free comparison."""
    if model is None or uniform is None or floor is None or uniform == floor:
        return None
    return (uniform - model) / (uniform - floor)


def compare(models: dict[str, ModelScores], baselines: Baselines) -> Comparison:
    """Relative improvements (each field names its denominator), and the uniform-to-floor gap closed
    (against the true-distribution floor where the data has one)."""
    uniform = baselines.uniform.wasserstein
    floor = (baselines.true_floor or baselines.floor).wasserstein
    gains = {name: Gain(relative(m.wasserstein, uniform), gap_closed(m.wasserstein, uniform, floor)) for name, m in models.items()}
    versus = None
    if "base" in models and "finetuned" in models:
        b, f = models["base"].wasserstein, models["finetuned"].wasserstein
        versus = FinetunedVsBase(relative(f, b), None if not f or b is None else (b - f) / f,
                                 relative(models["finetuned"].subgroup_gap_error, models["base"].subgroup_gap_error))
    return Comparison("true_floor" if baselines.true_floor else "floor", gains, versus)
