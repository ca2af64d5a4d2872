"""The paper's metrics on small cases computed by hand (the paper, Kolluri et al. EMNLP 2025, section 5)."""

from __future__ import annotations

import numpy as np
import pytest

from socrates_ray.eval.results import (
    Baselines, CellSpread, EvaluationResult, FitCheck, FitScores, FloorBaseline, ModelScores, SettingResult, TrueFloor,
    UniformBaseline,
)
from socrates_ray.eval.metrics import (
    baseline_metrics, compare, gap_closed, group_cells, macro, model_metrics, relative, subgroup_gap_error,
)


def rows(study: str, cond: int, humans: list[int], preds: list[int | None], low: int = 1, high: int = 5, **extra) -> list[dict]:
    return [
        {"study_id": study, "condition_num": cond, "task_num": 0, "sample_id": i, "response": h, "prediction": p,
         "scale_low": low, "scale_high": high, **{k: v[i] for k, v in extra.items()}}
        for i, (h, p) in enumerate(zip(humans, preds))
    ]


def test_wasserstein_and_accuracy_by_hand() -> None:
    # humans 1..5 rescale to 0, .25, .5, .75, 1; the model always says 1 (-> 0): W = mean(0..1) = 0.5,
    # accuracy = 1 - mean(|1 - h| / 4) = 1 - 10/20 = 0.5
    m = model_metrics(group_cells(rows("a", 0, [1, 2, 3, 4, 5], [1, 1, 1, 1, 1])))
    assert m.wasserstein_sampled == pytest.approx(0.5)
    assert m.accuracy_sampled == pytest.approx(0.5)


def test_model_answers_are_clipped_to_the_human_range() -> None:
    # 9 is above the human max 5: clipped to 1 after rescaling, so W = mean(|hs - 1|) = 0.5
    m = model_metrics(group_cells(rows("a", 0, [1, 2, 3, 4, 5], [9, 9, 9, 9, 9])))
    assert m.wasserstein_sampled == pytest.approx(0.5)


def test_macro_average_is_cells_then_studies() -> None:
    per_cell = {("a", 0, 0): 0.5, ("a", 1, 0): 0.1, ("b", 0, 0): 0.9}
    assert macro(per_cell) == pytest.approx((0.3 + 0.9) / 2)  # not the cell mean 0.5


def test_unscorable_cells_are_skipped_and_unparsable_counted() -> None:
    table = rows("a", 0, [3], [3]) + rows("a", 1, [2, 2, 2], [1, 2, 3]) + rows("a", 2, [1, 5], [None, 5])
    m = model_metrics(group_cells(table))
    assert m.cells == 1 and m.cells_skipped == 2
    assert m.unparsable == 1
    assert m.wasserstein_sampled == pytest.approx(0.5)  # humans {0, 1} vs model {1}


def test_exact_mode_uses_every_participants_distribution() -> None:
    table = rows("a", 0, [1, 5], [1, 5])
    for r in table:  # each participant: 50/50 between 1 and 5 -> the mixture equals the humans
        r["options"], r["probs"] = [1, 2, 3, 4, 5], [0.5, 0, 0, 0, 0.5]
    m = model_metrics(group_cells(table))
    assert m.mode == "exact" and m.cells_exact == 1
    assert m.wasserstein == pytest.approx(0.0)
    # expected error per participant: 0.5 * 0 + 0.5 * 4 = 2 of a span of 4 -> accuracy 0.5
    assert m.accuracy == pytest.approx(0.5)


def test_open_ended_cells_fall_back_to_sampled_answers_in_exact_mode() -> None:
    bounded = rows("a", 0, [1, 5], [1, 5])
    for r in bounded:
        r["options"], r["probs"] = [1, 2, 3, 4, 5], [0.5, 0, 0, 0, 0.5]
    open_ended = rows("a", 1, [10, 50, 90], [90, 90, 90], low=None, high=None)
    m = model_metrics(group_cells(bounded + open_ended))
    assert m.cells == 2 and m.cells_exact == 1 and m.mode == "exact"
    # open cell: humans 0, .5, 1 vs model 1,1,1 -> W = (1 + .5 + 0) / 3 = 0.5; bounded cell W = 0
    assert m.wasserstein == pytest.approx(0.25)


