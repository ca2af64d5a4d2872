"""Demographic parity: does a model reproduce how much subgroups differ? (Pure: numpy, no Ray.)

The paper reports a demographic parity difference without publishing its definition; socrates_ray's
own, the *subgroup gap*: in one cell (one stimulus) and for one demographic field, the spread (max -
min) of the mean rescaled answer across the field's groups, counting groups of at least MIN_GROUP
people and needing at least two such groups. The humans have one gap per (cell, field), each model
another; the *subgroup gap error* is |model gap - human gap|, averaged over fields, then cells ->
studies (metrics.subgroup_gap_error).

A cell needs enough people per group for the gap to mean anything: a quick evaluation that scores a
handful of answers a cell measures none. The parity check therefore scores the eval split's largest
cells with all their answers (evaluate.parity_cells, parity_per_cell), and `parity_check` reports per
field how many cells could be measured, so a field with too few people says so instead of a NaN.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from socrates_ray.eval.metrics import MIN_GROUP, Cell, CellKey, field_gaps, macro, subgroup_gap_error
from socrates_ray.eval.results import FieldParity, ParityCheck


def parity_check(models: dict[str, dict[CellKey, Cell]], fields: list[str], split: str) -> ParityCheck:
    """Every model's subgroup gaps on the same cells, against the humans', per field and overall."""
    per_field: dict[str, dict[str, list[tuple[float, float]]]] = {f: defaultdict(list) for f in fields}
    errors: dict[str, float | None] = {}
    reference: dict[CellKey, Cell] = {}
    for name, cells in models.items():
        scorable = {k: c for k, c in cells.items() if c.scorable()}
        reference = reference or scorable
        for c in scorable.values():
            for f, pair in field_gaps(c, c.probs is not None).items():
                per_field[f][name].append(pair)
        errors[name] = macro({k: subgroup_gap_error(c, c.probs is not None) for k, c in scorable.items()})
    report: dict[str, FieldParity] = {}
    for f in fields:
        pairs = per_field[f]
        first = next(iter(pairs.values()), [])
        report[f] = FieldParity(
            cells=len(first),
            human_gap=float(np.mean([h for h, _ in first])) if first else None,
            gaps={n: float(np.mean([m for _, m in p])) if p else None for n, p in pairs.items()},
            errors={n: float(np.mean([abs(m - h) for h, m in p])) if p else None for n, p in pairs.items()},
        )
    unmeasured = [f for f, r in report.items() if r.cells == 0]
    note = (f"{', '.join(unmeasured)}: no cell has two groups of >= {MIN_GROUP} people in these cells" if unmeasured else None)
    base, tuned = errors.get("base"), errors.get("finetuned")
    change = (tuned - base) / base if base and tuned is not None else None
    rows = int(sum(len(c.human) for c in reference.values()))
    return ParityCheck(split=split, cells=len(reference), rows=rows, min_group=MIN_GROUP, fields=report, errors=errors,
                       change=change, note=note)
