"""What an evaluation returns, as typed values: metrics.py computes them, job.py assembles them,
report.py and the demo read them, and metrics.json is `to_json` of the whole EvaluationResult (its
keys are these field names). Every W is the paper's Wasserstein (lower is better), macro-averaged
cells -> studies -> overall.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CellSpread:
    """How much predicted cell means differ across the cells of each scale, against the humans'."""

    predicted: float | None
    human: float | None
    scales: int


@dataclass
class PersonaReading:
    """Synthetic data: the within-cell correlation of predicted with true per-participant means, and
    how far participants of one cell spread apart in each (the standard deviation of the centred mean
    positions, 0-1 scale): a model can order participants rightly while moving them too little."""

    within_cell_corr: float | None
    rows: int
    spread: float | None = None
    true_spread: float | None = None


@dataclass
class TruthDistance:
    """Synthetic data: W to the true distributions of the model and of the uniform guess, and the
    share of uniform's distance the model removes (1 = the truth itself)."""

    wasserstein: float
    uniform: float
    removed: float
    cells: int
    reference: str  # "scored participants" (their own truth) or "cell" (the cell's truth)
    persona: PersonaReading | None = None


@dataclass
class ModelScores:
    """Every metric of one model's predictions on one setting's scorable cells."""

    cells: int
    cells_exact: int
    cells_skipped: int
    rows: int
    unparsable: int
    mode: str  # "exact" when any cell has full distributions, else "sample"
    wasserstein: float | None  # full distributions where a cell has them, sampled answers elsewhere
    accuracy: float | None
    wasserstein_sampled: float | None  # one answer per participant everywhere
    accuracy_sampled: float | None
    subgroup_gap_error: float | None
    cell_spread: CellSpread
    per_cell: dict[str, float | None]  # "study|condition|task" -> W
    per_study: dict[str, float]
    vs_truth: TruthDistance | None = None

    @property
    def persona_reading(self) -> float | None:
        """The persona reading against the truth, where it was measured."""
        persona = self.vs_truth.persona if self.vs_truth else None
        return persona.within_cell_corr if persona else None


@dataclass
class UniformBaseline:
    wasserstein: float | None
    accuracy: float | None
    per_study: dict[str, float]


@dataclass
class FloorBaseline:
    """Humans against a bootstrap resample of themselves: what sampling noise alone costs."""

    wasserstein: float | None
    draws: int
    answers_per_cell: int  # the median cell's: the floor is ~0.15 at 5 answers a cell, ~0.03 at 100


@dataclass
class TrueFloor:
    """Synthetic data: humans against their cell's true distribution."""

    wasserstein: float | None
    cells: int


@dataclass
class Baselines:
    uniform: UniformBaseline
    floor: FloorBaseline
    true_floor: TrueFloor | None = None


@dataclass
class Gain:
    """One model against the uniform guess: (W_uniform - W) / W_uniform, and the share of the
    uniform-to-floor gap it closes, (W_uniform - W) / (W_uniform - W_floor)."""

    improvement_over_uniform: float | None
    gap_closed: float | None


@dataclass
class FinetunedVsBase:
    improvement: float | None  # (W_base - W_finetuned) / W_base
    improvement_over_finetuned: float | None  # (W_base - W_finetuned) / W_finetuned: the other denominator
    subgroup_gap_error_change: float | None  # relative to the base model's


@dataclass
class Comparison:
    floor_used_for_gap: str  # "true_floor" (synthetic data) or "floor" (the resampling floor)
    models: dict[str, Gain]
    finetuned_vs_base: FinetunedVsBase | None = None

    def gap_closed(self, model: str) -> float | None:
        gain = self.models.get(model)
        return gain.gap_closed if gain else None


@dataclass
class FieldParity:
    """One demographic field's subgroup gaps (spread of the groups' mean rescaled answers), averaged
    over the cells where it has two groups of enough people."""

    cells: int
    human_gap: float | None
    gaps: dict[str, float | None]  # per model
    errors: dict[str, float | None]  # per model: mean |model gap - human gap|


@dataclass
class ParityCheck:
    """Demographic parity on cells with enough people per group (parity.py): per field and overall."""

    split: str
    cells: int
    rows: int
    min_group: int
    fields: dict[str, FieldParity]
    errors: dict[str, float | None]  # per model: the subgroup gap error, cells -> studies
    change: float | None  # (finetuned - base) / base: negative = finetuning reproduces subgroup differences better
    note: str | None = None  # fields no cell could measure


@dataclass
class SettingResult:
    """One split setting: every model's scores, the baselines, and how the models compare."""

    rows: int
    models: dict[str, ModelScores]
    baselines: Baselines
    comparison: Comparison
    parity: ParityCheck | None = None


