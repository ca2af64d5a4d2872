"""A SocSci210-schema dataset that data/synthetic.py did not make: does the demo's recipe learn there too?

Issue 12 asks that the recipe learn on a dataset nobody tuned it to. This script writes one from its
own vocabulary and effect structure, shaped like the one the issue describes (24 studies of policy
topics, framing sentences, party / ideology / age effects): each study asks about one policy, each
condition adds one framing sentence (or none), each task asks support on a 5- or 7-point scale or a
yes/no vote; a participant's answer follows an ordered logit of

    frame push + the policy's partisan lean x (party + ideology) + the policy's age slope x age + noise

with a per-person effect of SD 0.6 (the unobserved part). Written as a user's dataset would be: Parquet
shards under data/, no split files (prepare draws them from data.split_seed), no ground truth (unless
--truth), no synth summary, so `socrates-ray demo` runs on it as it is:

    .venv/bin/python scripts/other_world.py runs/other/raw
    socrates-ray demo --config configs/demo.yaml data.raw=runs/other/raw run.name=other \\
        data.prepared=runs/other/prepared model.path=runs/other/tiny-model

--truth also writes the true distributions the synthetic generator writes (ground_truth.parquet per
cell, ground_truth_rows.parquet per participant), so `evaluate` scores the distance to the truth and
persona reading here too. The answers are the same with or without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from socrates_ray.data.prompts import build_prompt
from socrates_ray.data.schema import RAW_SCHEMA

# policy, partisan lean (+ = the left supports it more), age slope (+ = older people support it more)
POLICIES = [
    ("raising the federal minimum wage to fifteen dollars an hour", 1.0, -0.3),
    ("building more barriers along the southern border", -1.0, 0.5),
    ("a tax on carbon emissions paid by energy companies", 0.9, -0.4),
    ("public vouchers for private school tuition", -0.7, 0.1),
    ("a national ban on assault-style rifles", 0.9, 0.3),
    ("lowering the corporate income tax rate", -0.9, 0.2),
    ("forgiving up to ten thousand dollars of student debt", 0.8, -0.8),
    ("requiring photo identification to vote", -0.8, 0.4),
    ("legalizing marijuana for adult recreational use", 0.6, -0.9),
    ("expanding Medicare to every adult", 1.0, 0.3),
    ("increasing funding for local police departments", -0.6, 0.6),
    ("paying reparations to descendants of enslaved people", 1.0, -0.5),
]
FRAMES = [  # (sentence, push on support)
    ("", 0.0),
    ("Economists estimate the policy would create jobs in every state.", 0.9),
    ("Independent analysts warn the policy would add billions to the national debt.", -0.9),
    ("A recent poll found that most people in your community favor the policy.", 0.6),
    ("Opponents argue the policy takes decisions away from families.", -0.6),
]
PARTY = ["Strong Democrat", "Not very strong Democrat", "Independent", "Not very strong Republican", "Strong Republican"]
IDEOLOGY = ["Very liberal", "Somewhat liberal", "Middle of the road", "Somewhat conservative", "Very conservative"]
GENDER = ["Male", "Female"]
EDUCATION = ["High school graduate", "Some college", "Bachelor's degree", "Postgraduate degree"]
INCOME = ["Under $30,000", "$30,000 to $69,999", "$70,000 to $119,999", "$120,000 or more"]
REGION = ["Ohio", "Texas", "California", "New York", "Georgia", "Michigan", "Arizona", "Florida"]


def tasks_for(policy: str) -> list[tuple[str, int, int]]:
    """(question, low, high): answer 1 = least support in every task, so the scale's direction is fixed."""
    return [
        (f"Do you support or oppose {policy}? Please answer on a scale from 1 (Strongly oppose) to 5 (Strongly support).", 1, 5),
        (f"How would you feel about a candidate who promised {policy}? Answer on a scale of 1 (Very unfavorable) to 7 (Very favorable).", 1, 7),
        (f"If there were a ballot measure on {policy}, would you vote for it? Answer 1 for No or 2 for Yes.", 1, 2),
    ]


