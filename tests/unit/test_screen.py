"""Screening without a model: the spec, the rows it makes, the effects/intervals/power analysis,
the held-out-study comparison and the report files (screen.job.analyze on hand-made predictions)."""

from __future__ import annotations

import math

import glob
import json

import numpy as np
import pyarrow as pa
import pytest
import yaml

from socrates_ray.screen.analysis import (
    Arm, contrast_effect, fit_model_error, n_needed, observed_contrast, power_at,
)
from socrates_ray.screen.design import build_rows, draw_personas, personas_needed
from socrates_ray.screen.job import analyze
from socrates_ray.screen.report import write_screen_report
from socrates_ray.screen.results import ModelScreen, ScreenResult, SplitContrast
from socrates_ray.screen.spec import Experiment, ExperimentError, load_experiment
from socrates_ray.screen.trust import agreement, split_contrasts

QUESTION = "How much do you support it? Only return an integer from 1 to 5, where 1 means Not at all and 5 means Completely, nothing else."


def spec(**changes) -> dict:
    tree = {
        "name": "t",
        "population": {"source": "marginals", "marginals": {"party_id": {"Strong Democrat": 1, "Strong Republican": 1}, "age": {"30": 1, "60": 1}},
                       "n_per_arm": 40, "seed": 1},
        "conditions": [{"name": "control", "stimulus": "A plan."}, {"name": "cost", "stimulus": "A plan. It costs a lot."}],
        "outcomes": [{"name": "support", "question": QUESTION}],
        "subgroups": ["party_id"],
        "models": ["base"],
    }
    tree.update(changes)
    return tree


def write(tmp_path, tree) -> str:
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_every_shipped_experiment_loads():
    files = glob.glob("configs/experiments/*.yaml")
    assert files
    for f in files:
        experiment = load_experiment(f)
        assert len(experiment.arms()) >= 2 and experiment.planned_contrasts()


@pytest.mark.parametrize("change, path", [
    ({"population": {"n_per_arms": 3}}, "population.n_per_arms: unknown key"),
    ({"contrasts": [{"treatment": "costs", "control": "control"}]}, "contrasts.0.treatment: 'costs' is not an arm"),
    ({"outcomes": [{"name": "x", "question": "How much do you like it?"}]}, "outcomes.0.question: no bounded answer scale"),
    ({"subgroups": ["party"]}, "subgroups: unknown demographic field(s) ['party']"),
    ({"analysis": {"alpha": 2}}, "analysis.alpha: Input should be less than 1"),
    ({"template": "A {frame} plan."}, "either as `conditions`"),
])
def test_spec_errors_name_the_path(tmp_path, change, path):
    with pytest.raises(ExperimentError) as err:
        load_experiment(write(tmp_path, spec(**change)))
    assert path in str(err.value), str(err.value)


def test_factors_make_every_combination_and_rows_follow_the_design(tmp_path):
    tree = spec(conditions=[], template="The plan. {frame} {cue}", design="within",
                factors={"frame": {"plain": "", "cost": "It costs a lot."}, "cue": {"none": "", "dem": "Democrats back it."}})
    experiment = Experiment.model_validate(tree)
    assert [a for a, _ in experiment.arms()] == ["plain+none", "plain+dem", "cost+none", "cost+dem"]
    assert dict(experiment.arms())["cost+dem"] == "The plan. It costs a lot. Democrats back it."
    personas = draw_personas(experiment.population, personas_needed(experiment), "unused")
    rows = build_rows(experiment, personas)
    assert rows.num_rows == 4 * 40 and personas_needed(experiment) == 40  # within: the same 40 people in every arm
    assert set(rows["participant"].to_pylist()) == set(range(40))
    first = rows.slice(0, 1).to_pylist()[0]
    assert first["prompt"].endswith("The plan.\n\n" + QUESTION) and "- Party Id: Strong" in first["prompt"]
    assert (first["scale_low"], first["scale_high"], first["response"]) == (1, 5, None)
    between = Experiment.model_validate(tree | {"design": "between"})
    assert personas_needed(between) == 160
    assert set(build_rows(between, draw_personas(between.population, 160, "unused"))["participant"].to_pylist()) == set(range(160))