def test_uniform_guess_floor_and_true_floor() -> None:
    table = rows("a", 0, [1, 2, 3, 4, 5], [1] * 5)
    cells = group_cells(table)
    b = baseline_metrics(cells, {("a", 0, 0): ([1, 2, 3, 4, 5], [0.2] * 5)}, draws=50)
    assert b.uniform.wasserstein == pytest.approx(0.0)  # humans are exactly uniform
    assert b.true_floor.wasserstein == pytest.approx(0.0)
    assert 0 < b.floor.wasserstein < 0.5  # resampling noise of 5 answers
    assert b.floor.answers_per_cell == 5


def test_a_gap_past_the_resampling_floor_is_explained() -> None:
    """5 answers a cell and no truth: a model below the resampling floor closes '223%' of the gap, which says
    nothing; the report and the demo say why instead of leaving the figure bare."""
    from socrates_ray.eval.report import past_floor_note

    def results(floor: FloorBaseline, uniform: float = 0.18, true_floor: TrueFloor | None = None) -> EvaluationResult:
        models = {"finetuned": scores(0.117), "anchor": scores(0.113)}
        base = Baselines(UniformBaseline(uniform, None, {}), floor, true_floor)
        return EvaluationResult("m", None, "exact", {"unseen_studies": SettingResult(0, models, base, compare(models, base))}, {})

    noisy = results(FloorBaseline(0.153, 20, 5))
    note = past_floor_note(noisy)
    assert note is not None and "unseen_studies (median 5 answers a cell)" in note and "max_per_cell" in note
    assert past_floor_note(results(FloorBaseline(0.03, 20, 100))) is None
    # with true distributions the gap is measured against them: no note even if the resampling floor is noisy
    truth = results(FloorBaseline(0.153, 20, 5), true_floor=TrueFloor(0.10, 1))
    assert past_floor_note(truth) is None


def test_relative_improvements_and_gap_closed() -> None:
    # the paper's numbers: (0.205 - 0.151) / 0.205 = 26%; gap closed (0.203 - 0.151) / (0.203 - 0.125) = 0.67
    assert relative(0.151, 0.205) == pytest.approx(0.2634, abs=1e-4)
    assert gap_closed(0.151, 0.203, 0.125) == pytest.approx(0.667, abs=1e-3)
    models = {"base": scores(0.205, subgroup_gap_error=0.2), "finetuned": scores(0.151, subgroup_gap_error=0.1)}
    c = compare(models, Baselines(UniformBaseline(0.203, None, {}), FloorBaseline(0.125, 20, 5)))
    assert c.finetuned_vs_base.improvement == pytest.approx(0.2634, abs=1e-4)
    assert c.finetuned_vs_base.improvement_over_finetuned == pytest.approx(0.3576, abs=1e-4)
    assert c.gap_closed("finetuned") == pytest.approx((0.203 - 0.151) / (0.203 - 0.125))


def test_subgroup_gap_error_by_hand() -> None:
    # group A answers 1, group B answers 5: the human gap is 1 (rescaled); a model that says 3 for
    # everyone has gap 0 -> error 1; a model that copies the humans -> error 0
    demo = [{"party_id": "A"}] * 3 + [{"party_id": "B"}] * 3
    humans = [1, 1, 1, 5, 5, 5]
    flat = group_cells(rows("a", 0, humans, [3] * 6, demographic=demo), ["party_id"])
    copy = group_cells(rows("a", 0, humans, humans, demographic=demo), ["party_id"])
    assert subgroup_gap_error(next(iter(flat.values())), exact=False) == pytest.approx(1.0)
    assert subgroup_gap_error(next(iter(copy.values())), exact=False) == pytest.approx(0.0)
    # groups under 3 people are ignored: no field has 2 groups -> None
    small = group_cells(rows("a", 0, [1, 5], [1, 5], demographic=[{"party_id": "A"}, {"party_id": "B"}]), ["party_id"])
    assert subgroup_gap_error(next(iter(small.values())), exact=False) is None
    assert np.isfinite(model_metrics(flat).subgroup_gap_error)


