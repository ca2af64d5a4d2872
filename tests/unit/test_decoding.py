"""Simulation's per-pass settings and the answer options it takes from prepare's scale columns."""

import pytest

from socrates_ray.config import SimulateSection
from socrates_ray.eval.passes import SimulateError, build_decoding
from socrates_ray.eval.replica import exact_result, row_options


def test_decoding_is_built_once_from_the_section_and_refuses_an_unfitted_temperature():
    d = build_decoding(SimulateSection(temperature=0.7, top_p=0.9, max_new_tokens=8))
    assert (d.mode, d.temperature, d.top_p, d.max_new_tokens) == ("exact", 0.7, 0.9, 8)
    with pytest.raises(SimulateError, match="temperature=auto"):
        build_decoding(SimulateSection(temperature="auto"))


def test_options_come_from_the_scale_prepare_parsed_not_from_the_text():
    batch = {"scale_low": [1, 0, None], "scale_high": [4, 1, None],
             "stimuli": ["... an integer from 0 to 100 ...", "x", "How many dollars?"]}
    assert row_options(batch) == [[1, 2, 3, 4], [0, 1], []]


def test_an_exact_result_draws_a_reproducible_answer_from_its_options():
    a = exact_result([0.0, 0.0, 1.0], [5, 6, 7], "s1", 3)
    assert a == {"options": [5, 6, 7], "probs": [0.0, 0.0, 1.0], "prediction": 7}
    assert exact_result([0.2, 0.3, 0.5], [1, 2, 3], "s1", 4) == exact_result([0.2, 0.3, 0.5], [1, 2, 3], "s1", 4)
