"""Fit the exact-mode temperature on the validation split (`simulate.temperature: auto`).

A finetuned simulator tends to be overconfident on prompts unlike its training prompts (a new
study, condition or task): each participant's option distribution is too sharp, and in the wrong
places. The validation split holds out units of the same kind as the test split does (splits.py),
so the temperature that minimizes the negative log-likelihood of the human answers there, under
each participant's option distribution (temperature scaling), is fitted without looking at the
test split. p_T is proportional to p ** (1 / T) (infer.shape_distribution with top_p = 1), so one
scoring pass at T = 1 gives the whole curve, and the fit is a 1-D bounded search.

resolve_temperature is what simulate and evaluate call: a number passes through; "auto" scores the
validation rows once (predictions kept under <out>/calibration/<model>/), fits T and returns it
with a record of the fit (calibration.json beside the predictions).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq

from socrates_ray.data.prepared import PreparedSplitError, load_split_rows
from socrates_ray.errors import SocratesError
from socrates_ray.eval.passes import SimulationPass
from socrates_ray.eval.replica import ReplicaPool
from socrates_ray.eval.results import TemperatureFit
from socrates_ray.eval.simulate import run_simulation
from socrates_ray.infer import MAX_DISTRIBUTION_TEMPERATURE, shape_distribution

T_BOUNDS = (0.2, MAX_DISTRIBUTION_TEMPERATURE)


class CalibrationError(SocratesError, ValueError):
    """temperature=auto cannot be fitted (no validation split, no scorable rows)."""


def answer_logprobs(options: list[list[int]], probs: list[list[float]], responses: list[int]) -> tuple[list[np.ndarray], np.ndarray, int]:
    """(per-row log p over options, index of the human answer, rows skipped because the answer is not an option)."""
    logps, index, skipped = [], [], 0
    for opts, p, r in zip(options, probs, responses):
        opts = list(opts)
        if r not in opts:
            skipped += 1
            continue
        logps.append(np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-12, None)))
        index.append(opts.index(r))
    return logps, np.asarray(index, dtype=np.int64), skipped


def nll(logps: list[np.ndarray], index: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the answers at this temperature, under the very shaping the
    scorer applies (top_p = 1)."""
    total = -sum(math.log(shape_distribution(lp, temperature)[i]) for lp, i in zip(logps, index))
    return total / max(len(logps), 1)


def fit_temperature(options: list[list[int]], probs: list[list[float]], responses: list[int]) -> TemperatureFit:
    """The NLL-minimizing temperature within T_BOUNDS, with the NLL before and after."""
    from scipy.optimize import minimize_scalar

    logps, index, skipped = answer_logprobs(options, probs, responses)
    if not logps:
        raise CalibrationError(f"temperature=auto: no validation row has its answer among the scored options ({skipped} skipped)")
    lo, hi = (math.log(b) for b in T_BOUNDS)
    best = minimize_scalar(lambda log_t: nll(logps, index, math.exp(log_t)), bounds=(lo, hi), method="bounded",
                           options={"xatol": 1e-3})
    temperature = float(math.exp(best.x))
    return TemperatureFit(temperature=round(temperature, 4), nll_at_1=round(nll(logps, index, 1.0), 5), nll=round(float(best.fun), 5),
                          rows=len(logps), rows_skipped=skipped, bounds=list(T_BOUNDS))


@dataclass(frozen=True)
class CalibrationSplit:
    """Where temperature=auto is fitted: the validation split of train.setting (the split the adapter's
    training held out), at most `rows` of it (a sample seeded by `seed`)."""

    prepared: str
    setting: str
    rows: int
    seed: int


def build_calibration_split(cfg: Any) -> CalibrationSplit:
    """The builder: data.prepared, train.setting, simulate.calibration_rows, run.seed."""
    return CalibrationSplit(cfg.data.prepared, cfg.train.setting, cfg.simulate.calibration_rows, cfg.run.seed)


def resolve_temperature(
    temperature: float | str, p: SimulationPass, split: CalibrationSplit, out_dir: Path, log: Callable[[str], None] = print,
    pool: ReplicaPool | None = None,
) -> tuple[float, TemperatureFit | None]:
    """(the exact-mode temperature to use, the fit or None when `temperature` is a number).

    "auto" scores the validation rows once with `p`'s model, adapter and backend at T = 1 (predictions
    kept in out_dir), fits T and writes calibration.json beside the predictions."""
    if temperature != "auto":
        return float(temperature), None
    if p.decoding.mode != "exact":
        return 1.0, TemperatureFit(temperature=None, note="sample mode uses simulate.sample_temperature; nothing fitted")
    try:
        rows = load_split_rows(split.prepared, split.setting, "val")
    except PreparedSplitError as exc:
        raise CalibrationError(
            f"simulate.temperature=auto fits the temperature on the validation split of train.setting={split.setting}, but {exc}. "
            "Re-run `socrates-ray prepare` with data.validation_fraction > 0, or set simulate.temperature to a number."
        ) from None
    if rows.num_rows > split.rows:
        pick = np.sort(np.random.default_rng(split.seed).choice(rows.num_rows, split.rows, replace=False))
        rows = rows.take(pick)
    log(f"calibrate: fitting the exact-mode temperature on {rows.num_rows:,} validation rows of {split.setting}")
    table = pq.read_table(run_simulation(rows, out_dir, p.at_temperature(1.0, top_p=1.0), pool, log))
    exact = [p is not None for p in table["probs"].to_pylist()] if "probs" in table.column_names else []
    if not any(exact):
        raise CalibrationError(f"temperature=auto: none of the {table.num_rows} validation rows got an exact distribution "
                               "(all open-ended?); set simulate.temperature to a number")
    t = table.filter(exact)
    fit = dataclasses.replace(
        fit_temperature(t["options"].to_pylist(), t["probs"].to_pylist(), t["response"].to_pylist()),
        split=f"{split.setting}/val", predictions=str(Path(out_dir) / "predictions.parquet"),
        rows_without_distribution=table.num_rows - t.num_rows,  # open-ended answers: sampled, not scored
    )
    (Path(out_dir) / "calibration.json").write_text(json.dumps(dataclasses.asdict(fit), indent=1))
    log(f"calibrate: temperature {fit.temperature:.2f} (validation NLL {fit.nll_at_1:.4f} at T=1 -> {fit.nll:.4f}, "
        f"{fit.rows:,} rows)")
    return float(fit.temperature), fit