def scores(wasserstein: float, subgroup_gap_error: float | None = None) -> ModelScores:
    """A model's scores with only W (and the subgroup gap error) set."""
    return ModelScores(1, 1, 0, 5, 0, "exact", wasserstein, None, None, None, subgroup_gap_error, CellSpread(None, None, 0), {}, {})


def exact_cell(study: str, cond: int, humans: list[int], probs: list[float]) -> list[dict]:
    table = rows(study, cond, humans, [None] * len(humans))
    for r in table:
        r["options"], r["probs"] = [1, 2, 3, 4, 5], probs
    return table


def test_cell_spread_is_zero_for_a_model_that_ignores_its_prompt() -> None:
    humans = [[1, 1, 2, 3], [3, 4, 5, 5], [2, 3, 3, 4]]
    same = [0.2, 0.2, 0.2, 0.2, 0.2]
    collapsed = model_metrics(group_cells(sum((exact_cell("a", c, h, same) for c, h in enumerate(humans)), [])))
    assert collapsed.cell_spread.predicted == pytest.approx(0.0)
    # human cell means 1.75, 4.25, 3.0 -> positions .1875, .8125, .5 -> sd 0.2552
    assert collapsed.cell_spread.human == pytest.approx(np.std([0.1875, 0.8125, 0.5]))
    low, high, mid = [0.7, 0.3, 0, 0, 0], [0, 0, 0, 0.3, 0.7], [0, 0, 1, 0, 0]
    reading = model_metrics(group_cells(sum((exact_cell("a", c, h, p) for c, (h, p) in enumerate(zip(humans, (low, high, mid)))), [])))
    # predicted positions: (0*.7 + .25*.3) = .075, .925, .5
    assert reading.cell_spread.predicted == pytest.approx(np.std([0.075, 0.925, 0.5]))
    assert reading.wasserstein < collapsed.wasserstein


def test_fit_check_line_puts_the_finetuned_ratio_beside_the_true_distributions() -> None:
    from socrates_ray.eval.report import fit_check_line

    fit = FitCheck("all_settings/train", 60, 10, {"finetuned": FitScores(0.15)}, uniform=0.30, true_floor=0.12)
    line = fit_check_line(EvaluationResult("m", None, "exact", {}, {}, fit_check=fit))
    assert "finetuned = 0.50 x uniform, the true distributions 0.40 x" in line and "true distributions 0.1200" in line
    fit.true_floor = None  # real data: no true distributions to compare with
    assert "true distributions" not in fit_check_line(EvaluationResult("m", None, "exact", {}, {}, fit_check=fit))


def test_distance_to_the_truth_is_zero_for_the_truth_and_one_share_for_uniform() -> None:
    from socrates_ray.eval.truth import truth_distance

    a, b = [0.1, 0.1, 0.1, 0.2, 0.5], [0.5, 0.3, 0.1, 0.05, 0.05]
    options = [1, 2, 3, 4, 5]
    truth = {("s", 0, 0): (options, a), ("s", 1, 0): (options, b)}
    perfect = sum((exact_cell("s", c, [1, 3, 5], p) for c, p in enumerate((a, b))), [])
    flat = sum((exact_cell("s", c, [1, 3, 5], [0.2] * 5) for c in range(2)), [])
    assert truth_distance(group_cells(perfect), truth).removed == pytest.approx(1.0)
    d = truth_distance(group_cells(flat), truth)
    assert d.removed == pytest.approx(0.0) and d.wasserstein == pytest.approx(d.uniform) and d.cells == 2
    halfway = sum((exact_cell("s", c, [1, 3, 5], ((np.array(p) + 0.2) / 2).tolist()) for c, p in enumerate((a, b))), [])
    assert 0.2 < truth_distance(group_cells(halfway), truth).removed < 0.8
    assert truth_distance(group_cells(flat), None) is None  # real data: no truth, no figure


