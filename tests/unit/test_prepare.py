"""prepare on data with every kind of bad row: rows_in == rows_kept + rows_quarantined."""

import copy
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from socrates_ray.cli import main
from socrates_ray.config import load_config
from socrates_ray.data.prepare import PrepareError, prepare_options, run_prepare
from socrates_ray.data.schema import DEMOGRAPHIC_FIELDS, MAX_TEXT_CHARS, RAW_SCHEMA, REASONS
from socrates_ray.data.splits import SplitError


def _cfg(raw, prepared, *extra):
    return load_config(None, [f"data.raw={raw}", f"data.prepared={prepared}", "data.parallelism=1", *extra])


def _seven_point_row(rows):
    return next(r for r in rows if "integer from 1 to 7" in r["stimuli"])


def build_dirty_dataset(synth_dir: Path, out: Path) -> Counter:
    """Copy the synthetic dataset and add bad rows of every kind; returns the expected reasons."""
    shutil.copytree(synth_dir / "metadata", out / "metadata")
    clean = pq.read_table(synth_dir / "data").to_pylist()
    good, spare = clean[:2000], clean[2000:]
    expected = Counter()
    bad = []

    def add(reason, row):
        bad.append(row)
        expected[reason] += 1

    base = _seven_point_row(spare)
    fresh = iter(r for r in spare if r["study_id"] == base["study_id"])

    def variant(**changes):
        row = copy.deepcopy(next(fresh))
        row.update(changes)
        return row

    add("empty_prompt", variant(prompt="   "))
    add("empty_prompt", variant(prompt=None))
    add("empty_stimuli", variant(stimuli=None))
    add("missing_response", variant(response=None))
    seven = [r for r in spare if "integer from 1 to 7" in r["stimuli"]]
    add("response_out_of_scale", {**copy.deepcopy(seven[0]), "response": 9})
    add("refusal_code", {**copy.deepcopy(seven[1]), "response": 98})
    add("duplicate_key", copy.deepcopy(good[5]))
    add("missing_id", variant(sample_id=None))
    add("missing_id", variant(study_id=""))
    add("unknown_study", variant(study_id="zzzzz"))
    add("prompt_stimuli_mismatch", variant(stimuli="A different question. Only return an integer from 1 to 7."))
    add("missing_demographic", variant(demographic=None))
    long_row = variant()
    add("prompt_too_long", {**long_row, "prompt": "x" * MAX_TEXT_CHARS + "\n\n" + long_row["stimuli"]})
    (out / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(good + bad, schema=RAW_SCHEMA), out / "data" / "a.parquet")

    # A shard whose exporter wrote loose types: response/ids/age as text.
    loose_demo = pa.struct([pa.field(f, pa.string()) for f in DEMOGRAPHIC_FIELDS])
    loose_schema = pa.schema(
        [pa.field(f.name, pa.string()) if f.name in ("response", "condition_num") else f for f in RAW_SCHEMA]
    ).set(RAW_SCHEMA.get_field_index("demographic"), pa.field("demographic", loose_demo))
    loose_rows = []
    for r in spare[100:130]:  # clean rows, written as text: must be kept
        row = copy.deepcopy(r)
        row["response"], row["condition_num"] = str(row["response"]), str(row["condition_num"])
        row["demographic"] = {k: None if v is None else str(v) for k, v in row["demographic"].items()}
        loose_rows.append(row)
    for reason, field, value in [
        ("non_integer_response", "response", "3.5"),
        ("non_integer_response", "response", "seven"),
        ("non_integer_id", "condition_num", "B"),
        # issue 42: values a Parquet cell can hold that no int64 can (they crashed prepare with OverflowError)
        ("integer_out_of_range", "response", "12345678901234567890"),
        ("integer_out_of_range", "response", "1e20"),
        ("integer_out_of_range", "condition_num", "-99999999999999999999"),
    ]:
        taken = sum(expected[k] for k in ("non_integer_response", "non_integer_id", "integer_out_of_range"))
        loose_rows[len(loose_rows) - 1 - taken][field] = value
        expected[reason] += 1
    loose_rows[0]["demographic"]["age"] = "thirty"
    expected["non_integer_demographic"] += 1
    loose_rows[1]["demographic"]["age"] = "1e20"
    expected["integer_out_of_range"] += 1
    pq.write_table(pa.Table.from_pylist(loose_rows, schema=loose_schema), out / "data" / "b.parquet")

    # Shards whose demographic struct lacks a field (kept: the field is null, as in a survey of one's
    # own that recorded fewer), or has one SocSci210 does not (refused: it would vanish from the prompt).
    for name, fields, rows in (
        ("c.parquet", [f for f in DEMOGRAPHIC_FIELDS if f != "ideology"], spare[200:210]),
        ("d.parquet", [*DEMOGRAPHIC_FIELDS, "religion"], spare[210:215]),
    ):
        struct = pa.struct([pa.field(f, pa.int64() if f in ("age", "household_size") else pa.string()) for f in fields])
        schema = RAW_SCHEMA.set(RAW_SCHEMA.get_field_index("demographic"), pa.field("demographic", struct))
        shaped = []
        for r in rows:
            row = copy.deepcopy(r)
            row["demographic"] = {f: row["demographic"].get(f) for f in fields}
            shaped.append(row)
        pq.write_table(pa.Table.from_pylist(shaped, schema=schema), out / "data" / name)
        if "religion" in fields:
            expected["demographic_fields"] += len(rows)
    return expected


