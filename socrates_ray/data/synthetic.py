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
data/synthetic_files.py writes them in SocSci210's layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from socrates_ray.data.prompts import build_prompt
from socrates_ray.data.schema import RAW_SCHEMA
from socrates_ray.data.synthetic_vocab import (
    AGE_MEAN, AGE_SD, AGE_WEIGHT, CATEGORICAL, CONTEXT, FRAMES, IDEOLOGY, INTROS, NULL_RATE, PARTISAN_CUE,
    PARTISAN_WEIGHT, PARTY, PERSON_NOISE_SD, QUESTIONS, SCALES, Scale, STATES, TASK_NOISE_SD, TOPICS, VISIBLE_SCALE,
)

REFUSAL_CODE = 98


@dataclass
class Task:
    question: str
    direction: int
    scale: Scale
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
    scale_weights = np.array([s.weight for s in SCALES])
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
    low, high, phrasing, low_label, high_label = task.scale.low, task.scale.high, task.scale.phrasing, task.scale.low_label, task.scale.high_label
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
            low, high, phrasing = task.scale.low, task.scale.high, task.scale.phrasing
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
                "scale_low": task.scale.low,
                "scale_high": task.scale.high,
                "options": list(range(task.scale.low, task.scale.high + 1)),
                "probs": probs.tolist(),
                "participants": int(sum(len(p) for p in parts)),
            }
        )
    return table, cells, row_truth


def hash_id(study_id: str) -> int:
    """A stable integer from a study id (Python's hash() is salted per process)."""
    return int.from_bytes(study_id.encode(), "little")