def test_per_participant_truth_removes_persona_sampling_and_measures_persona_reading() -> None:
    """Two participants of one cell with opposite true distributions (a Democrat and a Republican on a
    partisan topic): a model that knows each one's distribution is perfect against their own truth
    (the cell's truth over everyone else would not say so), and orders them within the cell (persona
    reading 1); a model that gives both the cell's mixture is as good on the pooled distribution but
    reads no persona (0); swapping them reads it backwards (-1)."""
    from socrates_ray.eval.truth import truth_distance

    options = [1, 2, 3]
    dem, rep = [0.1, 0.2, 0.7], [0.7, 0.2, 0.1]
    cell_truth = {("s", 0, 0): (options, [0.2, 0.3, 0.5])}  # the whole cell had more Democrats than the two scored
    people = {("s", 0): dem, ("s", 1): rep}

    def scored(p0: list[float], p1: list[float]) -> dict:
        return group_cells(rows("s", 0, [3, 1], [3, 1], low=1, high=3, options=[options, options], probs=[p0, p1]))

    knows = truth_distance(scored(dem, rep), cell_truth, people)
    assert knows.removed == pytest.approx(1.0) and knows.persona.within_cell_corr == pytest.approx(1.0)
    assert knows.reference == "scored participants"
    assert truth_distance(scored(dem, rep), cell_truth).removed < 0.9  # against the whole cell's truth: sampling shows
    mixture = [0.4, 0.2, 0.4]
    blind = truth_distance(scored(mixture, mixture), cell_truth, people)
    assert blind.removed == pytest.approx(1.0) and blind.persona.within_cell_corr == 0.0
    backwards = truth_distance(scored(rep, dem), cell_truth, people)
    assert backwards.persona.within_cell_corr == pytest.approx(-1.0)
    # persona spread: the truth puts the two 0.6 of the scale apart (0.8 vs 0.2, sd 0.3); a model that orders
    # them rightly but moves them half as far reads them perfectly and spreads them half as much
    assert knows.persona.spread == pytest.approx(0.3) and knows.persona.true_spread == pytest.approx(0.3)
    timid = truth_distance(scored([0.25, 0.2, 0.55], [0.55, 0.2, 0.25]), cell_truth, people).persona
    assert timid.within_cell_corr == pytest.approx(1.0) and timid.spread == pytest.approx(0.15)
    assert blind.persona.spread == 0.0 and blind.persona.true_spread == pytest.approx(0.3)
    # a dataset synthesized before per-participant truth existed: the cell's truth, no persona figure
    assert truth_distance(scored(dem, rep), cell_truth, None).persona is None


def test_fit_check_takes_the_training_cells_with_the_most_answers(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from socrates_ray.eval.job import largest_cells
    from socrates_ray.data.prepared import INPUT_COLUMNS

    # cells of 3, 50, 8 and 45 answers: the two big ones are the check's, capped at 40 answers each
    sizes = {("s1", 0): 3, ("s1", 1): 50, ("s2", 0): 8, ("s3", 2): 45}
    records = [
        {"study_id": s, "sample_id": 1000 * c + i, "participant": i, "condition_num": c, "task_num": 0, "demographic": "",
         "stimuli": "", "prompt": "", "response": 1, "scale_low": 1, "scale_high": 5}
        for (s, c), n in sizes.items() for i in range(n)
    ]
    (tmp_path / "u" / "train").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records).select(INPUT_COLUMNS), tmp_path / "u" / "train" / "part-0.parquet")
    (tmp_path / "summary.json").write_text('{"settings": {"u": {}}}')  # prepare's completion marker
    for seed in (0, 1, 2):
        table = largest_cells(str(tmp_path), "u", "train", 2, 40, seed)
        cells = set(zip(table["study_id"].to_pylist(), table["condition_num"].to_pylist()))
        assert cells == {("s1", 1), ("s3", 2)}
        assert table.num_rows == 80
    assert largest_cells(str(tmp_path), "u", "train", 10, 40, 0).num_rows == 3 + 40 + 8 + 40


