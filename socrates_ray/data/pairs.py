"""Preference pairs for DPO (pure): for each participant's answer, the answer another participant of
the same cell gave instead.

A pair keeps the participant's prompt (their persona and the cell's stimulus), `chosen` = their own
answer and `rejected` = a different answer given by someone else in the same (study, condition,
task) cell. Everything else about the two completions is equal, so the only way to prefer the chosen
one is to read who is answering. Cells where everyone gave the same answer give no pair and are
counted, as are rows whose cell has no one else.

    pairs, stats = build_pairs(rows, seed=0, per_row=1, rejected="uniform")

`rejected`: "uniform" draws the other answer from the other participants' answers (so common
answers are drawn more often, as people gave them); "distance" weights each of them by how far it
is from the chosen answer (far answers teach the most about the person, near ones are often noise).
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

PAIR_KEYS = ("study_id", "sample_id", "participant", "condition_num", "task_num")
Rejected = Literal["uniform", "distance"]


@dataclass
class PairStats:
    rows: int = 0
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)  # why a row gave no pair: "same_answers", "alone"

    def describe(self) -> str:
        why = ", ".join(f"{n:,} {reason.replace('_', ' ')}" for reason, n in sorted(self.skipped.items())) or "none"
        return f"{self.pairs:,} pairs from {self.rows:,} answers (rows without a pair: {why})"


def _cell_rng(seed: int, cell: tuple) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("|".join(map(str, cell)).encode())])


def build_pairs(rows: pa.Table, seed: int, per_row: int = 1, rejected: Rejected = "uniform") -> tuple[pa.Table, PairStats]:
    """Pairs for every row of `rows` (prepared rows: the keys, prompt, answer, response); up to
    `per_row` pairs a row, each with a distinct rejected answer. Seeded per cell: a row's pairs do
    not depend on which other cells are in the table."""
    stats = PairStats(rows=rows.num_rows)
    columns = {name: rows[name].to_pylist() for name in (*PAIR_KEYS, "prompt", "answer", "response")}
    cells: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(columns["study_id"], columns["condition_num"], columns["task_num"])):
        cells.setdefault(key, []).append(i)
    out: dict[str, list] = {name: [] for name in (*PAIR_KEYS, "prompt", "chosen", "rejected", "chosen_response", "rejected_response")}
    for cell, members in cells.items():
        rng = _cell_rng(seed, cell)
        responses = [columns["response"][i] for i in members]
        if len(members) == 1:
            stats.skipped["alone"] += 1
            continue
        if len(set(responses)) == 1:
            stats.skipped["same_answers"] += len(members)
            continue
        for i, mine in zip(members, responses):
            others = [(columns["answer"][j], r) for j, r in zip(members, responses) if r != mine and j != i]
            if not others:  # everyone else answered as this participant did
                stats.skipped["same_answers"] += 1
                continue
            weights = np.array([abs(r - mine) if rejected == "distance" else 1.0 for _, r in others], dtype=float)
            distinct = {}
            for (text, r), w in zip(others, weights):
                distinct.setdefault(r, [text, 0.0])[1] += w
            options = sorted(distinct)
            p = np.array([distinct[r][1] for r in options])
            take = rng.choice(len(options), size=min(per_row, len(options)), replace=False, p=p / p.sum())
            for k in sorted(int(t) for t in take):
                for name in PAIR_KEYS:
                    out[name].append(columns[name][i])
                out["prompt"].append(columns["prompt"][i])
                out["chosen"].append(columns["answer"][i])
                out["rejected"].append(distinct[options[k]][0])
                out["chosen_response"].append(mine)
                out["rejected_response"].append(options[k])
                stats.pairs += 1
    return pa.table(out), stats