def people(utilities: np.ndarray) -> Arm:
    """People on a 1..5 scale, each an ordered logit around their own utility."""
    cuts = np.array([-1.8, -0.6, 0.6, 1.8])
    cdf = 1 / (1 + np.exp(-(cuts[None, :] - utilities[:, None])))
    return Arm.of([1, 2, 3, 4, 5], np.diff(np.concatenate([np.zeros((len(utilities), 1)), cdf, np.ones((len(utilities), 1))], axis=1), axis=1).tolist())


def shifted(n: int, shift: float, rng: np.random.Generator) -> Arm:
    """n people around `shift`, each with a personal effect."""
    return people(shift + rng.normal(0, 0.5, n))


def test_a_large_effect_is_recovered_and_its_interval_narrows_with_more_people():
    rng = np.random.default_rng(0)
    widths = []
    for n in (25, 100, 400):
        treat, ctrl = shifted(n, -1.0, rng), shifted(n, 0.5, rng)
        e = contrast_effect(treat, ctrl, paired=False, level=0.9, draws=800, rng=rng)
        assert e.difference < -0.8 and e.interval[1] < 0 and e.d < -0.5, e
        widths.append(e.interval[1] - e.interval[0])
    assert widths[0] > 1.6 * widths[1] > 1.6 * 1.6 * widths[2] * 0.9, widths  # ~ 1/sqrt(n): halves per 4x people
    # a within-subject design on the same people: their personal effects cancel, so the interval is narrower
    persons = rng.normal(0, 2.0, 100)
    before, after = people(persons), people(persons + 1.0)
    paired = contrast_effect(after, before, paired=True, level=0.9, draws=800, rng=rng)
    unpaired = contrast_effect(after, before, paired=False, level=0.9, draws=800, rng=rng)
    assert paired.difference == pytest.approx(unpaired.difference) and paired.difference > 0.5
    assert paired.interval[1] - paired.interval[0] < 0.9 * (unpaired.interval[1] - unpaired.interval[0])


def test_power_matches_the_published_t_test_values():
    # Cohen (1988) / statsmodels TTestIndPower().solve_power(d, alpha=0.05, power=0.8): 393.4, 63.77, 25.52 per group
    assert [n_needed(d, 0.05, 0.8, paired=False) for d in (0.2, 0.5, 0.8)] == [394, 64, 26]
    assert abs(power_at(0.5, 63.7656, 0.05, paired=False) - 0.8) < 1e-3
    # paired (TTestPower, one-sample on the differences): d_z 0.5 needs 33.37 pairs
    assert n_needed(0.5, 0.05, 0.8, paired=True) == 34
    assert n_needed(-0.5, 0.05, 0.8, paired=False) == 64  # two-sided: the sign does not matter
    assert n_needed(0.0, 0.05, 0.8, paired=False) is None
    assert abs(power_at(0.0, 50, 0.05, paired=False) - 0.05) < 1e-9


@pytest.mark.parametrize("paired", [False, True])
def test_power_and_sample_size_equal_statsmodels_across_the_range(paired):
    """The screen's power and humans-per-arm are statsmodels' TTestIndPower / TTestPower (two-sided),
    the names a reviewer checks them against, at effects from tiny to huge and alphas and powers in use."""
    import warnings

    from statsmodels.stats.power import TTestIndPower, TTestPower

    ref = TTestPower() if paired else TTestIndPower()
    kwargs, nans = ({} if paired else {"ratio": 1.0}), []
    for d in (0.05, 0.2, 0.35, 0.5, 0.8, 1.2, 2.0, 3.5):
        for alpha in (0.01, 0.05, 0.1):
            for n in (3, 10, 40, 250, 4000):
                theirs = ref.power(effect_size=d, alpha=alpha, alternative="two-sided", **{("nobs" if paired else "nobs1"): n}, **kwargs)
                ours = power_at(d, n, alpha, paired)
                if math.isnan(theirs):  # statsmodels' noncentral t gives up where the power is 1 to many digits
                    assert ours > 1 - 1e-6, (d, alpha, n, ours)
                    nans.append((d, alpha, n))
                else:
                    assert ours == pytest.approx(theirs, abs=1e-5), (d, alpha, n)  # far tails: the two nct codes differ by ~4e-6
            for power in (0.8, 0.9, 0.95):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    solved = ref.solve_power(effect_size=d, alpha=alpha, power=power, alternative="two-sided", **kwargs)
                expected = max(2, int(math.ceil(float(solved) - 1e-6)))
                assert n_needed(d, alpha, power, paired) == expected, (d, alpha, power, float(solved))
    assert nans  # the reason the screen keeps its own: statsmodels returns NaN at some of these points