def test_every_row_is_kept_or_quarantined_with_its_reason(tmp_path, synth_dir):
    raw = tmp_path / "raw"
    expected = build_dirty_dataset(synth_dir, raw)
    assert len(expected) >= 10
    summary = run_prepare(prepare_options(_cfg(raw, tmp_path / "prep")), log=lambda *_: None)
    assert summary["rows_in"] == summary["rows_kept"] + summary["rows_quarantined"]
    assert summary["rows_in"] == sum(pq.read_metadata(p).num_rows for p in (raw / "data").glob("*.parquet"))
    assert summary["quarantine_reasons"] == dict(expected)
    assert set(expected) <= set(REASONS)
    quarantine = pq.read_table(tmp_path / "prep" / "quarantine").to_pylist()
    assert Counter(q["reason"] for q in quarantine) == expected
    # nothing lost: the raw row travels with its reason
    bad = next(q for q in quarantine if q["reason"] == "response_out_of_scale")
    assert json.loads(bad["row_json"])["response"] == 9
    # the loose-typed clean rows were kept, as integers
    kept = pq.read_table(tmp_path / "prep" / "unseen_studies").to_pylist()
    assert len(kept) == summary["rows_kept"]
    assert all(isinstance(r["response"], int) and r["answer"] == str(r["response"]) for r in kept)


def test_outputs_hold_what_later_stages_need(tmp_path, synth_dir):
    summary = run_prepare(prepare_options(_cfg(synth_dir, tmp_path / "prep")), log=lambda *_: None)
    prep = tmp_path / "prep"
    for setting in ("unseen_studies", "unseen_conditions", "unseen_tasks"):
        for split in ("train", "eval"):
            table = pq.read_table(prep / setting / split)
            assert table.num_rows == summary["settings"][setting][split]["rows"] > 0
        assert (prep / "splits" / f"{setting}.json").is_file()
    cols = set(pq.read_schema(next((prep / "unseen_studies" / "train").glob("*.parquet"))).names)
    assert {"study_id", "sample_id", "participant", "condition_num", "task_num", "demographic", "stimuli",
            "prompt", "response", "answer", "scale_kind", "scale_low", "scale_high"} <= cols
    assert summary["scale_coverage"]["share_cells_parsed"] == 1.0
    assert summary["prompt_builder_match"] == 1.0
    assert json.loads((prep / "summary.json").read_text()) == summary
    assert (prep / "config.yaml").is_file()


