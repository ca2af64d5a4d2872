"""The regression anchor: fits what the text says, scored like any model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from socrates_ray.eval.anchor import AnchorError, fit_anchor, option_probs, predict_anchor
from socrates_ray.eval.metrics import group_cells, model_metrics

FRAMES = {"good": "Experts praise the plan.", "bad": "Critics attack the plan."}


def table(n: int, seed: int, topics: list[str]) -> pa.Table:
    """Answers on 1..5: the 'good' frame pushes up, 'bad' down; Democrats up on 'parks', down on 'roads'."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        frame, topic = rng.choice(list(FRAMES)), rng.choice(topics)
        party = rng.choice(["Strong Democrat", "Strong Republican"])
        u = (1.2 if frame == "good" else -1.2) + (0.8 if (party == "Strong Democrat") == (topic == "parks") else -0.8)
        answer = int(np.clip(np.round(3 + u + rng.normal(0, 0.7)), 1, 5))
        rows.append({
            "study_id": f"s{i % 8}", "sample_id": i, "participant": i, "condition_num": int(frame == "good"),
            "task_num": 0, "demographic": {"age": int(rng.integers(20, 80)), "party_id": party, "gender": None},
            "stimuli": f"A proposal about {topic}. {FRAMES[frame]}\n\nOnly return an integer from 1 to 5.",
            "response": answer, "scale_low": 1, "scale_high": 5,
        })
    return pa.Table.from_pylist(rows)


def test_option_probs_is_an_ordered_logit_that_piles_up_at_the_ends() -> None:
    p = option_probs(1.4, 0.1, 5)
    assert p.sum() == pytest.approx(1.0)
    assert p.argmax() == 4 and p[4] > 0.95  # a latent past the top puts its tail on the top option
    assert option_probs(0.5, 0.1, 5).argmax() == 2


def test_the_anchor_learns_frames_and_party_by_topic_and_beats_uniform() -> None:
    train, val, test = table(1500, 0, ["parks", "roads"]), table(300, 1, ["parks", "roads"]), table(400, 2, ["parks", "roads"])
    anchor = fit_anchor(train, val)
    predicted = predict_anchor(anchor, test)
    assert predicted.num_rows == test.num_rows
    rows = predicted.to_pylist()
    assert all(r["options"] == [1, 2, 3, 4, 5] and sum(r["probs"]) == pytest.approx(1.0) for r in rows)
    mean = lambda r: float(np.dot(r["options"], r["probs"]))  # noqa: E731
    good = [mean(r) for r, s in zip(rows, test["stimuli"].to_pylist()) if "praise" in s]
    bad = [mean(r) for r, s in zip(rows, test["stimuli"].to_pylist()) if "attack" in s]
    assert np.mean(good) - np.mean(bad) > 1.5  # the true gap is 2.4
    stimuli = test["stimuli"].to_pylist()
    dem_parks = [mean(r) for r, s in zip(rows, stimuli) if r["demographic"]["party_id"] == "Strong Democrat" and "parks" in s]
    rep_parks = [mean(r) for r, s in zip(rows, stimuli) if r["demographic"]["party_id"] == "Strong Republican" and "parks" in s]
    assert np.mean(dem_parks) - np.mean(rep_parks) > 0.8  # party x topic, through the interaction features
    m = model_metrics(group_cells(rows))
    uniform = [{**r, "probs": [0.2] * 5} for r in rows]
    assert m.wasserstein < 0.6 * model_metrics(group_cells(uniform)).wasserstein


def test_open_ended_rows_get_a_draw_from_the_training_amounts() -> None:
    train = table(300, 0, ["parks"])
    amounts = pa.Table.from_pylist([{**r, "response": 25, "scale_low": None, "scale_high": None} for r in table(20, 3, ["parks"]).to_pylist()],
                                   schema=train.schema)
    anchor = fit_anchor(pa.concat_tables([train, amounts]), train)
    out = predict_anchor(anchor, amounts).to_pylist()
    assert all(r["prediction"] == 25 and r["probs"] is None for r in out)


def test_no_bounded_answers_is_a_clear_error() -> None:
    rows = [{**r, "scale_low": None, "scale_high": None} for r in table(10, 0, ["parks"]).to_pylist()]
    with pytest.raises(AnchorError, match="no answers on a bounded scale"):
        fit_anchor(pa.Table.from_pylist(rows), pa.Table.from_pylist(rows))