def test_observed_contrast_of_arms_without_spread_is_exact():
    assert observed_contrast([3, 3, 3], [2, 2], 0.9).interval == [1.0, 1.0]


def test_standardized_effect_counts_answer_uncertainty_and_persona_spread():
    certain = Arm.of([1, 2, 3, 4, 5], [[0, 1, 0, 0, 0]] * 10)  # everyone answers 2
    half = Arm.of([1, 2, 3, 4, 5], [[0, 0.5, 0, 0.5, 0]] * 10)  # each person 2 or 4: variance 1 within the person
    e = contrast_effect(half, certain, paired=False, level=0.9, draws=200, rng=np.random.default_rng(0))
    assert e.difference == pytest.approx(1.0) and e.d == pytest.approx(1.0 / np.sqrt(0.5))


def predictions_table(experiment: Experiment, rng: np.random.Generator) -> pa.Table:
    """What the simulate stage would return: the design's rows plus each row's distribution (the
    'cost' arm and Republicans answer lower)."""
    rows = build_rows(experiment, draw_personas(experiment.population, personas_needed(experiment), "unused"))
    probs = []
    for arm, demo in zip(rows["condition_num"].to_pylist(), rows["demographic"].to_pylist()):
        shift = (-1.5 if arm == 1 else 0.0) + (-1.0 if demo["party_id"] == "Strong Republican" else 0.5)
        probs.append(shifted(1, shift + rng.normal(0, 0.3), rng).probs[0].tolist())
    return rows.append_column("options", pa.array([[1, 2, 3, 4, 5]] * rows.num_rows)).append_column("probs", pa.array(probs))