def test_splits_follow_the_metadata_files(tmp_path, synth_dir):
    run_prepare(prepare_options(_cfg(synth_dir, tmp_path / "prep")), log=lambda *_: None)
    prep = tmp_path / "prep"
    unseen = set(json.loads((synth_dir / "metadata" / "participant_mapping.json").read_text())["unseen"])
    assert set(pq.read_table(prep / "unseen_studies" / "eval")["study_id"].to_pylist()) == unseen
    assert not unseen & set(pq.read_table(prep / "unseen_studies" / "train")["study_id"].to_pylist())
    mapping = json.loads((synth_dir / "metadata" / "condition_mapping.json").read_text())
    for r in pq.read_table(prep / "unseen_conditions" / "eval", columns=["study_id", "condition_num"]).to_pylist():
        assert r["condition_num"] in mapping[r["study_id"]]["eval"]
    for r in pq.read_table(prep / "unseen_conditions" / "train", columns=["study_id", "condition_num"]).to_pylist():
        assert r["study_id"] not in mapping or r["condition_num"] not in mapping[r["study_id"]]["eval"]


def test_mapping_by_sample_ids_is_accepted_and_nonsense_is_explained(tmp_path, synth_dir):
    raw = tmp_path / "raw"
    shutil.copytree(synth_dir, raw)
    table = pq.read_table(raw / "data", columns=["study_id", "sample_id", "task_num"]).to_pylist()
    study = table[0]["study_id"]
    ids = sorted(r["sample_id"] for r in table if r["study_id"] == study)
    (raw / "metadata" / "task_mapping.json").write_text(json.dumps({study: {"train": ids[10:], "eval": ids[:10]}}))
    run_prepare(prepare_options(_cfg(raw, tmp_path / "prep")), log=lambda *_: None)
    evals = pq.read_table(tmp_path / "prep" / "unseen_tasks" / "eval", columns=["sample_id"])["sample_id"].to_pylist()
    assert sorted(evals) == ids[:10]
    (raw / "metadata" / "task_mapping.json").write_text(json.dumps({study: {"train": [123456], "eval": [654321]}}))
    with pytest.raises(SplitError, match="neither its task numbers .* nor its sample ids"):
        run_prepare(prepare_options(_cfg(raw, tmp_path / "prep2")), log=lambda *_: None)


def test_without_metadata_splits_are_drawn_deterministically(tmp_path, synth_dir):
    raw = tmp_path / "raw"
    shutil.copytree(synth_dir / "data", raw / "data")
    a = run_prepare(prepare_options(_cfg(raw, tmp_path / "a")), log=lambda *_: None)
    b = run_prepare(prepare_options(_cfg(raw, tmp_path / "b")), log=lambda *_: None)
    assert a["settings"] == b["settings"]
    assert all(s["source"].startswith("drawn") for s in a["settings"].values())
    assert a["settings"]["unseen_studies"]["eval"]["studies"] == round(0.19 * a["studies"])
    assert (tmp_path / "a" / "splits" / "unseen_studies.json").read_text() == (tmp_path / "b" / "splits" / "unseen_studies.json").read_text()


def test_rerun_replaces_previous_output(tmp_path, synth_dir):
    cfg = _cfg(synth_dir, tmp_path / "prep")
    first = run_prepare(prepare_options(cfg), log=lambda *_: None)
    second = run_prepare(prepare_options(cfg), log=lambda *_: None)
    assert pq.read_table(tmp_path / "prep" / "unseen_studies").num_rows == second["rows_kept"] == first["rows_kept"]


