"""Effects, intervals and power from simulated participants (pure numpy/scipy: no Ray, no model).

Each simulated participant i is an answer distribution p_i over the outcome's options. An arm's
predicted distribution is the mean of its participants' p_i; its mean answer is the mean of their
expected answers mu_i; its spread counts both who the people are and how uncertain each answer is
(law of total variance: sd^2 = mean_i var_i + var_i mu_i).

A contrast's interval is for the effect a human study of the same size would observe: each
bootstrap draw resamples the personas (persona sampling) and draws one answer from each resampled
participant's distribution (the model's own per-participant uncertainty), then takes the
difference in mean answers. It narrows as n_per_arm grows. That interval trusts the model's
effect; `model_error` (the sd of the model's error in an effect, as a share of the answer scale's
range, fitted on held-out human studies by screen.trust) adds what the model gets wrong, in
quadrature: half-width = sqrt(bootstrap half-width^2 + (z * model_error * range)^2). An additive
term, not a factor on the bootstrap's width: a factor that covers small studies (sampling noise
dominates) under-covers large ones (the model's bias dominates).

Power: humans per arm needed to detect the predicted standardized effect with a two-sided t test
(two-sample for between-subject designs, paired for within-subject ones), from the noncentral t
distribution, as statsmodels' TTestIndPower / TTestPower compute it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from socrates_ray.screen.results import ArmSummary, Effect, ObservedEffect, SplitContrast


@dataclass(frozen=True)
class Arm:
    """One arm's participants for one outcome: option values (K,) and distributions (n, K)."""

    options: np.ndarray
    probs: np.ndarray

    @classmethod
    def of(cls, options: list[int], probs: list[list[float]]) -> "Arm":
        p = np.asarray(probs, dtype=float).reshape(len(probs), len(options))
        return cls(np.asarray(options, dtype=float), p / p.sum(axis=1, keepdims=True))

    @property
    def n(self) -> int:
        return self.probs.shape[0]

    def means(self) -> np.ndarray:
        return self.probs @ self.options

    def variances(self) -> np.ndarray:
        return self.probs @ self.options**2 - self.means() ** 2

    def take(self, rows: np.ndarray) -> "Arm":
        return Arm(self.options, self.probs[rows])


def summarize_arm(arm: Arm) -> ArmSummary:
    """Predicted distribution, mean answer and sd (persona spread + answer uncertainty) of an arm."""
    mu = arm.means()
    return ArmSummary(arm.n, arm.options.astype(int).tolist(), arm.probs.mean(axis=0).round(4).tolist(), float(mu.mean()),
                      float(math.sqrt(max(arm.variances().mean() + mu.var(), 0.0))))


def effect_sd(treatment: Arm, control: Arm, paired: bool) -> float:
    """The sd a standardized effect divides by: the pooled sd of the answers (between) or the sd of
    the per-person differences (within), from the predicted distributions."""
    if paired:
        d_mu = treatment.means() - control.means()
        return math.sqrt(max(d_mu.var() + (treatment.variances() + control.variances()).mean(), 0.0))
    st, sc = summarize_arm(treatment).sd, summarize_arm(control).sd
    return math.sqrt((st**2 + sc**2) / 2)


