"""The framing-and-persona test's finetune (tests/integration/test_learning.py) with any config
overrides, printing the four predicted means instead of asserting: how a LoRA layout or learning
rate changes what a short finetune learns.

    .venv/bin/python bench/framing_probe.py "train.lora.target_modules=[q_proj, k_proj, v_proj, o_proj, embed_tokens, lm_head]"
    .venv/bin/python bench/framing_probe.py train.lora.r=32 "train.lora.rank_pattern={embed_tokens: 128, lm_head: 128}"

    .venv/bin/python bench/framing_probe.py run.seed=1 ingest.tokenize_in_driver_below=0 train.epochs=2

The humans' means: frame up 3.99 vs down 2.01 (an Independent); party, under "up", Strong Democrat
4.56 vs Strong Republican 3.21. The test passes when both predicted differences exceed 0.5.
About 2-3 minutes on 2 cores (448 steps = 8 epochs through Ray Train + DeepSpeed, as the test runs
them). run.seed=N builds the tiny base with that seed too (the test's docstring has the seed table).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from test_learning import stimulus, write_framed_dataset  # noqa: E402  (the test's own data)

from socrates_ray.cli import main  # noqa: E402
from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, TinyModelSection  # noqa: E402
from socrates_ray.data.prompts import build_prompt  # noqa: E402
from socrates_ray.eval.job import chosen_adapter  # noqa: E402
from socrates_ray.models import ensure_tiny_model  # noqa: E402
from socrates_ray.score import Scorer  # noqa: E402


def run(overrides: list[str]) -> list[float]:
    import ray

    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        seed = int(next((o.split("=", 1)[1] for o in overrides if o.startswith("run.seed=")), 0))
        tiny = ensure_tiny_model(tmp_path / "tiny", TinyModelSection(tokenizer_corpus_rows=600), seed=seed)  # the test's fixture at 0
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        write_framed_dataset(tmp_path / "raw")
        common = ["--config", "configs/demo.yaml", f"data.raw={tmp_path / 'raw'}", f"data.prepared={tmp_path / 'prepared'}",
                  "data.parallelism=1", "data.settings=[unseen_studies]", "data.validation_fraction=0.0", "run.name=framed",
                  f"run.output_dir={tmp_path}", f"train.storage_path={tmp_path}", f"model.path={tiny}",
                  "model.tiny.tokenizer_corpus_rows=600", "train.setting=unseen_studies"]
        assert main(["prepare", *common]) == 0
        assert main(["train", *common, "train.epochs=8", "train.max_steps=1000", "train.eval_every=1000",
                     "train.checkpoint_every=1000", *overrides]) == 0
        scorer = Scorer(str(tiny), DEFAULT_SYSTEM_PROMPT)
        scorer.load_adapter("framed", chosen_adapter(tmp_path / "framed"))

        def person(party: str) -> dict[str, object]:
            return {"age": 45, "gender": "Female", "party_id": party}

        topic = "a new community garden"
        prompts = ([build_prompt(person("Independent"), stimulus(topic, f)) for f in ("up", "down")]
                   + [build_prompt(person(p), stimulus(topic, "up")) for p in ("Strong Democrat", "Strong Republican")])
        dists = scorer.distributions(prompts, [[1, 2, 3, 4, 5]] * 4, adapter="framed")
        ray.shutdown()
        return [float(np.dot(d, [1, 2, 3, 4, 5])) for d in dists]


if __name__ == "__main__":
    up, down, democrat, republican = run(sys.argv[1:])
    verdict = "passes" if up - down > 0.5 and democrat - republican > 0.5 else "fails"
    print(f"frame: up {up:.2f} vs down {down:.2f}; party: Democrat {democrat:.2f} vs Republican {republican:.2f}: the test {verdict}")