def test_unreadable_inputs_give_clear_errors(tmp_path, capsys, synth_dir):
    with pytest.raises(PrepareError, match="does not exist.*socrates-ray synth"):
        run_prepare(prepare_options(_cfg(tmp_path / "missing", tmp_path / "p")), log=lambda *_: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="no Parquet files"):
        run_prepare(prepare_options(_cfg(tmp_path / "empty", tmp_path / "p")), log=lambda *_: None)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(PrepareError, match="x.parquet is not a readable Parquet file"):
        run_prepare(prepare_options(_cfg(tmp_path / "broken", tmp_path / "p")), log=lambda *_: None)
    (tmp_path / "narrow").mkdir()
    pq.write_table(pa.table({"study_id": ["abcde"], "response": [1]}), tmp_path / "narrow" / "y.parquet")
    with pytest.raises(PrepareError, match=r"lacks columns \['sample_id'"):
        run_prepare(prepare_options(_cfg(tmp_path / "narrow", tmp_path / "p")), log=lambda *_: None)
    # a column of a type no row could be read from: one error naming it (was: exit 0, every row quarantined)
    table = pq.read_table(next(iter(sorted(synth_dir.glob("data/*.parquet")))))
    (tmp_path / "typed").mkdir()
    bad = table.set_column(table.schema.get_field_index("response"), "response", pa.array([[int(v)] for v in table["response"].to_pylist()]))
    pq.write_table(bad, tmp_path / "typed" / "z.parquet")
    with pytest.raises(PrepareError, match=r"column 'response' is list<.*int64>; expected an integer"):
        run_prepare(prepare_options(_cfg(tmp_path / "typed", tmp_path / "p")), log=lambda *_: None)
    # numbers stored as text are still read (validate_row parses them)
    as_text = table.set_column(table.schema.get_field_index("response"), "response", pa.array([str(v) for v in table["response"].to_pylist()]))
    (tmp_path / "text").mkdir()
    pq.write_table(as_text, tmp_path / "text" / "t.parquet")
    assert run_prepare(prepare_options(_cfg(tmp_path / "text", tmp_path / "p2")), log=lambda *_: None)["rows_kept"] > 0
    # through the CLI: exit code 2 and a one-line reason, no traceback
    assert main(["prepare", f"data.raw={tmp_path / 'broken'}", f"data.prepared={tmp_path / 'p'}", "data.parallelism=1"]) == 2
    err = capsys.readouterr().err
    assert "not a readable Parquet file" in err and "Traceback" not in err


def test_a_dataset_exported_by_someone_else(tmp_path, synth_dir):
    """One file, no metadata, no prompt column, demographic as JSON text, float responses,
    an extra column: prepare keeps the rows, builds SocSci210 prompts and draws the splits."""
    rows = pq.read_table(synth_dir / "data").to_pylist()[:400]
    table = pa.table(
        {
            "study_id": [r["study_id"] for r in rows],
            "sample_id": [r["sample_id"] for r in rows],
            "participant": [r["participant"] for r in rows],
            "condition_num": [r["condition_num"] for r in rows],
            "task_num": [r["task_num"] for r in rows],
            "demographic": [json.dumps(r["demographic"]) for r in rows],
            "stimuli": [r["stimuli"] for r in rows],
            "response": [float(r["response"]) for r in rows],
            "notes": ["exported by hand"] * len(rows),
        }
    )
    (tmp_path / "theirs").mkdir()
    pq.write_table(table, tmp_path / "theirs" / "socsci_export.parquet")
    lines = []
    summary = run_prepare(prepare_options(_cfg(tmp_path / "theirs", tmp_path / "prep")), log=lines.append)
    assert summary["rows_kept"] == len(rows) and summary["rows_quarantined"] == 0
    assert any("no `prompt` column" in line for line in lines)
    kept = pq.read_table(tmp_path / "prep" / "unseen_studies").to_pylist()
    by_key = {(r["study_id"], r["sample_id"]): r for r in rows}
    assert all(k["prompt"] == by_key[(k["study_id"], k["sample_id"])]["prompt"] for k in kept)
    assert summary["settings"]["unseen_studies"]["source"].startswith("drawn")


def test_all_settings_trains_only_on_rows_no_setting_holds_out(tmp_path, synth_dir):
    cfg = _cfg(synth_dir, tmp_path / "prep")
    cfg.data.settings = ["unseen_studies", "unseen_conditions", "unseen_tasks", "all_settings"]
    run_prepare(prepare_options(cfg), log=lambda *_: None)
    prep = tmp_path / "prep"
    key = lambda r: (r["study_id"], r["sample_id"])  # noqa: E731
    held_out = set()
    for setting in ("unseen_studies", "unseen_conditions", "unseen_tasks"):
        held_out |= {key(r) for r in pq.read_table(prep / setting / "eval", columns=["study_id", "sample_id"]).to_pylist()}
    train = {key(r) for r in pq.read_table(prep / "all_settings" / "train", columns=["study_id", "sample_id"]).to_pylist()}
    evals = {key(r) for r in pq.read_table(prep / "all_settings" / "eval", columns=["study_id", "sample_id"]).to_pylist()}
    assert train and not train & held_out
    assert evals == held_out


