"""Resume state and the fingerprint check (pure: no Ray, no DeepSpeed)."""

from __future__ import annotations

import json

import pytest

from socrates_ray.train.checkpoint import ResumeError, TrainState, check_resume, newest_checkpoint, newest_checkpoint_any

FINGERPRINT = {"ingest.micro_batch_size": 4, "ingest.num_workers": 2, "optimizer_steps": 100}


def saved(folder, step: int, fingerprint: dict | None, complete_ranks: int = 0, prefix: str = ""):
    folder.mkdir(parents=True)
    state = TrainState(step=step, epoch=0, micro_in_epoch=step, fingerprint=fingerprint or {})
    state.save(folder)
    if fingerprint is None:  # a checkpoint written before fingerprints existed
        (folder / "state.json").write_text(json.dumps({"step": step, "epoch": 0, "micro_in_epoch": step, "tokens": 0}))
    if complete_ranks:
        (folder / "export").mkdir()
        (folder / "ds").mkdir()
        for r in range(complete_ranks):
            (folder / "ds" / f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt").touch()
    return folder


def test_the_same_settings_resume_and_the_state_keeps_its_fingerprint(tmp_path) -> None:
    folder = saved(tmp_path / "checkpoint_000004", 4, FINGERPRINT)
    check_resume(folder, dict(FINGERPRINT), "run")
    assert TrainState.load(folder).fingerprint == FINGERPRINT


def test_other_settings_are_refused_naming_each_change(tmp_path) -> None:
    folder = saved(tmp_path / "checkpoint_000004", 4, FINGERPRINT)
    changed = FINGERPRINT | {"ingest.micro_batch_size": 8, "ingest.num_workers": 4}
    with pytest.raises(ResumeError) as err:
        check_resume(folder, changed, "demo")
    message = str(err.value)
    assert "ingest.micro_batch_size: 4 -> 8" in message and "ingest.num_workers: 2 -> 4" in message
    assert "run.name=demo" in message and "optimizer_steps" not in message


def test_a_checkpoint_from_before_epoch_orders_resumes_in_its_first_epoch_or_finished_and_not_past_it(tmp_path) -> None:
    """Later epochs' own orders are recorded as epoch_orders; a checkpoint made before lacks the key. Its
    first epoch was read as now, and a finished run trains nothing more: those resume (a finished one
    says so); one that had started a later epoch replayed the first's order, and is refused."""
    now = FINGERPRINT | {"epoch_orders": 2}
    check_resume(saved(tmp_path / "first" / "checkpoint_000040", 40, FINGERPRINT), now, "run")
    finished = saved(tmp_path / "done" / "checkpoint_000100", 100, FINGERPRINT)
    TrainState(step=100, epoch=1, micro_in_epoch=10, fingerprint=FINGERPRINT).save(finished)
    check_resume(finished, now, "run")
    later = saved(tmp_path / "later" / "checkpoint_000060", 60, FINGERPRINT)
    TrainState(step=60, epoch=1, micro_in_epoch=10, fingerprint=FINGERPRINT).save(later)
    with pytest.raises(ResumeError, match="epoch_orders .*: None -> 2"):
        check_resume(later, now, "run")
    with pytest.raises(ResumeError, match="epoch_orders .*: 2 -> 3"):  # a recorded count is never waived
        check_resume(saved(tmp_path / "recorded" / "checkpoint_000040", 40, now), FINGERPRINT | {"epoch_orders": 3}, "run")


def test_a_checkpoint_without_a_fingerprint_is_not_trusted(tmp_path) -> None:
    folder = saved(tmp_path / "checkpoint_000002", 2, None)
    assert TrainState.load(folder).fingerprint == {}
    with pytest.raises(ResumeError, match="ingest.micro_batch_size: None -> 4"):
        check_resume(folder, FINGERPRINT, "run")


def test_the_check_sees_checkpoints_another_worker_count_would_not_resume(tmp_path) -> None:
    """A 2-worker checkpoint is incomplete for 4 workers; the fingerprint check must still find it
    (otherwise a changed worker count would start over beside it, or fail inside DeepSpeed)."""
    saved(tmp_path / "checkpoint_000002", 2, FINGERPRINT, complete_ranks=2)
    newer = saved(tmp_path / "checkpoint_000004", 4, FINGERPRINT, complete_ranks=2)
    assert newest_checkpoint(tmp_path, 4, None) is None
    assert newest_checkpoint(tmp_path, 2, None) == newer
    assert newest_checkpoint_any(tmp_path) == newer
    assert newest_checkpoint_any(tmp_path / "missing") is None


@pytest.mark.parametrize("prefix", ["", "bf16_"])
def test_a_checkpoint_is_complete_with_every_ranks_optimizer_partition_fp32_or_bf16(tmp_path, prefix) -> None:
    # bf16 runs write bf16_zero_pp_rank_<r>_...: once counted as incomplete, so a restarted run that
    # Ray had not yet told about its newest checkpoint started over from step 0
    from socrates_ray.train.checkpoint import is_complete

    folder = saved(tmp_path / "checkpoint_000004", 4, FINGERPRINT, complete_ranks=2, prefix=prefix)
    assert is_complete(folder, 2) and not is_complete(folder, 3)
    assert newest_checkpoint(tmp_path, 2, None) == folder


def test_a_newer_complete_folder_beats_rays_registered_checkpoint_and_an_incomplete_one_does_not(tmp_path) -> None:
    """A worker that dies between writing a checkpoint and Ray's next poll leaves a complete folder
    Ray never registered: resuming from the older registered one would train those steps twice."""
    registered = saved(tmp_path / "checkpoint_000002", 2, FINGERPRINT, complete_ranks=2)
    unregistered = saved(tmp_path / "checkpoint_000004", 4, FINGERPRINT, complete_ranks=2)
    assert newest_checkpoint(tmp_path, 2, registered) == unregistered
    saved(tmp_path / "checkpoint_000006", 6, FINGERPRINT, complete_ranks=1)  # rank 1's partition never written
    assert newest_checkpoint(tmp_path, 2, registered) == unregistered
    assert newest_checkpoint(tmp_path / "missing", 2, registered) == registered


@pytest.mark.parametrize(
    ("rows", "workers", "micro", "accum", "epochs", "max_steps", "expected"),
    [
        (100, 2, 4, 1, 2, None, (12, 24)),  # 50 rows a worker -> 12 full micro batches (2 rows dropped)
        (100, 2, 4, 5, 1, None, (10, 2)),  # an epoch ends on an optimizer-step boundary: 12 -> 10
        (100, 2, 4, 1, 3, 30, (12, 30)),  # max_steps caps the epochs
        (100, 2, 4, 1, 1, 500, (12, 12)),  # ... and never extends them
        (7, 2, 4, 1, 1, None, (0, 0)),  # too few rows for one micro batch: the caller refuses it
    ],
)
def test_plan_steps_gives_equal_shards_whole_optimizer_steps(rows, workers, micro, accum, epochs, max_steps, expected) -> None:
    from socrates_ray.train.trainer import plan_steps

    assert plan_steps(rows, workers, micro, accum, epochs, max_steps) == expected


def test_the_adapter_evaluate_and_serve_take_follows_train_keep_by(tmp_path) -> None:
    """keep_by=eval_loss keeps the best checkpoints by eval loss; evaluate once took the newest anyway."""
    from socrates_ray.train.checkpoint import chosen_adapter

    for step in (4, 8, 12):
        (tmp_path / f"checkpoint_{step:06d}" / "export").mkdir(parents=True)
        (tmp_path / f"checkpoint_{step:06d}" / "export" / "adapter_config.json").write_text("{}")
    losses = {4: 1.5, 8: 0.9, 12: 1.1}
    (tmp_path / "metrics.jsonl").write_text("\n".join(
        json.dumps({"step": s, "loss": 1.0, **({"eval_loss": losses[s]} if s in losses else {})}) for s in range(1, 13)))
    assert chosen_adapter(tmp_path).endswith("checkpoint_000012/export")
    assert chosen_adapter(tmp_path, "latest").endswith("checkpoint_000012/export")
    assert chosen_adapter(tmp_path, "eval_loss").endswith("checkpoint_000008/export")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 12, "loss": 1.0}))  # no eval loss recorded
    assert chosen_adapter(tmp_path, "eval_loss").endswith("checkpoint_000012/export")
    assert chosen_adapter(tmp_path / "missing") is None


