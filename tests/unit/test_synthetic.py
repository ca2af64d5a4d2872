import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from socrates_ray.data.prompts import build_prompt, parse_answer_scale
from socrates_ray.data.schema import DEMOGRAPHIC_FIELDS, RAW_SCHEMA
from socrates_ray.data.synthetic import ordinal_probs
from socrates_ray.data.synthetic_files import SynthError, foreign_parquet, write_synthetic


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").glob("*.parquet"))}


def test_layout_schema_and_metadata(synth_dir):
    shards = sorted((synth_dir / "data").glob("train-*-of-*.parquet"))
    summary = json.loads((synth_dir / "synth_summary.json").read_text())
    assert len(shards) == summary["shards"] == -(-summary["rows"] // 1000) >= 3
    for shard in shards:
        assert pq.read_schema(shard).equals(RAW_SCHEMA)
        assert pq.read_metadata(shard).num_rows <= 1000
    mapping = json.loads((synth_dir / "metadata" / "participant_mapping.json").read_text())
    assert set(mapping) == {"seen", "unseen"} and mapping["unseen"] and not set(mapping["seen"]) & set(mapping["unseen"])
    cond = json.loads((synth_dir / "metadata" / "condition_mapping.json").read_text())
    assert all(set(v) == {"train", "eval"} and v["eval"] for v in cond.values())


def test_same_seed_same_bytes(tmp_path, synth_dir):
    write_synthetic(tmp_path, studies=12, rows=3000, rows_per_shard=1000, seed=1, refusal_rate=0.0, within_subject_share=0.5)
    assert _digest(tmp_path) == _digest(synth_dir)
    write_synthetic(tmp_path, studies=12, rows=3000, rows_per_shard=1000, seed=2, refusal_rate=0.0, within_subject_share=0.5)
    assert _digest(tmp_path) != _digest(synth_dir)


def test_rows_look_like_socsci210(synth_dir):
    table = pq.read_table(synth_dir / "data")
    rows = table.to_pylist()
    # prompts are exactly the builder's output, study ids 5 characters, keys unique per study
    assert all(r["prompt"] == build_prompt(r["demographic"], r["stimuli"]) for r in rows[:500])
    assert all(len(r["study_id"]) == 5 for r in rows)
    assert len({(r["study_id"], r["sample_id"]) for r in rows}) == len(rows)
    # all 16 demographic fields, with some nulls but never all
    nulls = Counter(k for r in rows for k in DEMOGRAPHIC_FIELDS if r["demographic"][k] is None)
    assert 0 < nulls["gender"] < 0.1 * len(rows)
    assert set(DEMOGRAPHIC_FIELDS) == set(rows[0]["demographic"])
    # varied scales, phrased several ways, plus open-ended amounts
    scales = Counter((s.kind, s.low, s.high) for s in map(parse_answer_scale, {r["stimuli"] for r in rows}))
    sizes = {hi - lo + 1 for kind, lo, hi in scales if kind == "bounded"}
    assert {2, 5, 7}.issubset(sizes) and len(sizes) >= 4
    assert all(kind != "unknown" for kind, _, _ in scales)
    # within-subject repeats: one participant answers the same task under several conditions
    per_person_task = Counter((r["study_id"], r["participant"], r["task_num"]) for r in rows)
    assert max(per_person_task.values()) > 1


def test_truth_is_a_distribution_and_matches_samples(synth_dir):
    truth = pq.read_table(synth_dir / "ground_truth.parquet").to_pylist()
    assert all(abs(sum(c["probs"]) - 1) < 1e-9 for c in truth)
    table = pq.read_table(synth_dir / "data")
    big = max(truth, key=lambda c: c["participants"] / len(c["options"]))
    mask = pc.and_(
        pc.and_(pc.equal(table["study_id"], big["study_id"]), pc.equal(table["condition_num"], big["condition_num"])),
        pc.equal(table["task_num"], big["task_num"]),
    )
    answers = table.filter(mask)["response"].to_numpy()
    empirical = np.array([(answers == o).mean() for o in big["options"]])
    # total variation between the sample and its true distribution shrinks like 1/sqrt(n)
    assert 0.5 * np.abs(empirical - np.array(big["probs"])).sum() < 2.5 * np.sqrt(len(big["options"]) / len(answers))


def test_each_participants_truth_pools_to_the_cell_truth_and_moves_with_the_persona(synth_dir):
    """ground_truth_rows.parquet: every bounded answer's own true distribution; a cell's are what its
    truth averages, and within a cell they differ by persona (a partisan topic splits the parties)."""
    from collections import defaultdict

    from socrates_ray.data.synthetic_files import ROW_TRUTH_FILE

    rows = pq.read_table(synth_dir / ROW_TRUTH_FILE).to_pylist()
    data = pq.read_table(synth_dir / "data").to_pylist()
    assert len(rows) == len(data)
    own = {(r["study_id"], r["sample_id"]): r["probs"] for r in rows}
    cells: dict = defaultdict(list)
    for r in data:
        if own[(r["study_id"], r["sample_id"])] is not None:
            cells[(r["study_id"], r["condition_num"], r["task_num"])].append(own[(r["study_id"], r["sample_id"])])
    truth = pq.read_table(synth_dir / "ground_truth.parquet").to_pylist()
    assert {(c["study_id"], c["condition_num"], c["task_num"]) for c in truth} == set(cells)
    for c in truth:
        people = np.asarray(cells[(c["study_id"], c["condition_num"], c["task_num"])])
        assert np.allclose(people.sum(axis=1), 1) and np.allclose(people.mean(axis=0), c["probs"])
    # participants of one cell get different distributions (the persona moves them), not one shared one
    spread = [np.asarray(v).std(axis=0).max() for v in cells.values() if len(v) >= 5]
    assert np.median(spread) > 0.05


def test_framing_moves_answers_the_same_way_across_topics(synth_dir):
    """The structure unseen studies are learnable from: framing words push every topic alike."""
    truth = pq.read_table(synth_dir / "ground_truth.parquet").to_pylist()
    by_frame = {}
    for c in truth:
        mean = float(np.dot(c["options"], c["probs"]) - c["scale_low"]) / (c["scale_high"] - c["scale_low"])
        by_frame.setdefault(c["frame"], []).append(mean)
    means = {f: np.mean(v) for f, v in by_frame.items()}
    assert {"economic_cost", "moral_duty"} <= set(means)
    assert means["moral_duty"] > means["economic_cost"]


def test_ordinal_probs_rows_sum_to_one_and_shift_with_utility():
    p = ordinal_probs(np.array([-2.0, 0.0, 2.0]), 7)
    assert np.allclose(p.sum(axis=1), 1)
    expected = p @ np.arange(7)
    assert expected[0] < expected[1] < expected[2]


def test_size_knob_streams_shards(tmp_path):
    summary = write_synthetic(tmp_path, studies=20, rows=20000, rows_per_shard=4000, seed=3, refusal_rate=0.01, within_subject_share=0.5)
    shards = sorted((tmp_path / "data").glob("*.parquet"))
    assert len(shards) == summary["shards"] >= 5
    assert sum(pq.read_metadata(s).num_rows for s in shards) == summary["rows"]
    assert abs(summary["rows"] - 20000) < 0.2 * 20000
    assert 98 in set(pq.read_table(tmp_path / "data", columns=["response"])["response"].to_pylist())


def test_synth_never_overwrites_a_dataset_it_did_not_write(tmp_path, synth_dir):
    """A user's SocSci210 folder given as --out / data.raw: refused, every file left as it was; synth's own
    folder (even one a killed run left without its final summary) is rewritten."""
    import shutil

    theirs = tmp_path / "theirs"
    shutil.copytree(synth_dir / "data", theirs / "data")
    shutil.copytree(synth_dir / "metadata", theirs / "metadata")
    before = _digest(theirs)
    assert len(foreign_parquet(theirs)) == len(before) > 0
    with pytest.raises(SynthError, match=r"Parquet file\(s\) synth did not write.*would delete them.*new folder"):
        write_synthetic(theirs, studies=4, rows=400, rows_per_shard=1000, seed=1, refusal_rate=0.0, within_subject_share=0.5)
    assert _digest(theirs) == before and not (theirs / "synth_summary.json").exists()
    with pytest.raises(SynthError, match="local folder"):
        write_synthetic("s3://bucket/socsci", studies=4, rows=400, rows_per_shard=1000, seed=1, refusal_rate=0.0, within_subject_share=0.5)

    ours = tmp_path / "ours"
    write_synthetic(ours, studies=4, rows=400, rows_per_shard=1000, seed=1, refusal_rate=0.0, within_subject_share=0.5)
    assert foreign_parquet(ours) == [] and json.loads((ours / "synth_summary.json").read_text())["complete"]
    (ours / "synth_summary.json").write_text(json.dumps({"complete": False, "seed": 1}))  # as a killed run leaves it
    write_synthetic(ours, studies=4, rows=400, rows_per_shard=1000, seed=2, refusal_rate=0.0, within_subject_share=0.5)
    assert json.loads((ours / "synth_summary.json").read_text())["seed"] == 2


def test_the_demo_runs_on_a_users_dataset_as_it_is(tmp_path, synth_dir, capsys):
    """`socrates-ray demo data.raw=<their folder>`: the demo's synth step leaves it alone and says so; an empty
    data.raw (or synth's own folder) gets synthetic data."""
    import shutil

    from socrates_ray.demo import synth_unless_given
    from socrates_ray.config.loading import load_config

    theirs = tmp_path / "theirs"
    shutil.copytree(synth_dir / "data", theirs / "data")
    before = _digest(theirs)
    got = synth_unless_given(load_config(None, [f"data.raw={theirs}"]))
    assert "skipped" in got and _digest(theirs) == before
    assert "the demo runs on that dataset as it is" in capsys.readouterr().out
    assert "skipped" in synth_unless_given(load_config(None, ["data.raw=s3://bucket/socsci210"]))

    fresh = tmp_path / "fresh"
    cfg = load_config(None, [f"data.raw={fresh}", "synth.studies=4", "synth.rows=400", "synth.rows_per_shard=1000"])
    assert synth_unless_given(cfg)["rows"] > 0 and foreign_parquet(fresh) == [] and (fresh / "synth_summary.json").exists()


def test_the_second_worlds_truth_leaves_its_answers_alone_and_pools_to_each_cell(tmp_path):
    """scripts/other_world.py --truth: the same answers, and per-participant distributions whose mean
    is the cell's, so evaluate can score persona reading on a world data/synthetic.py did not write."""
    import importlib.util
    from pathlib import Path

    from socrates_ray.eval.truth import load_row_truth, load_truth

    spec = importlib.util.spec_from_file_location("other_world", Path(__file__).parents[2] / "scripts" / "other_world.py")
    world = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(world)
    world.write(tmp_path / "plain", 3, 40, 0)
    rows = world.write(tmp_path / "truth", 3, 40, 0, truth=True)
    assert _digest(tmp_path / "plain") == _digest(tmp_path / "truth")
    assert not (tmp_path / "plain" / "ground_truth.parquet").exists()
    people, cells = load_row_truth(str(tmp_path / "truth")), load_truth(str(tmp_path / "truth"))
    data = pq.read_table(tmp_path / "truth" / "data").to_pylist()
    assert len(people) == rows == len(data)
    members: dict = {}
    for r in data:
        p = people[(r["study_id"], r["sample_id"])]
        options, _ = cells[(r["study_id"], r["condition_num"], r["task_num"])]
        assert len(p) == len(options) and abs(sum(p) - 1) < 1e-9 and r["response"] in options
        members.setdefault((r["study_id"], r["condition_num"], r["task_num"]), []).append(p)
    for key, ps in members.items():
        assert np.allclose(np.mean(ps, axis=0), cells[key][1])
    spread = [np.std([np.dot(p, np.arange(len(p))) for p in ps]) for ps in members.values()]
    assert min(spread) > 0.01 and np.median(spread) > 0.3  # the persona moves each participant's distribution