@dataclass
class TemperatureFit:
    """The exact-mode temperature fitted on the validation split (calibrate.py); temperature None
    with a note where nothing was fitted (sample mode)."""

    temperature: float | None
    nll_at_1: float | None = None
    nll: float | None = None
    rows: int = 0
    rows_skipped: int = 0
    bounds: list[float] = field(default_factory=list)
    split: str | None = None
    predictions: str | None = None
    rows_without_distribution: int = 0
    note: str | None = None


@dataclass
class AnchorInfo:
    """The regression anchor as fitted: where, and what the validation split chose."""

    trained_on: str
    alpha: float
    spread: float
    val_mse: float
    val_nll: float
    features: int


@dataclass
class FitScores:
    wasserstein: float | None
    cell_spread: CellSpread | None = None
    vs_truth: TruthDistance | None = None


@dataclass
class FitCheck:
    """Can the models fit what they saw? Scores on the largest cells of the training split."""

    split: str
    rows: int
    cells: int
    models: dict[str, FitScores]  # base, finetuned, anchor
    uniform: float | None
    true_floor: float | None = None  # synthetic data: what the true distributions score against so few answers


@dataclass
class EvaluationResult:
    model: str
    adapter: str | None
    mode: str
    settings: dict[str, SettingResult]
    temperature: dict[str, float]  # per model: what its exact distributions used
    calibration: dict[str, TemperatureFit] = field(default_factory=dict)
    anchor: AnchorInfo | None = None
    fit_check: FitCheck | None = None
    report: str | None = None  # report.md, once written


@dataclass
class CurvePoint:
    """One run of the learning curve: trained on `fraction` of each study's participants."""

    fraction: float
    participants: int  # trained on, over all studies
    rows: int  # training rows
    adapter: str
    temperature: float
    wasserstein: float | None
    accuracy: float | None
    anchor_wasserstein: float | None = None  # the regression anchor fitted on the same rows
    anchor_accuracy: float | None = None


@dataclass
class CurveResult:
    """The learning curve (`socrates-ray curve`): every run scored on the same held-out participants."""

    setting: str
    eval_rows: int
    eval_participants: int
    cells: int
    base: FitScores
    base_accuracy: float | None
    uniform_wasserstein: float | None
    uniform_accuracy: float | None
    points: list[CurvePoint] = field(default_factory=list)
    seconds: float = 0.0
    report: str | None = None


@dataclass
class PilotPoint:
    """Pilots of k participants per study, scored on each study's participants in no pilot."""

    k: int  # pilot participants per study (0: the general adapter, no pilot)
    rows: int  # pilot rows trained on, over all studies
    wasserstein: float | None
    accuracy: float | None
    anchor_wasserstein: float | None = None  # the regression anchor fitted on the training split + these pilots
    anchor_accuracy: float | None = None
    per_study: dict[str, float] = field(default_factory=dict)  # W per study
    adapters: dict[str, str] = field(default_factory=dict)  # study -> its pilot adapter (k > 0)


@dataclass
class PilotReplay:
    """`socrates-ray pilot --from-split`: held-out studies replayed as pilots of growing size."""

    setting: str
    studies: list[str]
    eval_rows: int
    eval_participants: int
    cells: int
    temperature: float
    uniform_wasserstein: float | None
    uniform_accuracy: float | None
    points: list[PilotPoint] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # study -> why it was not replayed
    seconds: float = 0.0
    report: str | None = None


@dataclass
class PilotCell:
    """One (condition, task) of a pilot's design: the pilot's humans and both models' predictions,
    each the mean over the pilot's personas."""

    condition_num: int
    task_num: int
    stimulus: str
    options: list[int]
    humans: int
    human_mean: float
    general_mean: float
    pilot_mean: float
    human_probs: list[float]
    general_probs: list[float]
    pilot_probs: list[float]


@dataclass
class PilotResult:
    """`socrates-ray pilot --data`: a per-study adapter, where it is served, and what it predicts."""

    name: str
    study_id: str
    participants: int
    rows: int
    quarantined: int
    adapter: str  # the adapter folder the Serve app finds by `name`
    general_adapter: str
    temperature: float
    cells: list[PilotCell] = field(default_factory=list)
    expected_gain: str | None = None  # read off the replay of held-out studies, where one was run
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    report: str | None = None


def to_json(result: Any) -> str:
    """A typed result (nested dataclasses) as indented JSON with its field names as keys."""
    return json.dumps(dataclasses.asdict(result), indent=1, default=float)