def test_validation_split_holds_out_whole_units_of_the_settings_kind(tmp_path, synth_dir):
    """val comes out of train only (the test split is untouched), as whole studies / conditions /
    tasks, about data.validation_fraction of them, and the draw is stable across runs."""
    cfg = _cfg(synth_dir, tmp_path / "prep", "data.validation_fraction=0.3")
    cfg.data.settings = ["unseen_studies", "unseen_conditions", "unseen_tasks", "all_settings"]
    summary = run_prepare(prepare_options(cfg), log=lambda *_: None)
    prep = tmp_path / "prep"
    cols = ["study_id", "sample_id", "condition_num", "task_num"]
    key = lambda r: (r["study_id"], r["sample_id"])  # noqa: E731

    def rows(setting, split):
        return pq.read_table(prep / setting / split, columns=cols).to_pylist()

    baseline = _cfg(synth_dir, tmp_path / "plain", "data.validation_fraction=0")
    baseline.data.settings = cfg.data.settings
    plain = run_prepare(prepare_options(baseline), log=lambda *_: None)
    assert not any((tmp_path / "plain" / s / "val").exists() for s in cfg.data.settings)
    unit = {"unseen_studies": lambda r: r["study_id"], "unseen_conditions": lambda r: (r["study_id"], r["condition_num"]),
            "unseen_tasks": lambda r: (r["study_id"], r["task_num"])}
    for setting in cfg.data.settings:
        parts = summary["settings"][setting]
        assert parts["val"]["rows"] > 0, setting
        # the eval (test) split is exactly what it is without validation; train + val = the old train
        assert {key(r) for r in rows(setting, "eval")} == {
            key(r) for r in pq.read_table(tmp_path / "plain" / setting / "eval", columns=cols).to_pylist()}
        assert parts["train"]["rows"] + parts["val"]["rows"] == plain["settings"][setting]["train"]["rows"]
        val, train = rows(setting, "val"), rows(setting, "train")
        assert not {key(r) for r in val} & {key(r) for r in train}
        if setting in unit:  # whole units: no study / condition / task is on both sides
            assert not {unit[setting](r) for r in val} & {unit[setting](r) for r in train}, setting
    studies = {r["study_id"] for r in rows("unseen_studies", "train") + rows("unseen_studies", "val")}
    share = len({r["study_id"] for r in rows("unseen_studies", "val")}) / len(studies)
    assert 0.05 < share < 0.6  # ~0.3 of 10 seen studies, by hash
    again = run_prepare(prepare_options(cfg.model_copy(update={"data": cfg.data.model_copy(update={"prepared": str(tmp_path / "again")})})),
                        log=lambda *_: None)
    assert again["settings"] == summary["settings"]
    assert json.loads((prep / "splits" / "validation.json").read_text())["fraction"] == 0.3


