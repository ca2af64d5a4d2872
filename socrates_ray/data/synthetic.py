"""A SocSci210-format generator with known true answer distributions (pure numpy + pyarrow).

It is the embedded default and the benchmark for everything downstream, so what moves answers is
written in the prompt and shared across studies, as in SocSci210, where a held-out study or
condition is predictable from what other studies taught:

- each study is about a topic; a topic has a popularity and a partisan lean that are the same in
  every study of it, and an age slope (older people support some topics more);
- each condition frames the topic with a framing sentence shared across studies ("Critics estimate
  the policy would cost taxpayers billions...") whose push is the same on every topic; partisan
  cues ("backed by Democratic leaders") move Democrats and Republicans in opposite directions;
- each question's wording has its own shift (signing a petition costs more than saying you support
  it) and direction ("How strongly do you oppose" reverses everything), and some answer codes are
  reversed ("1 if Yes or 2 if No");
- what the text determines is scaled by VISIBLE_SCALE against the unobserved noise: a per-person
  effect and a small per-task shift keep the floor realistic (a persona never pins an answer).

The vocabulary and the effect sizes are in data.synthetic_vocab; this module draws studies, people
and answers from them. Answers follow an ordered logit over the task's scale, so each (study,
condition, task) cell has an exact true distribution: the mean of its participants' answer distributions (ground_truth.parquet).
Files come out in SocSci210's layout: data/train-*-of-*.parquet plus metadata/*_mapping.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.data.progress import Progress
from socrates_ray.data.prompts import build_prompt
from socrates_ray.data.schema import RAW_SCHEMA
from socrates_ray.data.synthetic_vocab import (
    AGE_MEAN, AGE_SD, AGE_WEIGHT, CATEGORICAL, CONTEXT, FRAMES, IDEOLOGY, INTROS, NULL_RATE, PARTISAN_CUE,
    PARTISAN_WEIGHT, PARTY, PERSON_NOISE_SD, QUESTIONS, SCALES, STATES, TASK_NOISE_SD, TOPICS, VISIBLE_SCALE,
)
from socrates_ray.errors import SocratesError

REFUSAL_CODE = 98
SUMMARY_FILE = "synth_summary.json"  # written first ({"complete": false}) and last: the folder is synth's
ROW_TRUTH_FILE = "ground_truth_rows.parquet"
ROW_TRUTH_SCHEMA = pa.schema([("study_id", pa.string()), ("sample_id", pa.int64()), ("probs", pa.list_(pa.float64()))])


class SynthError(SocratesError, ValueError):
    """synth was pointed at a folder that holds data it did not write."""


@dataclass
class Task:
    question: str
    direction: int
    scale: tuple[str, int, int, str, str, str, float]
    bias: float


@dataclass
class Study:
    study_id: str
    topic: str
    lean: float
    popularity: float
    age_slope: float
    intro: str
    context: str
    frames: list[tuple[str, str, float]]  # (frame name, sentence, effect) per condition
    tasks: list[Task]
    within_subject: bool
    ethnicity_recorded: bool
    participants: int = 0
    conditions_per_participant: int = 1
    rows: int = field(default=0)


def _study_ids(rng: np.random.Generator, n: int) -> list[str]:
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    ids: list[str] = []
    while len(ids) < n:
        candidate = "".join(rng.choice(alphabet, 5))
        if candidate not in ids and not candidate.isdigit():
            ids.append(candidate)
    return ids


def design_studies(n_studies: int, target_rows: int, within_share: float, rng: np.random.Generator) -> list[Study]:
    """Draw every study's design and size up front (so shard counts are known before writing)."""
    scale_weights = np.array([s[-1] for s in SCALES])
    scale_weights /= scale_weights.sum()
    studies: list[Study] = []
    for study_id in _study_ids(rng, n_studies):
        topic, lean, age_slope, popularity = TOPICS[rng.integers(len(TOPICS))]
        n_cond = int(rng.integers(2, 7))
        frame_idx = rng.choice(len(FRAMES), size=n_cond, replace=False)
        frames = []
        for i in frame_idx:
            name, paraphrases, effect = FRAMES[i]
            frames.append((name, paraphrases[rng.integers(len(paraphrases))], effect))
        n_tasks = int(rng.integers(1, 5))
        question_idx = rng.choice(len(QUESTIONS), size=n_tasks, replace=False)
        tasks = [
            Task(
                question=QUESTIONS[q][0],
                direction=QUESTIONS[q][1],
                scale=SCALES[rng.choice(len(SCALES), p=scale_weights)],
                bias=QUESTIONS[q][2] + float(rng.normal(0, TASK_NOISE_SD)),
            )
            for q in question_idx
        ]
        within = bool(rng.random() < within_share)
        studies.append(
            Study(
                study_id=study_id,
                topic=topic,
                lean=lean,
                popularity=popularity,
                age_slope=age_slope,
                intro=INTROS[rng.integers(len(INTROS))].format(topic=topic),
                context=" ".join(CONTEXT[i] for i in sorted(rng.choice(len(CONTEXT), size=int(rng.integers(0, 5)), replace=False))),
                frames=frames,
                tasks=tasks,
                within_subject=within,
                ethnicity_recorded=bool(rng.random() < 0.7),
                conditions_per_participant=min(n_cond, 3) if within else 1,
            )
        )
    weights = rng.lognormal(0, 0.5, n_studies)
    weights /= weights.sum()
    for study, w in zip(studies, weights):
        per_participant = len(study.tasks) * study.conditions_per_participant
        study.participants = max(20, int(round(w * target_rows / per_participant)))
        study.rows = study.participants * per_participant
    return studies


