"""Ray Train + DeepSpeed finetuning on CPU: 2 gloo workers, the tiny offline model."""

import json
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from socrates_ray.cli import main

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def prepared(train_prepared):
    return train_prepared


@pytest.fixture(scope="module")
def model(tiny_model, tiny_shape):
    """model.path and the shape its tiny model was built with: what every training here is given."""
    return [f"model.path={tiny_model}", *tiny_shape]


def train(tmp_path, prepared, model, name, *overrides):
    return main(["train", "--config", "configs/demo.yaml", *train_overrides(tmp_path, prepared, model, name, *overrides)])


def train_overrides(tmp_path, prepared, model, name, *overrides):
    return [
        f"run.name={name}", f"run.output_dir={tmp_path}", f"train.storage_path={tmp_path}",
        f"data.prepared={prepared}", *model,
        "train.setting=unseen_studies", "train.lora.target_modules=all-linear",
        # the test's own LoRA, independent of the demo's tuning (no dropout: stages must agree exactly)
        "train.lora.r=16", "train.lora.alpha=32", "train.lora.dropout=0.0",
        "ingest.max_length=1024", "ingest.micro_batch_size=2", "train.max_steps=8", "train.warmup_ratio=0.0",
        "train.lr=5.0e-3", "train.eval_every=4", "train.eval_batches=2", "train.checkpoint_every=2",
        # fp32 wherever the machine could do bf16: these tests compare stages and exports number for number
        "train.precision=fp32",
        # the answers alone unless a test asks for the demo's persona probe and anchor teacher
        "train.persona_probe.weight=0", "train.anchor_teacher.weight=0", "train.anchor_teacher.contrast=0",
        *overrides,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One runs folder for the module: the ZeRO-3 run trained by the stage test is the one the
    reload test reads (run alone, the reload test trains its own)."""
    return tmp_path_factory.mktemp("runs")


def metrics(tmp_path, name):
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def wandb_offline_records(run_folder):
    """The records of a W&B offline run (<run>/wandb/offline-run-*/run-*.wandb): a ':W&B' header, then
    LevelDB log blocks of 32 KiB whose chunks (7-byte header: crc, length, type) join into protobuf Records."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_folder.glob("wandb/offline-run-*/run-*.wandb")
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def check_trackers(run_folder, logged):
    """The run's steps read back from MLflow's SQLite store and W&B's offline file, as metrics.jsonl has them."""
    from mlflow import MlflowClient

    ids = json.loads((run_folder / "tracking.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{run_folder / 'mlflow.db'}")
    run = client.get_run(ids["mlflow"])
    assert run.info.run_name == run_folder.name and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "socrates_ray"
    assert run.data.params["train.zero_stage"] == "2" and run.data.params["run.name"] == run_folder.name
    history = sorted(client.get_metric_history(ids["mlflow"], "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(m["step"], pytest.approx(m["loss"])) for m in logged]

    records = wandb_offline_records(run_folder)
    (start,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert start.run_id == ids["wandb"] and start.display_name == run_folder.name and start.project == "socrates_ray"
    config = {item.key: json.loads(item.value_json) for item in start.config.update}
    assert config["train"]["zero_stage"] == 2
    steps = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["loss"]) for h in steps] == [(m["step"], pytest.approx(m["loss"])) for m in logged]
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # the run was finished, not cut off


def latest_state(tmp_path, name):
    folders = sorted((tmp_path / name).glob("checkpoint_0*"))
    return folders[-1], json.loads((folders[-1] / "state.json").read_text())


def test_zero2_and_zero3_lora_losses_fall_and_agree(ray_local, runs, prepared, model):
    tmp_path = runs
    assert train(tmp_path, prepared, model, "z2", "train.zero_stage=2", "train.report_to=[tensorboard,wandb,mlflow]") == 0
    # ZeRO-3 with every weight partitioned (norms too) and gradient checkpointing: LoRA's frozen weights
    # are gathered again in each recompute (what raised CheckpointError before DeepSpeed 0.19.8)
    assert train(tmp_path, prepared, model, "z3", "train.zero_stage=3", "train.zero3_persistence_threshold=0",
                 "train.gradient_checkpointing=true") == 0
    z2, z3 = metrics(tmp_path, "z2"), metrics(tmp_path, "z3")
    assert [m["step"] for m in z2] == list(range(1, 9)) == [m["step"] for m in z3]
    for run in (z2, z3):
        assert run[-1]["loss"] < run[0]["loss"] - 0.3
        assert run[-1]["eval_loss"] < run[3]["eval_loss"] + 1e-6
        assert all(m["tokens_per_s"] > 0 and 0 < m["non_padding_share"] <= 1 for m in run)
    # same seed, same data: the stages (and checkpointing, which recomputes the same activations) compute
    # the same first losses
    assert z2[0]["loss"] == pytest.approx(z3[0]["loss"], abs=1e-4)
    assert z2[1]["loss"] == pytest.approx(z3[1]["loss"], abs=1e-3)
    assert (tmp_path / "z2" / "tensorboard").is_dir()
    check_trackers(tmp_path / "z2", z2)
    # keep_checkpoints=2: only the latest two remain (Ray deletes older ones in the background)
    deadline = time.time() + 30
    while len(list((tmp_path / "z2").glob("checkpoint_0*"))) > 2 and time.time() < deadline:
        time.sleep(0.5)
    assert [p.name for p in sorted((tmp_path / "z2").glob("checkpoint_0*"))] == ["checkpoint_000006", "checkpoint_000008"]


def test_packed_rows_train_the_same_through_per_example_attention_as_through_the_dense_mask(ray_local, tmp_path, prepared, model):
    """2 workers on packed rows (~3 examples each): train.attention=segments (no mask, one causal call
    per example) converges step for step like the dense (B, 1, L, L) mask it replaces."""
    packed = ("ingest.layout=pack", "ingest.micro_batch_size=1", "train.checkpoint_every=8")
    assert train(tmp_path, prepared, model, "dense", *packed, "train.attention=dense") == 0
    assert train(tmp_path, prepared, model, "segments", *packed, "train.attention=segments") == 0
    dense, segments = metrics(tmp_path, "dense"), metrics(tmp_path, "segments")
    assert [m["step"] for m in dense] == list(range(1, 9)) == [m["step"] for m in segments]
    assert dense[-1]["loss"] < dense[0]["loss"] - 0.3
    assert json.loads((tmp_path / "dense" / "ingest_stats.json").read_text())["samples_per_row"] > 2  # really packed
    for d, s in zip(dense, segments):
        assert s["loss"] == pytest.approx(d["loss"], abs=1e-4) and s["non_padding_share"] == d["non_padding_share"]
        assert s.get("eval_loss", 0.0) == pytest.approx(d.get("eval_loss", 0.0), abs=1e-4)


PROBE = textwrap.dedent(
    """
    import sys, torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
    ids = torch.arange(5, 45).reshape(2, 20)
    with torch.no_grad():
        torch.save(model(input_ids=ids).logits, sys.argv[3])
    """
)


def test_zero3_adapter_reloads_in_a_fresh_process_with_the_trained_logits(ray_local, runs, tmp_path, prepared, model, tiny_model):
    if not (runs / "z3").exists():
        assert train(runs, prepared, model, "z3", "train.zero_stage=3", "train.zero3_persistence_threshold=0", "train.max_steps=4") == 0
    folder, state = latest_state(runs, "z3")
    from safetensors.torch import load_file

    adapter = load_file(folder / "export" / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in adapter.items())  # it trained
    # The trained weights, independently: consolidated from the ZeRO-3 optimizer partitions.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    trained = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag="ds", exclude_frozen_parameters=True)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    missing = set(trained) - set(model.state_dict())
    assert not missing
    model.load_state_dict(trained, strict=False)
    ids = torch.arange(5, 45).reshape(2, 20)
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", PROBE, str(tiny_model), str(folder / "export"), str(out)], check=True)
    torch.testing.assert_close(torch.load(out), expected, atol=1e-5, rtol=1e-5)


KILLS = {(1, 5), (0, 7)}  # (rank, optimizer step): that rank's process exits hard after the step, once per run


def loop_with_kills(config: dict) -> None:
    """The SFT loop with a fault installed in this worker process: after each step's checkpoint
    cadence, a rank in KILLS exits hard at its step (once per run: a marker file in the run folder
    lets the restarted attempt get past it)."""
    import os
    from pathlib import Path

    import ray.train

    from socrates_ray.train import sft_loop, worker

    cadence_after_step = worker.Cadence.after_step

    def after_step(self, record, eval_loss, last):
        cadence_after_step(self, record, eval_loss, last)
        rank, step = ray.train.get_context().get_world_rank(), self.state.step
        marker = Path(config["run_dir"]) / f"fault_fired_step{step}_rank{rank}"
        if (rank, step) in KILLS and not marker.exists():
            marker.touch()
            os._exit(1)

    worker.Cadence.after_step = after_step
    sft_loop.train_loop_per_worker(config)


def test_a_killed_worker_is_restored_and_a_failed_run_resumes_where_it_stopped(ray_local, runs, prepared, model, capsys, monkeypatch):
    """One run for both recoveries (each Ray Train start costs ~40 s here): rank 1 exits hard at
    step 5 and Ray Train restores the run from checkpoint 4 (train.max_failures=1); rank 0 exits at
    step 7, one failure too many, so the command fails for good; the same command again resumes at
    checkpoint 6 and computes the losses the uninterrupted z2 run computed (same settings)."""
    import ray.cloudpickle

    from socrates_ray.train import trainer

    tmp_path = runs
    # the workers unpickle the loop by value (this test module is not importable there)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(trainer, "loop_for", lambda method: loop_with_kills)
    retry = ("train.max_failures=1",)
    assert train(tmp_path, prepared, model, "again", *retry) == 2  # failed for good: exit 2
    assert (tmp_path / "again" / "fault_fired_step5_rank1").exists() and (tmp_path / "again" / "fault_fired_step7_rank0").exists()
    # steps 1-5, crash, restore checkpoint 4, steps 5-7, crash again: only steps past a checkpoint trained twice
    assert [m["step"] for m in metrics(tmp_path, "again")] == [1, 2, 3, 4, 5, 5, 6, 7]
    assert latest_state(tmp_path, "again")[1]["step"] == 6
    monkeypatch.undo()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert train(tmp_path, prepared, model, "again", *retry) == 0  # same command: resumes at step 6
    resumed = metrics(tmp_path, "again")
    assert [m["step"] for m in resumed] == [1, 2, 3, 4, 5, 5, 6, 7, 7, 8]
    if not (tmp_path / "z2" / "metrics.jsonl").exists():  # run alone: the uninterrupted run to compare with
        assert train(tmp_path, prepared, model, "z2", "train.zero_stage=2", "train.report_to=[tensorboard,wandb,mlflow]") == 0
    uninterrupted = {m["step"]: m["loss"] for m in metrics(tmp_path, "z2")}
    for m in resumed:  # the same data position, weights, optimizer and schedule after each restore
        assert m["loss"] == pytest.approx(uninterrupted[m["step"]], abs=1e-4), m["step"]
    # The resume position is a count of micro batches: under another micro batch size it points
    # elsewhere in the data. Such a re-run is refused before any worker starts, and says what changed.
    recorded = (tmp_path / "again" / "config.yaml").read_text()
    capsys.readouterr()
    assert train(tmp_path, prepared, model, "again", *retry, "ingest.micro_batch_size=4") == 2
    err = capsys.readouterr().err
    assert "ingest.micro_batch_size: 2 -> 4" in err and "new run.name" in err
    assert (tmp_path / "again" / "config.yaml").read_text() == recorded  # the run's record is untouched
    capsys.readouterr()
    assert train(tmp_path, prepared, model, "again", *retry) == 0  # the old settings: finished, nothing to redo
    assert "already finished" in capsys.readouterr().out  # and no worker started for it
    assert len(metrics(tmp_path, "again")) == 10
    assert latest_state(tmp_path, "again")[1]["step"] == 8


def test_full_finetuning_exports_an_ordinary_model(ray_local, tmp_path, prepared, model, tiny_model):
    assert train(tmp_path, prepared, model, "full", "train.finetuning=full", "train.zero_stage=3",
                 "train.zero3_persistence_threshold=0", "train.max_steps=4", "train.lr=1.0e-3") == 0
    from transformers import AutoModelForCausalLM

    folder, state = latest_state(tmp_path, "full")
    assert state["step"] == 4
    tuned = AutoModelForCausalLM.from_pretrained(folder / "export")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    moved = [n for (n, p), q in zip(tuned.named_parameters(), base.parameters()) if not torch.equal(p, q)]
    assert len(moved) > 5
    assert all(p.numel() > 0 for p in tuned.parameters())
    losses = [m["loss"] for m in metrics(tmp_path, "full")]
    assert losses[-1] < losses[0]


def test_a_persona_probe_and_an_anchor_teacher_train_beside_the_answers_on_packed_rows_and_stay_out_of_the_adapter(
        ray_local, tmp_path, prepared, model, capsys):
    # ZeRO-3 (the probe is partitioned with the model) on packed rows (several examples' persona classes and soft
    # labels a row), tokenized by the actor pool (the fitted anchor travels to each tokenizer actor)
    assert train(tmp_path, prepared, model, "probe", "train.persona_probe.weight=1.0", "train.persona_probe.until=1.0",
                 "train.anchor_teacher.weight=2.0", "train.anchor_teacher.contrast=20.0", "ingest.tokenize_in_driver_below=0",
                 "train.zero_stage=3", "ingest.layout=pack", "train.max_steps=6", "train.checkpoint_every=6") == 0
    out = capsys.readouterr().out
    assert "anchor teacher fitted on" in out
    # the pool's shuffle cannot pair a cell's rows: the run says so, and the contrast reads what cells rows share
    assert "WARNING the train split" in out and "train.anchor_teacher.contrast reads only the cells" in out
    logged = metrics(tmp_path, "probe")
    assert len([m["anchor_contrast_loss"] for m in logged if m["anchor_contrast_loss"] >= 0]) == 6
    probe = [m["persona_probe_loss"] for m in logged]
    assert len(probe) == 6 and probe[0] > 3.0 and probe[-1] < probe[0] - 0.5  # chance: ln 64 = 4.16
    taught = [m["anchor_teacher_loss"] for m in logged]
    assert len(taught) == 6 and taught[-1] < taught[0] and all(0 < t < 10 for t in taught), taught
    folder, state = latest_state(tmp_path, "probe")
    assert state["fingerprint"]["train.persona_probe"]["weight"] == 1.0
    assert state["fingerprint"]["train.anchor_teacher"] == {"weight": 2.0, "contrast": 20.0}
    from safetensors.torch import load_file

    keys = set(load_file(folder / "export" / "adapter_model.safetensors"))
    assert keys and all("lora_" in k for k in keys)


def test_each_epoch_reads_the_materialized_split_in_an_order_of_its_own_and_a_replan_repeats_it(ray_local, tmp_path, prepared, model, tiny_model):
    """A materialized split read again would replay the first epoch's batches (and a contrast run's
    pairs) in the same order: every later epoch gets a seeded order of its own, the same on a resume
    (plan_run again), recorded in the fingerprint. Tokenized in the driver: rows reshuffled (in fresh
    same-cell pairs for the contrast); by the actor pool: the stored rows shuffled again."""
    from socrates_ray.config import load_config
    from socrates_ray.train.trainer import plan_run

    def plan(*overrides):
        lines = []
        cfg = load_config("configs/demo.yaml", train_overrides(tmp_path, prepared, model, "orders", "train.max_steps=null", *overrides))
        return plan_run(cfg, str(tiny_model), log=lines.append), "\n".join(lines)

    def examples(ds):
        return [(tuple(r["input_ids"]), int(r["teacher_cell"][0])) for r in ds.take_all()]

    contrast = ("train.epochs=3", "train.anchor_teacher.weight=1.0", "train.anchor_teacher.contrast=10.0")
    first, said = plan(*contrast)
    assert first.epoch_orders == 3 and first.fingerprint["epoch_orders"] == 3 and "epochs 2-3 each read the train split" in said
    assert set(first.datasets) == {"train", "train_1", "train_2", "eval"}
    epochs = [examples(first.datasets[name]) for name in ("train", "train_1", "train_2")]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])  # the same examples ...
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]  # ... each epoch in its own order
    pairs = []
    for rows in epochs:
        cells = [cell for _, cell in rows]
        assert sum(a == b for a, b in zip(cells[::2], cells[1::2])) > 0.9 * (len(cells) // 2)  # still same-cell pairs
        pairs.append({frozenset((rows[i][0], rows[i + 1][0])) for i in range(0, len(rows) - 1, 2)})
    assert len(pairs[0] & pairs[1]) < 0.2 * len(pairs[0])  # fresh pairs, not the first epoch's again
    again, _ = plan(*contrast)  # a resumed run plans again: the same orders
    assert [examples(again.datasets[name]) for name in ("train", "train_1", "train_2")] == epochs

    one, said = plan("train.max_steps=2")  # a run inside one epoch stores nothing more, as before
    assert one.epoch_orders == 1 and one.fingerprint["epoch_orders"] is None and set(one.datasets) == {"train", "eval"}

    pool, said = plan("train.epochs=2", "ingest.tokenize_in_driver_below=0")
    assert set(pool.datasets) == {"train", "train_1", "eval"} and "stored rows shuffled again" in said
    stored = [[tuple(r["input_ids"]) for r in pool.datasets[name].take_all()] for name in ("train", "train_1")]
    assert sorted(stored[0]) == sorted(stored[1]) and stored[0] != stored[1]
