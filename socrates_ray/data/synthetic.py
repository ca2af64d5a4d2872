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

Answers follow an ordered logit over the task's scale, so each (study, condition, task) cell has an
exact true distribution: the mean of its participants' answer distributions (ground_truth.parquet).
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

from socrates_ray.data.prompts import build_prompt
from socrates_ray.data.schema import DEMOGRAPHIC_TYPE, RAW_SCHEMA

REFUSAL_CODE = 98
ROW_TRUTH_FILE = "ground_truth_rows.parquet"
ROW_TRUTH_SCHEMA = pa.schema([("study_id", pa.string()), ("sample_id", pa.int64()), ("probs", pa.list_(pa.float64()))])

# (policy, partisan lean: + means liberals support it more, age slope: + means older support more,
# popularity: support across the board, the same in every study of the topic)
TOPICS: tuple[tuple[str, float, float, float], ...] = (
    ("a national carbon tax", 1.0, -0.3, -0.6),
    ("stricter background checks for gun purchases", 0.8, 0.2, 1.0),
    ("raising the federal minimum wage to $17 an hour", 0.8, -0.2, 0.5),
    ("more federal funding for border security", -1.0, 0.4, 0.3),
    ("school vouchers for private schools", -0.6, 0.0, -0.3),
    ("a nationwide ban on TikTok", -0.3, 0.7, -0.8),
    ("required vaccination for hospital workers", 0.6, 0.3, 0.4),
    ("cutting the corporate tax rate", -0.8, 0.1, -0.7),
    ("federal regulation of artificial intelligence", 0.3, 0.5, 0.6),
    ("building new nuclear power plants", -0.3, 0.2, 0.0),
    ("a four-day work week for government employees", 0.5, -0.6, -0.2),
    ("forgiving federal student loan debt", 1.0, -0.7, -0.1),
    ("stricter voter ID laws", -1.0, 0.3, 0.7),
    ("a tax on sugary drinks", 0.4, 0.1, -1.0),
    ("expanding Medicare to cover dental care", 0.7, 0.6, 1.2),
    ("banning smartphones in public schools", -0.1, 0.8, 0.5),
)

# Framing sentences shared across studies: (name, paraphrases, effect on support).
FRAMES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("control", ("",), 0.0),
    (
        "economic_cost",
        (
            "Critics estimate the policy would cost taxpayers billions of dollars and raise prices for families.",
            "Economists warn that the policy would be expensive and could raise prices for ordinary families.",
        ),
        -1.8,
    ),
    (
        "moral_duty",
        (
            "Supporters say it is a moral duty to protect future generations.",
            "Advocates argue that we have a moral duty to act for the sake of our children.",
        ),
        1.6,
    ),
    (
        "personal_story",
        (
            "Maria, a mother of two from Ohio, says the policy would change her family's life for the better.",
            "James, a retired teacher from Georgia, describes how the policy would help people like him.",
        ),
        1.0,
    ),
    (
        "expert_endorsement",
        (
            "A panel of independent scientists and economists has endorsed the policy.",
            "Leading independent experts have reviewed the evidence and endorsed the policy.",
        ),
        1.3,
    ),
    (
        "threat",
        (
            "Opponents warn that the policy threatens individual freedom and puts jobs at risk.",
            "Critics say the policy is a threat to personal freedom and to local jobs.",
        ),
        -1.7,
    ),
    ("social_norm", ("A recent poll found that most Americans support the policy.",), 0.9),
    ("dem_cue", ("The proposal is backed by Democratic leaders in Congress.",), 0.0),
    ("rep_cue", ("The proposal is backed by Republican leaders in Congress.",), 0.0),
)
PARTISAN_CUE = 1.5  # dem_cue pushes Democrats up and Republicans down by this much; rep_cue the reverse

INTROS = (
    "Lawmakers are currently debating {topic}.",
    "Congress is considering a proposal for {topic}.",
    "Some states have recently proposed {topic}.",
    "Consider the following proposal: {topic}.",
)

# Topic-neutral background sentences: studies use 0-4 of them, so vignettes (and prompts) vary
# in length the way real studies' stimuli do.
CONTEXT = (
    "This survey is part of a national study of public opinion.",
    "Please read the following information carefully before answering.",
    "If passed, the proposal would take effect at the start of next year.",
    "Similar measures have already been adopted in several other countries, with mixed results.",
    "The cost would be shared between the federal government and the states.",
    "Independent analysts disagree about how large the effects of the proposal would be.",
    "The debate has received a great deal of attention in newspapers and on television over the past few months.",
    "Supporters and opponents have both spent heavily on advertising about the issue.",
)

# Task templates: (question, direction: +1 asks for support, -1 for opposition, shift: what the
# wording itself does to answers, e.g. signing a petition costs more than saying you support it).
QUESTIONS: tuple[tuple[str, int, float], ...] = (
    ("How much do you support or oppose this proposal?", 1, 0.0),
    ("How likely would you be to sign a petition in favor of this proposal?", 1, -0.9),
    ("How strongly do you oppose this proposal?", -1, 0.0),
    ("How fair do you think this proposal is to people like you?", 1, 0.4),
    ("If this proposal were on the ballot in your state, would you vote for it?", 1, 0.2),
)
TASK_NOISE_SD = 0.15  # unobserved per-task shift: small, as in real studies where wording carries most of it
# What the prompt text determines is scaled against the ordered logit's own noise (a logistic,
# sd 1.8) and the unobserved person effect: at 2, a frame or a partisan lean moves a 7-point answer
# by 2-3 points, as strong manipulations and partisan topics do in real studies.
VISIBLE_SCALE = 2.0
PERSON_NOISE_SD = 0.7  # unobserved per-person effect: keeps the floor realistic (a persona never pins an answer)
PARTISAN_WEIGHT = 2.5  # a topic's lean times the persona's liberal score (-1..1)
AGE_WEIGHT = 1.0  # a topic's age slope times the persona's standardised age

