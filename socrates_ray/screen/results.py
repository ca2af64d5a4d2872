"""What a screening (and a --from-split trust check) returns, as typed values: analysis.py and
trust.py compute them, report.py and the CLI read them, and screen.json / trust.json are their
`to_json` (the keys are these field names). Differences are in answer points (treatment - control);
intervals are for what a human study of the planned size would observe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ArmSummary:
    """An arm's predicted answers: the mean distribution over its participants, mean and sd."""

    n: int
    options: list[int]
    distribution: list[float]
    mean: float
    sd: float  # persona spread and answer uncertainty together


@dataclass
class Effect:
    """A predicted contrast: difference in mean answers and standardized effect, with intervals."""

    difference: float
    interval: list[float]
    d: float
    d_interval: list[float]
    n_treatment: int
    n_control: int


@dataclass
class SubgroupEffect:
    difference: float
    interval: list[float]
    d: float
    n_treatment: int
    n_control: int


@dataclass
class Contrast(Effect):
    """One planned contrast of one outcome: its predicted effect (the fields it has as an Effect), how
    that reads against the expected direction, and what a human study needs. (Fields only: screen.json
    holds a contrast's effect beside its reading, one flat record.)"""

    treatment: str
    control: str
    expected: str | None
    verdict: str
    humans_per_arm_needed: int | None  # None: more than 10 million
    planned_n: int
    power_at_planned_n: float
    subgroups: dict[str, dict[str, SubgroupEffect]] = field(default_factory=dict)  # field -> level -> effect


@dataclass
class OutcomeScreen:
    arms: dict[str, ArmSummary]
    contrasts: list[Contrast]


@dataclass
class ModelScreen:
    temperature: float
    model_error: float  # added to every interval (a share of the scale's range; 0 = sampling only)
    outcomes: dict[str, OutcomeScreen]


@dataclass
class ScreenResult:
    experiment: str
    design: str
    n_per_arm: int
    population: dict[str, Any]
    arms: dict[str, str]  # arm name -> its stimulus text
    control: str
    outcomes: list[str]
    analysis: dict[str, Any]
    planned_n: int
    model_path: str
    adapters: dict[str, str | None]
    models: dict[str, ModelScreen] = field(default_factory=dict)
    report: str | None = None


@dataclass
class ObservedEffect:
    """A human contrast: difference in mean answers with a Welch t interval."""

    difference: float
    interval: list[float]
    n_treatment: int
    n_control: int


@dataclass
class SplitContrast:
    """One condition against its study's control condition, predicted and observed (and true)."""

    study_id: str
    task_num: int
    condition: int
    control: int
    range: float  # the scale's high - low: differences are compared as shares of it
    predicted: float
    interval: list[float]  # the predicted difference's interval, sampling only
    observed: float
    observed_interval: list[float]
    n_treatment: int
    n_control: int
    true: float | None = None  # synthetic data: the true difference


@dataclass
class TruthAgreement:
    contrasts: int
    clear_true_contrasts: int  # a true effect of at least 5% of the scale
    sign_agreement: float | None
    correlation: float | None
    coverage: float | None


@dataclass
class Agreement:
    """Predicted against observed contrasts: sign agreement on clear human effects, correlation of
    the differences (as shares of each scale), and interval coverage."""

    contrasts: int
    model_error: float
    clear_human_contrasts: int
    sign_agreement: float | None
    correlation: float | None
    coverage: float | None
    vs_truth: TruthAgreement | None = None


@dataclass
class BeforeAfter:
    before: Agreement  # intervals from sampling alone
    after: Agreement  # widened by the fitted model error


@dataclass
class SubgroupAgreement:
    """Predicted against human subgroup deviations (a level's effect minus the overall effect, as a
    share of the scale) for one demographic field (subgroups.py)."""

    field: str
    levels: int  # (contrast, level) pairs with enough people in both arms
    correlation: float | None  # with the observed deviations
    spread_predicted: float | None  # sd of the deviations: near 0 for a model that reads no persona
    spread_observed: float | None
    correlation_true: float | None = None  # synthetic data: with the true deviations
    spread_true: float | None = None
    sign_agreement_true: float | None = None  # on true deviations of at least 5% of the scale


@dataclass
class ModelTrust:
    temperature: float
    adapter_path: str | None
    model_error: float
    validation: BeforeAfter
    eval: BeforeAfter
    contrasts: list[SplitContrast]
    subgroups: list[SubgroupAgreement] = field(default_factory=list)


@dataclass
class TrustResult:
    setting: str
    fitted_on: str
    level: float
    synthetic_truth: bool
    models: dict[str, ModelTrust] = field(default_factory=dict)
    report: str | None = None