def test_the_cell_plot_draws_cells_with_distributions_and_never_one_twice(tmp_path) -> None:
    """An open-ended cell is scored from sampled answers (no probs): it may hold the best W but has no
    histogram, so the plot takes the best cells that have one (it left its first panel blank before)."""
    import pyarrow as pa

    from socrates_ray.eval.report import cell_picks, plot_cells

    def rows(study, probs, options):
        return [{"study_id": study, "condition_num": 0, "task_num": 0, "response": r, "options": options, "probs": probs}
                for r in (1, 2)]

    table = pa.Table.from_pylist(rows("open", None, None) + rows("a", [0.5, 0.5], [1, 2]) + rows("b", [0.9, 0.1], [1, 2])
                                 + rows("c", [0.1, 0.9], [1, 2]))
    per_cell = {"open|0|0": 0.0, "a|0|0": 0.01, "b|0|0": 0.2, "c|0|0": 0.3}
    picks = cell_picks(table, per_cell, k=2)
    assert [(label, cell) for label, cell, _, _ in picks] == [("best", "a|0|0"), ("best", "b|0|0"), ("worst", "c|0|0")]
    assert all(len(members) == 2 for *_, members in picks)
    assert plot_cells(table, per_cell, tmp_path / "cells.png", k=2).stat().st_size > 0
    assert plot_cells(table, {"open|0|0": 0.0}, tmp_path / "none.png") is None  # nothing to draw: no file


# --- the paper's rescaling by the whole cell's humans, whatever subset is scored -----------------
def _exact_rows(humans: list[int], probs: list[list[float]], options: list[int]) -> list[dict]:
    out = rows("a", 0, humans, [None] * len(humans), low=options[0], high=options[-1])
    for r, p in zip(out, probs):
        r["options"], r["probs"] = options, p
    return out


def test_a_perfect_predictor_scores_accuracy_one_and_w_zero() -> None:
    humans = [1, 3, 3, 5, 7, 2]
    options = list(range(1, 8))
    probs = [[1.0 if o == h else 0.0 for o in options] for h in humans]
    m = model_metrics(group_cells(_exact_rows(humans, probs, options), ranges={("a", 0, 0): (1.0, 7.0)}))
    assert m.accuracy == pytest.approx(1.0) and m.wasserstein == pytest.approx(0.0)
    sampled = model_metrics(group_cells(rows("a", 0, humans, humans)))
    assert sampled.accuracy_sampled == pytest.approx(1.0)


def test_uniform_accuracy_on_a_symmetric_cell_matches_its_closed_form() -> None:
    # humans spread evenly over a K-point scale, the uniform guess: E|U - H| = (K^2 - 1) / (3K) points,
    # so accuracy = 1 - (K + 1) / (3K) (0.619 at K = 7, near the paper's 0.612 on SocSci210)
    for k in (2, 5, 7, 11):
        humans = list(range(1, k + 1)) * 3
        cells = group_cells(rows("a", 0, humans, humans, low=1, high=k))
        assert baseline_metrics(cells, None, draws=2).uniform.accuracy == pytest.approx(1 - (k + 1) / (3 * k))


def test_accuracy_never_leaves_zero_one_whatever_the_model_says() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        humans = rng.integers(1, 8, size=5).tolist()
        preds = rng.integers(-20, 30, size=5).tolist()  # far outside the scale too: clipped as for W
        cells = group_cells(rows("a", 0, humans, preds, low=1, high=7), ranges={("a", 0, 0): (1.0, 7.0)})
        acc = model_metrics(cells).accuracy_sampled
        assert acc is None or 0.0 <= acc <= 1.0
        options = list(range(1, 8))
        probs = [(p / p.sum()).tolist() for p in rng.random((5, 7))]
        exact = model_metrics(group_cells(_exact_rows(humans, probs, options), ranges={("a", 0, 0): (1.0, 7.0)}))
        assert exact.accuracy is None or 0.0 <= exact.accuracy <= 1.0