# Scales: (points, low, phrasing template, low label, high label, weight)
SCALES: tuple[tuple[str, int, int, str, str, str, float], ...] = (
    ("likert5", 1, 5, "scale_labels", "Strongly disagree", "Strongly agree", 0.2),
    ("likert7", 1, 7, "integer_from_to", "Extremely unlikely", "Extremely likely", 0.38),
    ("eleven", 0, 10, "integer_from_to", "Not at all", "Completely", 0.12),
    ("hundred", 0, 100, "integer_from_to", "No support at all", "Complete support", 0.1),
    ("yes_no", 1, 2, "two_option", "Yes", "No", 0.07),
    ("binary01", 0, 1, "two_option_plain", "No", "Yes", 0.05),
    ("four", 1, 4, "scale_labels", "Not at all", "A great deal", 0.05),
    ("dollars", 0, 0, "open", "", "", 0.03),
)

AGE_MEAN, AGE_SD = 48.0, 17.0
STATES = (
    "California", "Texas", "Florida", "New York", "Pennsylvania", "Illinois", "Ohio", "Georgia",
    "North Carolina", "Michigan", "New Jersey", "Virginia", "Washington", "Arizona", "Iowa",
    "Oregon", "Kansas", "Nebraska", "Indiana", "Tennessee",
)
PARTY = (
    "Strong Democrat", "Moderate Democrat", "Lean Democrat", "Don't Lean/Independent/None",
    "Lean Republican", "Moderate Republican", "Strong Republican",
)
IDEOLOGY = ("Very Liberal", "Somewhat Liberal", "Moderate", "Somewhat Conservative", "Very Conservative")
CATEGORICAL: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "gender": (("Female", "Male"), (0.52, 0.48)),
    "education": (
        ("Less than high school", "High school graduate or equivalent",
         "Vocational/tech school/some college/associates", "Bachelor's degree",
         "Post grad study/professional degree"),
        (0.09, 0.28, 0.28, 0.21, 0.14),
    ),
    "employment": (
        ("Employed as paid employee", "Self-employed", "Retired", "Not working - looking for work",
         "Not working - disabled", "Not working - other"),
        (0.52, 0.08, 0.22, 0.06, 0.05, 0.07),
    ),
    "ethnicity": (
        ("White, Non-Hispanic", "Black, Non-Hispanic", "Hispanic", "Other, Non-Hispanic",
         "2+ Races, Non-Hispanic"),
        (0.63, 0.12, 0.16, 0.06, 0.03),
    ),
    "income": (
        ("Less than $10K", "10-14K", "15-19K", "20-29K", "30-39K", "40-49K", "50-59K", "60-74K",
         "75-99K", "100-124K", "125-149K", "150-175K+", "200K+"),
        (0.05, 0.04, 0.04, 0.09, 0.09, 0.08, 0.08, 0.1, 0.13, 0.1, 0.07, 0.08, 0.05),
    ),
    "marital_status": (
        ("Married", "Never married", "Divorced", "Widowed", "Separated", "Living with partner"),
        (0.5, 0.28, 0.1, 0.05, 0.02, 0.05),
    ),
    "housing_ownership": (
        ("Owned or being bought by you or someone in your household", "Rented for cash",
         "Occupied without payment of cash rent"),
        (0.66, 0.32, 0.02),
    ),
    "housing_type": (
        ("A one-family house detached from any other house",
         "A one-family house attached to one or more houses", "A building with 2 or more apartments",
         "A mobile home"),
        (0.64, 0.08, 0.23, 0.05),
    ),
    "metro_status": (("Metro Area", "Non-Metro Area"), (0.85, 0.15)),
    "internet_access": (("Internet Household", "Non-internet household"), (0.93, 0.07)),
    "phone_service": (
        ("Cellphone only", "Have a landline, but mostly use cellphone",
         "Have a cellphone, but mostly use landline", "Landline telephone only"),
        (0.62, 0.28, 0.07, 0.03),
    ),
}
NULL_RATE = 0.02


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
    """Write a synthetic SocSci210 dataset to `out`; returns a summary (also written as JSON)."""
    root = Path(out)
    (root / "data").mkdir(parents=True, exist_ok=True)
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
    for i, shard in enumerate(iter_shards(tables(), rows_per_shard)):
        pq.write_table(shard, root / "data" / f"train-{i:05d}-of-{n_shards:05d}.parquet")
        written += shard.num_rows
        log(f"synth: shard {i + 1}/{n_shards} written ({written:,}/{total:,} rows)")
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
    (root / "synth_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def hash_id(study_id: str) -> int:
    """A stable integer from a study id (Python's hash() is salted per process)."""
    return int.from_bytes(study_id.encode(), "little")