def _draw_answers(arm: Arm, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One answer per (bootstrap draw, resampled participant): rows (B, n) -> answers (B, n)."""
    cdf = np.cumsum(arm.probs, axis=1)
    u = rng.random(rows.shape)
    index = (u[..., None] > cdf[rows]).sum(axis=-1)
    return arm.options[np.minimum(index, len(arm.options) - 1)]


def bootstrap_effects(treatment: Arm, control: Arm, paired: bool, draws: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(differences in mean answers, standardized effects) of `draws` simulated studies of the same size."""
    rows_t = rng.integers(0, treatment.n, size=(draws, treatment.n))
    rows_c = rows_t if paired else rng.integers(0, control.n, size=(draws, control.n))
    yt, yc = _draw_answers(treatment, rows_t, rng), _draw_answers(control, rows_c, rng)
    diff = yt.mean(axis=1) - yc.mean(axis=1)
    if paired:
        sd = (yt - yc).std(axis=1, ddof=1)
    else:
        sd = np.sqrt((yt.var(axis=1, ddof=1) + yc.var(axis=1, ddof=1)) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sd > 0, diff / sd, 0.0)
    return diff, d


def widened_interval(estimate: float, lo: float, hi: float, extra: float) -> list[float]:
    """The interval with `extra` added in quadrature to its half-width on each side of the estimate."""
    return [float(estimate - math.hypot(estimate - lo, extra)), float(estimate + math.hypot(hi - estimate, extra))]


def contrast_effect(treatment: Arm, control: Arm, paired: bool, level: float, draws: int, rng: np.random.Generator,
                    model_error: float = 0.0) -> Effect:
    """Difference in mean answers (treatment - control) and standardized effect, each with the
    interval (at `level`) a human study with these arms' sizes would see, widened by the model's
    error (`model_error`, a share of the scale's range)."""
    if paired and treatment.n != control.n:
        raise ValueError(f"a paired contrast needs the same participants in both arms ({treatment.n} vs {control.n})")
    diff = float(treatment.means().mean() - control.means().mean())
    sd = effect_sd(treatment, control, paired)
    d = diff / sd if sd > 0 else 0.0
    boot_diff, boot_d = bootstrap_effects(treatment, control, paired, draws, rng)
    q = [(1 - level) / 2, (1 + level) / 2]
    lo, hi = np.quantile(boot_diff, q)
    dlo, dhi = np.quantile(boot_d, q)
    extra = stats.norm.ppf((1 + level) / 2) * model_error * float(treatment.options.max() - treatment.options.min())
    return Effect(diff, widened_interval(diff, lo, hi, extra), d, widened_interval(d, dlo, dhi, extra / sd if sd > 0 else 0.0),
                  treatment.n, control.n)


def power_at(d: float, n: float, alpha: float, paired: bool) -> float:
    """Power of a two-sided t test with n humans per arm (pairs when paired) to detect effect d: what
    statsmodels' TTestIndPower / TTestPower give (tests/unit/test_screen.py checks both functions
    against them at many points). Kept on scipy because statsmodels returns NaN where the noncentral
    t's tail underflows (d 0.2 with 4,000 per arm at alpha 0.01), where this falls back to the normal
    approximation, and so that screening needs no statsmodels (65 MB with its dependencies) at run time."""
    if n < 2:
        return float("nan")
    df, ncp = (n - 1, d * math.sqrt(n)) if paired else (2 * n - 2, d * math.sqrt(n / 2))
    crit = stats.t.ppf(1 - alpha / 2, df)
    power = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    # scipy's noncentral t is NaN for extreme noncentrality; the power there is 1 to many digits
    return power if math.isfinite(power) else float(stats.norm.sf(crit - abs(ncp)))


def n_needed(d: float, alpha: float, power: float, paired: bool, most: int = 10_000_000) -> int | None:
    """Humans per arm (pairs when paired) for `power` to detect d; None when more than `most` are needed."""
    if not math.isfinite(d) or abs(d) < 1e-9:
        return None
    # the normal approximation brackets the answer (the noncentral t is NaN far past it)
    z = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) / abs(d)
    approx = z**2 * (1 if paired else 2)
    if approx > most:
        return None
    if power_at(d, 2, alpha, paired) >= power:
        return 2
    n = optimize.brentq(lambda x: power_at(d, x, alpha, paired) - power, 2.0, 2 * approx + 10)
    return int(math.ceil(n - 1e-9))


def verdict(interval: list[float], expected: str | None) -> str:
    """How the predicted interval reads against the researcher's expected direction."""
    if interval[0] > 0 or interval[1] < 0:
        sign = "positive" if interval[0] > 0 else "negative"
        if expected is None:
            return sign
        return f"{sign}: as expected" if sign == expected else f"{sign}: AGAINST the expected {expected}"
    return "uncertain (the interval includes 0)"


def observed_contrast(treatment: list[int], control: list[int], level: float) -> ObservedEffect | None:
    """A human contrast: difference in mean answers with scipy's Welch t interval
    (`ttest_ind(equal_var=False).confidence_interval`); None when an arm has < 2 answers."""
    t, c = np.asarray(treatment, dtype=float), np.asarray(control, dtype=float)
    if len(t) < 2 or len(c) < 2:
        return None
    diff = float(t.mean() - c.mean())
    if t.var() == 0 and c.var() == 0:  # no spread in either arm: the difference is exact (scipy gives NaN)
        return ObservedEffect(diff, [diff, diff], len(t), len(c))
    ci = stats.ttest_ind(t, c, equal_var=False).confidence_interval(confidence_level=level)
    return ObservedEffect(diff, [float(ci.low), float(ci.high)], len(t), len(c))


def fit_model_error(contrasts: list[SplitContrast], level: float) -> float:
    """The sd of the model's error in an effect, as a share of the scale's range, from contrasts with
    an observed human effect (method of moments): observed - predicted has the sampling variance the
    bootstrap interval measures plus the model's own; what the squared errors hold beyond the first
    is the second. Each contrast: predicted, interval (at `level`, no model error), observed, range."""
    if not contrasts:
        return 0.0
    z = stats.norm.ppf((1 + level) / 2)
    excess = [((c.observed - c.predicted) ** 2 - ((c.interval[1] - c.interval[0]) / (2 * z)) ** 2) / c.range ** 2
              for c in contrasts]
    return float(math.sqrt(max(float(np.mean(excess)), 0.0)))