def format_sentence(task: Task) -> tuple[str, bool]:
    """The question plus its answer-format sentence, phrased the ways real stimuli phrase them.
    Returns (text, reversed) where reversed means a higher code is less support."""
    name, low, high, phrasing, low_label, high_label, _ = task.scale
    q = task.question
    if phrasing == "integer_from_to":
        return (
            f"{q} Only return an integer from {low} to {high}, where {low} means {low_label} "
            f"and {high} means {high_label}, nothing else.",
            False,
        )
    if phrasing == "scale_labels":
        return (
            f"{q} On a scale from {low} ({low_label}) to {high} ({high_label}), "
            "only return the number that fits best, nothing else.",
            False,
        )
    if phrasing == "two_option":  # 1 = Yes (support), 2 = No
        return f"{q} Only return 1 if Yes or 2 if No, nothing else.", True
    if phrasing == "two_option_plain":
        return f"{q} Answer 0 or 1, where 1 means Yes and 0 means No. Only return the number.", False
    return (
        "How many dollars, if any, would you donate to an organization that campaigns for this "
        "proposal? Only return an integer representing dollars, nothing else.",
        False,
    )


def stimulus_text(study: Study, condition: int, task: Task) -> str:
    frame_sentence = study.frames[condition][1]
    vignette = " ".join(part for part in (study.context, study.intro, frame_sentence) if part)
    return f"{vignette}\n\n{format_sentence(task)[0]}"


