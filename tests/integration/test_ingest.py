"""The Ray Data ingest graph and the demo entry point, on a local Ray instance (CPU)."""

import pyarrow.parquet as pq
import pytest

from socrates_ray.config import DEFAULT_SYSTEM_PROMPT, load_config
from socrates_ray.data.ingest import (
    IngestError, build_ingest_dataset, collate_fn_for, estimate_rows, split_samples, tokenize_in_driver,
)
from socrates_ray.data.ingest_stats import measure_ingest
from socrates_ray.data.prepare import prepare_options, run_prepare

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synth_dir):
    out = tmp_path_factory.mktemp("prepared")
    run_prepare(prepare_options(load_config(None, [f"data.raw={synth_dir}", f"data.prepared={out}", "data.parallelism=1"])), log=lambda *_: None)
    return out


def _run(prepared, tiny_model, layout, max_length=1024, workers=2, shuffle_seed=None):
    split = str(prepared / "unseen_studies" / "train")
    n = pq.read_table(split, columns=["answer"]).num_rows
    ds = build_ingest_dataset(split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, max_length, layout, 128, 2, 0.25, shuffle_seed)
    return n, measure_ingest(ds, workers, 2, collate_fn_for(0, layout, max_length), n)


def test_packed_ingest_gives_equal_shards_and_little_padding(ray_local, prepared, tiny_model):
    # shuffled, as a training run streams its split (ingest.shuffle): the estimate below predicts that stream
    n, packed = _run(prepared, tiny_model, "pack", shuffle_seed=0)
    assert len(set(packed["steps_per_worker"])) == 1 and packed["steps_per_worker"][0] > 0
    assert packed["samples_per_row"] > 2
    # equal split + drop_last may leave out less than one micro batch of rows per worker
    assert 0 <= packed["samples_not_in_rows"] < 2 * 2 * 2 * packed["samples_per_row"] + 1
    # A streamed run plans its schedule from a tokenized sample instead of a counting pass: a quarter
    # of the split (seeded, so the same each time) predicts how densely the whole split packs.
    split = str(prepared / "unseen_studies" / "train")
    est = estimate_rows(split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 1024, "pack", 128, seed=0, sample_size=n // 4)
    assert est.samples == n and est.sampled < n
    assert est == estimate_rows(split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 1024, "pack", 128, seed=0, sample_size=n // 4)
    # measured: 2.98 estimated vs 2.97-2.98 samples a row over shuffle seeds 0-3. (Against the unshuffled
    # stream, where windows hold one study's similar prompts, it packs 2.81-2.85: this test compared with
    # that until a fresh-clone run landed at 6% and failed.)
    assert abs(n / est.rows - packed["samples_per_row"]) / packed["samples_per_row"] < 0.03
    _, padded = _run(prepared, tiny_model, "pad_max_length")
    assert padded["non_padding_share"] < 0.5 < packed["non_padding_share"]
    assert abs(padded["tokens"] - packed["tokens"]) / padded["tokens"] < 0.01


def test_pad_longest_and_shard_count(ray_local, prepared, tiny_model):
    n, stats = _run(prepared, tiny_model, "pad_longest", workers=3)
    assert len(stats["steps_per_worker"]) == 3 and len(set(stats["steps_per_worker"])) == 1
    assert stats["samples_per_row"] == 1.0 and stats["non_padding_share"] > 0.8
    split = str(prepared / "unseen_studies" / "train")
    assert estimate_rows(split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 1024, "pad_longest", 128, seed=0, sample_size=64).rows == n


def test_too_short_max_length_is_a_clear_error(ray_local, prepared, tiny_model):
    with pytest.raises(IngestError, match=r"ingest.max_length=40: every sample"):
        _run(prepared, tiny_model, "pack", max_length=40)


def _samples(ds):
    """Each training sample's token ids, as a sorted list: what the rows hold, however packed."""
    out = []
    for row in ds.take_all():
        seq, ids = list(row["seq_ids"]), list(row["input_ids"])
        out += [tuple(i for i, s in zip(ids, seq) if s == k) for k in range(1, max(seq) + 1)]
    return sorted(out)


def test_a_small_split_tokenized_in_the_driver_holds_what_the_actor_pool_makes(ray_local, prepared, tiny_model):
    """ingest.materialize tokenizes a small split in the driver (no actor start-up): the same samples,
    packed as densely, in a seeded order of its own. The pool's order repeats too, as a resumed pool
    or streamed run needs (its Parquet reader, data.ingest.read_parquet_v1, then the seeded shuffle)."""
    split = str(prepared / "unseen_studies" / "train")
    args = (split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 1024, "pack", 128)

    def pool_pass():
        ds = build_ingest_dataset(*args, 2, 0.25, shuffle_seed=0)
        ds.context.execution_options.preserve_order = True  # as training reads it (train.trainer)
        return ds.materialize()

    pool = pool_pass()
    assert [list(r["input_ids"]) for r in pool.take_all()] == [list(r["input_ids"]) for r in pool_pass().take_all()]
    driver = tokenize_in_driver(*args, shuffle_seed=0)
    assert _samples(driver) == _samples(pool) and len(_samples(pool)) == split_samples(split)
    assert abs(driver.count() - pool.count()) <= 0.02 * pool.count()  # packed as densely (windows differ)
    rows = [list(r["input_ids"]) for r in driver.take_all()]
    assert rows == [list(r["input_ids"]) for r in tokenize_in_driver(*args, shuffle_seed=0).take_all()]  # a resume's order
    assert rows != [list(r["input_ids"]) for r in tokenize_in_driver(*args, shuffle_seed=1).take_all()]
    with pytest.raises(IngestError, match=r"ingest.max_length=40: every sample"):
        tokenize_in_driver(split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 40, "pack", 128)


def test_the_contrasts_shuffle_keeps_a_cells_rows_in_pairs_through_tokenizing(ray_local, prepared, tiny_model):
    """train.anchor_teacher.contrast: the driver's seeded shuffle puts each cell's rows two by two, and
    the rows carry each example's cell, so micro-batches of even size hold same-cell pairs."""
    from socrates_ray.train.anchor_teacher import fit_teacher

    split = str(prepared / "unseen_studies" / "train")
    teacher = fit_teacher(str(prepared), "unseen_studies", lambda *_: None)
    args = (split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 1024, "pad_longest", 128)

    def shared(paired):
        cells = [r["teacher_cell"][0] for r in tokenize_in_driver(*args, shuffle_seed=0, teacher=teacher, paired=paired).take_all()]
        assert len(cells) == split_samples(split) and min(cells) >= 0
        return sum(a == b for a, b in zip(cells[::2], cells[1::2])) / (len(cells) // 2)

    assert shared(True) > 0.9 and shared(False) < 0.1  # 0.97 and 0.01 on this split


def _whole_samples(ds):
    """Each sample's token ids with its shared prefix put back (ingest.layout shared_prefix), sorted."""
    out = []
    for row in ds.take_all():
        seq, ids = list(row["seq_ids"]), list(row["input_ids"])
        prefix: list[int] = []
        for k in sorted(set(seq), key=seq.index):
            own = [i for i, s in zip(ids, seq) if s == k]
            if k < 0:
                prefix = own
            elif k > 0:
                out.append(tuple(prefix + own))
    return sorted(out)


def test_shared_prefixes_hold_every_sample_in_fewer_tokens_streamed_and_in_the_driver(ray_local, prepared, tiny_model):
    """ingest.layout shared_prefix: streamed (participants shuffled by a seeded hash, then sorted) and
    tokenized in the driver (a seeded permutation of participants), the rows hold every sample of the
    split once, prefix put back, in fewer tokens than one sample a row; the row estimate predicts the stream."""
    split = str(prepared / "unseen_studies" / "train")
    args = (split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 1024, "shared_prefix", 128)
    alone = _samples(tokenize_in_driver(split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 1024, "pad_longest", 128, shuffle_seed=0))
    streamed = build_ingest_dataset(*args, 2, 0.25, shuffle_seed=0).materialize()
    driver = tokenize_in_driver(*args, shuffle_seed=0)
    for ds in (streamed, driver):
        assert _whole_samples(ds) == alone
        assert sum(r["num_tokens"] for r in ds.take_all()) < 0.9 * sum(len(s) for s in alone)
        assert sum(r["num_samples"] for r in ds.take_all()) == len(alone)
    n = split_samples(split)
    est = estimate_rows(split, str(tiny_model), DEFAULT_SYSTEM_PROMPT, 1024, "shared_prefix", 128, seed=0, sample_size=n)
    assert abs(est.rows - streamed.count()) <= 0.05 * streamed.count()
    stats = measure_ingest(streamed, 2, 2, collate_fn_for(0, "shared_prefix", 1024), n)
    assert stats["samples_per_row"] > 2
