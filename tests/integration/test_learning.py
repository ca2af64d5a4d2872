"""Does the finetuned model read its prompt? A short LoRA finetune through the production loop
(Ray Train + DeepSpeed, the demo's recipe) on data where the prompt moves answers, then, on a
topic no study had:
- two prompts that differ only in a framing sentence must get distributions whose means differ
  in the right direction;
- under the same frame, a Strong Democrat and a Strong Republican persona must differ in the right
  direction (the persona matters, not only the stimulus).
A model that learns one answer distribution per scale (issue 12's failure) gives each pair the
same distribution.

How long to train: 8 epochs of the 900-row training split (448 steps, fewer than the demo's 750).
On the demo's base (4 layers 96 wide, LoRA rank 96; seed 0): frame 3.98 vs 2.17, party 4.38 vs 3.18.
The measurements below are of the former base, 2 layers 128 wide with LoRA rank 128.
Measured on 2026-12-03 (the test's flow with run.seed 0/1/2 x the split tokenized in the driver or
by the actor pool, i.e. three random bases and six data orders; frame up vs down, then Democrat vs
Republican, humans 3.99 vs 2.01 and 4.56 vs 3.21): at 2 epochs (112 steps, this test until then)
every run learned the frame (1.5-1.9 points apart) but only three of six the party (0.77-1.09 apart;
the others 0.01-0.06), so the test passed on the one data order it had; at 4 epochs two of three
failing runs learned it (0.63, 1.41; 0.04); at 8 epochs all six, 0.90-1.54 apart, frame 2.0-2.4.
The persona is one word of the prompt, the frame a sentence: the tiny model finds the word later.
With 4 heads of 32 (the tiny base since 2026-12-04; the runs above had 2 heads of 64), `bench/framing_probe.py
run.seed=S` for S = 0, 1, 2: frame 2.11 / 0.79 / 2.19 apart, party 1.46 / 1.50 / 1.66 apart.
Earlier measurements, 112 steps, one data order: at the demo's former lr 2e-3 the adapter learned the frame (4.01 vs 2.10) but not the
persona (4.01 vs 4.01) and this test failed; at lr 5e-4 with rank 128 on every layer 4.00 vs 2.31 and
4.05 vs 2.94; with the demo's rank 128 on attention, embeddings and output layer only (no MLP
adapter) 3.91 vs 2.25 and 3.92 vs 3.15. Rank 32 in the blocks learns the frame only (3.34 vs 2.68;
3.35 vs 3.34), so does a larger LoRA alpha at rank 32 (alpha 128: 4.01 vs 2.13; 4.01 vs 4.00)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from socrates_ray.cli import main
from socrates_ray.config import TinyModelSection
from socrates_ray.data.prompts import build_prompt
from socrates_ray.data.schema import RAW_SCHEMA
from socrates_ray.models import ensure_tiny_model

pytestmark = pytest.mark.ray

FRAMES = {
    "up": "Supporters say the plan would protect families and create many good local jobs.",
    "down": "Critics warn the plan would waste money and raise taxes for every household.",
}
PARTIES = {"Strong Democrat": 1.2, "Independent": 0.0, "Strong Republican": -1.2}  # support shift


def answer_probs(frame: str, party: str) -> np.ndarray:
    """Ordered logit over 1..5: the frame moves everyone by 1.5, the party by 1.2 either way."""
    utility = (1.5 if frame == "up" else -1.5) + PARTIES[party]
    cdf = 1 / (1 + np.exp(-(np.array([-1.8, -0.6, 0.6, 1.8]) - utility)))
    return np.diff(np.concatenate([[0.0], cdf, [1.0]]))
TOPICS = ("a new city park", "longer library hours", "a bus line to the airport", "a recycling program",
          "a youth sports league", "free school lunches")
QUESTION = "How much do you support this plan? Only return an integer from 1 to 5, where 1 means Not at all and 5 means Completely, nothing else."


def stimulus(topic: str, frame: str) -> str:
    return f"The council is discussing {topic}. {FRAMES[frame]}\n\n{QUESTION}"


def write_framed_dataset(folder, rows_per_cell: int = 90, seed: int = 0) -> None:
    """Six studies (one topic each), two conditions: the 'up' frame pushes answers toward 5, 'down'
    toward 1; in both, Democrats answer higher than Independents, Republicans lower."""
    rng = np.random.default_rng(seed)
    columns = {f.name: [] for f in RAW_SCHEMA}
    for s, topic in enumerate(TOPICS):
        sample_id = 0
        for c, frame in enumerate(FRAMES):
            for p in range(rows_per_cell):
                party = list(PARTIES)[int(rng.integers(3))]
                demo = {"age": int(rng.integers(18, 90)), "gender": str(rng.choice(["Female", "Male"])), "party_id": party}
                probs = answer_probs(frame, party)
                stim = stimulus(topic, frame)
                columns["sample_id"].append(sample_id)
                columns["participant"].append(p + c * rows_per_cell)
                columns["demographic"].append(demo)
                columns["stimuli"].append(stim)
                columns["prompt"].append(build_prompt(demo, stim))
                columns["reasoning"].append("")
                columns["response"].append(int(rng.choice(5, p=probs)) + 1)
                columns["condition_num"].append(c)
                columns["task_num"].append(0)
                columns["study_id"].append(f"st{s:03d}")
                sample_id += 1
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table(columns, schema=RAW_SCHEMA), folder / "data" / "train-00000-of-00001.parquet")


def test_a_short_finetune_learns_what_a_frame_and_a_persona_do(ray_local, tmp_path):
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    write_framed_dataset(raw)
    # the demo's own recipe on the demo's own shape (model.tiny's defaults), not the other tests' smaller model
    tiny_model = ensure_tiny_model(tmp_path / "tiny", TinyModelSection(tokenizer_corpus_rows=600), seed=0)
    common = ["--config", "configs/demo.yaml", f"data.raw={raw}", f"data.prepared={prepared}", "data.parallelism=1",
              "data.settings=[unseen_studies]", "data.validation_fraction=0.0", "run.name=framed",
              f"run.output_dir={tmp_path}", f"train.storage_path={tmp_path}", f"model.path={tiny_model}",
              "model.tiny.tokenizer_corpus_rows=600", "train.setting=unseen_studies"]
    assert main(["prepare", *common]) == 0
    # 8 epochs of the training studies = 448 steps: the party is learned on every seed and data order tried (above)
    assert main(["train", *common, "train.epochs=8", "train.max_steps=1000", "train.eval_every=1000", "train.checkpoint_every=1000"]) == 0

    from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
    from socrates_ray.train.checkpoint import chosen_adapter
    from socrates_ray.infer import TransformersEngine, distributions

    adapter = chosen_adapter(tmp_path / "framed")
    assert adapter is not None
    scorer = TransformersEngine(str(tiny_model), DEFAULT_SYSTEM_PROMPT)
    scorer.load_adapter("framed", adapter)
    options = [1, 2, 3, 4, 5]

    def means(prompts, adapter):
        return [float(np.dot(d, options)) for d in distributions(scorer, prompts, [options] * len(prompts), adapter=adapter)]

    def person(party):
        return {"age": 45, "gender": "Female", "party_id": party}

    topic = "a new community garden"  # a topic no study had: the text alone must move the answer
    frame_pair = [build_prompt(person("Independent"), stimulus(topic, frame)) for frame in ("up", "down")]
    party_pair = [build_prompt(person(party), stimulus(topic, "up")) for party in ("Strong Democrat", "Strong Republican")]
    up, down, democrat, republican = means(frame_pair + party_pair, "framed")
    base_up, base_down, base_democrat, base_republican = means(frame_pair + party_pair, None)
    seen = dict(up=up, down=down, democrat=democrat, republican=republican, base=(base_up, base_down, base_democrat, base_republican))
    print("learning probe", {k: v if k == "base" else round(v, 2) for k, v in seen.items()})
    # the humans' means (answer_probs): Independent up 3.99 vs down 2.01; under "up" Democrat 4.56 vs Republican 3.21
    assert up - down > 0.5, seen
    assert democrat - republican > 0.5, seen
    assert abs(base_up - base_down) < up - down and abs(base_democrat - base_republican) < democrat - republican, seen

    # the researcher's view of the same adapter: `socrates-ray screen` on a planned up-vs-down experiment on
    # the new topic recovers the large true effect (about -2 points: 3.99 vs 2.01 above) in the right direction
    import json

    import yaml

    spec = {"name": "garden", "population": {"source": "marginals", "n_per_arm": 60, "seed": 0,
                                             "marginals": {"party_id": {p: 1.0 for p in PARTIES}, "age": {"45": 1.0}, "gender": {"Female": 1.0}}},
            "conditions": [{"name": "up", "stimulus": f"The council is discussing {topic}. {FRAMES['up']}"},
                           {"name": "down", "stimulus": f"The council is discussing {topic}. {FRAMES['down']}"}],
            "outcomes": [{"name": "support", "question": QUESTION}], "subgroups": ["party_id"],
            "contrasts": [{"treatment": "down", "control": "up", "expected": "negative"}],
            "analysis": {"bootstrap": 200, "min_subgroup_n": 10}}
    (tmp_path / "garden.yaml").write_text(yaml.safe_dump(spec))
    assert main(["screen", "--experiment", str(tmp_path / "garden.yaml"), *common, "simulate.temperature=1.0",
                 "simulate.replicas=1"]) == 0
    folder = tmp_path / "framed" / "screen" / "garden"
    screened = json.loads((folder / "screen.json").read_text())
    effect = screened["models"]["finetuned"]["outcomes"]["support"]["contrasts"][0]
    base_effect = screened["models"]["base"]["outcomes"]["support"]["contrasts"][0]
    print("screen", {k: effect[k] for k in ("difference", "interval", "d", "verdict", "humans_per_arm_needed")})
    assert effect["difference"] < -0.5 and effect["interval"][1] < 0 and effect["verdict"] == "negative: as expected", effect
    assert abs(base_effect["difference"]) < abs(effect["difference"]), base_effect
    assert effect["humans_per_arm_needed"] is not None and effect["humans_per_arm_needed"] < 200, effect
    assert all((folder / f).is_file() for f in ("report.md", "distributions.png", "effects.png"))