def draw_people(n: int, rng: np.random.Generator, ethnicity_recorded: bool) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, np.ndarray]:
    """Personas with plausible marginals; returns (demographics, liberal score, party score, age z)."""
    latent = rng.normal(0, 1, n)  # political disposition; negative = liberal
    party_idx = np.clip(np.round(3 + 2.0 * latent + rng.normal(0, 0.9, n)), 0, 6).astype(int)
    ideo_idx = np.clip(np.round(2 + 1.3 * latent + rng.normal(0, 0.7, n)), 0, 4).astype(int)
    age = np.clip(np.round(rng.normal(AGE_MEAN, AGE_SD, n)), 18, 90).astype(int)
    household = np.clip(rng.poisson(1.6, n) + 1, 1, 9)
    states = rng.integers(len(STATES), size=n)
    cats = {k: rng.choice(len(v[0]), size=n, p=np.array(v[1]) / sum(v[1])) for k, v in CATEGORICAL.items()}
    nulls = rng.random((n, 16)) < NULL_RATE
    people: list[dict[str, Any]] = []
    liberal = np.zeros(n)
    party_score = np.zeros(n)
    for i in range(n):
        demo: dict[str, Any] = {
            "age": int(age[i]),
            "household_size": int(household[i]),
            "location": STATES[states[i]],
            "party_id": PARTY[party_idx[i]],
            "ideology": IDEOLOGY[ideo_idx[i]],
        }
        for key, (values, _) in CATEGORICAL.items():
            demo[key] = values[cats[key][i]]
        if not ethnicity_recorded:
            demo["ethnicity"] = None
        for j, key in enumerate(sorted(demo)):
            if nulls[i, j] and key != "age":
                demo[key] = None
        # What the model can see: leaning from the party and ideology lines that are present.
        parts = []
        if demo["party_id"] is not None:
            parts.append((3 - party_idx[i]) / 3)
            party_score[i] = (3 - party_idx[i]) / 3
        if demo["ideology"] is not None:
            parts.append((2 - ideo_idx[i]) / 2)
        liberal[i] = float(np.mean(parts)) if parts else 0.0
        people.append(demo)
    return people, liberal, party_score, (age - AGE_MEAN) / AGE_SD


def ordinal_probs(utility: np.ndarray, points: int) -> np.ndarray:
    """Ordered-logit answer distribution over `points` categories for each utility (rows sum to 1)."""
    thresholds = np.linspace(-2.2, 2.2, points - 1) if points > 2 else np.zeros(1)
    cdf = 1.0 / (1.0 + np.exp(-(thresholds[None, :] - utility[:, None])))
    cdf = np.concatenate([np.zeros((len(utility), 1)), cdf, np.ones((len(utility), 1))], axis=1)
    return np.diff(cdf, axis=1)


def frame_effect(frame: tuple[str, str, float], party_score: np.ndarray) -> np.ndarray:
    name, _, effect = frame
    if name == "dem_cue":
        return PARTISAN_CUE * party_score
    if name == "rep_cue":
        return -PARTISAN_CUE * party_score
    return np.full_like(party_score, effect)