def test_a_small_materialized_split_is_tokenized_in_the_driver_and_a_resume_must_agree(tmp_path) -> None:
    """The driver shuffles with numpy and reads with pyarrow, Ray Data with its own seeded shuffle of
    the blocks its Parquet reader makes: the same seed gives two orders, so a run resumed across the
    threshold is refused, with what sets the key named."""
    from socrates_ray.config import load_config
    from socrates_ray.data.ingest import PARQUET_READER
    from socrates_ray.train.datasets import tokenized_where
    from socrates_ray.train.trainer import run_fingerprint

    cfg = load_config("configs/demo.yaml", ["ingest.tokenize_in_driver_below=20000"])
    assert tokenized_where(cfg, 19_999) == "driver" and tokenized_where(cfg, 20_000) == "actors"
    assert tokenized_where(load_config("configs/demo.yaml", ["ingest.tokenize_in_driver_below=0"]), 1) == "actors"
    driver, pool = (run_fingerprint(cfg, "m", 100, 10, False, where) for where in ("driver", "actors"))
    assert {k for k in driver if driver[k] != pool[k]} == {"tokenized_in", "parquet_reader"}
    assert (driver["tokenized_in"], pool["tokenized_in"], pool["parquet_reader"]) == ("driver", "actors", PARQUET_READER)
    folder = saved(tmp_path / "checkpoint_000004", 4, driver)
    with pytest.raises(ResumeError, match=r"tokenized_in \(ingest.materialize, ingest.tokenize_in_driver_below\): 'driver' -> 'actors'"):
        check_resume(folder, pool, "demo")
    other_reader = saved(tmp_path / "before" / "checkpoint_000004", 4, pool | {"parquet_reader": "Ray Data V2"})
    with pytest.raises(ResumeError, match=r"parquet_reader .*'Ray Data V2' -> 'Ray Data V1"):
        check_resume(other_reader, pool, "demo")
    check_resume(saved(tmp_path / "same" / "checkpoint_000004", 4, pool), dict(pool), "demo")


