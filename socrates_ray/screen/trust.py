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
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from socrates_ray.config import Config
from socrates_ray.eval.job import load_truth
from socrates_ray.eval.simulate import load_split_rows
from scipy import stats

from socrates_ray.screen.analysis import Arm, contrast_effect, fit_model_error, observed_contrast, widened_interval
from socrates_ray.screen.job import CALIBRATION_FILE, simulator

Truth = dict[tuple[str, int, int], tuple[list[int], list[float]]]


def split_contrasts(table: pa.Table, level: float, draws: int, seed: int, truth: Truth | None = None) -> list[dict[str, Any]]:
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
            record = {"study_id": study, "task_num": task, "condition": condition, "control": control,
                      "range": float(cols["scale_high"][t_rows[0]] - cols["scale_low"][t_rows[0]]) or 1.0,
                      "predicted": predicted["difference"], "interval": predicted["interval"],
                      "observed": observed["difference"], "observed_interval": observed["interval"],
                      "n_treatment": len(t_rows), "n_control": len(c_rows), "true": None}
            if truth and (study, condition, task) in truth and (study, control, task) in truth:
                means = [float(np.dot(*truth[(study, c, task)])) for c in (condition, control)]
                record["true"] = means[0] - means[1]
            found.append(record)
    return found


def _share(flags: list[bool]) -> float | None:
    return float(np.mean(flags)) if flags else None


def _corr(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def agreement(contrasts: list[dict[str, Any]], model_error: float, level: float) -> dict[str, Any]:
    """Sign agreement, correlation and interval coverage of predicted vs observed (and true)
    contrasts, with the intervals widened by `model_error`."""
    z = stats.norm.ppf((1 + level) / 2)

    def covered(c: dict[str, Any], value: float) -> bool:
        lo, hi = widened_interval(c["predicted"], *c["interval"], z * model_error * c["range"])
        return lo <= value <= hi

    clear = [c for c in contrasts if c["observed_interval"][0] > 0 or c["observed_interval"][1] < 0]
    result: dict[str, Any] = {
        "contrasts": len(contrasts), "model_error": model_error,
        "clear_human_contrasts": len(clear),
        "sign_agreement": _share([np.sign(c["predicted"]) == np.sign(c["observed"]) for c in clear]),
        "correlation": _corr([c["predicted"] / c["range"] for c in contrasts], [c["observed"] / c["range"] for c in contrasts]),
        "coverage": _share([covered(c, c["observed"]) for c in contrasts]),
    }
    known = [c for c in contrasts if c["true"] is not None]
    if known:
        real = [c for c in known if abs(c["true"]) >= 0.05 * c["range"]]  # a true effect of at least 5% of the scale
        result["vs_truth"] = {
            "contrasts": len(known), "clear_true_contrasts": len(real),
            "sign_agreement": _share([np.sign(c["predicted"]) == np.sign(c["true"]) for c in real]),
            "correlation": _corr([c["predicted"] / c["range"] for c in known], [c["true"] / c["range"] for c in known]),
            "coverage": _share([covered(c, c["true"]) for c in known]),
        }
    return result


def run_from_split(cfg: Config, setting: str, model_path: str, adapters: dict[str, str | None], level: float = 0.9,
                   draws: int = 1000, log: Callable[[str], None] = print, endpoint: str | None = None,
                   token: str | None = None) -> dict[str, Any]:
    """Replay the eval split of `setting` (and, to fit each model's error, the validation split of
    train.setting) as screenings; write trust.json, report.md and a plot; record each model's
    fitted error in <run>/screen/screen_calibration.json for `screen` to apply."""
    from socrates_ray.screen.report import write_trust_report

    root = cfg.run_dir / "screen"
    out = root / "from_split" / setting
    truth = load_truth(cfg.data.raw)
    val_name, eval_name = f"{cfg.train.setting}/val", f"{setting}/eval"
    splits = {val_name: load_split_rows(cfg.data.prepared, cfg.train.setting, "val", None),
              eval_name: load_split_rows(cfg.data.prepared, setting, "eval", None)}
    log(f"screen --from-split: every study of {eval_name} ({splits[eval_name].num_rows:,} rows) replayed as a screening; "
        f"each model's error fitted on {val_name} ({splits[val_name].num_rows:,} rows); models {', '.join(adapters)}")
    results: dict[str, Any] = {"setting": setting, "fitted_on": val_name, "level": level, "synthetic_truth": truth is not None,
                               "models": {}}
    record_path = root / CALIBRATION_FILE
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    with simulator(cfg, model_path, adapters, root / "calibration", log, endpoint, token) as sim:
        for name, adapter in adapters.items():
            contrasts = {}
            for split, rows in splits.items():
                table = sim.predict(name, rows, out / "simulate" / split.replace("/", "_") / name)
                contrasts[split] = split_contrasts(table, level, draws, cfg.run.seed, truth)
            error = fit_model_error(contrasts[val_name], level)
            results["models"][name] = {
                "temperature": sim.temperature(name), "adapter_path": adapter, "model_error": error,
                "validation": {"before": agreement(contrasts[val_name], 0.0, level), "after": agreement(contrasts[val_name], error, level)},
                "eval": {"before": agreement(contrasts[eval_name], 0.0, level), "after": agreement(contrasts[eval_name], error, level)},
                "contrasts": contrasts[eval_name],
            }
            record[name] = {"model_error": error, "adapter_path": adapter, "fitted_on": val_name, "contrasts": len(contrasts[val_name]),
                            "eval_split": eval_name, "eval_coverage": results["models"][name]["eval"]["after"]["coverage"]}
    root.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1))
    results["report"] = str(write_trust_report(results, out))
    log("screen --from-split: predicted vs human contrasts on " + eval_name + "\n" + trust_table(results))
    log(f"screen --from-split: model errors saved to {record_path} (screen adds them to its intervals); report {results['report']}")
    return results


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def trust_table(results: dict[str, Any]) -> str:
    lines = ["| model | contrasts (clear) | sign agreement | correlation | coverage: sampling only -> with model error (fitted error) | vs truth: sign / r / coverage |",
             "|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        b, a = m["eval"]["before"], m["eval"]["after"]
        t = a.get("vs_truth")
        truth = f"{_pct(t['sign_agreement'])} / {_num(t['correlation'])} / {_pct(t['coverage'])}" if t else "-"
        lines.append(f"| {name} | {b['contrasts']} ({b['clear_human_contrasts']}) | {_pct(b['sign_agreement'])} | {_num(b['correlation'])} | "
                     f"{_pct(b['coverage'])} -> {_pct(a['coverage'])} ({m['model_error']:.3f} of the range) | {truth} |")
    return "\n".join(lines)
