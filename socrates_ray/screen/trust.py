"""How far to trust a screening: replay held-out human studies as screenings and compare.

`socrates-ray screen --from-split <setting>` treats every study of a prepared split as the
screening a researcher would have run before it: its conditions are the arms (the lowest
condition number present is the control), its tasks the outcomes, its own participants the
personas. Each model predicts every row; the predicted contrast (with the interval a study of that
size would see, analysis.contrast_effect) is compared with the human one:

- sign agreement on contrasts whose human interval (Welch t) excludes 0;
- correlation of predicted and observed differences, each divided by its scale's range (a 0-100
  scale's points are not a 1-5 scale's);
- coverage: the share of human differences inside the predicted interval.

The model's error in an effect (analysis.fit_model_error, an sd as a share of the scale's range,
added in quadrature to every interval) is fitted on the validation split of train.setting
(held-out units of the training data, never the eval split), then applied to the eval split's
contrasts: the coverage it reaches there is the honest figure. On synthetic data
the same comparison runs against the true effects (ground_truth.parquet). Between-subject
contrasts throughout (a within-subject study's pairs are not used), which only widens intervals.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pyarrow as pa
from scipy import stats

from socrates_ray.data.prepared import load_split_rows
from socrates_ray.eval.truth import Truth, load_row_truth, load_truth
from socrates_ray.screen.analysis import Arm, contrast_effect, fit_model_error, observed_contrast, widened_interval
from socrates_ray.screen.report import subgroup_table, trust_table, write_trust_report
from socrates_ray.screen.results import Agreement, BeforeAfter, ModelTrust, SplitContrast, TrustResult, TruthAgreement
from socrates_ray.screen.simulator import SCREEN_CALIBRATION, ScreenSetup, simulator
from socrates_ray.screen.subgroups import subgroup_agreement, subgroup_deviations

SUBGROUP_FIELDS = ("party_id", "ideology")  # the fields whose effects the replayed studies are compared on
SUBGROUP_MIN_N = 5  # people of a level in each arm


def split_contrasts(table: pa.Table, level: float, draws: int, seed: int, truth: Truth | None = None) -> list[SplitContrast]:
    """Every (study, task, condition vs the study's control condition) of a predictions table that
    has human answers and exact distributions in both arms, with the predicted, observed and (if
    known) true difference in mean answers."""
    rng = np.random.default_rng(seed)
    cols = {c: table[c].to_pylist() for c in ("study_id", "task_num", "condition_num", "response", "options", "probs", "scale_low", "scale_high")}
    cells: dict[tuple[str, int, int], list[int]] = {}
    for i, key in enumerate(zip(cols["study_id"], cols["task_num"], cols["condition_num"])):
        if cols["probs"][i] is not None and cols["response"][i] is not None:
            cells.setdefault(key, []).append(i)
    by_task: dict[tuple[str, int], list[int]] = {}
    for study, task, condition in cells:
        by_task.setdefault((study, task), []).append(condition)
    found = []
    for (study, task), conditions in sorted(by_task.items()):
        control = min(conditions)
        c_rows = cells[(study, task, control)]
        for condition in sorted(conditions):
            t_rows = cells[(study, task, condition)]
            if condition == control or len(t_rows) < 2 or len(c_rows) < 2:
                continue
            observed = observed_contrast([cols["response"][i] for i in t_rows], [cols["response"][i] for i in c_rows], level)
            arm_t = Arm.of(cols["options"][t_rows[0]], [cols["probs"][i] for i in t_rows])
            arm_c = Arm.of(cols["options"][c_rows[0]], [cols["probs"][i] for i in c_rows])
            predicted = contrast_effect(arm_t, arm_c, False, level, draws, rng)
            record = SplitContrast(study, task, condition, control, float(cols["scale_high"][t_rows[0]] - cols["scale_low"][t_rows[0]]) or 1.0,
                                   predicted.difference, predicted.interval, observed.difference, observed.interval, len(t_rows), len(c_rows))
            if truth and (study, condition, task) in truth and (study, control, task) in truth:
                means = [float(np.dot(*truth[(study, c, task)])) for c in (condition, control)]
                record.true = means[0] - means[1]
            found.append(record)
    return found


def _share(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def _corr(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def agreement(contrasts: list[SplitContrast], model_error: float, level: float) -> Agreement:
    """Sign agreement, correlation and interval coverage of predicted vs observed (and true)
    contrasts, with the intervals widened by `model_error`."""
    z = stats.norm.ppf((1 + level) / 2)

    def covered(c: SplitContrast, value: float) -> bool:
        lo, hi = widened_interval(c.predicted, *c.interval, z * model_error * c.range)
        return lo <= value <= hi

    clear = [c for c in contrasts if c.observed_interval[0] > 0 or c.observed_interval[1] < 0]
    known = [c for c in contrasts if c.true is not None]
    vs_truth = None
    if known:
        real = [c for c in known if abs(c.true) >= 0.05 * c.range]  # a true effect of at least 5% of the scale
        vs_truth = TruthAgreement(
            len(known), len(real), _share([np.sign(c.predicted) == np.sign(c.true) for c in real]),
            _corr([c.predicted / c.range for c in known], [c.true / c.range for c in known]), _share([covered(c, c.true) for c in known]),
        )
    return Agreement(
        len(contrasts), model_error, len(clear), _share([np.sign(c.predicted) == np.sign(c.observed) for c in clear]),
        _corr([c.predicted / c.range for c in contrasts], [c.observed / c.range for c in contrasts]),
        _share([covered(c, c.observed) for c in contrasts]), vs_truth,
    )


def run_from_split(setup: ScreenSetup, setting: str, level: float = 0.9, draws: int = 1000,
                   log: Callable[[str], None] = print) -> TrustResult:
    """Replay the eval split of `setting` (and, to fit each model's error, the validation split of
    train.setting) as screenings; write trust.json, report.md and a plot; record each model's
    fitted error in <run>/screen/screen_calibration.json for `screen` to apply."""
    out = setup.root / "from_split" / setting
    truth = load_truth(setup.raw)
    row_truth = load_row_truth(setup.raw) if truth else None
    val_name, eval_name = f"{setup.trained_on}/val", f"{setting}/eval"
    splits = {val_name: load_split_rows(setup.prepared, setup.trained_on, "val"), eval_name: load_split_rows(setup.prepared, setting, "eval")}
    log(f"screen --from-split: every study of {eval_name} ({splits[eval_name].num_rows:,} rows) replayed as a screening; "
        f"each model's error fitted on {val_name} ({splits[val_name].num_rows:,} rows); models {', '.join(setup.passes)}")
    result = TrustResult(setting, val_name, level, truth is not None)
    record_path = setup.root / SCREEN_CALIBRATION
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    with simulator(setup, log) as sim:
        for name, adapter in setup.adapters.items():
            contrasts, tables = {}, {}
            for split, rows in splits.items():
                tables[split] = sim.predict(name, rows, out / "simulate" / split.replace("/", "_") / name)
                contrasts[split] = split_contrasts(tables[split], level, draws, setup.seed, truth)
            error = fit_model_error(contrasts[val_name], level)
            model = ModelTrust(
                sim.temperature(name), adapter, error,
                BeforeAfter(agreement(contrasts[val_name], 0.0, level), agreement(contrasts[val_name], error, level)),
                BeforeAfter(agreement(contrasts[eval_name], 0.0, level), agreement(contrasts[eval_name], error, level)),
                contrasts[eval_name],
                [subgroup_agreement(subgroup_deviations(tables[eval_name], f, SUBGROUP_MIN_N, row_truth), f) for f in SUBGROUP_FIELDS],
            )
            result.models[name] = model
            record[name] = {"model_error": error, "adapter_path": adapter, "fitted_on": val_name, "contrasts": len(contrasts[val_name]),
                            "eval_split": eval_name, "eval_coverage": model.eval.after.coverage}
    setup.root.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1))
    result.report = str(write_trust_report(result, out))
    log("screen --from-split: predicted vs human contrasts on " + eval_name + "\n" + trust_table(result))
    log("screen --from-split: subgroup effects (a level's effect minus the overall effect) on " + eval_name + "\n" + subgroup_table(result))
    log(f"screen --from-split: model errors saved to {record_path} (screen adds them to its intervals); report {result.report}")
    return result
