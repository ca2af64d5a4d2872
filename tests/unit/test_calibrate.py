"""simulate.temperature=auto: the fit, its inputs and guards, and who reads the validation split."""

import json

import numpy as np
import pytest

from socrates_ray.config import load_config
from socrates_ray.eval.calibrate import CalibrationError, build_calibration_split, fit_temperature, nll, resolve_temperature
from socrates_ray.eval.passes import SimulateError, build_pass
from socrates_ray.eval.simulate import check_params
from socrates_ray.infer import EngineSpec, shape_distribution
from socrates_ray.data.prepared import training_eval_part


def _softmax(z):
    z = np.exp(z - z.max())
    return z / z.sum()


def _overconfident_model(rows: int, true_t: float, seed: int = 0):
    """A model whose option distributions are the truth sharpened by 1/true_t: the answers come from
    softmax(logits / true_t), the model says softmax(logits)."""
    rng = np.random.default_rng(seed)
    options, probs, answers = [], [], []
    for _ in range(rows):
        k = int(rng.integers(2, 8))
        logits = rng.normal(0, 2.0, k)
        truth = _softmax(logits / true_t)
        options.append(list(range(1, k + 1)))
        probs.append(list(_softmax(logits)))
        answers.append(int(rng.choice(k, p=truth)) + 1)
    return options, probs, answers


@pytest.mark.parametrize("true_t", [0.7, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_made_the_answers(true_t):
    options, probs, answers = _overconfident_model(4000, true_t)
    fit = fit_temperature(options, probs, answers)
    assert fit.temperature == pytest.approx(true_t, rel=0.12)
    assert fit.nll <= fit.nll_at_1 + 1e-9 and fit.rows == 4000 and fit.rows_skipped == 0


def test_the_fitted_shape_is_the_one_the_scorer_applies():
    """nll() reshapes as p ** (1/T), which must be what infer.shape_distribution does at top_p=1."""
    p = np.array([0.6, 0.3, 0.08, 0.02])
    for t in (0.5, 1.0, 3.0):
        mine = _softmax(np.log(p) / t)
        assert np.allclose(shape_distribution(np.log(p), temperature=t, top_p=1.0), mine, atol=1e-9)
        assert nll([np.log(p)], np.array([2]), t) == pytest.approx(-np.log(mine[2]))


def test_answers_outside_the_options_are_counted_and_all_of_them_is_an_error():
    options, probs, answers = _overconfident_model(200, 1.5)
    answers[:10] = [99] * 10
    assert fit_temperature(options, probs, answers).rows_skipped == 10
    with pytest.raises(CalibrationError, match="no validation row"):
        fit_temperature(options[:3], probs[:3], [99, 99, 99])


def test_auto_without_a_validation_split_says_how_to_get_one(tmp_path):
    # prepared with data.validation_fraction=0: the summary lists all_settings, its val split is empty
    (tmp_path / "summary.json").write_text('{"settings": {"all_settings": {}}}')
    cfg = load_config(None, [f"data.prepared={tmp_path}", "train.setting=all_settings", "simulate.temperature=auto"])
    split = build_calibration_split(cfg)
    p = build_pass(cfg.simulate, "unused", "", EngineSpec(), temperature=1.0)
    with pytest.raises(CalibrationError, match=r"all_settings/val is empty.*data.validation_fraction > 0.*a number"):
        resolve_temperature("auto", p, split, tmp_path / "cal", log=lambda *_: None)
    assert resolve_temperature(1.7, p, split, tmp_path / "cal") == (1.7, None)
    sample = build_pass(cfg.simulate, "unused", "", EngineSpec(), temperature=1.0, mode="sample")
    temperature, fit = resolve_temperature("auto", sample, split, tmp_path / "cal")
    assert temperature == 1.0 and fit.temperature is None  # sampling uses sample_temperature


def test_unresolved_auto_never_reaches_the_model(tmp_path):
    sim = load_config(None, ["simulate.temperature=auto"]).simulate
    with pytest.raises(SimulateError, match="resolved to a number"):
        build_pass(sim, "unused", "", EngineSpec())


def test_resuming_with_other_settings_is_refused_not_mixed(tmp_path):
    sim = load_config(None, ["simulate.temperature=1.0"]).simulate
    p = build_pass(sim, "model", "", EngineSpec())
    check_params(tmp_path, p)  # first run records its settings
    (tmp_path / "part-0000000000001-abcdef.parquet").write_bytes(b"")  # a finished part
    check_params(tmp_path, p)  # same settings: resumes
    with pytest.raises(SimulateError, match=r"temperature: 1.0 -> 2.0.*mix"):
        check_params(tmp_path, p.at_temperature(2.0))
    with pytest.raises(SimulateError, match="model_path: 'model' -> 'other'"):
        check_params(tmp_path, build_pass(sim, "other", "", EngineSpec()))
    assert json.loads((tmp_path / "simulate_params.json").read_text())["temperature"] == 1.0


def test_training_evaluates_on_validation_when_prepare_made_one(tmp_path):
    (tmp_path / "unseen_studies" / "eval").mkdir(parents=True)
    assert training_eval_part(tmp_path, "unseen_studies") == "eval"  # old prepared folder: falls back (and plan_run warns)
    (tmp_path / "unseen_studies" / "val").mkdir()
    assert training_eval_part(tmp_path, "unseen_studies") == "eval"  # an empty val folder holds nothing to evaluate
    (tmp_path / "unseen_studies" / "val" / "part-00000-000.parquet").write_bytes(b"")
    assert training_eval_part(tmp_path, "unseen_studies") == "val"