def generate_study(study: Study, rng: np.random.Generator, refusal_rate: float) -> tuple[pa.Table, list[dict[str, Any]], list[list[float] | None]]:
    """All rows of one study, its cells' true distributions, and each row's own true distribution
    (the participant's ordered logit over the options; None for open-ended amounts)."""
    n = study.participants
    people, liberal, party_score, age_z = draw_people(n, rng, study.ethnicity_recorded)
    person_effect = rng.normal(0, PERSON_NOISE_SD, n)
    n_cond = len(study.frames)
    # Balanced assignment; within-subject participants see several distinct conditions.
    seen = np.stack(
        [rng.permutation(n_cond)[: study.conditions_per_participant] for _ in range(n)]
    ) if study.within_subject else (np.arange(n) % n_cond)[rng.permutation(n)][:, None]
    personas = [build_prompt(p, "") for p in people]  # persona block + instruction, stimulus appended below

    columns: dict[str, list[Any]] = {f.name: [] for f in RAW_SCHEMA}
    truth: dict[tuple[int, int], list[np.ndarray]] = {}
    row_truth: list[list[float] | None] = []
    sample_id = 0
    for rep in range(seen.shape[1]):
        for t, task in enumerate(study.tasks):
            name, low, high, phrasing, *_ = task.scale
            _, reverse = format_sentence(task)
            for c in range(n_cond):
                who = np.flatnonzero(seen[:, rep] == c)
                if len(who) == 0:
                    continue
                stim = stimulus_text(study, c, task)
                u = person_effect[who] + VISIBLE_SCALE * (task.bias + task.direction * (
                    study.popularity
                    + frame_effect(study.frames[c], party_score[who])
                    + study.lean * PARTISAN_WEIGHT * liberal[who]
                    + study.age_slope * AGE_WEIGHT * age_z[who]
                ))
                if phrasing == "open":
                    amounts = np.where(
                        rng.random(len(who)) < 1 / (1 + np.exp(-u)),
                        np.round(np.exp(2.5 + 0.6 * u + rng.normal(0, 0.9, len(who)))),
                        0,
                    ).astype(np.int64)
                    answers = amounts
                    probs = None
                else:
                    probs = ordinal_probs(u, high - low + 1)
                    if reverse:
                        probs = probs[:, ::-1]
                    truth.setdefault((c, t), []).append(probs)
                    cum = probs.cumsum(axis=1)
                    k = (rng.random(len(who))[:, None] > cum).sum(axis=1).clip(0, high - low)
                    answers = (low + k).astype(np.int64)
                    if high < REFUSAL_CODE:
                        answers = np.where(rng.random(len(who)) < refusal_rate, REFUSAL_CODE, answers)
                for j, (i, answer) in enumerate(zip(who, answers)):
                    row_truth.append(None if probs is None else probs[j].tolist())
                    columns["sample_id"].append(sample_id)
                    columns["participant"].append(int(i))
                    columns["demographic"].append(people[i])
                    columns["stimuli"].append(stim)
                    columns["prompt"].append(personas[i] + stim)
                    columns["reasoning"].append(
                        f"Thinking about {study.topic} as someone who is {people[i]['ideology'] or 'politically unlabelled'}."
                    )
                    columns["response"].append(int(answer))
                    columns["condition_num"].append(c)
                    columns["task_num"].append(t)
                    columns["study_id"].append(study.study_id)
                    sample_id += 1
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in RAW_SCHEMA}, schema=RAW_SCHEMA)
    cells = []
    for (c, t), parts in sorted(truth.items()):
        task = study.tasks[t]
        probs = np.concatenate(parts).mean(axis=0)
        cells.append(
            {
                "study_id": study.study_id,
                "condition_num": c,
                "task_num": t,
                "frame": study.frames[c][0],
                "topic": study.topic,
                "scale_low": task.scale[1],
                "scale_high": task.scale[2],
                "options": list(range(task.scale[1], task.scale[2] + 1)),
                "probs": probs.tolist(),
                "participants": int(sum(len(p) for p in parts)),
            }
        )
    return table, cells, row_truth


def split_metadata(studies: list[Study], rng: np.random.Generator, unseen_fraction: float = 0.19, eval_fraction: float = 0.25) -> dict[str, Any]:
    """The three split files in SocSci210's shapes (lists hold condition / task numbers)."""
    ids = [s.study_id for s in studies]
    order = rng.permutation(len(ids))
    n_unseen = max(1, int(round(unseen_fraction * len(ids))))
    unseen = sorted(ids[i] for i in order[:n_unseen])
    condition_mapping, task_mapping = {}, {}
    for s in studies:
        if len(s.frames) >= 2:
            conds = rng.permutation(len(s.frames)).tolist()
            k = max(1, int(round(eval_fraction * len(conds))))
            condition_mapping[s.study_id] = {"train": sorted(conds[k:]), "eval": sorted(conds[:k])}
        if len(s.tasks) >= 2:
            tasks = rng.permutation(len(s.tasks)).tolist()
            k = max(1, int(round(eval_fraction * len(tasks))))
            task_mapping[s.study_id] = {"train": sorted(tasks[k:]), "eval": sorted(tasks[:k])}
    return {
        "participant_mapping.json": {"seen": sorted(set(ids) - set(unseen)), "unseen": unseen},
        "condition_mapping.json": condition_mapping,
        "task_mapping.json": task_mapping,
    }


