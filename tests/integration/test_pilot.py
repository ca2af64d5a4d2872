"""`socrates-ray pilot`: a new study's pilot continues the general adapter in a run of its own, the
adapter lands in serve.adapters_dir and a running app answers it by name; the replay of held-out
studies scores every pilot size on the same people, none of them in a pilot."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import requests

from socrates_ray.cli import main
from socrates_ray.config import load_config

pytestmark = pytest.mark.ray

PORT = 8125
URL = f"http://127.0.0.1:{PORT}"


def general_adapter(model, out):
    """A LoRA adapter with random non-zero weights: the 'general adapter' a pilot continues."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                                LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


def people(table) -> set[tuple[str, int]]:
    return set(zip(table["study_id"].to_pylist(), table["participant"].to_pylist()))


@pytest.fixture(scope="module")
def setup(ray_local, synth_dir, tiny_model, tiny_shape, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pilot")
    overrides = [
        f"run.output_dir={tmp}", f"train.storage_path={tmp}", "run.name=pl", f"data.raw={synth_dir}", f"data.prepared={tmp / 'prepared'}",
        "data.settings=[unseen_studies]", "train.setting=unseen_studies", f"model.path={tiny_model}", *tiny_shape,
        "data.parallelism=1",
        f"evaluate.adapter_path={general_adapter(tiny_model, tmp / 'general')}", f"serve.adapters_dir={tmp / 'adapters'}",
        "pilot.epochs=2", "ingest.max_length=1024", "simulate.temperature=1.0",
    ]
    assert main(["prepare", "--config", "configs/demo.yaml", *overrides]) == 0
    return tmp, overrides


def test_a_pilot_is_trained_served_by_name_and_reported(setup, synth_dir, tiny_model, capsys):
    from ray import serve

    from socrates_ray.serve.app import build_app, serve_launch, start_serve

    tmp, overrides = setup
    # the pilot: the first 12 participants of a study the general adapter never saw, plus a row with no answer
    held = pq.read_table(tmp / "prepared" / "unseen_studies" / "eval", columns=["study_id"])["study_id"].to_pylist()
    raw = pq.read_table(sorted(p for p in synth_dir.rglob("*.parquet") if "ground_truth" not in p.name and "metadata" not in str(p)))
    study = held[0]
    rows = raw.filter(pc.equal(raw["study_id"], study))
    first = sorted(set(rows["participant"].to_pylist()))[:12]
    rows = rows.filter(pc.is_in(rows["participant"], pa.array(first)))
    bad = rows.slice(0, 1).to_pylist()
    bad[0]["sample_id"], bad[0]["response"] = 10 ** 9, None
    pq.write_table(pa.concat_tables([rows, pa.Table.from_pylist(bad, rows.schema)]), tmp / "pilot.parquet")

    assert main(["pilot", "--config", "configs/demo.yaml", "--data", str(tmp / "pilot.parquet"), "--name", "p1", *overrides]) == 0
    out = capsys.readouterr().out
    assert "12 participants" in out and "1 quarantined" in out
    assert "1 quarantined: 1 " in (tmp / "pl" / "pilot" / "p1" / "pilot.md").read_text()
    report = json.loads((tmp / "pl" / "pilot" / "p1" / "pilot.json").read_text())
    assert report["study_id"] == study and report["participants"] == 12 and report["quarantined"] == 1
    assert report["cells"] and all(abs(sum(c["pilot_probs"]) - 1) < 1e-6 for c in report["cells"])
    # the pilot moved the general adapter: its predictions differ
    assert max(abs(c["pilot_mean"] - c["general_mean"]) for c in report["cells"]) > 1e-3
    assert (tmp / "adapters" / "p1" / "adapter_config.json").is_file()
    assert (tmp / "pl" / "pilot" / "p1" / "pilot.png").stat().st_size > 10_000

    # a running app answers the new adapter by name
    cfg = load_config("configs/demo.yaml", [*overrides, f"serve.port={PORT}", "serve.num_cpus=0.5", "serve.app_name=test_pilot",
                                            f"serve.adapters={{general: {tmp / 'general'}}}"])
    start_serve(build_app(cfg, str(tiny_model)), serve_launch(cfg))
    try:
        assert "p1" in [m["id"] for m in requests.get(URL + "/v1/models", timeout=30).json()["data"]]
        stimulus = report["cells"][0]["stimulus"]
        got = {}
        for adapter in ("general", "p1"):
            r = requests.post(URL + "/v1/predict", json={"persona": {"age": 40, "party_id": "Democrat"}, "stimulus": stimulus,
                                                          "adapter": adapter}, timeout=120)
            assert r.status_code == 200, r.text
            got[adapter] = r.json()["probs"]
        assert max(abs(a - b) for a, b in zip(got["general"], got["p1"])) > 1e-4
    finally:
        serve.shutdown()

    # re-running finds the finished run; another run cannot take the name
    assert main(["pilot", "--config", "configs/demo.yaml", "--data", str(tmp / "pilot.parquet"), "--name", "p1", *overrides]) == 0
    assert "already finished" in capsys.readouterr().out
    assert main(["pilot", "--config", "configs/demo.yaml", "--data", str(tmp / "pilot.parquet"), "--name", "p1", *overrides,
                 "run.name=other"]) == 2
    assert "exists (made by pl-pilot-p1-" in capsys.readouterr().err


def test_the_replay_scores_every_pilot_size_on_the_same_people(setup, capsys):
    tmp, overrides = setup
    replay = ["pilot.sizes=[3, 6]", "pilot.studies=2", "pilot.min_held_out=4"]
    assert main(["pilot", "--config", "configs/demo.yaml", "--from-split", "unseen_studies", *overrides, *replay]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp / "pl" / "pilot" / "replay" / "replay.json").read_text())
    assert [p["k"] for p in result["points"]] == [0, 3, 6] and len(result["studies"]) == 2
    for p in result["points"]:
        assert 0 <= p["wasserstein"] <= 1 and 0 <= p["accuracy"] <= 1 and p["anchor_wasserstein"] is not None
        assert set(p["per_study"]) == set(result["studies"])
    assert 0 < result["points"][1]["rows"] < result["points"][2]["rows"]
    scores = tmp / "pl" / "pilot" / "replay" / "scores"
    scored = people(pq.read_table(scores / "k0" / "predictions.parquet"))
    for study in result["studies"]:
        three = people(pq.read_table(tmp / "pl" / "pilot" / "replay" / study / "k3" / "unseen_participants" / "train"))
        six = people(pq.read_table(tmp / "pl" / "pilot" / "replay" / study / "k6" / "unseen_participants" / "train"))
        assert len(three) == 3 and three < six and not six & scored  # nested pilots, nobody scored was in one
        assert people(pq.read_table(scores / "k6" / study / "predictions.parquet")) == {p for p in scored if p[0] == study}
    assert "| 0 (general adapter) |" in out and "| uniform guess |" in out
    assert (tmp / "pl" / "pilot" / "replay" / "replay.png").stat().st_size > 10_000