def test_analysis_and_report_files_hold_the_same_numbers(tmp_path):
    experiment = Experiment.model_validate(spec(contrasts=[{"treatment": "cost", "control": "control", "expected": "negative"}],
                                                analysis={"min_subgroup_n": 10}))
    table = predictions_table(experiment, np.random.default_rng(0))
    outcomes = analyze(experiment, table, model_error=0.0, seed=0)
    c = outcomes["support"].contrasts[0]
    assert c.difference < -0.8 and c.interval[1] < 0 and c.verdict == "negative: as expected"
    assert set(c.subgroups["party_id"]) == {"Strong Democrat", "Strong Republican"}
    assert c.humans_per_arm_needed == n_needed(c.d, 0.05, 0.8, paired=False)
    # a model error of 0.1 of the 1..5 range adds z * 0.4 points to each half-width, in quadrature
    wider = analyze(experiment, table, model_error=0.1, seed=0)["support"].contrasts[0]
    extra = 1.6448536 * 0.1 * 4
    assert wider.interval[1] - wider.difference == pytest.approx(np.hypot(c.interval[1] - c.difference, extra))
    results = ScreenResult("t", "between", 40, experiment.population.model_dump(), dict(experiment.arms()), "control", ["support"],
                           experiment.analysis.model_dump(), 40, "m", {"base": None},
                           {"base": ModelScreen(temperature=1.0, model_error=0.0, outcomes=outcomes)})
    report = write_screen_report(results, tmp_path)
    for name in ("screen.json", "report.md", "distributions.png", "effects.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "screen.json").read_text())["models"]["base"]["outcomes"]["support"]["contrasts"][0]
    text = report.read_text()
    assert f"{saved['difference']:+.2f} [{saved['interval'][0]:+.2f}, {saved['interval'][1]:+.2f}]" in text
    assert f"| {saved['humans_per_arm_needed']} |" in text
    arm_mean = json.loads((tmp_path / "screen.json").read_text())["models"]["base"]["outcomes"]["support"]["arms"]["cost"]["mean"]
    assert f"| cost | 40 | {arm_mean:.2f} |" in text


def test_held_out_studies_become_contrasts_compared_with_humans_and_truth():
    """Two studies, control vs one treatment each; the 'model' predicts each person's true
    distribution, so its contrasts agree in sign with the clear human ones and the fitted scale covers."""
    rng = np.random.default_rng(0)
    rows, truth = [], {}
    for s, (shift, n) in enumerate([(-1.5, 120), (1.5, 120), (0.0, 40)]):
        for cond in (0, 1):
            arm = shifted(n, shift * cond, rng)
            truth[(f"s{s}", cond, 0)] = ([1, 2, 3, 4, 5], arm.probs.mean(axis=0).tolist())
            for i in range(n):
                p = arm.probs[i]
                rows.append({"study_id": f"s{s}", "task_num": 0, "condition_num": cond, "response": int(rng.choice(5, p=p)) + 1,
                             "options": [1, 2, 3, 4, 5], "probs": p.tolist(), "scale_low": 1, "scale_high": 5})
    contrasts = split_contrasts(pa.Table.from_pylist(rows), level=0.9, draws=500, seed=0, truth=truth)
    assert [(c.study_id, c.condition, c.control) for c in contrasts] == [("s0", 1, 0), ("s1", 1, 0), ("s2", 1, 0)]
    assert contrasts[0].predicted < -0.8 and contrasts[1].predicted > 0.8 and contrasts[0].true < -0.8
    result = agreement(contrasts, 0.0, 0.9)
    assert result.clear_human_contrasts >= 2 and result.sign_agreement == 1.0
    assert result.vs_truth.sign_agreement == 1.0 and result.vs_truth.correlation > 0.9


def test_the_fitted_model_error_is_what_the_errors_hold_beyond_sampling():
    z = 1.6448536
    # sampling sd 0.1 (interval half-width z * 0.1) and errors of +-0.3 on a range of 1: excess variance 0.09 - 0.01
    def contrast(interval: list[float], observed: float, range_: float) -> SplitContrast:
        return SplitContrast("s", 0, 1, 0, range_, 0.0, interval, observed, [observed - 0.01, observed + 0.01], 10, 10)

    contrasts = [contrast([-z * 0.1, z * 0.1], o, 1.0) for o in (0.3, -0.3)]
    assert fit_model_error(contrasts, 0.9) == pytest.approx(np.sqrt(0.08))
    # errors smaller than sampling alone explains: no model error
    assert fit_model_error([contrast([-1.0, 1.0], 0.1, 4.0)], 0.9) == 0.0
    assert fit_model_error([], 0.9) == 0.0
    # agreement's coverage uses it: an observed effect 0.3 away is outside the sampling-only interval, inside the widened one
    assert agreement(contrasts, 0.0, 0.9).coverage == 0.0
    assert agreement(contrasts, fit_model_error(contrasts, 0.9), 0.9).coverage == 1.0


def test_observed_contrast_is_a_welch_interval():
    from scipy import stats

    t, c = [5, 4, 5, 3, 4, 5], [2, 1, 3, 2, 2]
    got = observed_contrast(t, c, 0.95)
    ref = stats.ttest_ind(t, c, equal_var=False).confidence_interval(0.95)
    assert got.interval == pytest.approx([ref.low, ref.high])
    assert observed_contrast([1], [2, 3], 0.9) is None


def test_a_changed_spec_is_simulated_again_not_mixed_with_old_predictions(tmp_path):
    from socrates_ray.screen.job import keep_only_current, rows_fingerprint

    experiment = Experiment.model_validate(spec())
    rows = build_rows(experiment, draw_personas(experiment.population, personas_needed(experiment), "unused"))
    again = build_rows(experiment, draw_personas(experiment.population, personas_needed(experiment), "unused"))
    edited = Experiment.model_validate(spec(conditions=[{"name": "control", "stimulus": "A plan."}, {"name": "cost", "stimulus": "It is cheap."}]))
    changed = build_rows(edited, draw_personas(edited.population, personas_needed(edited), "unused"))
    assert rows_fingerprint(rows) == rows_fingerprint(again) != rows_fingerprint(changed)
    folder, logs = tmp_path / "simulate" / "base", []
    keep_only_current(folder, rows_fingerprint(rows), logs.append)
    (folder / "part-1.parquet").write_text("old")
    keep_only_current(folder, rows_fingerprint(again), logs.append)  # same spec: the parts stay (resume)
    assert (folder / "part-1.parquet").exists() and not logs
    keep_only_current(folder, rows_fingerprint(changed), logs.append)  # edited spec: they go, with a line saying so
    assert not (folder / "part-1.parquet").exists() and "spec changed" in logs[0]


def test_personas_from_a_csv_keep_its_fields_and_refuse_unknown_columns(tmp_path):
    good = tmp_path / "people.csv"
    good.write_text("age,party_id,gender\n34,Strong Democrat,Female\n71,Strong Republican,\n")
    experiment = Experiment.model_validate(spec(population={"source": "csv", "csv": str(good), "n_per_arm": 3}))
    personas = draw_personas(experiment.population, personas_needed(experiment), "unused")
    assert len(personas) == 6 and {p["age"] for p in personas} <= {34, 71}  # 2 people resampled with replacement
    assert all(set(p) == set(personas[0]) and (p["gender"] is None) == (p["age"] == 71) for p in personas)
    bad = tmp_path / "bad.csv"
    bad.write_text("age,party\n34,Democrat\n")
    with pytest.raises(ExperimentError, match=r"population.csv: unknown column\(s\) \['party'\]"):
        draw_personas(Experiment.model_validate(spec(population={"source": "csv", "csv": str(bad)})).population, 4, "unused")
    word = tmp_path / "word.csv"
    word.write_text("age\nforty\n")
    with pytest.raises(ExperimentError, match="population.csv line 2: age must be an integer, got 'forty'"):
        draw_personas(Experiment.model_validate(spec(population={"source": "csv", "csv": str(word)})).population, 4, "unused")
    with pytest.raises(ExperimentError, match="source=csv needs population.csv"):
        load_experiment(write(tmp_path, spec(population={"source": "csv"})))


def test_models_resolve_to_adapters_or_say_what_is_missing(tmp_path):
    from socrates_ray.screen.job import screen_adapters

    experiment = Experiment.model_validate(spec(models=["base", "finetuned", "mine"], adapters={"mine": str(tmp_path / "mine")}))
    with pytest.raises(ExperimentError, match="models: finetuned, but run runs/x has no exported adapter"):
        screen_adapters(experiment, None, "runs/x")
    with pytest.raises(ExperimentError, match="adapters.mine: .* does not exist"):
        screen_adapters(experiment, "runs/x/checkpoint_000010/export", "runs/x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "adapter_config.json").write_text("{}")
    with pytest.raises(ExperimentError, match="adapters.mine: adapter_config.json's peft_type is None; only LoRA"):
        screen_adapters(experiment, "runs/x/checkpoint_000010/export", "runs/x")
    import numpy as np
    from safetensors.numpy import save_file

    (tmp_path / "mine" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}')
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((4, 8), np.float32)},
              str(tmp_path / "mine" / "adapter_model.safetensors"))
    assert screen_adapters(experiment, "runs/x/checkpoint_000010/export", "runs/x") == {
        "base": None, "finetuned": "runs/x/checkpoint_000010/export", "mine": str(tmp_path / "mine")}


