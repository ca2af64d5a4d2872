"""Does the finetuned model read its prompt? A short LoRA finetune through the production loop
(Ray Train + DeepSpeed, the demo's recipe) on data where one framing sentence moves answers,
then two prompts that differ only in that sentence must get distributions whose means differ in
the right direction. A model that learns one answer distribution per scale (the failure this
guards against) gives the two prompts the same distribution.

90 steps = 2 epochs of the 720 rows. Measured with the demo recipe: after 60 steps the adapter
had learned only the answer marginal (means 3.06 vs 3.03), after 90 they are 3.24 vs 2.48: small
models sit on a plateau before they start reading, which is why the demo's budget matters."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from socrates_ray.cli import main
from socrates_ray.data.prompts import build_prompt
from socrates_ray.data.schema import RAW_SCHEMA

pytestmark = pytest.mark.ray

FRAMES = {
    "up": "Supporters say the plan would protect families and create many good local jobs.",
    "down": "Critics warn the plan would waste money and raise taxes for every household.",
}
TOPICS = ("a new city park", "longer library hours", "a bus line to the airport", "a recycling program",
          "a youth sports league", "free school lunches")
QUESTION = "How much do you support this plan? Only return an integer from 1 to 5, where 1 means Not at all and 5 means Completely, nothing else."


def stimulus(topic: str, frame: str) -> str:
    return f"The council is discussing {topic}. {FRAMES[frame]}\n\n{QUESTION}"


def write_framed_dataset(folder, rows_per_cell: int = 60, seed: int = 0) -> None:
    """Six studies (one topic each), two conditions: the 'up' frame pushes answers toward 5, 'down' toward 1."""
    rng = np.random.default_rng(seed)
    columns = {f.name: [] for f in RAW_SCHEMA}
    for s, topic in enumerate(TOPICS):
        sample_id = 0
        for c, frame in enumerate(("up", "down")):
            probs = np.array([0.04, 0.08, 0.18, 0.3, 0.4]) if frame == "up" else np.array([0.4, 0.3, 0.18, 0.08, 0.04])
            for p in range(rows_per_cell):
                demo = {"age": int(rng.integers(18, 90)), "gender": str(rng.choice(["Female", "Male"])),
                        "party_id": str(rng.choice(["Strong Democrat", "Independent", "Strong Republican"]))}
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


def test_a_short_finetune_learns_what_a_framing_sentence_does(ray_local, tmp_path, tiny_model):
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    write_framed_dataset(raw)
    common = ["--config", "configs/demo.yaml", f"data.raw={raw}", f"data.prepared={prepared}", "data.parallelism=1",
              "data.settings=[unseen_studies]", "data.validation_fraction=0.0", "run.name=framed",
              f"run.output_dir={tmp_path}", f"train.storage_path={tmp_path}", f"model.path={tiny_model}",
              "model.tiny.tokenizer_corpus_rows=600", "train.setting=unseen_studies"]
    assert main(["prepare", *common]) == 0
    assert main(["train", *common, "train.max_steps=90", "train.eval_every=90", "train.checkpoint_every=90"]) == 0

    from socrates_ray.config import DEFAULT_SYSTEM_PROMPT
    from socrates_ray.eval_job import newest_adapter
    from socrates_ray.score import Scorer

    adapter = newest_adapter(tmp_path / "framed")
    assert adapter is not None
    scorer = Scorer(str(tiny_model), DEFAULT_SYSTEM_PROMPT)
    scorer.load_adapter("framed", adapter)
    persona = {"age": 45, "gender": "Female", "party_id": "Independent"}
    topic = "a new community garden"  # a topic no study had: the frame alone must move the answer
    prompts = [build_prompt(persona, stimulus(topic, frame)) for frame in ("up", "down")]
    options = [[1, 2, 3, 4, 5]] * 2
    up, down = (float(np.dot(d, options[0])) for d in scorer.distributions(prompts, options, adapter="framed"))
    base_up, base_down = (float(np.dot(d, options[0])) for d in scorer.distributions(prompts, options))
    # the human means are 3.94 ('up') and 2.06 ('down'); the base model barely tells them apart
    assert up - down > 0.5, (up, down, base_up, base_down)
    assert abs(base_up - base_down) < up - down