def test_a_packed_run_records_its_packer_and_one_packed_by_another_is_refused(tmp_path) -> None:
    """Which examples share a row depends on the packing algorithm (data.packing): a packed
    checkpoint made by another packer points at other rows."""
    from socrates_ray.config import load_config
    from socrates_ray.data.packing import PACKER
    from socrates_ray.train.trainer import run_fingerprint

    packed = run_fingerprint(load_config("configs/demo.yaml", ["ingest.layout=pack"]), "m", 100, 10, False)
    padded = run_fingerprint(load_config("configs/demo.yaml", ["ingest.layout=pad_longest"]), "m", 100, 10, False)
    assert packed["packer"] == PACKER and padded["packer"] is None
    before = saved(tmp_path / "checkpoint_000004", 4, packed | {"packer": "first-fit decreasing"})
    with pytest.raises(ResumeError, match=r"packer .*'first-fit decreasing' -> 'fewest of first-fit"):
        check_resume(before, packed, "demo")


def test_the_anchor_teachers_contrast_joins_the_fingerprint_only_when_on(tmp_path) -> None:
    """A run checkpointed before train.anchor_teacher.contrast existed resumes (the key is absent at
    0); turning the contrast on mid-run reorders the rows and is refused."""
    from socrates_ray.config import load_config
    from socrates_ray.train.trainer import run_fingerprint

    off = run_fingerprint(load_config("configs/demo.yaml", []), "m", 100, 10, False)
    on = run_fingerprint(load_config("configs/demo.yaml", ["train.anchor_teacher.contrast=120"]), "m", 100, 10, False)
    assert off["train.anchor_teacher"] == {"weight": 3.0} and on["train.anchor_teacher"] == {"weight": 3.0, "contrast": 120.0}
    before = saved(tmp_path / "checkpoint_000004", 4, off)
    check_resume(before, off, "demo")
    with pytest.raises(ResumeError, match=r"train.anchor_teacher"):
        check_resume(before, on, "demo")


def test_a_checkpoint_cut_short_is_passed_over_for_the_one_before_and_said_why(tmp_path) -> None:
    """A crash during a checkpoint copy leaves files cut short (0 bytes, or half an optimizer file)
    under the right names: the manifests written last tell, and a resume takes the newest whole one."""
    from socrates_ray.train.checkpoint import ResumeError, chosen_adapter, incomplete, skipped_checkpoints, write_manifest

    def whole(step: int):
        folder = saved(tmp_path / f"checkpoint_{step:06d}", step, FINGERPRINT)
        for rank in range(2):
            (folder / "ds").mkdir(exist_ok=True)
            (folder / "ds" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"x" * 1000)
        (folder / "export").mkdir()
        (folder / "export" / "adapter_config.json").write_text("{}")
        (folder / "export" / "adapter_model.safetensors").write_bytes(b"w" * 500)
        write_manifest(folder, 0)
        (folder / "manifest.rank1.json").write_text(json.dumps({"ds/zero_pp_rank_1_mp_rank_00_optim_states.pt": 1000}))
        return folder

    older, newer = whole(4), whole(8)
    assert incomplete(newer, 2) is None and newest_checkpoint(tmp_path, 2, newer) == newer
    (newer / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"x" * 300)  # cut short
    assert incomplete(newer, 2) == "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt has 300 of its 1,000 bytes"
    assert newest_checkpoint(tmp_path, 2, newer) == older  # even where Ray registered the damaged one
    assert skipped_checkpoints(tmp_path, 2, older) == [f"{newer.name} (ds/zero_pp_rank_1_mp_rank_00_optim_states.pt has 300 of its 1,000 bytes)"]
    (newer / "export" / "adapter_model.safetensors").write_bytes(b"")  # a 0-byte export is never the adapter evaluated
    assert chosen_adapter(tmp_path) == str(older / "export")
    (older / "manifest.rank1.json").unlink()  # a rank's manifest never written: the copy did not finish
    assert "rank 1's manifest" in incomplete(older, 2) and newest_checkpoint(tmp_path, 2, None) is None

    (newer / "state.json").write_text('{"step": 8, "ep')  # a state cut short: a clear error, never a traceback
    assert newest_checkpoint_any(tmp_path) == older
    with pytest.raises(ResumeError, match="state.json is missing or damaged"):
        TrainState.load(newer)