def test_prepare_is_all_or_nothing_and_a_rerun_replaces_every_setting(tmp_path, synth_dir):
    prepared = tmp_path / "prep"
    settings = "data.settings=[unseen_studies, unseen_conditions, unseen_tasks, all_settings]"
    run_prepare(prepare_options(_cfg(synth_dir, prepared, settings)), log=lambda *_: None)

    def train_rows(setting):
        return pq.read_table(prepared / setting / "train").num_rows

    # a re-run on fewer shards: every setting holds only the new rows (all_settings kept the old ones)
    fewer = tmp_path / "fewer"
    shutil.copytree(synth_dir / "metadata", fewer / "metadata")
    (fewer / "data").mkdir()
    first_shard = sorted((synth_dir / "data").glob("*.parquet"))[0]
    shutil.copy(first_shard, fewer / "data" / first_shard.name)
    summary = run_prepare(prepare_options(_cfg(fewer, prepared, settings)), log=lambda *_: None)
    for setting in ("unseen_studies", "all_settings"):
        assert train_rows(setting) == summary["settings"][setting]["train"]["rows"], setting

    # a re-run that fails leaves the previous folder whole and nothing half-written beside it
    broken = tmp_path / "broken"
    shutil.copytree(fewer, broken)
    (broken / "data" / "zz-damaged.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(PrepareError, match="zz-damaged.parquet"):
        run_prepare(prepare_options(_cfg(broken, prepared, settings)), log=lambda *_: None)
    assert json.loads((prepared / "summary.json").read_text()) == summary
    assert train_rows("all_settings") == summary["settings"]["all_settings"]["train"]["rows"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_validation_never_takes_a_studys_last_training_condition_or_task():
    from socrates_ray.data.splits import Mapping75, Splits, StudyKeys, draw_validation

    # issue 14's survey: studies with one condition and one or two tasks
    studies = {"one": StudyKeys({1}, {1}, [1, 2]), "two": StudyKeys({1}, {1, 2}, [3, 4]), "many": StudyKeys({1, 2, 3}, {1, 2, 3, 4}, [5])}
    none = Mapping75({}, {}, {})
    splits = Splits(frozenset(studies), frozenset(), none, none, {}, {}, 0.9, 0)
    for seed in range(20):
        drawn = draw_validation(splits, studies, 0.9, seed)
        for setting, units in drawn.items():
            for kind, total in (("conditions", "conditions"), ("tasks", "tasks")):
                for study, keys in studies.items():
                    taken = {n for s, n in units[kind] if s == study}
                    assert len(taken) < len(getattr(keys, total)), (seed, setting, kind, study)  # one always trains
        assert drawn["unseen_tasks"]["tasks"]  # and validation still holds something


def test_an_empty_split_is_a_warning_at_prepare_and_a_clear_error_where_it_is_read(tmp_path, synth_dir):
    from socrates_ray.data.prepared import split_problem
    from socrates_ray.data.prepared import PreparedSplitError, load_split_rows

    # one condition a study, no metadata files: no condition can be held out for unseen_conditions
    table = pq.read_table(synth_dir / "data")
    rows = table.to_pylist()
    first = {}
    for r in rows:
        first.setdefault(r["study_id"], r["condition_num"])
    keep = [r for r in rows if r["condition_num"] == first[r["study_id"]]]
    (tmp_path / "raw" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(keep, schema=table.schema), tmp_path / "raw" / "data" / "train-00000-of-00001.parquet")
    lines = []
    summary = run_prepare(prepare_options(_cfg(tmp_path / "raw", tmp_path / "prep", "data.settings=[unseen_conditions,unseen_studies]")), log=lines.append)
    assert "unseen_conditions/eval has no rows: nothing to evaluate under this setting" in summary["warnings"]
    assert any(line.startswith("warning: unseen_conditions/eval has no rows") for line in "\n".join(lines).splitlines())
    with pytest.raises(PreparedSplitError, match="unseen_conditions/eval is empty: prepare placed none of the kept rows there"):
        load_split_rows(str(tmp_path / "prep"), "unseen_conditions", "eval", None)
    assert split_problem(tmp_path / "prep", "unseen_studies", "eval") is None
    assert "prepared without unseen_tasks" in split_problem(tmp_path / "prep", "unseen_tasks", "train")
    assert "no summary.json" in split_problem(tmp_path / "nowhere", "unseen_tasks", "train")
    # summary.json is the completion marker: splits without it (a copy cut short) are refused
    (tmp_path / "prep" / "summary.json").unlink()
    assert "not a complete prepared folder" in split_problem(tmp_path / "prep", "unseen_studies", "eval")


def test_a_many_shard_prepare_says_its_progress_in_about_ten_lines(tmp_path) -> None:
    from socrates_ray.config import load_config
    from socrates_ray.data.prepare import prepare_options, run_prepare
    from socrates_ray.data.synthetic_files import write_synthetic

    lines: list[str] = []
    cfg = load_config(None, [f"data.raw={tmp_path / 'raw'}", f"data.prepared={tmp_path / 'prepared'}", "data.parallelism=1"])
    write_synthetic(tmp_path / "raw", studies=10, rows=3000, rows_per_shard=100, seed=0, refusal_rate=0.0,
                    within_subject_share=0.3, log=lines.append)
    run_prepare(prepare_options(cfg), log=lines.append)
    synth = [line for line in lines if line.startswith("synth: shard")]
    prepare = [line for line in lines if line.startswith("prepare: shard")]
    shards = len(list((tmp_path / "raw" / "data").glob("*.parquet")))
    assert shards > 20  # one line each before
    assert 8 <= len(synth) <= 11 and synth[-1].startswith(f"synth: shard {shards}/{shards} written (")
    assert 8 <= len(prepare) <= 11 and prepare[-1].startswith(f"prepare: shard {shards}/{shards} done [")


def test_unseen_participants_trains_on_a_share_of_each_studys_people_never_splitting_one(tmp_path, synth_dir):
    summary = run_prepare(prepare_options(_cfg(synth_dir, tmp_path / "prep", "data.settings=[unseen_participants]",
                                               "data.participant_fraction=0.2")), log=lambda *_: None)
    parts = {split: pq.read_table(tmp_path / "prep" / "unseen_participants" / split).to_pylist() for split in ("train", "val", "eval")}
    assert summary["settings"]["unseen_participants"]["eval"]["rows"] > 0 and "participants" in summary["settings"]["unseen_participants"]["source"]
    people = {split: {(r["study_id"], r["participant"]) for r in rows} for split, rows in parts.items()}
    # a participant is all of their rows: never on two sides (within-subject designs repeat a task per person)
    assert not people["train"] & people["eval"] and not people["train"] & people["val"] and not people["val"] & people["eval"]
    every = pq.read_table(synth_dir / "data").to_pylist()
    by_person = Counter((r["study_id"], r["participant"]) for r in every)
    assert sum(by_person[p] for p in people["train"]) == len(parts["train"])  # every row of a trained participant
    # every condition and task a study has is seen in training, so eval is about the person only
    for key in ("condition_num", "task_num"):
        assert {(r["study_id"], r[key]) for r in every} == {(r["study_id"], r[key]) for r in parts["train"]}
    # about the asked share of each study's participants (more only where coverage needed them)
    studies = {s for s, _ in by_person}
    for study in studies:
        n = sum(1 for s, _ in by_person if s == study)
        trained = sum(1 for s, _ in people["train"] if s == study)
        assert round(0.2 * n) <= trained < n
    # the same seed draws the same people
    again = run_prepare(prepare_options(_cfg(synth_dir, tmp_path / "again", "data.settings=[unseen_participants]",
                                             "data.participant_fraction=0.2")), log=lambda *_: None)
    assert again["settings"]["unseen_participants"] == summary["settings"]["unseen_participants"]


def test_all_settings_leaves_unseen_participants_out(tmp_path, synth_dir):
    summary = run_prepare(prepare_options(_cfg(synth_dir, tmp_path / "prep", "data.settings=[unseen_studies, all_settings, "
                                               "unseen_participants]")), log=lambda *_: None)
    # all_settings trains on what the three unit settings train on: far more than a tenth of the rows
    assert summary["settings"]["all_settings"]["train"]["rows"] > 3 * summary["settings"]["unseen_participants"]["train"]["rows"]


def test_a_cloud_url_without_its_filesystem_names_the_extra_to_install(monkeypatch):
    import fsspec

    from socrates_ray.data.raw_source import open_source

    def missing(url, **_):
        raise ImportError(f"Install the filesystem for {url.split(':')[0]}")

    monkeypatch.setattr(fsspec.core, "url_to_fs", missing)
    with pytest.raises(PrepareError, match=r"pip install 'socrates_ray\[s3\]'"):
        open_source("s3://bucket/socsci210")
    with pytest.raises(PrepareError, match=r"pip install 'socrates_ray\[gcs\]'"):
        open_source("gs://bucket/socsci210")
