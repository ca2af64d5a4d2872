"""Does a screening get subgroup effects right? (Pure: numpy, no Ray.)

A contrast's effect can differ by subgroup: a Democratic cue moves Democrats up and Republicans
down. `--from-split` compares each replayed contrast's *subgroup deviations* with the humans': for a
demographic field and each of its levels with at least `min_n` people in both arms, the deviation is
the level's effect minus the contrast's overall effect, as a share of the scale's range. A model that
reads no persona predicts deviations near 0 whatever the humans show: its correlation with the
observed deviations is near 0 and the spread of its deviations far below theirs. On synthetic data
the same comparison runs against each participant's true mean answer, which has no answer noise.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from socrates_ray.eval.truth import RowTruth
from socrates_ray.screen.results import SubgroupAgreement


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def subgroup_deviations(table: pa.Table, field: str, min_n: int, row_truth: RowTruth | None = None) -> list[dict[str, Any]]:
    """Per (study, task, condition vs the study's lowest condition, level of `field`): the predicted,
    observed and (with row_truth) true deviation of the level's effect from the overall effect."""
    cols = {c: table[c].to_pylist() for c in ("study_id", "sample_id", "task_num", "condition_num", "response", "options",
                                             "probs", "demographic", "scale_low", "scale_high")}
    arms: dict[tuple[str, int, int], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(cols["study_id"], cols["task_num"], cols["condition_num"])):
        if cols["probs"][i] is not None and cols["response"][i] is not None:
            arms[key].append(i)

    def person(i: int) -> dict[str, float | None]:
        options = np.asarray(cols["options"][i], dtype=np.float64)
        true = row_truth.get((cols["study_id"][i], cols["sample_id"][i])) if row_truth else None
        return {"observed": float(cols["response"][i]), "predicted": float(np.dot(options, cols["probs"][i])),
                "true": float(np.dot(options, true)) if true is not None and len(true) == len(options) else None}

    by_task: dict[tuple[str, int], list[int]] = defaultdict(list)
    for study, task, condition in arms:
        by_task[(study, task)].append(condition)
    found = []
    for (study, task), conditions in sorted(by_task.items()):
        control = min(conditions)
        for condition in sorted(conditions):
            if condition == control:
                continue
            sides = {"t": arms[(study, task, condition)], "c": arms[(study, task, control)]}
            people = {k: [person(i) for i in rows] for k, rows in sides.items()}
            levels = {k: [(cols["demographic"][i] or {}).get(field) for i in rows] for k, rows in sides.items()}
            first = sides["t"][0]
            scale = float(cols["scale_high"][first] - cols["scale_low"][first]) or 1.0
            kinds = ["observed", "predicted"] + (["true"] if all(p["true"] is not None for ps in people.values() for p in ps) else [])
            overall = {k: _mean([p[k] for p in people["t"]]) - _mean([p[k] for p in people["c"]]) for k in kinds}
            for level in sorted({v for vs in levels.values() for v in vs if v is not None}, key=str):
                members = {s: [p for p, v in zip(people[s], levels[s]) if v == level] for s in people}
                if min(len(m) for m in members.values()) < min_n:
                    continue
                effect = {k: _mean([p[k] for p in members["t"]]) - _mean([p[k] for p in members["c"]]) for k in kinds}
                found.append({"study_id": study, "task_num": task, "condition_num": condition, "level": level,
                              **{k: (effect[k] - overall[k]) / scale for k in kinds}})
    return found


def _corr(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def subgroup_agreement(deviations: list[dict[str, Any]], field: str) -> SubgroupAgreement:
    """Correlation and spread of predicted against observed (and true) subgroup deviations; sign
    agreement against true deviations of at least 5% of the scale."""
    pred = [d["predicted"] for d in deviations]
    obs = [d["observed"] for d in deviations]
    known = [d for d in deviations if "true" in d]
    true = [d["true"] for d in known]
    real = [d for d in known if abs(d["true"]) >= 0.05]
    return SubgroupAgreement(
        field=field, levels=len(deviations), correlation=_corr(pred, obs),
        spread_predicted=float(np.std(pred)) if pred else None, spread_observed=float(np.std(obs)) if obs else None,
        correlation_true=_corr([d["predicted"] for d in known], true) if known else None,
        spread_true=float(np.std(true)) if true else None,
        sign_agreement_true=float(np.mean([np.sign(d["predicted"]) == np.sign(d["true"]) for d in real])) if real else None,
    )
