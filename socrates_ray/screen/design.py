"""Personas and the rows to simulate: who takes part, and what each of them reads.

draw_personas takes the population (a prepared split's participants resampled, a CSV, or per-field
marginals); build_rows crosses personas, arms and outcomes into rows of the very schema the
simulate stage reads for a prepared split (persona block + stimulus -> prompt, the parsed scale),
so a screening is scored by the one scoring path every other stage uses.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from socrates_ray.data.prepared import PreparedSplitError, load_split_rows
from socrates_ray.data.prompts import build_prompt
from socrates_ray.data.schema import DEMOGRAPHIC_FIELDS, DEMOGRAPHIC_TYPE, INT_DEMOGRAPHIC_FIELDS
from socrates_ray.screen.spec import Experiment, ExperimentError, Population, outcome_scale, stimulus

Persona = dict[str, Any]


def _typed(field: str, value: Any, where: str) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if field in INT_DEMOGRAPHIC_FIELDS:
        try:
            return int(float(value))
        except ValueError:
            raise ExperimentError(f"{where}: {field} must be an integer, got {value!r}") from None
    return str(value)


def _complete(partial: dict[str, Any]) -> Persona:
    return {f: partial.get(f) for f in DEMOGRAPHIC_FIELDS}


def load_csv_personas(path: str) -> list[Persona]:
    """Personas from a CSV whose header names demographic fields (other fields are left out of the persona)."""
    p = Path(path)
    if not p.is_file():
        raise ExperimentError(f"population.csv: no such file {p}")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        unknown = sorted(set(reader.fieldnames or []) - set(DEMOGRAPHIC_FIELDS))
        if unknown:
            raise ExperimentError(f"population.csv: unknown column(s) {unknown} in {p}; expected demographic fields {list(DEMOGRAPHIC_FIELDS)}")
        personas = [_complete({k: _typed(k, v, f"population.csv line {i + 2}") for k, v in row.items()}) for i, row in enumerate(reader)]
    if not personas:
        raise ExperimentError(f"population.csv: {p} has a header but no rows")
    return personas


def split_personas(prepared: str, split: str) -> list[Persona]:
    """Every distinct participant (study_id, participant) of a prepared split, with their demographics."""
    setting, _, part = split.partition("/")
    try:
        table = load_split_rows(prepared, setting, part or "train")
    except PreparedSplitError as exc:
        raise ExperimentError(f"population.split={split}: {exc}") from None
    seen: dict[tuple[str, int], Persona] = {}
    for sid, pid, demo in zip(table["study_id"].to_pylist(), table["participant"].to_pylist(), table["demographic"].to_pylist()):
        seen.setdefault((sid, pid), _complete(demo))
    return list(seen.values())


def draw_personas(population: Population, n: int, prepared: str) -> list[Persona]:
    """n personas drawn with population.seed: resampled (without replacement while there are enough)
    from a split or a CSV, or field by field from the marginals."""
    rng = np.random.default_rng(population.seed)
    if population.source == "marginals":
        columns = {}
        for field, weights in population.marginals.items():
            values, w = list(weights), np.asarray(list(weights.values()), dtype=float)
            if (w < 0).any() or w.sum() <= 0:
                raise ExperimentError(f"population.marginals.{field}: weights must be >= 0 and not all 0, got {weights}")
            columns[field] = [_typed(field, values[i], f"population.marginals.{field}") for i in rng.choice(len(values), n, p=w / w.sum())]
        return [_complete({f: columns[f][i] for f in columns}) for i in range(n)]
    pool = load_csv_personas(population.csv) if population.source == "csv" else split_personas(prepared, population.split)
    picks = rng.choice(len(pool), n, replace=len(pool) < n)
    return [pool[i] for i in picks]


def personas_needed(experiment: Experiment) -> int:
    arms = len(experiment.arms())
    return experiment.population.n_per_arm * (1 if experiment.design == "within" else arms)


def build_rows(experiment: Experiment, personas: list[Persona]) -> pa.Table:
    """One row per (participant, arm, outcome) in the simulate stage's input schema.

    participant: the persona's index (within: the same person in every arm); condition_num: the
    arm's index; task_num: the outcome's index; response: null (no human has answered yet)."""
    n = experiment.population.n_per_arm
    arms = experiment.arms()
    scales = [outcome_scale(o, f"outcomes.{i}") for i, o in enumerate(experiment.outcomes)]
    rows: dict[str, list[Any]] = {k: [] for k in ("participant", "condition_num", "task_num", "demographic", "stimuli", "prompt", "scale_low", "scale_high")}
    for a, (_, text) in enumerate(arms):
        people = range(n) if experiment.design == "within" else range(a * n, (a + 1) * n)
        for p in people:
            for t, (outcome, scale) in enumerate(zip(experiment.outcomes, scales)):
                s = stimulus(text, outcome)
                rows["participant"].append(p)
                rows["condition_num"].append(a)
                rows["task_num"].append(t)
                rows["demographic"].append(personas[p])
                rows["stimuli"].append(s)
                rows["prompt"].append(build_prompt(personas[p], s))
                rows["scale_low"].append(scale.low)
                rows["scale_high"].append(scale.high)
    count = len(rows["participant"])
    return pa.table({
        "study_id": pa.array([experiment.name] * count, pa.string()),
        "sample_id": pa.array(range(count), pa.int64()),
        "participant": pa.array(rows["participant"], pa.int64()),
        "condition_num": pa.array(rows["condition_num"], pa.int64()),
        "task_num": pa.array(rows["task_num"], pa.int64()),
        "demographic": pa.array(rows["demographic"], DEMOGRAPHIC_TYPE),
        "stimuli": pa.array(rows["stimuli"], pa.string()),
        "prompt": pa.array(rows["prompt"], pa.string()),
        "response": pa.array([None] * count, pa.int64()),
        "scale_low": pa.array(rows["scale_low"], pa.int64()),
        "scale_high": pa.array(rows["scale_high"], pa.int64()),
    })