def test_subgroup_effects_are_compared_and_a_persona_blind_model_shows_none():
    from socrates_ray.screen.subgroups import subgroup_agreement, subgroup_deviations

    # condition 0 is the control (everyone answers 4); conditions 1 and 2 move Democrats up and
    # Republicans down, by 2 and by 1 points: deviations from the overall effect of +-2/6 and +-1/6
    options = list(range(1, 8))
    rows = []
    for condition, push in ((0, 0), (1, 2), (2, 1)):
        for party, sign in (("Strong Democrat", 1), ("Strong Republican", -1)):
            for i in range(6):
                answer = 4 + sign * push
                rows.append({"study_id": "s", "sample_id": len(rows), "task_num": 1, "condition_num": condition,
                             "response": answer, "options": options, "demographic": {"party_id": party},
                             "scale_low": 1, "scale_high": 7, "reads": answer, "blind": 4})

    def table(column: str) -> pa.Table:
        return pa.Table.from_pylist([{**r, "probs": [1.0 if o == r[column] else 0.0 for o in options]} for r in rows])

    truth = {("s", r["sample_id"]): [1.0 if o == r["response"] else 0.0 for o in options] for r in rows}
    reads = subgroup_agreement(subgroup_deviations(table("reads"), "party_id", 5, truth), "party_id")
    assert reads.levels == 4 and reads.correlation == pytest.approx(1.0) and reads.correlation_true == pytest.approx(1.0)
    assert reads.spread_predicted == pytest.approx(reads.spread_observed) and reads.sign_agreement_true == 1.0
    blind = subgroup_agreement(subgroup_deviations(table("blind"), "party_id", 5, truth), "party_id")
    assert blind.levels == 4 and blind.spread_predicted == pytest.approx(0.0) and blind.spread_observed > 0.1
    assert blind.correlation is None and blind.sign_agreement_true == 0.0  # no deviation predicted: no sign right
    # levels with too few people in an arm are left out
    assert subgroup_deviations(table("reads"), "party_id", 7, truth) == []
