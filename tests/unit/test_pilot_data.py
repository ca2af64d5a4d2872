"""A pilot's data: one study validated as prepare validates (bad rows counted, never dropped
silently), and the replay's plan: nested pilots, the same held-out people for every size."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from socrates_ray.data.pilot import PilotError, pilot_rows, prepare_pilot_raw, write_pilot_rows
from socrates_ray.data.prepared import split_problem
from socrates_ray.data.synthetic_files import write_synthetic
from socrates_ray.eval.pilot import choose_pilots, held_out_rows, pilot_rows_of


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    write_synthetic(out, studies=4, rows=800, rows_per_shard=800, seed=2, refusal_rate=0.0, within_subject_share=0.5)
    return pq.read_table([p for p in out.rglob("*.parquet") if "ground_truth" not in p.name and "metadata" not in str(p)])


def test_one_study_becomes_a_pilot_folder_with_its_bad_rows_counted(raw, tmp_path):
    study = raw["study_id"][0].as_py()
    rows = raw.filter(pc.equal(raw["study_id"], study))
    broken = rows.slice(0, 2).to_pylist()
    broken[0]["sample_id"], broken[0]["response"] = 10 ** 9, None  # no answer
    broken[1]["sample_id"], broken[1]["stimuli"] = 10 ** 9 + 1, "Which is it?"  # no answer scale
    pq.write_table(pa.concat_tables([rows, pa.Table.from_pylist(broken, rows.schema)]), tmp_path / "pilot.parquet")
    pilot = prepare_pilot_raw(str(tmp_path / "pilot.parquet"), tmp_path / "out", frozenset({98, 99}))
    assert pilot.study_id == study and pilot.rows == rows.num_rows and pilot.quarantined == 2
    assert pilot.participants == len(set(rows["participant"].to_pylist()))
    assert pilot_rows(pilot.prepared).num_rows == rows.num_rows
    # training reads it like any prepared folder; its eval-loss split is the pilot itself
    assert split_problem(pilot.prepared, "unseen_participants", "train") is None
    assert split_problem(pilot.prepared, "unseen_participants", "val") is None


def test_pilot_data_must_be_one_usable_study(raw, tmp_path):
    pq.write_table(raw, tmp_path / "two.parquet")
    with pytest.raises(PilotError, match=r"expected the answers of one study .*received 4"):
        prepare_pilot_raw(str(tmp_path / "two.parquet"), tmp_path / "out", frozenset())
    with pytest.raises(PilotError, match="--data: .* does not exist"):
        prepare_pilot_raw(str(tmp_path / "missing.parquet"), tmp_path / "out", frozenset())
    one = raw.filter(pc.equal(raw["study_id"], raw["study_id"][0]))
    pq.write_table(one.set_column(one.schema.get_field_index("response"), "response", pa.nulls(one.num_rows, one.schema.field("response").type)),
                   tmp_path / "empty.parquet")
    with pytest.raises(PilotError, match="none of its .* rows is usable"):
        prepare_pilot_raw(str(tmp_path / "empty.parquet"), tmp_path / "out", frozenset())
    with pytest.raises(PilotError, match="one study's answers"):
        write_pilot_rows(raw, tmp_path / "rows")


def test_the_replay_plan_nests_pilots_and_holds_the_same_people_out(raw):
    rows = raw.select(["study_id", "participant", "condition_num", "task_num", "response"])
    sizes = {s: len(set(rows.filter(pc.equal(rows["study_id"], s))["participant"].to_pylist())) for s in set(rows["study_id"].to_pylist())}
    smallest = min(sizes.values())
    chosen, skipped = choose_pilots(rows, [2, 5], smallest - 5 + 1, count=2, seed=0)
    assert [s.study_id for s in chosen] == sorted(sizes, key=lambda s: (-sizes[s], s))[:2]  # the largest first
    assert len(chosen) + len(skipped) == len(sizes) and any("fewer than the largest pilot" in why for why in skipped.values())
    for s in chosen:
        assert set(s.pilots[2]) < set(s.pilots[5]) and not set(s.pilots[5]) & set(s.held_out)
        assert len(s.pilots[5]) + len(s.held_out) == sizes[s.study_id]
        assert set(pilot_rows_of(rows, s, 5)["participant"].to_pylist()) == set(s.pilots[5])
    held = held_out_rows(rows, chosen)
    assert set(held["study_id"].to_pylist()) == {s.study_id for s in chosen}
    again, _ = choose_pilots(rows, [2, 5], smallest - 5 + 1, count=2, seed=0)
    assert again == chosen  # seeded


def test_a_pilot_run_name_changes_with_its_rows_and_the_general_adapter(raw, tmp_path):
    from socrates_ray.models import folder_digest as digest

    study = raw["study_id"][0].as_py()
    rows = raw.filter(pc.equal(raw["study_id"], study))
    first = write_pilot_rows(rows.slice(0, 10), tmp_path / "a").prepared
    same = write_pilot_rows(rows.slice(0, 10), tmp_path / "b").prepared
    other = write_pilot_rows(rows.slice(0, 11), tmp_path / "c").prepared
    (tmp_path / "general").mkdir()
    (tmp_path / "general" / "adapter_model.safetensors").write_bytes(b"weights")
    assert digest(tmp_path / "general", first) == digest(tmp_path / "general", same) != digest(tmp_path / "general", other)
    before = digest(tmp_path / "general", first)
    (tmp_path / "general" / "adapter_model.safetensors").write_bytes(b"retrained")
    assert digest(tmp_path / "general", first) != before


def test_a_pilot_epoch_leaves_few_rows_out_of_its_batches():
    from socrates_ray.pilots import pilot_micro_batch

    for rows in range(1, 400):
        m = pilot_micro_batch(rows, 8)
        assert 1 <= m <= 8 and (m >= 4 or rows < 4)
        dropped = rows - (rows // m) * m
        assert dropped <= rows % 8 and dropped <= min(rows - (rows // k) * k for k in range(4, 9)) + 0.02 * rows
    assert pilot_micro_batch(30, 8) == 6 and pilot_micro_batch(5, 8) == 5 and pilot_micro_batch(148, 8) == 7