def iter_shards(tables: Iterator[pa.Table], rows_per_shard: int) -> Iterator[pa.Table]:
    """Regroup a stream of tables into shards of rows_per_shard rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        while count >= rows_per_shard:
            merged = pa.concat_tables(pending)
            yield merged.slice(0, rows_per_shard)
            rest = merged.slice(rows_per_shard)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield pa.concat_tables(pending)


def write_synthetic(
    out: str | Path,
    studies: int,
    rows: int,
    rows_per_shard: int,
    seed: int,
    refusal_rate: float,
    within_subject_share: float,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write a synthetic SocSci210 dataset to `out`; returns a summary (also written as JSON).

    A re-run replaces synth's own earlier output (stale shards included); a folder that holds Parquet
    files synth did not write (a user's dataset) is refused, never overwritten."""
    if "://" in str(out):
        raise SynthError(f"synth: writes to a local folder; got {out}. Use a local --out / data.raw for synthetic data")
    if found := foreign_parquet(out):
        raise SynthError(
            f"synth: {out} holds {len(found)} Parquet file(s) synth did not write (e.g. {found[0]}; no {SUMMARY_FILE}). "
            "Writing synthetic data there would delete them. Point --out / data.raw at a new folder for synthetic "
            "data; to run the demo on that dataset as it is, keep data.raw and run `socrates-ray demo` (it skips synth)"
        )
    root = Path(out)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / SUMMARY_FILE).write_text(json.dumps({"complete": False, "seed": seed}))
    (root / "metadata").mkdir(exist_ok=True)
    for old in (root / "data").glob("*.parquet"):
        old.unlink()  # a re-run with fewer shards must not leave stale ones behind
    rng = np.random.default_rng(seed)
    designs = design_studies(studies, rows, within_subject_share, rng)
    total = sum(s.rows for s in designs)
    n_shards = max(1, math.ceil(total / rows_per_shard))
    all_cells: list[dict[str, Any]] = []
    row_truth: dict[str, list[Any]] = {"study_id": [], "sample_id": [], "probs": []}

    def tables() -> Iterator[pa.Table]:
        for study in designs:
            table, cells, probs = generate_study(study, np.random.default_rng([seed, hash_id(study.study_id)]), refusal_rate)
            all_cells.extend(cells)
            row_truth["study_id"].extend(table["study_id"].to_pylist())
            row_truth["sample_id"].extend(table["sample_id"].to_pylist())
            row_truth["probs"].extend(probs)
            yield table

    written = 0
    progress = Progress(log, n_shards)
    for i, shard in enumerate(iter_shards(tables(), rows_per_shard)):
        pq.write_table(shard, root / "data" / f"train-{i:05d}-of-{n_shards:05d}.parquet")
        written += shard.num_rows
        progress.done(i + 1, f"synth: shard {i + 1}/{n_shards} written ({written:,}/{total:,} rows)")
    for name, content in split_metadata(designs, rng).items():
        (root / "metadata" / name).write_text(json.dumps(content, indent=1))
    pq.write_table(pa.Table.from_pylist(all_cells), root / "ground_truth.parquet")
    # Each participant's own true distribution: a cell's truth over exactly the participants a model
    # scored, so a distance to it has no persona-sampling term (evaluate's per-person truth figures).
    pq.write_table(pa.table(row_truth, schema=ROW_TRUTH_SCHEMA), root / ROW_TRUTH_FILE)
    design = [
        {
            "study_id": s.study_id,
            "topic": s.topic,
            "frames": [f[0] for f in s.frames],
            "tasks": [{"question": t.question, "scale": t.scale[0]} for t in s.tasks],
            "within_subject": s.within_subject,
            "participants": s.participants,
            "rows": s.rows,
        }
        for s in designs
    ]
    (root / "studies.json").write_text(json.dumps(design, indent=1))
    summary = {"rows": written, "studies": len(designs), "shards": n_shards, "cells": len(all_cells), "seed": seed}
    (root / SUMMARY_FILE).write_text(json.dumps({**summary, "complete": True}, indent=1))
    return summary


def foreign_parquet(out: str | Path) -> list[str]:
    """Parquet files under the local folder `out` that synth did not write (none if it holds SUMMARY_FILE)."""
    root = Path(out)
    if not root.is_dir() or (root / SUMMARY_FILE).is_file():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def hash_id(study_id: str) -> int:
    """A stable integer from a study id (Python's hash() is salted per process)."""
    return int.from_bytes(study_id.encode(), "little")