def people(n: int, rng: np.random.Generator) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Personas and their (left score, age z): left = +1 strongly left, -1 strongly right."""
    latent = rng.normal(0, 1, n)
    party = np.clip(np.round(2 + 1.4 * latent + rng.normal(0, 0.7, n)), 0, 4).astype(int)
    ideology = np.clip(np.round(2 + 1.1 * latent + rng.normal(0, 0.8, n)), 0, 4).astype(int)
    age = np.clip(np.round(rng.normal(48, 17, n)), 18, 90).astype(int)
    demo = [{
        "age": int(age[i]), "gender": GENDER[rng.integers(2)], "education": EDUCATION[rng.integers(4)],
        "income": INCOME[rng.integers(4)], "location": REGION[rng.integers(len(REGION))],
        "party_id": PARTY[party[i]], "ideology": IDEOLOGY[ideology[i]],
    } for i in range(n)]
    left = ((2 - party) / 2 + (2 - ideology) / 2) / 2
    return demo, left, (age - 48) / 17


def ordered_logit(u: np.ndarray, k: int) -> np.ndarray:
    cuts = np.linspace(-1.8, 1.8, k - 1)
    cdf = 1 / (1 + np.exp(-(cuts[None, :] - u[:, None])))
    return np.diff(np.concatenate([np.zeros((len(u), 1)), cdf, np.ones((len(u), 1))], axis=1), axis=1)


def write(out: Path, studies: int, per_study: int, seed: int, truth: bool = False) -> int:
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {f.name: [] for f in RAW_SCHEMA}
    row_truth: dict[str, list] = {"study_id": [], "sample_id": [], "probs": []}
    cells: dict[tuple[str, int, int], tuple[list[int], list[np.ndarray]]] = {}
    for s in range(studies):
        policy, lean, age_slope = POLICIES[s % len(POLICIES)]
        frames = [FRAMES[0], *[FRAMES[i] for i in rng.choice(np.arange(1, len(FRAMES)), size=2, replace=False)]]
        demo, left, age_z = people(per_study, rng)
        person = rng.normal(0, 0.6, per_study)
        condition = rng.integers(len(frames), size=per_study)  # between subjects
        sample_id = 0
        for t, (question, low, high) in enumerate(tasks_for(policy)):
            for i in range(per_study):
                sentence, push = frames[condition[i]]
                u = person[i] + push + 1.6 * lean * left[i] + 0.5 * age_slope * age_z[i]
                probs = ordered_logit(np.array([u]), high - low + 1)[0]
                stimulus = (f"The following question is about {policy}. {sentence}".strip() + f"\n\n{question}")
                columns["study_id"].append(f"pol{s:02d}")
                columns["sample_id"].append(sample_id)
                columns["participant"].append(i)
                columns["condition_num"].append(int(condition[i]))
                columns["task_num"].append(t)
                columns["demographic"].append(demo[i])
                columns["stimuli"].append(stimulus)
                columns["prompt"].append(build_prompt(demo[i], stimulus))
                columns["reasoning"].append("")
                columns["response"].append(int(low + rng.choice(high - low + 1, p=probs)))
                row_truth["study_id"].append(f"pol{s:02d}")
                row_truth["sample_id"].append(sample_id)
                row_truth["probs"].append(probs.tolist())
                cells.setdefault((f"pol{s:02d}", int(condition[i]), t), (list(range(low, high + 1)), []))[1].append(probs)
                sample_id += 1
    table = pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in RAW_SCHEMA}, schema=RAW_SCHEMA)
    (out / "data").mkdir(parents=True, exist_ok=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), out / "data" / "train-00000-of-00002.parquet")
    pq.write_table(table.slice(half), out / "data" / "train-00001-of-00002.parquet")
    if truth:
        from socrates_ray.data.synthetic_files import ROW_TRUTH_FILE, ROW_TRUTH_SCHEMA

        pq.write_table(pa.table(row_truth, schema=ROW_TRUTH_SCHEMA), out / ROW_TRUTH_FILE)
        pq.write_table(pa.Table.from_pylist([
            {"study_id": study, "condition_num": c, "task_num": t, "options": options,
             "probs": np.mean(p, axis=0).tolist(), "participants": len(p)}
            for (study, c, t), (options, p) in sorted(cells.items())]), out / "ground_truth.parquet")
    return table.num_rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--studies", type=int, default=24)
    p.add_argument("--per-study", type=int, default=300, help="participants a study (each answers 3 tasks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--truth", action="store_true", help="also write the true distributions (per cell and per participant)")
    a = p.parse_args()
    print(f"wrote {write(a.out, a.studies, a.per_study, a.seed, a.truth):,} rows to {a.out}/data")