def test_a_subsample_is_rescaled_by_the_whole_cells_range() -> None:
    # five answers that span 3..4 of a cell whose humans span 1..7: a miss of 1 point is 1/6 of the
    # range, not 100% of it
    ranges = {("a", 0, 0): (1.0, 7.0)}
    sub = group_cells(rows("a", 0, [3, 4, 3, 4, 3], [4, 3, 4, 3, 4], low=1, high=7), ranges=ranges)
    m = model_metrics(sub)
    assert m.accuracy_sampled == pytest.approx(1 - 1 / 6)
    # W: humans {3,4,3,4,3} and the model {4,3,4,3,4} differ by one answer moved one point: 1/5 x 1/6
    assert m.wasserstein_sampled == pytest.approx(1 / 30)
    narrow = model_metrics(group_cells(rows("a", 0, [3, 4, 3, 4, 3], [4, 3, 4, 3, 4], low=1, high=7)))
    assert narrow.accuracy_sampled == pytest.approx(0.0)  # by the subsample's own range the same miss is total
    # a subsample with no spread is still scorable against the cell's range (the paper skips only max == min cells)
    flat = model_metrics(group_cells(rows("a", 0, [4, 4, 4], [4, 4, 5], low=1, high=7), ranges=ranges))
    assert flat.cells == 1 and flat.accuracy_sampled == pytest.approx(1 - 1 / 18)


def test_cell_ranges_are_read_from_the_whole_split(tmp_path) -> None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from socrates_ray.data.prepared import PREPARED_SUMMARY, cell_ranges

    folder = tmp_path / "unseen_studies" / "eval"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"study_id": ["s", "s", "s", "t"], "condition_num": [0, 0, 1, 0], "task_num": [1, 1, 1, 1],
                             "response": [2, 6, 3, 5]}), folder / "part-0.parquet")
    (tmp_path / PREPARED_SUMMARY).write_text(json.dumps({"settings": {"unseen_studies": {}}}))
    assert cell_ranges(str(tmp_path), "unseen_studies", "eval") == {("s", 0, 1): (2.0, 6.0), ("s", 1, 1): (3.0, 3.0),
                                                                     ("t", 0, 1): (5.0, 5.0)}


def test_the_parity_check_recovers_a_planted_subgroup_gap() -> None:
    from socrates_ray.eval.parity import parity_check

    # Democrats answer 6-7, Republicans 1-2 on a 1-7 scale: the humans' party gap is (6.4 - 1.6) / 6 = 0.8
    humans = [6, 7, 6, 7, 6, 2, 1, 2, 1, 2]
    party = ["D"] * 5 + ["R"] * 5
    gender = ["F", "M"] * 5  # 3 and 2 per group within each party: both genders have >= 3 people overall
    lone = ["x"] * 9 + ["y"]  # one group of 1: never measurable
    options = list(range(1, 8))
    extra = {"demographic": [{"party_id": p, "gender": g, "ideology": i} for p, g, i in zip(party, gender, lone)]}

    def model(means: list[float]) -> dict:
        out = rows("a", 0, humans, [None] * 10, low=1, high=7, **extra)
        for r, m in zip(out, means):
            r["options"], r["probs"] = options, [1.0 if o == m else 0.0 for o in options]
        return group_cells(out, ["party_id", "gender", "ideology"], {("a", 0, 0): (1.0, 7.0)})

    reads = model(humans)  # says what each person said
    ignores = model([4] * 10)  # the same answer for everyone
    check = parity_check({"base": ignores, "finetuned": reads}, ["party_id", "gender", "ideology"], "u/eval")
    party_gap = check.fields["party_id"]
    assert party_gap.cells == 1 and party_gap.human_gap == pytest.approx(0.8)
    assert party_gap.gaps["finetuned"] == pytest.approx(0.8) and party_gap.errors["finetuned"] == pytest.approx(0.0)
    assert party_gap.gaps["base"] == pytest.approx(0.0) and party_gap.errors["base"] == pytest.approx(0.8)
    assert check.fields["ideology"].cells == 0 and "ideology" in check.note  # too few people: said, not NaN
    assert check.errors["finetuned"] < check.errors["base"] and check.change == pytest.approx(-1.0)
